"""The PyTorch side of the fidelity report: what the shipped engine is held to, as crome_runtime.fidelity data.

`crome-edge export` measures the bundle it is about to write with the engine users run: crome_runtime.fidelity
compares every stage and every greedy answer of `Engine`s loaded from the candidate bundle files against
`Reference`s, applies the gates and prints the table. This module computes those references with
CromeModel: greedy answers (CromeModel.generate, batched as evaluation runs it), every stage's output at
batch 1 (each stage fed PyTorch's output of the stage before), and PyTorch's top-2 logit margins where an
answer diverges (near-ties are not parity breaks). It also builds the bundle's acceptance set
(crome_runtime.acceptance) from held-out frames, with the references `crome-edge verify` needs.
Not here: the rules and the engine side (crome_runtime.fidelity), writing files (bundle.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from crome_edge.model import CromeModel, GenerationConfig
from crome_export.frames import ExportData
from crome_runtime import acceptance, fidelity
from crome_runtime.fidelity import Fidelity, MeasureConfig, Reference, StageReference
from crome_runtime.formats import DEFAULT_MAX_NEW_TOKENS

STAGE_SAMPLES = 16  # eval prompts the per-stage comparisons run on
BATCH = 16


@dataclass
class FidelityConfig:
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    int8_threshold_points: float = 1.0


# --- PyTorch references ----------------------------------------------------------------------------
@torch.no_grad()
def visual_outputs(model: CromeModel, pixels: list[np.ndarray], prompts: list[tuple[int, str, str | None]]
                   ) -> list[torch.Tensor]:
    """PyTorch's frozen vision output V (Nq, d) of every prompt, computed once per frame (per frame and question
    for an instruction-aware Q-Former) in batches of BATCH: the greedy answers, the stage outputs and the margins
    all start from it (the vision side has no adapter, so nothing else changes it)."""
    aware = model.backbone.info.instruction_aware
    keys = [(frame, question if aware else None) for frame, question, _ in prompts]
    distinct = list(dict.fromkeys(keys))
    computed: dict = {}
    for start in range(0, len(distinct), BATCH):
        chunk = distinct[start : start + BATCH]
        batch = torch.from_numpy(np.stack([pixels[frame] for frame, _ in chunk]))  # (B, 3, S, S)
        questions = [question or "" for _, question in chunk]  # read only by an instruction-aware Q-Former
        computed.update(zip(chunk, model.visual_embeds(batch, questions)))  # (Nq, d) each
    return [computed[key] for key in keys]


@torch.no_grad()
def stage_reference(model: CromeModel, visual: torch.Tensor, question: str, logits: bool) -> StageReference:
    """PyTorch's output of every stage for one prompt (visual: its vision output (Nq, d)), at batch 1 as the
    engine runs."""
    from transformers import DynamicCache

    from crome_edge.model import cache_argument

    visual = visual[None]  # (1, Nq, d)
    adapted_visual = model.adapt(visual, "visual")  # (1, Nq, d)
    ids, at = model.backbone.info.prompt.prompt_parts(model.backbone.llm_tokenizer, question)
    adapted_text = model.adapt(model.backbone.embed_tokens(torch.tensor([ids])), "text")  # (1, Nt, d)
    reference = StageReference(visual[0].numpy(), adapted_visual[0].numpy(), ids, adapted_text[0].numpy())
    if logits:
        llm, cache = model.backbone.llm, DynamicCache()
        prefix = torch.cat([adapted_text[:, :at], adapted_visual, adapted_text[:, at:]], dim=1)  # (1, L, d)
        length = prefix.shape[1]
        out = llm(inputs_embeds=prefix, attention_mask=torch.ones(1, length, dtype=torch.long),
                  position_ids=torch.arange(length)[None], use_cache=True, logits_to_keep=1,
                  **cache_argument(llm, cache))
        prefill = out.logits[0, -1].float()  # (vocab,)
        token = prefill.argmax().view(1, 1)  # PyTorch's greedy first token feeds the step
        step = llm(inputs_embeds=model.backbone.embed_tokens(token), attention_mask=torch.ones(1, length + 1, dtype=torch.long),
                   position_ids=torch.tensor([[length]]), use_cache=True, **cache_argument(llm, cache))
        reference.prefill_logits, reference.step_logits = prefill.numpy(), step.logits[0, -1].float().numpy()
    return reference


@torch.no_grad()
def top2_margins(model: CromeModel, visual: torch.Tensor, question: str, token_ids: list[int]) -> list[float]:
    """PyTorch's top-1 minus top-2 logit at steps 0..len(token_ids) of an answer (one forward, no cache);
    visual: the prompt's vision output (Nq, d)."""
    prefix = model.prefix_from_visual(visual[None], [question]).embeds  # (1, L, d)
    embeds = prefix
    if token_ids:
        embeds = torch.cat([prefix, model.backbone.embed_tokens(torch.tensor([token_ids]))], dim=1)
    logits = model.backbone.llm(inputs_embeds=embeds).logits[0, prefix.shape[1] - 1 :]  # (len + 1, vocab)
    top = torch.topk(logits.float(), 2, dim=-1).values
    return (top[:, 0] - top[:, 1]).tolist()


