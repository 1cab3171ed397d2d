"""Does a bundle still answer like the PyTorch model? One set of rules for `crome-edge export` (report.json)
and `crome-edge verify` (the bundle's acceptance set, on the device).

The reference side is data, PyTorch's outputs (`Reference`): the exporter computes them with torch
(crome_export.fidelity) and uses them at once, and ships a few in the bundle (acceptance.py). The candidate
side is always the shipped `Engine`, through the public stage methods its own answers are made of:
  vision           engine.vision(frame, question)                 vs PyTorch's V (Nq, d)
  adapter_visual   engine.adapt(V_ref, "visual")                  vs PyTorch's adapted V
  adapter_text     engine.adapt(E[prompt ids], "text")            vs PyTorch's adapted prompt
  decoder_prefill  engine.prefill(concat of the two references)   vs PyTorch's last-position logits
  decoder_step     engine.step(PyTorch's greedy first token)      vs PyTorch's next logits
each stage fed PyTorch's output of the stage before, so an error is pinned on the stage that makes it; then
whole greedy answers (engine.answer, temperature 0) against PyTorch's, and task accuracy (exact match
after normalize_answer) when the prompts have labels.

Gates: `fp32_parity` (every FP32 stage cosine >= FP32_MIN_COSINE, every FP32 greedy answer identical to
PyTorch's unless PyTorch itself had a near-tie, top-2 logit margin < TIE_MARGIN); for a lowered precision
p, `p_stages` (each stage cosine >= MIN_COSINE of the precision its graph is stored in) and `p_accuracy`
(accuracy drop <= the threshold, never finer than one sample of the set). Export fails on fp32_parity and
warns on the others; verify fails on any. Torch-free. Not here: the torch side, the acceptance files.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from crome_runtime import formats
from crome_runtime.prompt import normalize_answer

STAGES = ("vision", "adapter_visual", "adapter_text", "decoder_prefill", "decoder_step")
FP32_MIN_COSINE = 0.9999
MIN_COSINE = {"fp16": 0.999, "int8": 0.99}  # lowered graphs; fp32 graphs use FP32_MIN_COSINE
TIE_MARGIN = 1e-3  # PyTorch top-2 logit gap below which a greedy divergence is a tie, not a parity break


# --- the reference side (data) ---------------------------------------------------------------------------
@dataclass
class StageReference:
    """PyTorch's output of every stage for one prompt, at batch 1."""

    visual: np.ndarray  # (Nq, d) the vision side's V
    adapted_visual: np.ndarray  # (Nq, d) adapter(V, visual)
    prompt_ids: list[int]  # the prompt template around the question, tokenised
    adapted_text: np.ndarray  # (Nt, d) adapter(E[prompt_ids], text)
    prefill_logits: np.ndarray | None = None  # (vocab,) last position after concat(adapted_visual, adapted_text)
    step_logits: np.ndarray | None = None  # (vocab,) after one decode step on argmax(prefill_logits)


@dataclass
class Reference:
    """One held-out prompt: which frame, the question, its label, and PyTorch's greedy answer."""

    frame: int  # index into the frames the prompts are asked about
    question: str
    answer: str | None  # the label (None: unlabelled)
    token_ids: list[int]  # PyTorch's greedy answer, without the stop token
    margins: list[float] | None = None  # PyTorch's top-1 minus top-2 logit at steps 0..len(token_ids)
    stages: StageReference | None = None


# --- results ---------------------------------------------------------------------------------------------
@dataclass
class StageResult:
    stage: str
    precision: str  # of the pipeline: the bundle's precision, or fp32 for export's parity pipeline
    max_abs: float
    cosine_min: float
    cosine_mean: float
    samples: int
    min_cosine: float = FP32_MIN_COSINE  # the gate for the precision this stage's graph is stored in
    decoder: str | None = None  # decoder stages: what ran them ("onnx", or "c q8_0" / "c q4_1/q8_0" blocks)

    @property
    def ok(self) -> bool:
        return self.cosine_min >= self.min_cosine  # False for NaN

    def to_dict(self) -> dict:
        return {k: (round(v, 7) if isinstance(v, float) else v) for k, v in vars(self).items() if v is not None}


