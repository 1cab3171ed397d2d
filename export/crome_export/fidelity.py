"""The fidelity report: does the bundle still answer like the PyTorch model?

Per stage (vision, adapter_visual, adapter_text, decoder_prefill, decoder_step) and per precision:
max-abs difference and cosine similarity against PyTorch on held-out inputs, each stage fed the PyTorch
output of the stage before it, so an error is pinned on the stage that makes it. Then the whole bundle:
greedy-token agreement with CromeModel.generate on the eval prompts, and task accuracy (exact match after
normalize_answer) of PyTorch, the FP32 graphs and the exported precision on the adapter's validation data.

Gates: FP32 parity (every FP32 stage cosine >= FP32_MIN_COSINE and every FP32 greedy answer identical to
PyTorch's, except where PyTorch itself had a near-tie, top-2 logit margin < TIE_MARGIN) fails the export;
an INT8/FP16 accuracy loss above the threshold only warns. Not here: writing files (bundle.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from crome_edge.model import CromeModel, GenerationConfig
from crome_export.frames import ExportData
from crome_export.ort_generate import OrtPipeline
from crome_runtime import formats
from crome_runtime.prompt import normalize_answer

FP32_MIN_COSINE = 0.9999
VISION_INT8_MIN_COSINE = 0.99
TIE_MARGIN = 1e-3  # PyTorch top-2 logit gap below which a greedy divergence is a tie, not a parity break
STAGE_SAMPLES = 16  # eval samples the per-stage comparisons run on
BATCH = 16


@dataclass
class FidelityConfig:
    max_new_tokens: int = 16
    int8_threshold_points: float = 1.0


@dataclass
class StageResult:
    stage: str
    precision: str
    max_abs: float
    cosine_min: float
    cosine_mean: float
    samples: int

    def to_dict(self) -> dict:
        return {k: (round(v, 7) if isinstance(v, float) else v) for k, v in vars(self).items()}


@dataclass
class Fidelity:
    stages: list[StageResult] = field(default_factory=list)
    greedy: dict = field(default_factory=dict)
    accuracy: dict = field(default_factory=dict)
    gates: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def fp32_parity(self) -> bool:
        return self.gates["fp32_parity"]["ok"]


def compare(stage: str, precision: str, reference: np.ndarray, candidate: np.ndarray) -> StageResult:
    """Rows = first axis; cosine per row over everything else."""
    ref = np.asarray(reference, np.float64).reshape(len(reference), -1)
    got = np.asarray(candidate, np.float64).reshape(len(candidate), -1)
    dots = (ref * got).sum(1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    cosine = np.where(norms > 0, dots / np.maximum(norms, 1e-300), 1.0)
    return StageResult(stage, precision, float(np.abs(ref - got).max()), float(cosine.min()), float(cosine.mean()), len(ref))


# --- per stage ------------------------------------------------------------------------------------
@torch.no_grad()
def stage_fidelity(model: CromeModel, pipeline: OrtPipeline, data: ExportData, precision: str) -> list[StageResult]:
    samples = data.evaluation[:STAGE_SAMPLES]
    pixels, questions = data.batch(samples), [s.question for s in samples]
    visual = model.visual_embeds(torch.from_numpy(pixels), questions)  # (B, Nq, d)
    results = [compare("vision", precision, visual.numpy(), pipeline.vision(pixels, questions))]
    results.append(compare("adapter_visual", precision, model.adapt(visual, "visual").numpy(),
                           pipeline.adapter(visual.numpy(), "visual")))
    text_ref, text_got = [], []
    for question in dict.fromkeys(questions):
        embeds = model.backbone.embed_tokens(torch.tensor([model.prompt_ids(question)]))  # (1, Nt, d)
        text_ref.append(model.adapt(embeds, "text")[0].numpy())
        text_got.append(pipeline.adapter(embeds.numpy(), "text")[0])
    results.append(compare("adapter_text", precision, np.concatenate(text_ref), np.concatenate(text_got)))
    results += _decoder_stages(model, pipeline, visual, questions, precision)
    return results


def _decoder_stages(model, pipeline, visual, questions, precision) -> list[StageResult]:
    from transformers import DynamicCache

    from crome_edge.model import cache_argument

    llm = model.backbone.llm
    prefix = model.prefix_from_visual(visual, questions)  # left-padded, as generate() builds it
    cache = DynamicCache()
    out = llm(inputs_embeds=prefix.embeds, attention_mask=prefix.attention_mask, position_ids=prefix.position_ids,
              use_cache=True, logits_to_keep=1, **cache_argument(llm, cache))
    logits, present = pipeline.decoder_step(prefix.embeds.numpy(), prefix.attention_mask.numpy(),
                                            prefix.position_ids.numpy(), pipeline.empty_cache(len(questions)))
    results = [compare("decoder_prefill", precision, out.logits[:, -1].numpy(), logits[:, -1])]
    tokens = out.logits[:, -1].argmax(-1)  # (B,) PyTorch's greedy token feeds both
    mask = torch.cat([prefix.attention_mask, torch.ones(len(questions), 1, dtype=torch.long)], dim=1)
    positions = prefix.position_ids[:, -1:] + 1
    step = llm(inputs_embeds=model.backbone.embed_tokens(tokens[:, None]), attention_mask=mask, position_ids=positions,
               use_cache=True, **cache_argument(llm, cache))
    logits, _ = pipeline.decoder_step(model.backbone.embed_tokens(tokens[:, None]).numpy(), mask.numpy(),
                                      positions.numpy(), present)
    results.append(compare("decoder_step", precision, step.logits[:, -1].numpy(), logits[:, -1]))
    return results


# --- whole answers --------------------------------------------------------------------------------
@torch.no_grad()
def torch_generations(model: CromeModel, data: ExportData, max_new_tokens: int) -> list[list[int]]:
    out: list[list[int]] = []
    config = GenerationConfig(max_new_tokens=max_new_tokens)
    for start in range(0, len(data.evaluation), BATCH):
        chunk = data.evaluation[start : start + BATCH]
        out += model.generate(torch.from_numpy(data.batch(chunk)), [s.question for s in chunk], config)
    return out


def ort_generations(pipeline: OrtPipeline, data: ExportData, max_new_tokens: int) -> list[list[int]]:
    out: list[list[int]] = []
    for start in range(0, len(data.evaluation), BATCH):
        chunk = data.evaluation[start : start + BATCH]
        out += pipeline.generate(data.batch(chunk), [s.question for s in chunk], max_new_tokens)
    return out


@torch.no_grad()
def greedy_agreement(model: CromeModel, data: ExportData, reference: list[list[int]], got: list[list[int]]) -> dict:
    """Identical answers, and token agreement = tokens before the first difference / longer answer's length."""
    identical = matched = total = 0
    divergences = []
    for index, (a, b) in enumerate(zip(reference, got)):
        if a == b:
            identical += 1
            matched, total = matched + max(len(a), 1), total + max(len(a), 1)
            continue
        common = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        matched, total = matched + common, total + max(len(a), len(b))
        margin = _torch_margin(model, data, index, a[:common])
        divergences.append({"index": index, "step": common, "pytorch_top2_margin": round(margin, 6),
                            "near_tie": margin < TIE_MARGIN})
    return {
        "prompts": len(reference),
        "identical": identical,
        "agreement": round(identical / max(len(reference), 1), 4),
        "token_agreement": round(matched / max(total, 1), 4),
        "near_ties": sum(d["near_tie"] for d in divergences),
        "divergences": divergences[:20],
    }


