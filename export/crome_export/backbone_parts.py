"""The backbone parts of a bundle — vision graph, decoder graph, embedding table, tokenizers — built once
per backbone, precision and calibration set, and kept in the export cache (parts_cache.py).

FP32 parts are always built (they are the parity reference of every export); INT8/FP16 parts are derived
from them. INT8 vision: static QDQ (quantize.VISION_INT8_RECIPE); only when its cosine against FP32 on the
calibration frames is below VISION_STATIC_MIN_COSINE is dynamic INT8 used instead, and the notes (and so
the report) say why. Any other error raises. The cache key names the vision method, so an entry never holds
another method than its key says: a fallback is stored under the dynamic key, never under the static one,
and the next export tries static again.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crome_export import quantize
from crome_export.parts_cache import PartsCache, parts_key
from crome_export.decoder import export_decoder, save_embeddings
from crome_export.vision import export_vision
from crome_runtime import formats
from crome_runtime.errors import CromeError

VISION_STATIC_MIN_COSINE = 0.99
EXPORT_PARTS_VERSION = 4  # bump when the graphs this module writes change


@dataclass
class PartsResult:
    fp32_dir: Path
    fp32_entry: dict
    final_dir: Path  # where the exported-precision vision/decoder graphs are (fp32_dir for fp32)
    final_entry: dict
    cached: dict[str, bool] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def prepare_parts(backbone, precision: str, calibration_feeds, calibration_id: str, opset: int,
                  decoder_int8: str, cache: PartsCache, say) -> PartsResult:
    """The parts' directories live as long as `cache` (a disabled cache removes them on close(), and at once
    when this fails)."""
    try:
        return _prepare_parts(backbone, precision, calibration_feeds, calibration_id, opset, decoder_int8, cache, say)
    except BaseException:
        cache.close()
        raise


def _prepare_parts(backbone, precision: str, calibration_feeds, calibration_id: str, opset: int,
                   decoder_int8: str, cache: PartsCache, say) -> PartsResult:
    base = {"fingerprint": backbone.fingerprint(), "opset": opset, "parts_version": EXPORT_PARTS_VERSION}
    fp32 = _cached(cache, {**base, "precision": "fp32"}, lambda d: _build_fp32(backbone, d, opset, say), say)
    result = PartsResult(fp32[0], fp32[1], fp32[0], fp32[1], cached={"fp32": fp32[2]}, seconds={"fp32": fp32[3]})
    if precision == "fp32":
        return result
    fields = {**base, "precision": precision}
    if precision == "int8":
        fields.update(calibration=calibration_id, decoder_int8=decoder_int8, vision_int8=f"{quantize.VISION_INT8_RECIPE}+{quantize.VISION_INT8_CONV_RECIPE}")
        static = lambda d: _build_int8(result.fp32_dir, d, calibration_feeds, decoder_int8, say, fallback=None)  # noqa: E731
        try:
            lowered = _cached(cache, fields, static, say)
        except StaticInt8BelowThreshold as low:
            say(f"{low}; falling back to dynamic INT8")
            fields["vision_int8"] = quantize.VISION_INT8_FALLBACK
            dynamic = lambda d: _build_int8(result.fp32_dir, d, calibration_feeds, decoder_int8, say, fallback=low)  # noqa: E731
            lowered = _cached(cache, fields, dynamic, say)
    else:
        lowered = _cached(cache, fields, lambda d: _build_fp16(result.fp32_dir, d, say), say)
    result.final_dir, result.final_entry = lowered[0], lowered[1]
    result.cached[precision], result.seconds[precision] = lowered[2], lowered[3]
    return result


def _cached(cache: PartsCache, fields: dict, builder, say) -> tuple[Path, dict, bool, float]:
    """-> (directory, entry, was a cache hit, seconds)."""
    started = time.perf_counter()
    key = parts_key(fields)
    found = cache.lookup(key)
    if found:
        say(f"{fields['precision'].upper()} backbone parts from the cache ({found[0]})")
        return found[0], found[1], True, round(time.perf_counter() - started, 3)
    directory, entry = cache.build(key, fields, builder)
    return directory, entry, False, round(time.perf_counter() - started, 3)


def _build_fp32(backbone, directory: Path, opset: int, say) -> dict:
    notes: dict[str, object] = {}
    t = time.perf_counter()
    say("vision encoder + Q-Former + projection -> ONNX (FP32)")
    export_vision(backbone, directory / formats.VISION_ONNX, opset)
    notes["vision_export_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    say("decoder LLM with KV cache -> ONNX (FP32)")
    dims = export_decoder(backbone.llm, directory / formats.DECODER_ONNX, opset)
    notes["decoder_export_s"] = round(time.perf_counter() - t, 3)
    save_embeddings(backbone.llm, directory / formats.EMBEDDINGS_FILE)
    backbone.llm_tokenizer.save(str(directory / formats.TOKENIZER_FILE))
    if backbone.qformer_tokenizer is not None:
        backbone.qformer_tokenizer.save(str(directory / formats.QFORMER_TOKENIZER_FILE))
    notes["decoder_dims"] = vars(dims)
    return notes


class StaticInt8BelowThreshold(CromeError):
    """Static QDQ vision measured below VISION_STATIC_MIN_COSINE on the calibration frames (not an error)."""

    def __init__(self, cosine: float):
        super().__init__(f"static INT8 vision cosine {cosine:.4f} < {VISION_STATIC_MIN_COSINE} on the calibration frames")
        self.cosine = cosine


def _build_int8(fp32_dir: Path, directory: Path, feeds, decoder_method: str, say,
                fallback: StaticInt8BelowThreshold | None) -> dict:
    """fallback: None builds the static recipe (raising StaticInt8BelowThreshold when it measures too low),
    else the dynamic one, recording why."""
    notes: dict[str, object] = {}
    t = time.perf_counter()
    source, target = fp32_dir / formats.VISION_ONNX, directory / formats.VISION_ONNX
    if fallback is None:
        say(f"vision INT8: static QDQ calibrated on {sum(len(f[formats.IN_PIXEL_VALUES]) for f in feeds)} frames")
        vision = quantize.quantize_vision_static(source, target, feeds)
        cosine = _ort_cosine(source, target, feeds)
        if cosine < VISION_STATIC_MIN_COSINE:
            raise StaticInt8BelowThreshold(cosine)
    else:
        vision = quantize.quantize_vision_dynamic(source, target)
        vision.update(fallback_reason=str(fallback), static_cosine_min=round(fallback.cosine, 6))
        cosine = _ort_cosine(source, target, feeds)
    vision["calibration_cosine_min"] = round(cosine, 6)
    notes["vision"] = vision
    notes["vision_quantize_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    say(f"decoder INT8 ({decoder_method})")
    notes["decoder"] = quantize.quantize_decoder(fp32_dir / formats.DECODER_ONNX, directory / formats.DECODER_ONNX, decoder_method)
    notes["decoder_quantize_s"] = round(time.perf_counter() - t, 3)
    return notes


def _build_fp16(fp32_dir: Path, directory: Path, say) -> dict:
    say("vision and decoder -> FP16")
    return {
        "vision": quantize.convert_fp16(fp32_dir / formats.VISION_ONNX, directory / formats.VISION_ONNX),
        "decoder": quantize.convert_fp16(fp32_dir / formats.DECODER_ONNX, directory / formats.DECODER_ONNX),
    }


def _ort_cosine(reference: Path, candidate: Path, feeds) -> float:
    import onnxruntime as ort

    a = ort.InferenceSession(str(reference), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(candidate), providers=["CPUExecutionProvider"])
    worst = 1.0
    for feed in feeds:
        x = a.run([formats.OUT_VISUAL_EMBEDS], feed)[0].reshape(len(feed[formats.IN_PIXEL_VALUES]), -1).astype(np.float64)
        y = b.run([formats.OUT_VISUAL_EMBEDS], feed)[0].reshape(len(x), -1).astype(np.float64)
        cos = (x * y).sum(1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-300)
        worst = min(worst, float(cos.min()))
    return worst
