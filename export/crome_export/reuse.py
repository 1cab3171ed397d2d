"""What an export takes from an earlier one instead of recomputing it, keyed on everything that determines it.

  PyTorch's references (greedy answers, stage outputs, margins: crome_export.fidelity.references) are a function
  of the backbone's weights (fingerprint), the adapter's tensors, the frames' pixels, the prompts (their
  questions, labels and token ids), the generation cap, what was asked for (stage/logit prompts, margins), the
  code that computes them (crome_edge's sources, torch, transformers), torch's thread count and the CPU. All of
  it is the key: a changed adapter, frame, label or prompt is another key, so a cached result never stands in
  for another export's.
  An engine's vision outputs (the frozen vision graph at batch 1) are a function of vision.onnx's bytes (sha256),
  the Q-Former tokenizer's, the frames (pixel hashes) and questions, onnxruntime's version, the session's
  providers and threads and the CPU. A reused set is spot-checked: its first output is computed again and must
  come out bit for bit, else none of it is used.
  An engine's greedy answers are a function of every file of the candidate bundle (sha256), the adapter it is
  pinned to, its backends, providers and threads, onnxruntime, the C core's build and the runtime's code, the
  CPU, the frames, questions and generation cap: a re-export whose candidate is byte for byte one measured
  before gets that measurement's answers, after SPOT_ANSWERS of them, spread over the set, come out token for
  token again when answered live (else every answer is computed).
  PyTorch's top-2 margins along an answer where a candidate diverged (fidelity.top2_margins, the near-tie rule) are a
  function of the same fields as the references plus the prompt's index: they are kept under those.
  A graph's TensorRT compatibility check (trt_check.check_graph) is a function of the graph's bytes (sha256), the
  checker's code and onnx's version.
Every decision lands in the report's `reused` section (`reused`/`why`), shown by the export's table and
`crome-edge info`. `--no-cache` turns reuse off. Storage: result_cache.py.
Not here: computing any of it (fidelity.py).
"""
from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crome_export.result_cache import ResultCache
from crome_runtime import formats
from crome_runtime.acceptance import STAGE_KEYS
from crome_runtime.fidelity import Reference, StageReference

REFERENCES_VERSION = 1  # bump when what fidelity.references computes changes in a way the key does not see
VISION_VERSION = 1
ANSWERS_VERSION = 1
MARGINS_VERSION = 1
SPOT_ANSWERS = 4  # answers of a reused set computed again (first, last and between)


def _files_sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path.name).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@functools.cache  # the sources do not change within a process; hashing them is per call otherwise
def _runtime_sha256() -> str:
    """sha256 of the runtime an engine answers with: crome_runtime's Python sources and its C core's build."""
    import crome_runtime

    here = Path(crome_runtime.__file__).parent
    return _files_sha256(sorted(here.rglob("*.py")) + sorted(here.glob("_crome_core*")))


@functools.cache
def _sources_sha256() -> str:
    """sha256 of the code PyTorch's references run through: crome_edge (model, adapter, backbones, prompt use),
    the reference computation and the runtime's prompt template."""
    import crome_edge
    import crome_export.fidelity
    import crome_runtime.prompt

    files = sorted(Path(crome_edge.__file__).parent.rglob("*.py"))
    return _files_sha256(files + [Path(crome_export.fidelity.__file__), Path(crome_runtime.prompt.__file__)])


def pixels_sha256(pixels: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for array in pixels:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.data)
    return digest.hexdigest()


