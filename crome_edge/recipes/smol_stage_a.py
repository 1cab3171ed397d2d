"""Stage A of the smol default: the Q-Former learns to read the frozen ImageNet eye, without the LLM.

Frames: conveyor scenes (world.py, no-part frames included) and the general curriculum (general.py). The eye
(EfficientNet-Lite0, frozen) sees each frame once; its tokens are cached in memory (and in `--cache`, so a rerun
skips them). Classification heads on the flattened Q-Former queries predict every closed-set answer a frame has
(conveyor: kind, colour, defect; general: count, shape, colour, position, size, word, pattern). A task-free
"keep the eye" head beside them asks the flattened queries to hold the eye's pooled features (mean and max over the
positions, standardised; mean-squared error, weight `--keep-eye`): without it the queries keep only what the heads
ask, and real photographs, which none of the heads describe, lose most of what the eye sees in them. All heads
are thrown away afterwards. Output: a backbone-parts file bound to the frozen SmolLM2 (query tokens, Q-Former, the
untrained projection), the input of stage B (`crome-edge train --stage pretrain`). Commands and times:
crome_edge/recipes/README.md.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from crome_edge.backbones.smol import (
    EYE_CHANNELS,
    IMAGE_SIZE,
    POSITION_CHANNELS,
    SMOL_MEAN,
    SMOL_STD,
    LiteEye,
    build_vision_parts,
    load_eye,
    mean_max_pool,
)
from crome_edge.synth.general import GENERAL_ANSWERS, render_general
from crome_edge.synth.qa import ANSWERS, Q_COLOUR, Q_DEFECT, Q_KIND, answer
from crome_edge.synth.world import render_scene
from crome_runtime.preprocess import preprocess_image

# Seeds of stage A's own frames, outside every dataset split (synth/splits.py)
CONVEYOR_SEED_BASE = 50_000_000
GENERAL_SEED_BASE = 55_000_000
EVAL_OFFSET = 4_000_000  # evaluation frames: base + this
# One head per closed-set question: the conveyor's three and the general curriculum's seven
HEADS: dict[str, tuple[str, ...]] = {q: ANSWERS[q] for q in (Q_KIND, Q_COLOUR, Q_DEFECT)} | GENERAL_ANSWERS
FRAME_SIZE = 128  # both worlds render at the datasets' size; the eye sees them at IMAGE_SIZE like any frame


def render_pool(world: str, seed_base: int, count: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames (BGR) and labels (count, len(HEADS)): the answer index per head, -1 where a frame is not asked."""
    images, labels = [], np.full((count, len(HEADS)), -1, dtype=np.int64)
    for i in range(count):
        if world == "conveyor":
            image, scene = render_scene(seed_base + i, FRAME_SIZE)
            qa = [(q, answer(q, scene)) for q in (Q_KIND, Q_COLOUR, Q_DEFECT)]
        else:
            image, general = render_general(seed_base + i, FRAME_SIZE)
            qa = list(general.qa)
        images.append(image)
        for question, reply in qa:
            column = list(HEADS).index(question)
            labels[i, column] = HEADS[question].index(reply)
    return images, labels


@torch.no_grad()
def eye_tokens(eye: LiteEye, images: list[np.ndarray], batch: int = 32) -> torch.Tensor:
    """(N, T, C) float16 tokens of the frozen eye, through the runtime's own preprocessing."""
    out = []
    for start in range(0, len(images), batch):
        pixels = np.stack([preprocess_image(im, IMAGE_SIZE, SMOL_MEAN, SMOL_STD) for im in images[start : start + batch]])
        out.append(eye(torch.from_numpy(pixels)).half())
    return torch.cat(out)


def cached_tokens(eye: LiteEye, cache: Path | None, name: str, make) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, labels) of a pool, from `cache/<name>.safetensors` when a previous run left it."""
    path = cache / f"{name}.safetensors" if cache else None
    if path is not None and path.is_file():
        from safetensors.torch import load_file

        state = load_file(str(path))
        return state["tokens"], state["labels"]
    images, labels = make()
    tokens = eye_tokens(eye, images)
    if path is not None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"tokens": tokens, "labels": torch.from_numpy(labels)}, str(path))
    return tokens, torch.from_numpy(labels)


def pooled(tokens: torch.Tensor) -> torch.Tensor:
    """(N, T, C) eye tokens -> (N, 2C): mean and max over the positions, what the "keep the eye" head predicts."""
    return mean_max_pool(tokens.float())


def keep_eye_target(tokens: torch.Tensor) -> torch.Tensor:
    """What the "keep the eye" head learns: pooled() of every frame, standardised by these frames' statistics."""
    features = torch.cat([pooled(tokens[i : i + 1000]) for i in range(0, len(tokens), 1000)])
    return (features - features.mean(0)) / (features.std(0) + 1e-3)


