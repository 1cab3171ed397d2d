"""The INT8 vision recipe answers the same on every CPU: a bundle is exported on one machine and run on
others (AVX2 without VNNI, AVX-512 VNNI, ARM).

- By construction: every int8 weight of the static-QDQ graph lies in [-64, 64], so ONNX Runtime's VPMADDUBSW
  path on x86 without VNNI (u8 x s8 pairs summed in int16) cannot saturate: 255 * 64 * 2 = 32640 < 32767.
- Measured: the same graph run under qemu's Haswell CPU model (AVX2, no AVX-512, no VNNI) gives the native
  outputs (cosine >= 0.99999) and stays >= 0.99 against FP32. Full-range weights failed exactly this check
  (0.9825 under Haswell vs 0.9992 natively on the tiny backbone). Runs wherever qemu-user is installed (CI
  installs it); x86_64 hosts only.
Then the fallback contract: dynamic INT8 only when static measures below the floor, never on an error, and
the cache key names the method.
"""
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from crome_runtime import formats

QEMU = shutil.which("qemu-x86_64")
AVX2_NO_VNNI = "Haswell"  # qemu CPU model: AVX2 + FMA, no AVX-512, no VNNI


@pytest.fixture(scope="module")
def int8_vision(tmp_path_factory, tiny_backbone):
    from crome_export.quantize import quantize_vision_static
    from crome_export.vision import export_vision
    from crome_runtime.vision_inputs import vision_feeds

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("int8-portability")
    export_vision(tiny_backbone, directory / "fp32.onnx", 18)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    questions = ["what part is this?", "colour?"] * 4
    feeds = [vision_feeds(rng.standard_normal((8, 3, 32, 32)).astype(np.float32), questions, tiny_backbone.info,
                          tiny_backbone.qformer_tokenizer) for _ in range(4)]
    quantize_vision_static(directory / "fp32.onnx", directory / "int8.onnx", feeds)
    np.savez(directory / "feed.npz", **feeds[0])
    return directory, feeds


def _run(model: Path, feed: dict) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def test_every_int8_weight_fits_seven_bits_so_no_cpu_saturates(int8_vision):
    model = onnx.load(str(int8_vision[0] / "int8.onnx"))
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    assert weights, "the static graph has no int8 weights"
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64
    assert 255 * 64 * 2 <= np.iinfo(np.int16).max


_EMULATED_RUN = """
import sys, numpy as np, onnxruntime as ort
o = ort.SessionOptions(); o.intra_op_num_threads = 1
feed = dict(np.load(sys.argv[2]))
np.save(sys.argv[3], ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"]).run(None, feed)[0])
"""


needs_qemu = pytest.mark.skipif(platform.machine() != "x86_64" or QEMU is None,
                                reason="needs qemu-user (apt-get install qemu-user) on an x86_64 host")

_SATURATION_PROBE = """
import numpy as np, onnxruntime as ort
from onnx import TensorProto, helper
a = helper.make_tensor_value_info("a", TensorProto.UINT8, [1, 64])
b = helper.make_tensor_value_info("b", TensorProto.INT8, [64, 4])
y = helper.make_tensor_value_info("y", TensorProto.INT32, [1, 4])
graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "probe", [a, b], [y])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
print(int(session.run(None, {"a": np.full((1, 64), 255, np.uint8), "b": np.full((64, 4), 127, np.int8)})[0][0, 0]))
"""


@needs_qemu
def test_the_emulated_cpu_really_takes_the_saturating_int8_path():
    """Without this, the AVX2 test below could pass on a path that never saturates."""
    exact = 255 * 127 * 64
    emulated = subprocess.run([QEMU, "-cpu", AVX2_NO_VNNI, sys.executable, "-c", _SATURATION_PROBE], check=True,
                              capture_output=True, text=True, timeout=300).stdout.split()[-1]
    assert int(emulated) == 32767 * 32 < exact  # every u8*s8 pair sum clamped to int16


@needs_qemu
def test_int8_vision_gives_the_same_outputs_on_an_avx2_cpu_without_vnni(int8_vision):
    directory, feeds = int8_vision
    out = directory / "avx2.npy"
    subprocess.run([QEMU, "-cpu", AVX2_NO_VNNI, sys.executable, "-c", _EMULATED_RUN, str(directory / "int8.onnx"),
                    str(directory / "feed.npz"), str(out)], check=True, capture_output=True, timeout=300)
    emulated, native = np.load(out), _run(directory / "int8.onnx", feeds[0])
    fp32 = _run(directory / "fp32.onnx", feeds[0])
    assert _cosine(native, emulated) >= 0.99999  # same int8 arithmetic, up to float reassociation
    assert _cosine(fp32, emulated) >= 0.99


def test_a_static_graph_below_the_floor_falls_back_to_dynamic_under_its_own_key(tmp_path, tiny_backbone, monkeypatch):
    from crome_export import backbone_parts, quantize
    from crome_export.parts_cache import PartsCache

    feeds = _calibration(tiny_backbone)
    cache = PartsCache(tmp_path / "cache")
    monkeypatch.setattr(backbone_parts, "VISION_STATIC_MIN_COSINE", 1.01)  # no graph reaches it: the measured condition
    said: list[str] = []
    result = _prepare(tiny_backbone, feeds, cache, said.append)
    vision = result.final_entry["notes"]["vision"]
    assert vision["method"] == "dynamic-qint8" and "static INT8 vision cosine" in vision["fallback_reason"]
    assert 0.9 < vision["static_cosine_min"] < 1.01
    assert result.final_entry["key"]["vision_int8"] == quantize.VISION_INT8_FALLBACK
    assert any("falling back to dynamic INT8" in line for line in said)
    entries = [json.loads(p.read_text())["key"] for p in cache.root.glob("*/entry.json")]
    assert all(e.get("vision_int8") != quantize.VISION_INT8_RECIPE for e in entries)  # nothing static-keyed
    monkeypatch.setattr(backbone_parts, "VISION_STATIC_MIN_COSINE", 0.5)  # the next export tries static again
    again = _prepare(tiny_backbone, feeds, cache, said.append)
    assert again.final_entry["notes"]["vision"]["method"] == "static-qdq" and not again.cached["int8"]


def test_an_error_in_static_quantisation_raises_instead_of_falling_back(tmp_path, tiny_backbone, monkeypatch):
    from crome_export import backbone_parts, quantize
    from crome_export.parts_cache import PartsCache

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the static path")

    monkeypatch.setattr(quantize, "quantize_vision_static", broken)
    with pytest.raises(RuntimeError, match="a bug in the static path"):
        _prepare(tiny_backbone, _calibration(tiny_backbone), PartsCache(tmp_path / "cache"), lambda m: None)
    assert not list((tmp_path / "cache" / "export-parts").glob("*int8*"))
    del backbone_parts  # imported for the monkeypatch target's module to be loaded


def _calibration(backbone) -> list[dict]:
    from crome_runtime.vision_inputs import vision_feeds

    rng = np.random.default_rng(1)
    return [vision_feeds(rng.standard_normal((4, 3, 32, 32)).astype(np.float32), ["colour?"] * 4, backbone.info,
                         backbone.qformer_tokenizer)]


def _prepare(backbone, feeds, cache, say):
    from crome_export.backbone_parts import prepare_parts

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return prepare_parts(backbone, "int8", feeds, "calibration-id", 18, "fp32", cache, say)
    finally:
        torch.set_num_threads(threads)