def reference_fields(model, pixels: list[np.ndarray], prompts: list[tuple[int, str, str | None]], max_new_tokens: int,
                     stage_prompts: int, logit_prompts: int, margins: bool) -> dict:
    import torch

    from crome_edge.backbones.base import tensor_fingerprint
    from crome_export.parts_cache import tool_versions
    from crome_runtime.machine import describe_cpu

    backbone = model.backbone
    adapter = None if model.adapter is None else {"config": model.adapter.config.to_json(),
                                                   "tensors": tensor_fingerprint(model.adapter.state_dict())}
    questions = sorted({question for _, question, _ in prompts})
    return {
        "what": "pytorch references", "version": REFERENCES_VERSION,
        "backbone": backbone.fingerprint(), "adapter": adapter,
        "frames": pixels_sha256(pixels), "prompts": [list(p) for p in prompts],
        "prompt_ids": {q: model.prompt_ids(q) for q in questions}, "stop_ids": sorted(backbone.stop_token_ids()),
        "max_new_tokens": max_new_tokens, "stage_prompts": stage_prompts, "logit_prompts": logit_prompts,
        "margins": margins, "code": _sources_sha256(), "tools": tool_versions(),
        "torch_threads": torch.get_num_threads(), "cpu": describe_cpu(),
    }


def vision_fields(engine, keys: list) -> dict:
    from crome_runtime.machine import describe_cpu

    files = engine.manifest.files
    qformer = files.get(formats.QFORMER_TOKENIZER_FILE)
    return {
        "what": "engine vision outputs", "version": VISION_VERSION,
        "vision_onnx": files[formats.VISION_ONNX].sha256, "qformer_tokenizer": qformer.sha256 if qformer else None,
        "backbone": engine.manifest.backbone.fingerprint, "keys": [list(k) if isinstance(k, tuple) else k for k in keys],
        "providers": engine.providers.actual.get("vision"), "threads": engine.config.threads,
        "cores": os.cpu_count(), "cpu": describe_cpu(),
    }


def answer_fields(engine, frames: list, refs: list[Reference], max_new_tokens: int) -> dict:
    import onnxruntime

    from crome_runtime.fidelity import decoder_description
    from crome_runtime.machine import describe_cpu

    config = engine.config
    return {
        "what": "engine greedy answers", "version": ANSWERS_VERSION,
        "files": {name: entry.sha256 for name, entry in sorted(engine.manifest.files.items())},
        "adapter": engine.adapters.stage_adapter(), "precision": engine.manifest.precision,
        "backends": [engine.adapter_backend, engine.decoder_backend, decoder_description(engine)],
        "config": [config.provider, config.threads, config.adapter, config.decoder],
        "providers": engine.providers.actual, "onnxruntime": onnxruntime.__version__, "runtime": _runtime_sha256(),
        "prompts": [[frames[r.frame].key, r.question] for r in refs], "max_new_tokens": max_new_tokens,
        "cores": os.cpu_count(), "cpu": describe_cpu(),
    }


def spot_indices(count: int) -> list[int]:
    """SPOT_ANSWERS prompt indices spread over `count` (first and last included)."""
    return sorted({int(i) for i in np.linspace(0, count - 1, min(SPOT_ANSWERS, count)).round()})


# --- (de)serialising -------------------------------------------------------------------------------------
def references_to_files(refs: list[Reference]) -> tuple[dict, dict[str, np.ndarray]]:
    prompts, arrays = [], {}
    for index, ref in enumerate(refs):
        prompts.append({"frame": ref.frame, "question": ref.question, "answer": ref.answer,
                        "token_ids": ref.token_ids, "margins": ref.margins,
                        "prompt_ids": ref.stages.prompt_ids if ref.stages else None})
        for key in STAGE_KEYS if ref.stages else ():
            value = getattr(ref.stages, key)
            if value is not None:
                arrays[f"{key}_{index}"] = np.ascontiguousarray(value, np.float32)
    return {"prompts": prompts}, arrays


def references_from_files(document: dict, arrays: dict[str, np.ndarray]) -> list[Reference]:
    refs = []
    for index, p in enumerate(document["prompts"]):
        stages = None
        if p["prompt_ids"] is not None:
            stages = StageReference(arrays[f"visual_{index}"], arrays[f"adapted_visual_{index}"], p["prompt_ids"],
                                    arrays[f"adapted_text_{index}"], arrays.get(f"prefill_logits_{index}"),
                                    arrays.get(f"step_logits_{index}"))
        refs.append(Reference(p["frame"], p["question"], p["answer"], p["token_ids"], p["margins"], stages))
    return refs