class StageAModel(nn.Module):
    def __init__(self, eye: LiteEye, seed: int, keep_eye: bool):
        super().__init__()
        _, self.query_tokens, self.qformer, self.projection = build_vision_parts(seed, eye=eye)
        width = self.query_tokens.shape[1] * self.query_tokens.shape[2]
        self.heads = nn.ModuleList([nn.Linear(width, len(answers)) for answers in HEADS.values()])
        # made only when asked for: its initialisation draws from the RNG the Q-Former's dropout uses after it
        self.keep_eye = nn.Linear(width, 2 * (EYE_CHANNELS + POSITION_CHANNELS)) if keep_eye else None

    def forward(self, tokens: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """-> (logits per head, the predicted standardised pooled eye features when the model keeps the eye)"""
        queries = self.query_tokens.expand(tokens.shape[0], -1, -1)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=tokens, return_dict=True)
        flat = out.last_hidden_state.flatten(1)  # (B, Nq·Dq)
        return [head(flat) for head in self.heads], self.keep_eye(flat) if self.keep_eye is not None else None


def masked_loss(logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    losses = []
    for column, head_logits in enumerate(logits):
        asked = labels[:, column] >= 0
        if asked.any():
            losses.append(F.cross_entropy(head_logits[asked], labels[asked, column]))
    return torch.stack(losses).sum()


@torch.no_grad()
def accuracy(model: StageAModel, tokens: torch.Tensor, labels: torch.Tensor, batch: int = 250) -> dict[str, float]:
    model.eval()
    correct, asked = np.zeros(len(HEADS)), np.zeros(len(HEADS))
    for start in range(0, len(tokens), batch):
        logits, _ = model(tokens[start : start + batch].float())
        target = labels[start : start + batch]
        for column, head_logits in enumerate(logits):
            mask = target[:, column] >= 0
            correct[column] += (head_logits.argmax(-1)[mask] == target[mask, column]).sum().item()
            asked[column] += mask.sum().item()
    model.train()
    return {q: round(c / a, 4) for q, c, a in zip(HEADS, correct, asked) if a}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="backbone-parts file for stage B")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--conveyor", type=int, default=8000, help="conveyor training frames")
    parser.add_argument("--general", type=int, default=8000, help="general-curriculum training frames")
    parser.add_argument("--eval-frames", type=int, default=500, help="per world")
    parser.add_argument("--keep-eye", type=float, default=0.0,
                        help="weight of the task-free head that keeps the eye's pooled features (0: off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, help="directory for the eye's tokens of each pool (reused by reruns)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.time()
    eye = load_eye().eval()
    pools = {}
    for world, base, n in (("conveyor", CONVEYOR_SEED_BASE, args.conveyor), ("general", GENERAL_SEED_BASE, args.general)):
        for split, offset, count in (("train", 0, n), ("eval", EVAL_OFFSET, args.eval_frames)):
            name = f"{world}-{split}-{base + offset}-{count}-{FRAME_SIZE}-{IMAGE_SIZE}"
            pools[(world, split)] = cached_tokens(eye, args.cache, name,
                                                  lambda w=world, b=base + offset, c=count: render_pool(w, b, c))
            print(f"{world}/{split}: {count} frames ready at {time.time() - start:.0f}s", flush=True)
    train_tokens = torch.cat([pools[("conveyor", "train")][0], pools[("general", "train")][0]])
    train_labels = torch.cat([pools[("conveyor", "train")][1], pools[("general", "train")][1]])
    eval_tokens = torch.cat([pools[("conveyor", "eval")][0], pools[("general", "eval")][0]])
    eval_labels = torch.cat([pools[("conveyor", "eval")][1], pools[("general", "eval")][1]])

    train_target = keep_eye_target(train_tokens) if args.keep_eye > 0 else None

    model = StageAModel(eye, args.seed, keep_eye=args.keep_eye > 0)
    trained = [p for name, p in model.named_parameters() if not name.startswith("projection.")]
    optimizer = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.05)
    warmup = 100
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))
    )
    generator = torch.Generator().manual_seed(args.seed)
    history = []
    for step in range(1, args.steps + 1):
        index = torch.randint(0, len(train_tokens), (args.batch_size,), generator=generator)
        logits, kept = model(train_tokens[index].float())
        loss = masked_loss(logits, train_labels[index])
        if kept is not None and train_target is not None:
            loss = loss + args.keep_eye * F.mse_loss(kept, train_target[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.3f} {time.time() - start:.0f}s", flush=True)
        if step % 500 == 0 or step == args.steps:
            history.append({"step": step, **accuracy(model, eval_tokens, eval_labels)})
            print(f"eval {json.dumps(history[-1])}", flush=True)
    summary = {"stage": "A", "steps": args.steps, "seconds": round(time.time() - start), "eval": history,
               "batch_size": args.batch_size, "lr": args.lr, "conveyor_frames": args.conveyor,
               "general_frames": args.general, "keep_eye": args.keep_eye, "seed": args.seed}
    save_parts(model, args.out, summary)
    print(json.dumps(summary), flush=True)


def save_parts(model: StageAModel, out: Path, summary: dict) -> None:
    """The trained query tokens and Q-Former (and the fresh projection and pooled token) as a parts file bound to SmolLM2."""
    from crome_edge.backbones.parts_file import save_backbone_parts
    from crome_edge.backbones.smol import load_smol

    backbone = load_smol(require_trained=False)
    with torch.no_grad():
        query_tokens, qformer = backbone.qformer_parts()
        query_tokens.copy_(model.query_tokens)
        qformer.load_state_dict(model.qformer.state_dict())
        backbone.projection.load_state_dict(model.projection.state_dict())
    save_backbone_parts(out, backbone, torch.float32, training=summary)


if __name__ == "__main__":
    main()