def _torch_margin(model: CromeModel, data: ExportData, index: int, common: list[int]) -> float:
    """PyTorch's top-1 minus top-2 logit at the first diverging step (no cache, exact)."""
    sample = data.evaluation[index]
    prefix = model.build_prefix(torch.from_numpy(data.batch([sample])), [sample.question])
    embeds = prefix.embeds
    if common:
        embeds = torch.cat([embeds, model.backbone.embed_tokens(torch.tensor([common]))], dim=1)
    logits = model.backbone.llm(inputs_embeds=embeds).logits[0, -1]
    top = torch.topk(logits, 2).values
    return float(top[0] - top[1])


def accuracy(decode, data: ExportData, generations: list[list[int]]) -> float:
    hits = sum(normalize_answer(decode(ids)) == normalize_answer(s.answer) for s, ids in zip(data.evaluation, generations))
    return hits / max(len(data.evaluation), 1)


# --- all of it ------------------------------------------------------------------------------------
def measure(model: CromeModel, pipelines: dict[str, OrtPipeline], data: ExportData, config: FidelityConfig,
            progress=None) -> Fidelity:
    """pipelines: {"fp32": ...} plus the exported precision ("int8" | "fp16") when it is not fp32."""
    result = Fidelity()
    say = progress or (lambda message: None)
    for precision, pipeline in pipelines.items():
        say(f"per-stage comparison ({precision})")
        result.stages += stage_fidelity(model, pipeline, data, precision)
    say(f"PyTorch greedy answers on {len(data.evaluation)} eval prompts")
    reference = torch_generations(model, data, config.max_new_tokens)
    generations = {}
    for precision, pipeline in pipelines.items():
        say(f"bundle greedy answers ({precision})")
        generations[precision] = ort_generations(pipeline, data, config.max_new_tokens)
        result.greedy[precision] = greedy_agreement(model, data, reference, generations[precision])
    _accuracy(result, model, data, reference, generations, config)
    _gates(result, config)
    return result