@dataclass
class Fidelity:
    stages: list[StageResult] = field(default_factory=list)
    greedy: dict = field(default_factory=dict)
    accuracy: dict = field(default_factory=dict)
    gates: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    reused: dict = field(default_factory=dict)  # what was not recomputed, and why (the report's `reused`)

    @property
    def fp32_parity(self) -> bool:
        return self.gates["fp32_parity"]["ok"]

    @property
    def ok(self) -> bool:
        return all(gate["ok"] for gate in self.gates.values())


def compare(stage: str, precision: str, reference: np.ndarray, candidate: np.ndarray,
            min_cosine: float | None = None) -> StageResult:
    """Rows = first axis; cosine per row over everything else."""
    ref = np.asarray(reference, np.float64).reshape(len(reference), -1)
    got = np.asarray(candidate, np.float64).reshape(len(candidate), -1)
    if ref.shape != got.shape:
        raise ValueError(f"{stage}: the reference is {ref.shape}, the candidate {got.shape}")
    gate = FP32_MIN_COSINE if min_cosine is None else min_cosine
    dots = (ref * got).sum(1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    cosine = np.where(norms > 0, dots / np.maximum(norms, 1e-300), 1.0)
    return StageResult(stage, precision, float(np.abs(ref - got).max()), float(cosine.min()), float(cosine.mean()),
                       len(ref), gate)


def stage_min_cosine(manifest, decoder_backend: str = "onnx") -> dict[str, float]:
    """stage -> the cosine it must reach, from the precision its graph is stored in (manifest files). Decode
    steps on the C path read the decoder blocks: a GGUF's own exact blocks ("data") keep the ONNX decoder's
    gate, lowered ones (weight-only Q8_0, listed "int8") get the INT8 gate."""
    def gate(file_name: str) -> float:
        entry = manifest.files.get(file_name)
        precision = entry.precision if entry is not None else manifest.precision
        return FP32_MIN_COSINE if precision == "fp32" else MIN_COSINE[precision]

    decoder = gate(formats.DECODER_ONNX)
    if decoder_backend == "c" and lowered_blocks(manifest):
        decoder = min(decoder, MIN_COSINE["int8"])
    return {"vision": gate(formats.VISION_ONNX), "adapter_visual": FP32_MIN_COSINE, "adapter_text": FP32_MIN_COSINE,
            "decoder_prefill": decoder, "decoder_step": decoder}


def lowered_blocks(manifest) -> bool:
    """The bundle's decoder blocks are a lowered (weight-only INT8) form of its weights, not a GGUF's own."""
    entry = manifest.files.get(formats.DECODER_BLOCKS_FILE)
    return entry is not None and entry.precision == "int8"


def pipeline_precision(engine) -> str:
    """The precision whose gates hold `engine`'s answers: the bundle's, except that an FP32 bundle decoding on
    lowered (Q8_0) blocks is gated like INT8 (stage cosines >= MIN_COSINE["int8"], accuracy drop), not parity."""
    precision = engine.manifest.precision
    if precision == "fp32" and engine.decoder_backend == "c" and lowered_blocks(engine.manifest):
        return "int8"
    return precision


def decoder_description(engine) -> str:
    """What runs `engine`'s decoder stages: "onnx", or "c " + the block formats it reads (prefill stays ONNX)."""
    if engine.decoder_backend != "c":
        return "onnx"
    return "c " + "/".join(sorted(set(engine.decoder.blocks.qtypes.values())))


# --- the candidate side: the engine ----------------------------------------------------------------------
def vision_key_of(engine, frame, question: str):
    """What the engine caches a frame's vision output under (crome_runtime.engine.vision_key)."""
    from crome_runtime.engine import vision_key

    return vision_key(frame, question, engine.manifest.backbone.instruction_aware)


def engine_vision(engine, frames: list, references: list[Reference]) -> dict:
    """The engine's vision output (Nq, d) for every distinct frame (frame and question, for an instruction-aware
    Q-Former) the references ask about, each computed once, at batch 1 as the engine answers."""
    outputs: dict = {}
    for ref in references:
        key = vision_key_of(engine, frames[ref.frame], ref.question)
        if key not in outputs:
            outputs[key] = engine.vision(frames[ref.frame], ref.question)
    return outputs


def prime_vision(engine, outputs: dict) -> None:
    """Hands the engine `outputs` (engine_vision's) as its own vision cache, holding them all: its answers then
    start from the vision outputs the stage comparison measured instead of running the graph on the same input
    again."""
    from crome_runtime.lru_cache import LRUCache

    engine.raw_vision_cache = LRUCache(max(len(outputs), engine.config.vision_cache))
    for key, value in outputs.items():
        engine.raw_vision_cache.put(key, value)


def identical_stages(engine, other) -> tuple[str, ...]:
    """The stages `other` computes exactly as `engine` does on the same reference inputs: every non-vision stage
    when both run the same files other than vision.onnx (same sha256) on the same adapter and decoder backends and
    threads. (The vision stage then differs only through vision.onnx; with that identical too, every stage.)"""
    def files(e) -> dict:
        return {n: f.sha256 for n, f in e.manifest.files.items() if n not in (formats.VISION_ONNX, formats.REPORT_FILE)}

    def backends(e) -> tuple:
        return (e.adapter_backend, e.decoder_backend, decoder_description(e), e.config.threads, e.config.provider,
                e.adapters.stage_adapter())

    if files(engine) != files(other) or backends(engine) != backends(other):
        return ()
    same_vision = engine.manifest.files[formats.VISION_ONNX].sha256 == other.manifest.files[formats.VISION_ONNX].sha256
    return STAGES if same_vision else STAGES[1:]


def stage_results(engine, frames: list, references: list[Reference], precision: str, vision: dict | None = None,
                  skip: tuple[str, ...] = ()) -> list[StageResult]:
    """Every stage of `engine` on the references that carry stage outputs, but those in `skip`. frames: engine
    Frames; vision: the engine's vision outputs (engine_vision), computed here when not given."""
    vision = vision if vision is not None else engine_vision(engine, frames, [r for r in references if r.stages])
    pairs: dict[str, tuple[list, list]] = {stage: ([], []) for stage in STAGES if stage not in skip}

    def add(stage: str, reference: np.ndarray, candidate) -> None:
        if stage in pairs:
            pairs[stage][0].append(np.asarray(reference, np.float32))
            pairs[stage][1].append(np.array(candidate(), np.float32))  # a copy: prefill/step return the engine's buffer

    for ref in references:
        s = ref.stages
        if s is None:
            continue
        key = vision_key_of(engine, frames[ref.frame], ref.question)
        add("vision", s.visual[None], lambda: vision[key][None])  # a row per prompt
        add("adapter_visual", s.adapted_visual[None], lambda: engine.adapt(s.visual, "visual")[None])
        add("adapter_text", s.adapted_text, lambda: engine.adapt(engine.embeddings[s.prompt_ids], "text"))  # a row per token
        if s.prefill_logits is None or not {"decoder_prefill", "decoder_step"} & set(pairs):
            continue
        prefix = engine.join_prefix(s.adapted_visual, s.adapted_text, ref.question)  # (L, d): PyTorch's prefix
        prefill = np.array(engine.prefill(prefix, 1), np.float32)  # the step below needs the prefill's KV cache
        add("decoder_prefill", s.prefill_logits[None], lambda: prefill[None])
        if s.step_logits is not None:
            add("decoder_step", s.step_logits[None], lambda: engine.step(int(np.argmax(s.prefill_logits)))[None])
    gates = stage_min_cosine(engine.manifest, engine.decoder_backend)
    results = []
    for stage, (refs, got) in pairs.items():
        if refs:
            result = compare(stage, precision, np.concatenate(refs), np.concatenate(got), gates[stage])
            if stage.startswith("decoder_"):
                result.decoder = decoder_description(engine)
            results.append(result)
    return results


def reused_stages(results: list[StageResult], stages: tuple[str, ...], engine, precision: str) -> list[StageResult]:
    """`results` (measured on an engine that computes `stages` exactly as `engine` does: identical_stages) as
    `engine`'s, under `precision` and `engine`'s own cosine gates."""
    gates = stage_min_cosine(engine.manifest, engine.decoder_backend)
    return [dataclasses.replace(r, precision=precision, min_cosine=gates[r.stage]) for r in results if r.stage in stages]


def engine_answers(engine, frames: list, references: list[Reference], max_new_tokens: int) -> list[list[int]]:
    """The engine's greedy answers (token ids, without the stop token), one prompt at a time."""
    from crome_runtime.engine import GenerationOptions

    options = GenerationOptions(max_new_tokens=max_new_tokens, temperature=0.0, top_k=0, top_p=1.0,
                                repetition_penalty=1.0)
    return [engine.answer(frames[r.frame], r.question, options).token_ids for r in references]


# --- rules -----------------------------------------------------------------------------------------------
def stored_margin(references: list[Reference]) -> Callable[[int, int], float | None]:
    def margin(index: int, step: int) -> float | None:
        margins = references[index].margins
        return margins[step] if margins is not None and step < len(margins) else None

    return margin


def greedy_agreement(references: list[Reference], got: list[list[int]],
                     margin: Callable[[int, int], float | None]) -> dict:
    """Identical answers, and token agreement = tokens before the first difference / longer answer's length.
    margin(index, step): PyTorch's top-2 logit gap at that step of that prompt (None: unknown, not a tie)."""
    identical = matched = total = 0
    divergences = []
    for index, (ref, b) in enumerate(zip(references, got)):
        a = ref.token_ids
        if a == b:
            identical += 1
            matched, total = matched + max(len(a), 1), total + max(len(a), 1)
            continue
        common = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        matched, total = matched + common, total + max(len(a), len(b))
        gap = margin(index, common)
        divergences.append({"index": index, "step": common,
                            "pytorch_top2_margin": None if gap is None else round(gap, 6),
                            "near_tie": gap is not None and gap < TIE_MARGIN})
    return {
        "prompts": len(references),
        "identical": identical,
        "agreement": round(identical / max(len(references), 1), 4),
        "token_agreement": round(matched / max(total, 1), 4),
        "near_ties": sum(d["near_tie"] for d in divergences),
        "divergences": divergences[:20],
    }


def accuracy(decode, references: list[Reference], generations: list[list[int]]) -> float:
    hits = sum(normalize_answer(decode(ids)) == normalize_answer(r.answer or "") for r, ids in zip(references, generations))
    return hits / max(len(references), 1)


def allowed_drop_points(threshold_points: float, samples: int) -> float:
    """The accuracy loss a lowered precision may show: the threshold, but never less than one sample's worth
    (a threshold finer than that cannot be resolved on this many samples)."""
    return max(threshold_points, 100.0 / max(samples, 1))


def accuracy_report(decode, references: list[Reference], generations: dict[str, list[list[int]]],
                    threshold_points: float, source: str, unlabelled_reason: str) -> dict:
    if not references or any(r.answer is None for r in references):
        return {"measured": False, "reason": unlabelled_reason}
    scores = {"pytorch": accuracy(decode, references, [r.token_ids for r in references])}
    scores.update({precision: accuracy(decode, references, ids) for precision, ids in generations.items()})
    result = {"measured": True, "samples": len(references), "source": source,
              **{k: round(100 * v, 2) for k, v in scores.items()}, "unit": "percent exact match",
              "threshold_points": threshold_points}
    best = max(scores["pytorch"], scores.get("fp32", 0.0))
    for precision in generations:
        if precision != "fp32":
            result[f"{precision}_drop_points"] = round(100 * (best - scores[precision]), 2)
    return result


def apply_gates(result: Fidelity, threshold_points: float) -> None:
    """Fills result.gates from its stages, greedy agreement and accuracy (the rules in the header)."""
    for precision in result.greedy:
        stages = [s for s in result.stages if s.precision == precision]
        why = [f"{s.stage} cosine {s.cosine_min:.6f} < {s.min_cosine}" for s in stages if not s.ok]
        if precision == "fp32":
            breaks = [d for d in result.greedy["fp32"]["divergences"] if not d["near_tie"]]
            why = [f"FP32 stages below their cosine gate: {', '.join(why)}"] if why else []
            if breaks:
                why.append(f"{len(breaks)} FP32 greedy answers differ from PyTorch's (not near-ties), first at prompt "
                           f"{breaks[0]['index']} step {breaks[0]['step']}")
            result.gates["fp32_parity"] = {"ok": not why, "why": why}
            continue
        result.gates[f"{precision}_stages"] = {"ok": not why, "why": why}
        drop = result.accuracy.get(f"{precision}_drop_points")
        allowed = allowed_drop_points(threshold_points, result.accuracy.get("samples", 0))
        ok = drop is None or drop <= allowed + 0.005  # drops are rounded to 0.01 points
        gate = {"ok": ok, "drop_points": drop, "threshold_points": threshold_points,
                "allowed_drop_points": round(allowed, 2)}
        if not ok:
            gate["why"] = [f"{precision.upper()} loses {drop:.2f} accuracy points against PyTorch (allowed "
                           f"{allowed:.2f})"]
        result.gates[f"{precision}_accuracy"] = gate


# --- all of it -------------------------------------------------------------------------------------------
@dataclass
class MeasureConfig:
    max_new_tokens: int = formats.DEFAULT_MAX_NEW_TOKENS
    threshold_points: float = 1.0  # accuracy points a lowered precision may lose
    source: str = ""  # where the prompts come from (for the report)
    unlabelled_reason: str = "the prompts have no labels"


def measure(engines: dict, frames: list, references: list[Reference], config: MeasureConfig,
            margin: Callable[[int, int], float | None] | None = None, progress=None,
            vision: dict[str, dict] | None = None, answers: Callable | None = None) -> Fidelity:
    """engines: precision -> Engine ("fp32" first for export's parity; verify passes the bundle's own).
    frames: Frames the references point into. margin: PyTorch's top-2 gap (default: the references' own).
    vision: precision -> that engine's vision outputs on the frames (engine_vision's, e.g. from export's cache),
    computed here for the engines it lacks. Each engine's vision graph runs once per frame: the stage comparison
    and its greedy answers share the output. Stages an engine computes exactly as an earlier one
    (identical_stages) are taken from that one, and result.reused says so. answers(precision, engine, compute):
    the engine's greedy answers, where compute(references) answers them live (default: compute(references))."""
    say = progress or (lambda message: None)
    result = Fidelity()
    generations = {}
    measured: list[tuple[str, object, list[StageResult]]] = []  # (precision, engine, its stages)
    for precision, engine in engines.items():
        outputs = (vision or {}).get(precision)
        if outputs is None:
            say(f"vision outputs ({precision}) on {len(frames)} frames")
            outputs = engine_vision(engine, frames, references)
        prime_vision(engine, outputs)
        earlier = next(((p, r, same) for p, e, r in measured if (same := identical_stages(e, engine))), None)
        skip = earlier[2] if earlier else ()
        say(f"per-stage comparison ({precision})" + (f"; {', '.join(skip)} as measured on the {earlier[0]} "
                                                     "candidate" if earlier else ""))
        own = stage_results(engine, frames, references, precision, outputs, skip)
        if earlier:
            own += reused_stages(earlier[1], skip, engine, precision)
            result.reused[f"{precision}_stages"] = {
                "stages": list(skip), "from": earlier[0],
                "why": "the same files but vision.onnx (same sha256), adapter and decoder backends and threads: the "
                       "same outputs on the same PyTorch inputs"}
        own.sort(key=lambda r: STAGES.index(r.stage))
        measured.append((precision, engine, own))
        result.stages += own
        say(f"engine greedy answers ({precision}) on {len(references)} prompts")
        compute = lambda refs, engine=engine: engine_answers(engine, frames, refs, config.max_new_tokens)  # noqa: E731
        generations[precision] = answers(precision, engine, compute) if answers else compute(references)
        result.greedy[precision] = greedy_agreement(references, generations[precision], margin or stored_margin(references))
    tokenizer = next(iter(engines.values())).bundle.tokenizer
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    result.accuracy = accuracy_report(decode, references, generations, config.threshold_points, config.source,
                                      config.unlabelled_reason)
    apply_gates(result, config.threshold_points)
    return result


# --- the report and its table ----------------------------------------------------------------------------
def report_dict(fidelity: Fidelity, extra: dict) -> dict:
    from crome_runtime.machine import describe_cpu

    return {
        "format": formats.REPORT_FORMAT,
        "format_version": formats.REPORT_FORMAT_VERSION,
        "measured_on": describe_cpu(),
        **extra,
        "stages": [s.to_dict() for s in fidelity.stages],
        "greedy": fidelity.greedy,
        "accuracy": fidelity.accuracy,
        "gates": fidelity.gates,
        "warnings": fidelity.warnings,
        "reused": fidelity.reused,
    }


def describe_machine(cpu: dict | None) -> str:
    if not cpu:
        return "unknown machine (a report written before reports recorded it)"
    return (f"{cpu.get('model')} ({cpu.get('arch')}, int8 kernels: {cpu.get('int8_kernels')}, "
            f"onnxruntime {cpu.get('onnxruntime')})")


def describe_reuse(reuse) -> str:
    """One line of the report's `reused` section: what was taken instead of recomputed, and why that is sound."""
    if not isinstance(reuse, dict):
        return str(reuse)
    if "stages" in reuse:
        what = f"{', '.join(map(str, reuse['stages']))} from the {reuse.get('from')} candidate"
    else:
        what = "yes" if reuse.get("reused") else "no"
    return f"{what} ({reuse.get('why', '')})"


def format_table(report: dict) -> str:
    """A report (export's report.json or verify's) as the table both commands print."""
    lines = [f"measured on: {describe_machine(report.get('measured_on'))}"]
    if "exported_on" in report:
        lines.append(f"exported on: {describe_machine(report['exported_on'])}")
    lines += [f"{'stage':<16}{'precision':<11}{'max-abs':>12}{'cos min':>12}{'cos mean':>12}{'n':>5}  gate"]
    for s in report["stages"]:
        gate = s.get("min_cosine", FP32_MIN_COSINE)
        verdict = "ok" if s["cosine_min"] >= gate else "FAILED"
        lines.append(f"{s['stage']:<16}{s['precision']:<11}{s['max_abs']:>12.3g}{s['cosine_min']:>12.6f}"
                     f"{s['cosine_mean']:>12.6f}{s['samples']:>5}  >= {gate} {verdict}")
    for precision, g in report["greedy"].items():
        lines.append(f"greedy {precision:<9} identical answers {g['identical']}/{g['prompts']} "
                     f"(token agreement {g['token_agreement']:.4f}, near-ties {g['near_ties']})")
    acc = report["accuracy"]
    if acc.get("measured"):
        parts = [f"{k} {acc[k]:.2f}%" for k in ("pytorch", "fp32", "fp16", "int8") if k in acc]
        lines.append(f"task accuracy on {acc['samples']} held-out samples: " + ", ".join(parts))
    else:
        lines.append(f"task accuracy: not measured ({acc.get('reason')})")
    for name, reuse in report.get("reused", {}).items():
        lines.append(f"reused {name}: {describe_reuse(reuse)}")
    for name, gate in report["gates"].items():
        why = gate.get("why")
        lines.append(f"gate {name}: {'ok' if gate['ok'] else 'FAILED'}" + (f" — {'; '.join(why)}" if why else ""))
    return "\n".join(lines)