@torch.no_grad()
def references(model: CromeModel, pixels: list[np.ndarray], prompts: list[tuple[int, str, str | None]],
               max_new_tokens: int, stage_prompts: int, logit_prompts: int, margins: bool,
               visual: list[torch.Tensor] | None = None) -> list[Reference]:
    """prompts: (frame index into pixels, question, label or None). PyTorch's greedy answers for all (batches of
    BATCH), stage outputs for the first `stage_prompts` (logits for the first `logit_prompts`), margins for all
    if asked. visual: the prompts' vision outputs (visual_outputs), computed here when not given."""
    config = GenerationConfig(max_new_tokens=max_new_tokens)
    visual = visual if visual is not None else visual_outputs(model, pixels, prompts)
    answers: list[list[int]] = []
    for start in range(0, len(prompts), BATCH):
        chunk = prompts[start : start + BATCH]
        batch = torch.stack(visual[start : start + BATCH])  # (B, Nq, d)
        prefix = model.prefix_from_visual(batch, [question for _, question, _ in chunk])
        answers += model.generate_from_prefix(prefix, config)
    result = []
    for index, ((frame, question, label), ids) in enumerate(zip(prompts, answers)):
        stages = stage_reference(model, visual[index], question, index < logit_prompts) if index < stage_prompts else None
        gaps = top2_margins(model, visual[index], question, ids) if margins else None
        result.append(Reference(frame, question, label, ids, gaps, stages))
    return result


def _prompts(data: ExportData, samples) -> tuple[list, list[tuple[int, str, str | None]]]:
    """-> distinct images of the samples, and each sample as (image index, question, label or None)."""
    images = list(dict.fromkeys(s.image for s in samples))
    index = {image: i for i, image in enumerate(images)}
    return images, [(index[s.image], s.question, s.answer if data.has_answers else None) for s in samples]


