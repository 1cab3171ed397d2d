"""Trainer: one training run from a TrainConfig — data, stage, optimizer, loop, validation, checkpoints.

Loop: a seeded permutation per epoch; every global batch has `batch_size` samples (the epoch's last one
wraps around) and is split across torchrun ranks; AdamW with one group per trained module, linear
warm-up then cosine decay to 10%; gradient clipping; with --bf16, bf16 autocast where the device computes
bf16 natively (precision.py). Validation (loss on answer tokens + greedy exact-match accuracy) before
training and after every epoch. Checkpoints after every
epoch (and every `checkpoint_every` steps) and when Ctrl-C/SIGTERM stops the run between two steps.
Only rank 0 prints and writes files. Not here: what is trained (stages.py), the CLI (crome_cli.train).
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from crome_edge.backbones.base import CromeBackbone
from crome_edge.data.dataset import Dataset, Sample, load_dataset
from crome_edge.data.pixels import PixelStore
from crome_edge.data.split import split_dataset
from crome_edge.errors import CromeError
from crome_edge.evaluate import generate_answers, generation_budget, score
from crome_edge.training.checkpoint import (
    StopRequest, TrainingInterrupted, check_compatible, load_checkpoint, save_checkpoint,
)
from crome_edge.training.config import AUGMENTS, STAGES, TrainConfig
from crome_edge.training.distributed import DistContext, init_distributed, pick_device, shutdown_distributed
from crome_edge.training.stages import STAGE_CLASSES, FinetuneStage, Stage
from crome_runtime.outputs import check_output

LOSS_WINDOW = 20  # steps averaged for the progress bar and the curve's first/last values


def check_writable(path: Path, label: str) -> None:
    """CromeError now when `path`'s directory does not take new files (read-only, no permission), so that a run
    is never trained only to find it cannot be saved. Probes with a hidden file it removes at once."""
    import tempfile

    directory = path.absolute().parent
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.probe-", dir=directory)
    except OSError as error:
        raise CromeError(f"{label} {path}: cannot write in {directory} ({error.strerror or error}); choose a "
                         "writable directory") from None
    os.close(fd)
    os.unlink(probe)


@dataclass
class TrainResult:
    out: Path
    checkpoint: Path
    summary: dict = field(default_factory=dict)


class _Objective(nn.Module):
    """What DDP wraps: exactly the trained modules; forward runs the stage's loss around them."""

    def __init__(self, stage: Stage):
        super().__init__()
        self.trainable = stage.trainable
        self.stage = stage  # not an nn.Module: not registered, so DDP sees only the trained parameters

    def forward(self, samples: list[Sample]) -> torch.Tensor:
        return self.stage.loss(samples)


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        backbone: CromeBackbone | None = None,
        dataset: Dataset | None = None,
        on_step: Callable[[int, float], None] | None = None,
    ):
        self.config = config
        self.backbone: CromeBackbone  # given, or loaded by setup()
        self.dataset: Dataset  # given, or read by setup()
        if backbone is not None:
            self.backbone = backbone
        if dataset is not None:
            self.dataset = dataset
        self.on_step = on_step  # called after every optimizer step with (step, loss)
        self.ready = False

    # --- setup ----------------------------------------------------------------------------------
    def setup(self) -> None:
        """Checks options and paths, reads and splits the data, loads the backbone, caches what the stage
        caches, builds the optimizer and, with `resume`, restores the checkpoint. Writes nothing."""
        if self.ready:
            return
        config = self.config
        self._check_options()
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = pick_device(config.device)
        self.bf16 = self._decide_bf16()
        self.dist: DistContext = init_distributed(self.device)
        if config.batch_size % self.dist.world_size:
            raise CromeError(
                f"--batch-size {config.batch_size} is the global batch; it must divide evenly over "
                f"{self.dist.world_size} processes"
            )
        torch.manual_seed(config.seed)
        self._load_data()
        self._load_backbone()
        self._add_replay()
        self._check_lengths()
        self.compat = self._compat_record()  # before any weight changes
        self._build_stage()
        self._plan_steps()
        if config.resume:
            self._restore(load_checkpoint(config.checkpoint_path))
        self.ready = True

    def _decide_bf16(self):
        """--bf16 only where the device computes bf16 natively (crome_edge.training.precision)."""
        from crome_edge.training.precision import decide_bf16

        if not self.config.bf16:
            return decide_bf16(False, self.device.type)
        if self.device.type == "cuda":
            return decide_bf16(True, "cuda", cuda_bf16=torch.cuda.is_bf16_supported())
        from crome_runtime.machine import describe_cpu, features

        return decide_bf16(True, self.device.type, features(), cpu_model=f"this CPU ({describe_cpu()['model']})")

    def _load_data(self) -> None:
        if not hasattr(self, "dataset"):
            self.dataset = load_dataset(self.config.data, question=self.config.question)
        self.train_samples, self.val_samples = split_dataset(
            self.dataset.samples, self.config.val_fraction, self.config.seed
        )
        if len(self.train_samples) < self.dist.world_size:
            raise CromeError(f"{len(self.train_samples)} training samples cannot be shared by {self.dist.world_size} processes")
        self.train_data_recipe = None  # how to regenerate a `crome-edge data synth` set (crome_edge.synth.recipe)
        if self.dataset.layout == "jsonl":
            from crome_edge.synth.recipe import training_record

            self.train_data_recipe, note = training_record(self.dataset.source)
            if note:
                self._log(note)

    def _load_backbone(self) -> None:
        """Loads the backbone unless one was given (a given one is moved to the run's device)."""
        if not hasattr(self, "backbone"):
            from crome_edge.backbones.registry import load_backbone

            self.backbone = load_backbone(self.config.backbone)
        if self.config.backbone_parts:
            from crome_edge.backbones.parts_file import load_backbone_parts

            load_backbone_parts(self.config.backbone_parts, self.backbone)
        self.backbone.to(self.device)

    def _add_replay(self) -> None:
        """--replay N: N general Q&A samples join the training split only (crome_edge.training.replay)."""
        self.replay = None
        if not self.config.replay:
            return
        from crome_edge.training.replay import replay_samples

        self.replay = replay_samples(self.config.replay, self.config.replay_data, self.backbone.info.name,
                                     self.config.seed, self._log)
        task_images = {s.image for s in self.train_samples + self.val_samples}
        if task_images & {s.image for s in self.replay.samples}:
            raise CromeError(f"--replay-data {self.replay.record['data']} shares images with --data; replay a general "
                             "set of other frames (a task frame in both would be asked to give two answers)")
        self.train_samples = self.train_samples + self.replay.samples
        self._log(f"replay: {len(self.replay.samples)} samples from {self.replay.record['source']} "
                  f"({', '.join(self.replay.record['questions'][:5])}) join {len(self.train_samples) - len(self.replay.samples)} task samples")

    def _check_lengths(self) -> None:
        """Every sample's visual queries + prompt + answer fit the LLM's context (crome_runtime.limits, the rule `run`
        applies), so one overlong line is a CromeError naming it instead of an attention matrix that fills memory."""
        from crome_runtime.limits import context_problem

        info, tokenizer = self.backbone.info, self.backbone.llm_tokenizer
        template = len(info.prompt.prompt_ids(tokenizer, ""))
        context = self.backbone.context_length()
        seen: set[tuple[str, str]] = set()
        for sample in self.train_samples + self.val_samples:
            if (sample.question, sample.answer) in seen:
                continue
            seen.add((sample.question, sample.answer))
            problem = context_problem(len(info.prompt.prompt_ids(tokenizer, sample.question)), template,
                                      info.num_query_tokens, context, len(info.prompt.answer_ids(tokenizer, sample.answer)))
            if problem:
                raise CromeError(f"{self.dataset.source.name if sample.origin == '' else sample.origin}: {problem}")

    def _build_stage(self) -> None:
        """The stage (what is trained), its caches, the DDP wrapper and the optimizer (a group per module)."""
        pixels = PixelStore.for_backbone(self.backbone.info)
        self.stage: Stage = STAGE_CLASSES[self.config.stage](self.backbone, self.config, pixels, self.device)
        self.stage.prepare(self.train_samples + self.val_samples)  # checks every image, caches what it can
        if isinstance(self.stage, FinetuneStage) and self.config.pooled_map:
            self.stage.fit_pooled_map(self.train_samples)  # the training split's statistics, before the first step
        self.objective = _Objective(self.stage)
        self.model_for_step: nn.Module = self.objective
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.model_for_step = DistributedDataParallel(
                self.objective, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False, find_unused_parameters=self.config.stage == "pretrain",
            )
        self.optimizer = torch.optim.AdamW(self.stage.param_groups(), weight_decay=0.0)
        for group in self.optimizer.param_groups:
            group["base_lr"] = group["lr"]  # the schedule scales this every step

    def _plan_steps(self) -> None:
        config = self.config
        self.batch = min(config.batch_size, len(self.train_samples))  # global batch of every step
        self.batch -= self.batch % self.dist.world_size
        self.steps_per_epoch = math.ceil(len(self.train_samples) / self.batch)
        self.total_steps = config.steps if config.steps else config.epochs * self.steps_per_epoch
        self.warmup = config.warmup_steps if config.warmup_steps is not None else min(100, max(1, self.total_steps // 20))
        self.step = 0
        self.seconds_before = 0.0
        self.history: dict = {"step_loss": [], "epochs": [], "initial": None}

    def _check_options(self) -> None:
        config = self.config
        if config.stage not in STAGES:
            raise CromeError(f"unknown stage {config.stage!r}; choose one of {', '.join(STAGES)}")
        for name in ("epochs", "batch_size", "rank"):
            if getattr(config, name) < 1:
                raise CromeError(f"--{name.replace('_', '-')} must be at least 1")
        if config.steps is not None and config.steps < 1:
            raise CromeError("--steps must be at least 1")
        if config.replay and config.stage != "finetune":
            raise CromeError("--replay mixes general Q&A into adapter fine-tuning; it needs --stage finetune")
        if config.replay_data and not config.replay:
            raise CromeError("--replay-data gives --replay its samples; pass --replay N too (how many to mix in)")
        if config.pooled_map and config.stage != "finetune":
            raise CromeError("--pooled-map is part of the adapter; it needs --stage finetune")
        if config.augment not in AUGMENTS:
            raise CromeError(f"unknown --augment {config.augment!r}; choose one of {', '.join(AUGMENTS)}")
        for flag, value in (("--lr", config.learning_rate), ("--encoder-lr", config.encoder_learning_rate)):
            if not (math.isfinite(value) and value > 0):
                raise CromeError(f"{flag} must be a finite number > 0, got {value}")
        for flag, count, minimum in (("--warmup-steps", config.warmup_steps, 0), ("--threads", config.threads, 1),
                                     ("--max-new-tokens", config.max_new_tokens, 1),
                                     ("--checkpoint-every", config.checkpoint_every, 0)):
            if count is not None and count < minimum:
                raise CromeError(f"{flag} must be a whole number >= {minimum}, got {count}")
        if config.resume and not config.checkpoint_path.is_file():
            raise CromeError(
                f"--resume: no checkpoint at {config.checkpoint_path} (pass --checkpoint PATH, or drop --resume to start over)"
            )
        data, replay = Path(config.data), Path(config.replay_data) if config.replay_data else None
        inputs = [data, data / "data.jsonl", replay, replay / "data.jsonl" if replay else None, config.backbone_parts]
        for label, path in (("--out", Path(config.out)), ("--checkpoint", config.checkpoint_path)):
            if path.is_dir():
                raise CromeError(f"{label} {path} is a directory; give a file name such as {path / 'line3.safetensors'}")
            if not path.absolute().parent.is_dir():
                raise CromeError(f"{label} {path}: directory {path.absolute().parent} does not exist (create it first)")
            check_output(path, label, inputs)  # not a device, FIFO, link, nor the training data itself
            check_writable(path, label)  # now, not after the run
        out = Path(config.out)
        if out.exists() and not (config.force or config.resume):
            raise CromeError(f"--out {out} exists; pass --force to replace it, or choose another --out")

    def _compat_record(self) -> dict:
        config = self.config
        return {
            "stage": config.stage,
            "backbone_fingerprint": self.backbone.fingerprint(),
            "data_fingerprint": self.dataset.fingerprint(),
            "rank": config.rank if config.stage == "finetune" else None,
            "train_vision": config.train_vision if config.stage == "pretrain" else None,
            "augment": config.augment,
            "pooled_map": config.pooled_map,
            "replay": self.replay.record if self.replay else None,
            "batch_size": config.batch_size,
            "seed": config.seed,
            "val_fraction": config.val_fraction,
        }

    # --- checkpoints ----------------------------------------------------------------------------
    def _checkpoint_state(self) -> dict:
        return {
            "compat": self.compat,
            "step": self.step,
            "trainable": self.stage.trainable.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "history": self.history,
            "seconds": self.seconds_before + (time.perf_counter() - self.started),
            "torch_rng": torch.get_rng_state(),
            "config": self.config.to_json(),
        }

    def _restore(self, state: dict) -> None:
        path = self.config.checkpoint_path
        check_compatible(state["compat"], self.compat, path)
        if state["step"] >= self.total_steps:
            raise CromeError(
                f"checkpoint {path} is already at step {state['step']} of {self.total_steps}; "
                "pass more --epochs/--steps to train further"
            )
        self.stage.trainable.load_state_dict(state["trainable"])
        base_lrs = [group["base_lr"] for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, base_lr in zip(self.optimizer.param_groups, base_lrs):  # this run's --lr wins
            group["base_lr"] = base_lr
        self.step = int(state["step"])
        self.history = state["history"]
        self.seconds_before = float(state["seconds"])
        torch.set_rng_state(state["torch_rng"])

    def _save_checkpoint(self) -> None:
        if self.dist.is_main:
            try:
                save_checkpoint(self.config.checkpoint_path, self._checkpoint_state())
            except OSError as error:  # e.g. a full disk: the run goes on; the finished run is saved at the end
                self._log(f"warning: could not write the checkpoint {self.config.checkpoint_path} "
                          f"({error.strerror or error}); training continues without it")
        self.dist.barrier()  # no rank leaves (and lets torchrun stop the others) before the file is whole

    # --- the loop -------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        try:
            self.setup()
            return self._train()
        finally:
            if getattr(self, "backbone", None) is not None:
                self.backbone.freeze()
                if self.config.stage == "pretrain":
                    self.backbone.invalidate_fingerprint()  # the visual side changed
            if getattr(self, "dist", None) is not None:
                shutdown_distributed(self.dist)

    def _train(self) -> TrainResult:
        config, dist = self.config, self.dist
        self.started = time.perf_counter()
        if self.bf16.note:
            self._log(self.bf16.note)
        self._log(
            f"{config.stage}: {len(self.train_samples)} training / {len(self.val_samples)} validation samples, "
            f"{self.total_steps} steps of {self.batch} (x{dist.world_size} process(es)), "
            f"{self._trainable_count():,} trained parameters"
            + (f"; resuming at step {self.step}" if self.step else "")
        )
        if self.history["initial"] is None and self.val_samples:
            initial = self.history["initial"] = self.validate()
            self._log(f"before training: {_describe(initial)}")
        bar = self._progress_bar()
        run_samples, run_started = 0, time.perf_counter()
        self.stage.train()
        with StopRequest(announce=dist.is_main) as stop:
            while self.step < self.total_steps:
                loss = self._train_step(self._batch_for(self.step))
                self.step += 1
                run_samples += self.batch
                self.history["step_loss"].append(loss)
                if bar is not None:
                    window = self.history["step_loss"][-LOSS_WINDOW:]
                    rate = run_samples / max(time.perf_counter() - run_started, 1e-9)
                    bar.set_postfix(loss=f"{sum(window) / len(window):.4f}", samples_s=f"{rate:.1f}", refresh=False)
                    bar.update(1)
                if self.on_step is not None:
                    self.on_step(self.step, loss)
                epoch_done = self.step % self.steps_per_epoch == 0 or self.step == self.total_steps
                if epoch_done:
                    self._end_epoch(bar)
                if dist.any(stop.requested):
                    if not epoch_done:
                        self._save_checkpoint()
                    if bar is not None:
                        bar.close()
                    raise TrainingInterrupted(
                        f"training stopped at step {self.step} of {self.total_steps}; checkpoint "
                        f"{self.config.checkpoint_path} holds it. Continue with the same command plus --resume"
                    )
                if not epoch_done and config.checkpoint_every and self.step % config.checkpoint_every == 0:
                    self._save_checkpoint()
        if bar is not None:
            bar.close()
        summary = self.summary()
        if dist.is_main:
            self._save_result(Path(config.out), summary)
        dist.barrier()
        kept = f"checkpoint {config.checkpoint_path}" if config.checkpoint_path.is_file() else "no checkpoint (see above)"
        self._log(f"wrote {config.out} ({summary['seconds']:.1f} s); {kept}")
        return TrainResult(Path(config.out), config.checkpoint_path, summary)

    def _save_result(self, out: Path, summary: dict) -> None:
        """Writes the trained file; when `out` cannot be written any more (a full disk, a removed directory), the
        finished run goes to a fallback file in the temp directory and the CromeError says where."""
        try:
            self.stage.save(out, summary, str(self.dataset.source), self.train_data_recipe)
            return
        except (OSError, CromeError) as error:
            reason = getattr(error, "strerror", None) or str(error)
        import tempfile

        fallback: Path | None = None
        try:
            fd, name = tempfile.mkstemp(prefix=f"{out.stem}-", suffix=out.suffix or ".safetensors")
            os.close(fd)
            fallback = Path(name)
            self.stage.save(fallback, summary, str(self.dataset.source), self.train_data_recipe)
        except (OSError, CromeError) as second:
            if fallback is not None:
                fallback.unlink(missing_ok=True)
            raise CromeError(f"could not write --out {out} ({reason}), nor a copy in the temp directory "
                             f"({getattr(second, 'strerror', None) or second}); the checkpoint "
                             f"{self.config.checkpoint_path} holds the run up to its last save: free space and run "
                             "again with --resume") from None
        raise CromeError(f"could not write --out {out} ({reason}); the finished run was saved to {fallback} "
                         "instead: move it where you want it")

    def _train_step(self, samples: list[Sample]) -> float:
        factor = self._lr_factor(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        with self._autocast():
            loss = self.model_for_step(samples[self.dist.rank :: self.dist.world_size])
        mean_loss = self.dist.all_reduce_sum([loss.item()])[0] / self.dist.world_size
        if not math.isfinite(mean_loss):  # every rank sees the same value, so all of them stop here
            rates = f"--lr (now {self.config.learning_rate:g})"
            if self.config.stage == "pretrain":
                rates += f" or --encoder-lr (now {self.config.encoder_learning_rate:g})"
            raise CromeError(f"the loss became {mean_loss} at step {self.step + 1}; lower {rates}")
        loss.backward()
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.stage.trainable.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return mean_loss

    def _end_epoch(self, bar) -> None:
        epoch = math.ceil(self.step / self.steps_per_epoch)
        start = (epoch - 1) * self.steps_per_epoch
        losses = self.history["step_loss"][start : self.step]
        record = {"epoch": epoch, "step": self.step, "train_loss": sum(losses) / max(len(losses), 1)}
        if self.val_samples:
            record.update(self.validate())
        self.history["epochs"].append(record)
        self._save_checkpoint()
        self._log(f"epoch {epoch} (step {self.step}): train loss {record['train_loss']:.4f}, {_describe(record)}", bar)

    def _batch_for(self, step: int) -> list[Sample]:
        """The global batch of `step`: a slice of its epoch's seeded permutation, wrapped to full size."""
        epoch, index = divmod(step, self.steps_per_epoch)
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.train_samples), generator=generator).tolist()
        picked = order[index * self.batch : (index + 1) * self.batch]
        picked += order[: self.batch - len(picked)]
        return [self.train_samples[i] for i in picked]

    def _lr_factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total_steps - self.warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    def _autocast(self):
        if not self.bf16.use:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    # --- validation -----------------------------------------------------------------------------
    def validate(self) -> dict:
        """{"val_loss", "val_accuracy", "val_n"} over the validation split (sharded across ranks)."""
        shard = self.val_samples[self.dist.rank :: self.dist.world_size]
        model = self.stage.model
        loss_sum = tokens = 0.0
        predictions: list[str] = []
        self.stage.eval()
        try:
            with torch.no_grad(), self._autocast():
                for start in range(0, len(shard), self.batch):
                    chunk = shard[start : start + self.batch]
                    n_tokens = sum(len(model.answer_ids(s.answer)) for s in chunk)
                    loss_sum += self.stage.loss(chunk).item() * n_tokens
                    tokens += n_tokens
                if shard:
                    budget = generation_budget(model, self.val_samples, self.config.max_new_tokens)
                    predictions = generate_answers(model, self.stage.prefix, shard, self.batch, budget)
        finally:
            self.stage.train()
        local = score(shard, predictions)
        loss_sum, tokens, correct, n = self.dist.all_reduce_sum([loss_sum, tokens, local.correct, local.n])
        return {"val_loss": loss_sum / max(tokens, 1), "val_accuracy": correct / max(n, 1), "val_n": int(n)}

    # --- reporting ------------------------------------------------------------------------------
    def summary(self) -> dict:
        config, history = self.config, self.history
        losses, epochs = history["step_loss"], history["epochs"]
        last = epochs[-1] if epochs else {}
        initial = history["initial"] or {}
        summary = {
            "stage": config.stage,
            "steps": self.step,
            "epochs": round(self.step / self.steps_per_epoch, 3),
            "examples": len(self.train_samples),
            "val_examples": len(self.val_samples),
            "batch_size": self.batch,
            "lr": config.learning_rate,
            "rank": config.rank if config.stage == "finetune" else None,
            "val_fraction": config.val_fraction,
            "split_seed": config.seed,
            "question": self.dataset.question,
            "questions": self._trained_questions(),
            "bf16": self.bf16.use,  # what ran: --bf16 falls back to fp32 without native bf16
            "bf16_requested": config.bf16,
            "augment": config.augment,
            "pooled_map": config.pooled_map,
            "replay": self.replay.record if self.replay else None,
            "world_size": self.dist.world_size,
            "val_accuracy": last.get("val_accuracy"),
            "val_loss": last.get("val_loss"),
            "initial_val_loss": initial.get("val_loss"),
            "initial_val_accuracy": initial.get("val_accuracy"),
            "loss_curve": {
                "first": _mean(losses[:LOSS_WINDOW]),
                "last": _mean(losses[-LOSS_WINDOW:]),
                "min": min(losses) if losses else None,
                "train_per_epoch": [round(e["train_loss"], 5) for e in epochs],
                "val_per_epoch": [round(e["val_loss"], 5) for e in epochs if "val_loss" in e],
                "val_accuracy_per_epoch": [round(e["val_accuracy"], 4) for e in epochs if "val_accuracy" in e],
            },
            "seconds": round(self.seconds_before + time.perf_counter() - self.started, 2),
        }
        if self.bf16.note:
            summary["bf16_note"] = self.bf16.note
        if config.stage == "pretrain":
            summary["train_vision"] = config.train_vision
            summary["encoder_lr"] = config.encoder_learning_rate
        return summary

    def _trained_questions(self) -> list[str] | None:
        """The task data's distinct questions (train + validation), the adapter's route at export; None when there
        are more than crome_runtime.adapter_entries.MAX_RECORDED_QUESTIONS (export then reads the data)."""
        from crome_runtime.adapter_entries import MAX_RECORDED_QUESTIONS

        questions = sorted({s.question for s in self.dataset.samples})
        return questions if self.config.stage == "finetune" and len(questions) <= MAX_RECORDED_QUESTIONS else None

    def _trainable_count(self) -> int:
        return sum(p.numel() for group in self.optimizer.param_groups for p in group["params"])

    def _progress_bar(self):
        if not (self.config.progress and self.dist.is_main):
            return None
        from tqdm import tqdm

        return tqdm(total=self.total_steps, initial=self.step, desc=self.config.stage, unit="step", dynamic_ncols=True)

    def _log(self, message: str, bar=None) -> None:
        if not self.dist.is_main:
            return
        if bar is not None:
            bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)


def train(config: TrainConfig, **kwargs) -> TrainResult:
    """Runs one training run; kwargs go to `Trainer` (backbone=, dataset=, on_step=)."""
    return Trainer(config, **kwargs).run()


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _describe(record: dict) -> str:
    if "val_loss" not in record:
        return "no validation split (--val-fraction 0)"
    return f"val loss {record['val_loss']:.4f}, val accuracy {record['val_accuracy']:.1%} (n={record['val_n']})"
