"""A bundle's own acceptance test: what `crome-edge verify` runs on the device the bundle was copied to.

Two files in the bundle, listed in its manifest with their sha256 like every other file:
  acceptance.json  prompts (frame index, question, label), PyTorch's greedy answers (ids + text) with its
                   top-1 minus top-2 logit margin at every step, the generation cap and the accuracy threshold
  acceptance.npz   frame_<i>: held-out frames as a camera gives them, (H, W, 3) uint8 BGR, so the device runs
                   its own preprocessing; for a few prompts p, PyTorch's stage outputs visual_<p>,
                   adapted_visual_<p> (Nq, d), adapted_text_<p> (Nt, d) and for fewer prefill_logits_<p>,
                   step_logits_<p> (vocab,), float32
Under MAX_BYTES by construction (`plan` sizes the frames to what the stage arrays leave). Read with
allow_pickle=False, every shape checked against the manifest (BundleError naming the fix). Torch-free.
Not here: computing the references (crome_export.fidelity), the rules and the table (fidelity.py).
"""
from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crome_runtime import formats
from crome_runtime.fidelity import Reference, StageReference
from crome_runtime.manifest import BundleError, Manifest, bundle_file
from crome_runtime import input_files

MAX_BYTES = 2_000_000  # both files together
JSON_RESERVE = 32_000  # bytes kept for acceptance.json and the .npz's per-array headers (~10 KB used)
PROMPTS = 16  # held-out prompts (greedy answers and accuracy)
STAGE_PROMPTS = 4  # of them, with PyTorch's vision and adapter outputs
LOGIT_PROMPTS = 2  # of those, with PyTorch's prefill and first-step logits too
STAGE_SHARE = 0.6  # of MAX_BYTES the stage references may take (fewer logits for a large vocabulary)
STAGE_KEYS = ("visual", "adapted_visual", "adapted_text", "prefill_logits", "step_logits")
REEXPORT = "re-export the bundle with `crome-edge export --adapter ADAPTER` (it writes the acceptance set)"


@dataclass(frozen=True)
class Plan:
    stage_prompts: int
    logit_prompts: int
    frame_bytes: int  # the most bytes one stored frame may take (larger frames are downscaled to fit)


def stage_bytes(num_query_tokens: int, d_model: int, text_tokens: int, vocab_size: int, logits: bool) -> int:
    """float32 bytes of one prompt's stage references."""
    return 4 * ((2 * num_query_tokens + text_tokens) * d_model + (2 * vocab_size if logits else 0))