# --- the report: PyTorch vs the engines ------------------------------------------------------------
def measure(model: CromeModel, engines: dict, data: ExportData, config: FidelityConfig, progress=None,
            reuse=None) -> Fidelity:
    """engines: {"fp32": Engine} plus the exported precision ("int8" | "fp16") when it is not fp32, each loaded
    from the candidate bundle's files. Non-parity gates that fail become warnings (export still writes).
    reuse: crome_export.reuse.Reuse (PyTorch's references and the engines' vision outputs from an earlier export
    where everything that determines them is the same); what it supplied goes into the report's `reused`."""
    from crome_export.reuse import Reuse, reference_fields
    from crome_runtime.engine import Frame

    say = progress or (lambda message: None)
    reuse = reuse or Reuse(enabled=False)
    images, prompts = _prompts(data, data.evaluation)
    pixels = [data.pixels[image] for image in images]
    fields = reference_fields(model, pixels, prompts, config.max_new_tokens, STAGE_SAMPLES, STAGE_SAMPLES, False)

    def compute():
        say(f"PyTorch greedy answers on {len(prompts)} eval prompts, stage outputs on {min(STAGE_SAMPLES, len(prompts))}")
        return references(model, pixels, prompts, config.max_new_tokens, STAGE_SAMPLES, STAGE_SAMPLES, margins=False)

    refs = reuse.references("pytorch_references", fields, compute)
    if reuse.report["pytorch_references"]["reused"]:
        say(f"PyTorch's references on {len(prompts)} eval prompts: from an earlier export with the same inputs")
    margins: dict[int, list[float]] = {}

    def margin(index: int, step: int) -> float:  # computed only where an engine's answer diverges
        if index not in margins:
            ref = refs[index]

            def compute_margins() -> list[float]:
                visual = visual_outputs(model, [pixels[ref.frame]], [(0, ref.question, None)])[0]
                return top2_margins(model, visual, ref.question, ref.token_ids)

            margins[index] = reuse.margins(fields, index, compute_margins)
        return margins[index][min(step, len(margins[index]) - 1)]

    frames = [Frame.from_pixels(p) for p in pixels]
    vision = {}
    for precision, engine in engines.items():
        vision[precision] = reuse.engine_vision(f"{precision}_vision", engine, frames, refs,
                                                lambda engine=engine: fidelity.engine_vision(engine, frames, refs))
        if reuse.report[f"{precision}_vision"]["reused"]:
            say(f"{precision} vision outputs on {len(frames)} frames: from an earlier export (same vision.onnx)")
    measure_config = MeasureConfig(config.max_new_tokens, config.int8_threshold_points, data.evaluation_source,
                                   f"no labelled held-out data ({data.evaluation_source})")
    def answers(precision: str, engine, compute) -> list[list[int]]:
        got = reuse.engine_answers(f"{precision}_answers", engine, frames, refs, config.max_new_tokens, compute)
        if reuse.report[f"{precision}_answers"]["reused"]:
            say(f"{precision} greedy answers: from an earlier measurement of these exact files (spot-checked live)")
        return got

    result = fidelity.measure(engines, frames, refs, measure_config, margin, say, vision, answers)
    result.reused = {**reuse.report, **result.reused}
    for name, gate in result.gates.items():
        if name != "fp32_parity" and not gate["ok"]:
            result.warnings += [f"{why}; consider --precision fp32 or more --calib frames" for why in gate.get("why", [])]
    return result


# --- the bundle's acceptance set -------------------------------------------------------------------
def acceptance_set(model: CromeModel, data: ExportData, vocab_size: int, config: FidelityConfig,
                   reuse=None) -> acceptance.AcceptanceSet:
    """acceptance.PROMPTS held-out prompts spread over the eval set, their frames as the camera gives them
    (downscaled only if the size budget needs it), and PyTorch's references computed from those frames (or taken
    from `reuse`, crome_export.reuse.Reuse, when an earlier export computed them from the same inputs)."""
    from crome_export.reuse import Reuse, reference_fields
    from crome_runtime.preprocess import preprocess_image

    reuse = reuse or Reuse(enabled=False)
    info = model.backbone.info
    count = min(acceptance.PROMPTS, len(data.evaluation))
    picks = [data.evaluation[int(i)] for i in np.linspace(0, len(data.evaluation) - 1, count).round()]
    images, prompts = _prompts(data, picks)
    text_tokens = [len(model.prompt_ids(question)) for _, question, _ in prompts]
    plan = acceptance.plan(len(images), info.num_query_tokens, info.d_model, vocab_size, text_tokens)
    frames = [acceptance.fit_frame(data.frame(image), plan.frame_bytes) for image in images]  # (H, W, 3) uint8
    pixels = [preprocess_image(f, info.image_size, info.image_mean, info.image_std, info.resize) for f in frames]
    fields = reference_fields(model, pixels, prompts, config.max_new_tokens, plan.stage_prompts, plan.logit_prompts,
                              True)
    refs = reuse.references("acceptance_references", fields, lambda: references(
        model, pixels, prompts, config.max_new_tokens, plan.stage_prompts, plan.logit_prompts, margins=True))
    source = f"{count} prompts on {len(frames)} frames of the {data.evaluation_source}"
    return acceptance.AcceptanceSet(frames, refs, config.max_new_tokens, config.int8_threshold_points, source)