def _accuracy(result: Fidelity, model, data: ExportData, reference, generations, config: FidelityConfig) -> None:
    if not data.has_answers:
        result.accuracy = {"measured": False, "reason": f"no labelled held-out data ({data.evaluation_source})"}
        return
    accuracies = {"pytorch": accuracy(model.backbone.decode, data, reference)}
    for precision, ids in generations.items():
        accuracies[precision] = accuracy(model.backbone.decode, data, ids)
    result.accuracy = {"measured": True, "samples": len(data.evaluation), "source": data.evaluation_source,
                       **{k: round(100 * v, 2) for k, v in accuracies.items()}, "unit": "percent exact match",
                       "threshold_points": config.int8_threshold_points}
    lowered = [p for p in generations if p != "fp32"]
    for precision in lowered:
        drop = 100 * (max(accuracies["pytorch"], accuracies["fp32"]) - accuracies[precision])
        result.accuracy[f"{precision}_drop_points"] = round(drop, 2)


def _gates(result: Fidelity, config: FidelityConfig) -> None:
    fp32_stages = [s for s in result.stages if s.precision == "fp32"]
    bad_stages = [f"{s.stage} cosine {s.cosine_min:.6f}" for s in fp32_stages if not s.cosine_min >= FP32_MIN_COSINE]
    greedy = result.greedy.get("fp32", {})
    breaks = [d for d in greedy.get("divergences", []) if not d["near_tie"]]
    why = []
    if bad_stages:
        why.append(f"FP32 stages below cosine {FP32_MIN_COSINE}: {', '.join(bad_stages)}")
    if breaks:
        why.append(f"{len(breaks)} FP32 greedy answers differ from PyTorch's (not near-ties), first at prompt "
                   f"{breaks[0]['index']} step {breaks[0]['step']}")
    result.gates["fp32_parity"] = {"ok": not why, "why": why}
    for stage in result.stages:
        if stage.stage == "vision" and stage.precision == "int8" and stage.cosine_min < VISION_INT8_MIN_COSINE:
            result.warnings.append(f"INT8 vision cosine {stage.cosine_min:.4f} is below {VISION_INT8_MIN_COSINE}")
    for precision in [p for p in result.greedy if p != "fp32"]:
        drop = result.accuracy.get(f"{precision}_drop_points")
        ok = drop is None or drop <= config.int8_threshold_points
        result.gates[f"{precision}_accuracy"] = {"ok": ok, "drop_points": drop, "threshold_points": config.int8_threshold_points}
        if not ok:
            result.warnings.append(
                f"{precision.upper()} bundle loses {drop:.2f} accuracy points against PyTorch/FP32 "
                f"(threshold {config.int8_threshold_points}); consider --precision fp32 or more --calib frames"
            )


def format_table(report: dict) -> str:
    """report.json as the table `crome-edge export` prints."""
    lines = [f"{'stage':<16}{'precision':<11}{'max-abs':>12}{'cos min':>12}{'cos mean':>12}{'n':>5}"]
    for s in report["stages"]:
        lines.append(f"{s['stage']:<16}{s['precision']:<11}{s['max_abs']:>12.3g}{s['cosine_min']:>12.6f}"
                     f"{s['cosine_mean']:>12.6f}{s['samples']:>5}")
    for precision, g in report["greedy"].items():
        lines.append(f"greedy {precision:<9} identical answers {g['identical']}/{g['prompts']} "
                     f"(token agreement {g['token_agreement']:.4f}, near-ties {g['near_ties']})")
    acc = report["accuracy"]
    if acc.get("measured"):
        parts = [f"{k} {acc[k]:.2f}%" for k in ("pytorch", "fp32", "fp16", "int8") if k in acc]
        lines.append(f"task accuracy on {acc['samples']} held-out samples: " + ", ".join(parts))
    else:
        lines.append(f"task accuracy: not measured ({acc.get('reason')})")
    for name, gate in report["gates"].items():
        lines.append(f"gate {name}: {'ok' if gate['ok'] else 'FAILED'}" + (f" — {'; '.join(gate.get('why', []))}" if gate.get("why") else ""))
    return "\n".join(lines)


def report_dict(fidelity: Fidelity, extra: dict) -> dict:
    return {
        "format": formats.REPORT_FORMAT,
        "format_version": formats.REPORT_FORMAT_VERSION,
        **extra,
        "stages": [s.to_dict() for s in fidelity.stages],
        "greedy": fidelity.greedy,
        "accuracy": fidelity.accuracy,
        "gates": fidelity.gates,
        "warnings": fidelity.warnings,
    }