@dataclass
class Reuse:
    """An export's caches of measured results and the report of what came from them (report: name -> reuse)."""

    root: Path | None = None
    enabled: bool = True
    report: dict = field(default_factory=dict)

    def __post_init__(self):
        self.references_cache = ResultCache("export-references", self.root, self.enabled)
        self.vision_cache = ResultCache("export-vision", self.root, self.enabled)
        self.answers_cache = ResultCache("export-answers", self.root, self.enabled)
        self.checks_cache = ResultCache("export-graph-checks", self.root, self.enabled)
        self.margins_cache = ResultCache("export-margins", self.root, self.enabled)

    def references(self, name: str, fields: dict, compute) -> list[Reference]:
        """PyTorch's references for `fields` (reference_fields): from the cache, else compute() stored there."""
        found = self.references_cache.get(fields)
        if found is not None:
            try:
                refs = references_from_files(*found)
            except (KeyError, TypeError, ValueError):
                refs = None
            if refs is not None and len(refs) == len(fields["prompts"]):
                self.report[name] = {"reused": True, "why": REFERENCES_WHY}
                return refs
        refs = compute()
        self.references_cache.put(fields, *references_to_files(refs))
        self.report[name] = {"reused": False, "why": "not in the cache (first export of this adapter on these frames "
                                                     "and prompts, or the cache is off)" if self.enabled else
                             "--no-cache"}
        return refs

    def margins(self, fields: dict, index: int, compute) -> list[float]:
        """PyTorch's top-2 margins along prompt `index`'s answer (fidelity.top2_margins), for the references of
        `fields` (reference_fields): from the cache, else compute() stored there. Asked only where an engine's answer
        diverged; the report's `pytorch_margins` counts how many came from the cache."""
        key = {**fields, "what": "pytorch top-2 margins", "margins_version": MARGINS_VERSION, "index": index}
        found = self.margins_cache.get(key)
        report = self.report.setdefault("pytorch_margins", {"reused": False, "prompts": 0, "from_cache": 0,
                                                            "why": MARGINS_WHY})
        report["prompts"] += 1
        if found is not None:
            try:
                values = [float(v) for v in found[0]["margins"]]
            except (KeyError, TypeError, ValueError):
                values = []
            if values:
                report["from_cache"] += 1
                report["reused"] = report["from_cache"] == report["prompts"]
                return values
        values = [float(v) for v in compute()]
        self.margins_cache.put(key, {"margins": values}, {})
        report["reused"] = False
        if not self.enabled:
            report["why"] = "--no-cache"
        return values

    def engine_vision(self, name: str, engine, frames: list, refs: list[Reference], compute) -> dict:
        """The engine's vision outputs on the references' frames (fidelity.engine_vision's dict): from the cache
        when its first output computes again bit for bit, else compute() stored there."""
        from crome_runtime.fidelity import vision_key_of

        keys = list(dict.fromkeys(vision_key_of(engine, frames[r.frame], r.question) for r in refs))
        fields = vision_fields(engine, keys)
        found = self.vision_cache.get(fields)
        why = "not in the cache (first export on these frames with this vision graph, or the cache is off)" \
            if self.enabled else "--no-cache"
        if found is not None:
            arrays = found[1]
            outputs = {key: arrays.get(f"v_{i}") for i, key in enumerate(keys)}
            first = next((r for r in refs if vision_key_of(engine, frames[r.frame], r.question) == keys[0]), None)
            if first is not None and all(v is not None for v in outputs.values()):
                if np.array_equal(engine.vision(frames[first.frame], first.question), outputs[keys[0]]):
                    self.report[name] = {"reused": True, "frames": len(keys), "why": VISION_WHY}
                    return outputs
                why = "cached outputs did not match the spot check (recomputed)"
        outputs = compute()
        self.vision_cache.put(fields, {"count": len(keys)},
                              {f"v_{i}": np.ascontiguousarray(outputs[key], np.float32) for i, key in enumerate(keys)})
        self.report[name] = {"reused": False, "frames": len(keys), "why": why}
        return outputs


    def engine_answers(self, name: str, engine, frames: list, refs: list[Reference], max_new_tokens: int,
                       compute) -> list[list[int]]:
        """The engine's greedy answers on the references (fidelity.engine_answers'): from the cache when the
        spot_indices answers come out the same live, else compute(refs) stored there. compute: references ->
        their answers."""
        fields = answer_fields(engine, frames, refs, max_new_tokens)
        found = self.answers_cache.get(fields)
        why = "not in the cache (first export of these exact candidate files on these prompts, or the cache is " \
              "off)" if self.enabled else "--no-cache"
        if found is not None:
            try:
                answers = [[int(t) for t in ids] for ids in found[0]["answers"]]
            except (KeyError, TypeError, ValueError):
                answers = []
            if len(answers) == len(refs):
                spots = spot_indices(len(refs))
                live = compute([refs[i] for i in spots])
                if live == [answers[i] for i in spots]:
                    self.report[name] = {"reused": True, "prompts": len(refs), "checked_live": len(spots),
                                         "why": ANSWERS_WHY}
                    return answers
                why = f"cached answers differed from {len(spots)} computed live (recomputed)"
        answers = compute(refs)
        self.answers_cache.put(fields, {"answers": answers}, {})
        self.report[name] = {"reused": False, "prompts": len(refs), "why": why}
        return answers


    def graph_checks(self, graphs: dict[str, tuple[Path, str]], compute) -> dict[str, dict]:
        """name -> trt_check.check_graph(path).to_dict() for graphs {name: (path, its sha256)}: from the cache for a
        graph checked before (same bytes, checker, onnx), else compute(path) stored there."""
        import onnx

        import crome_export.trt_check

        checker = _files_sha256([Path(crome_export.trt_check.__file__)])
        results, reused = {}, []
        for name, (path, sha256) in graphs.items():
            fields = {"what": "tensorrt check", "graph": sha256, "checker": checker, "onnx": onnx.__version__}
            found = self.checks_cache.get(fields)
            if found is not None and isinstance(found[0].get("check"), dict):
                results[name] = found[0]["check"]
                reused.append(name)
                continue
            results[name] = compute(path)
            self.checks_cache.put(fields, {"check": results[name]}, {})
        why = CHECKS_WHY if reused else "not checked before (or the cache is off)"
        self.report["tensorrt_checks"] = {"reused": bool(reused), "graphs": reused, "why": why}
        return results


REFERENCES_WHY = ("the same backbone fingerprint, adapter tensors, frame pixels, prompts and labels, generation cap, "
                  "code, torch threads and CPU as an earlier export: PyTorch's outputs are the same")
VISION_WHY = ("the same vision.onnx (sha256), frames, onnxruntime, providers, threads and CPU as an earlier export "
              "(the vision side has no adapter); its first frame recomputed bit for bit")
ANSWERS_WHY = ("every file of the candidate bundle (sha256), its adapter, backends, providers and threads, "
               "onnxruntime, the C core and runtime code, the CPU and the prompts are those of an earlier export's "
               f"measurement; {SPOT_ANSWERS} of its answers recomputed live token for token")
MARGINS_WHY = ("PyTorch's top-2 logit margins where a candidate's answer diverged, for the same references (backbone "
               "fingerprint, adapter tensors, frames, prompts, code, torch threads and CPU) as an earlier export")
CHECKS_WHY = "the same graph bytes (sha256), checker code and onnx version as a check made before"