def plan(frames: int, num_query_tokens: int, d_model: int, vocab_size: int, text_tokens: list[int]) -> Plan:
    """How much of each goes in: stage references first, within STAGE_SHARE of the budget (a large vocabulary
    or width drops logits first, then stage prompts), then the frames share what is left.
    text_tokens: prompt lengths of the first prompts (those that may carry stage outputs)."""
    stage_prompts = min(STAGE_PROMPTS, len(text_tokens))
    logit_prompts = min(LOGIT_PROMPTS, stage_prompts)

    def fixed() -> int:
        return sum(stage_bytes(num_query_tokens, d_model, n, vocab_size, i < logit_prompts)
                   for i, n in enumerate(text_tokens[:stage_prompts]))

    while stage_prompts and fixed() > STAGE_SHARE * MAX_BYTES:
        if logit_prompts:
            logit_prompts -= 1
        else:
            stage_prompts -= 1
    return Plan(stage_prompts, logit_prompts, (MAX_BYTES - JSON_RESERVE - fixed()) // max(frames, 1))


def fit_frame(frame: np.ndarray, max_bytes: int) -> np.ndarray:
    """A uint8 (H, W, 3) frame, downscaled (aspect kept, INTER_AREA) when it takes more than max_bytes."""
    import cv2

    if frame.nbytes <= max_bytes:
        return np.ascontiguousarray(frame)
    scale = (max_bytes / frame.nbytes) ** 0.5
    height, width = frame.shape[:2]
    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    return np.ascontiguousarray(cv2.resize(frame, size, interpolation=cv2.INTER_AREA))


@dataclass
class AcceptanceSet:
    frames: list[np.ndarray]  # (H, W, 3) uint8 BGR
    references: list[Reference]
    max_new_tokens: int
    threshold_points: float  # the accuracy points a lowered precision may lose (the export's --int8-threshold)
    source: str  # where the prompts come from

    # --- writing ----------------------------------------------------------------------------------------
    def to_files(self, decode) -> dict[str, bytes]:
        """{file name: bytes} for the bundle writer; decode(ids) -> text for the answers' readable form."""
        arrays: dict[str, Any] = {f"frame_{i}": np.ascontiguousarray(f, np.uint8) for i, f in enumerate(self.frames)}
        prompts = []
        for index, ref in enumerate(self.references):
            entry = {"frame": ref.frame, "question": ref.question, "answer": ref.answer, "token_ids": ref.token_ids,
                     "text": decode(ref.token_ids), "margins": ref.margins}
            if ref.stages is not None:
                entry["prompt_ids"] = ref.stages.prompt_ids
                for key in STAGE_KEYS:
                    value = getattr(ref.stages, key)
                    if value is not None:
                        arrays[f"{key}_{index}"] = np.ascontiguousarray(value, np.float32)
            prompts.append(entry)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # stored, not compressed: its size is the arrays' bytes plus small headers
        document = {"format": formats.ACCEPTANCE_FORMAT, "format_version": formats.ACCEPTANCE_FORMAT_VERSION,
                    "pixel_format": "bgr", "max_new_tokens": self.max_new_tokens,
                    "threshold_points": self.threshold_points, "source": self.source,
                    "frames": len(self.frames), "prompts": prompts}
        files = {formats.ACCEPTANCE_FILE: json.dumps(document, indent=1).encode(),
                 formats.ACCEPTANCE_ARRAYS: buffer.getvalue()}
        total = sum(len(b) for b in files.values())
        if total > MAX_BYTES:
            raise ValueError(f"the acceptance set came out at {total} bytes, over its {MAX_BYTES}-byte budget")
        return files


# --- reading ----------------------------------------------------------------------------------------------
def require_acceptance(bundle_path: Path, manifest: Manifest,
                       names: tuple[str, str] = (formats.ACCEPTANCE_FILE, formats.ACCEPTANCE_ARRAYS)) -> None:
    """BundleError saying to re-export unless the manifest lists both acceptance files (`names`: the .json and the
    .npz; a multi-adapter bundle has one pair per adapter, crome_runtime.adapter_entries)."""
    json_name, arrays_name = names
    if json_name not in manifest.files or arrays_name not in manifest.files:
        raise BundleError(f"bundle {bundle_path} has no acceptance set ({json_name} + "
                          f"{arrays_name}; bundles exported before `crome-edge verify` existed lack it): "
                          f"{REEXPORT}")


def read_acceptance(bundle_path: Path, manifest: Manifest,
                    names: tuple[str, str] = (formats.ACCEPTANCE_FILE, formats.ACCEPTANCE_ARRAYS)) -> AcceptanceSet:
    """The acceptance set of a loaded (sha256-verified) bundle; BundleError when absent or malformed."""
    bundle_path = Path(bundle_path)
    json_name, arrays_name = names
    require_acceptance(bundle_path, manifest, names)
    try:
        document = input_files.read_json(bundle_file(bundle_path, json_name), json_name)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{json_name} in {bundle_path} cannot be read ({error}); {REEXPORT}") from None
    if not isinstance(document, dict) or document.get("format") != formats.ACCEPTANCE_FORMAT:
        raise BundleError(f"{json_name} in {bundle_path} is not a crome-edge acceptance set; {REEXPORT}")
    if document.get("format_version", 0) > formats.ACCEPTANCE_FORMAT_VERSION:
        raise BundleError(f"{json_name} has format version {document.get('format_version')}; this "
                          f"runtime reads up to {formats.ACCEPTANCE_FORMAT_VERSION}. Upgrade crome-edge on this device")
    try:
        with np.load(bundle_file(bundle_path, arrays_name), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise BundleError(f"{arrays_name} in {bundle_path} cannot be read ({error}); {REEXPORT}") from None
    try:
        return _parse(document, arrays, manifest)
    except (KeyError, TypeError, ValueError) as error:
        raise BundleError(f"the acceptance set in {bundle_path} is malformed or belongs to another bundle ({error}); "
                          f"{REEXPORT}") from None


def _parse(document: dict, arrays: dict[str, np.ndarray], manifest: Manifest) -> AcceptanceSet:
    nq, d, vocab = manifest.backbone.num_query_tokens, manifest.backbone.d_model, manifest.llm.vocab_size
    frames = []
    for i in range(int(document["frames"])):
        frame = arrays[f"frame_{i}"]
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or 0 in frame.shape:
            raise ValueError(f"frame_{i} is {frame.dtype} {frame.shape}, not a (H, W, 3) uint8 BGR frame")
        frames.append(frame)

    def array(key: str, shape: tuple) -> np.ndarray | None:
        if key not in arrays:
            return None
        value = arrays[key]
        if value.dtype != np.float32 or value.shape != shape:
            raise ValueError(f"{key} is {value.dtype} {value.shape}, this bundle needs float32 {shape}")
        return value

    references = []
    for index, entry in enumerate(document["prompts"]):
        frame_index, question, token_ids = int(entry["frame"]), str(entry["question"]), [int(t) for t in entry["token_ids"]]
        if not 0 <= frame_index < len(frames) or not question.strip() or any(not 0 <= t < vocab for t in token_ids):
            raise ValueError(f"prompt {index} has a frame index, question or token ids that do not fit this bundle")
        margins = entry.get("margins")
        stages = None
        if "prompt_ids" in entry:
            prompt_ids = [int(t) for t in entry["prompt_ids"]]
            if not prompt_ids or any(not 0 <= t < vocab for t in prompt_ids):
                raise ValueError(f"prompt {index} has prompt ids outside the vocabulary")
            visual, adapted = array(f"visual_{index}", (nq, d)), array(f"adapted_visual_{index}", (nq, d))
            text = array(f"adapted_text_{index}", (len(prompt_ids), d))
            if visual is None or adapted is None or text is None:
                raise ValueError(f"prompt {index} lacks its vision/adapter reference arrays")
            stages = StageReference(visual, adapted, prompt_ids, text, array(f"prefill_logits_{index}", (vocab,)),
                                    array(f"step_logits_{index}", (vocab,)))
        answer = entry.get("answer")
        references.append(Reference(frame_index, question, None if answer is None else str(answer), token_ids,
                                    None if margins is None else [float(m) for m in margins], stages))
    if not references:
        raise ValueError("it has no prompts")
    return AcceptanceSet(frames, references, int(document["max_new_tokens"]), float(document["threshold_points"]),
                         str(document.get("source", "")))
