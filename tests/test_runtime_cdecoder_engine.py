"""The engine's choice of decode path and the C path inside it, on the tiny FP32 bundle.

tiny has no GGUF, so its export writes no decoder blocks; here a copy of the bundle gets a weight-only Q8_0
blocks file (listed in the manifest with its sha256), once marked as having passed its gate and once not.
Strict parity of the C step with PyTorch is tests/test_cdecoder.py (tiny) and the smol slow test; here: which
backend runs, that it answers through the engine's own stages, and that its logits stay close to the ONNX
decoder's (Q8_0 weights: cosine >= 0.999 on tiny).
"""
import numpy as np
import pytest
from tests.support.bundles import QUESTION, colour_image, copy_bundle, tiny_bundle, torch_threads, with_q8_blocks

from crome_runtime.engine import Engine, EngineConfig, GenerationOptions
from crome_runtime.errors import EngineError

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_backbone):
    with torch_threads(1):
        paths = tiny_bundle(tmp_path_factory)
    root = tmp_path_factory.mktemp("cdecoder")
    return {
        "plain": paths["bundle"],
        "gated": with_q8_blocks({"gate": "passed"}, tiny_backbone, copy_bundle(paths["bundle"], root / "gated")),
        "ungated": with_q8_blocks({}, tiny_backbone, copy_bundle(paths["bundle"], root / "ungated")),
    }


def test_backend_choice(bundles):
    assert Engine.load(bundles["plain"], EngineConfig(threads=1)).decoder_backend == "onnx"
    assert Engine.load(bundles["ungated"], EngineConfig(threads=1)).decoder_backend == "onnx"
    engine = Engine.load(bundles["gated"], EngineConfig(threads=1))
    assert engine.decoder_backend == "c" and engine.describe()["decoder_backend"] == "c"
    assert Engine.load(bundles["gated"], EngineConfig(threads=1, decoder="onnx")).decoder_backend == "onnx"
    with pytest.raises(EngineError, match="decoder='c' cannot run: the bundle has no decoder blocks"):
        Engine.load(bundles["plain"], EngineConfig(threads=1, decoder="c"))
    with pytest.raises(EngineError, match="did not pass the export gates"):
        Engine.load(bundles["ungated"], EngineConfig(threads=1, decoder="c"))
    with pytest.raises(EngineError, match="not one of auto, c, onnx"):
        Engine.load(bundles["plain"], EngineConfig(threads=1, decoder="fast"))


def test_c_steps_track_the_onnx_decoder(bundles):
    c = Engine.load(bundles["gated"], EngineConfig(threads=2))
    onnx = Engine.load(bundles["gated"], EngineConfig(threads=1, decoder="onnx"))
    frame = c.frame(colour_image("red", 0))
    prefix = np.concatenate([c.adapt(c.vision(frame, QUESTION), "visual"),
                             c.adapt(c.embeddings[c.prompt_ids(QUESTION)], "text")])[None]
    a, b = c.prefill(prefix, 12).copy(), onnx.prefill(prefix, 12).copy()
    assert np.array_equal(a, b)  # prefill is the ONNX decoder in both
    token = int(a.argmax())
    for _ in range(10):
        a, b = c.step(token).copy(), onnx.step(token).copy()
        cos = float(a.astype(np.float64) @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        assert cos >= 0.999, cos
        token = int(b.argmax())
    answer = c.answer(frame, QUESTION, GenerationOptions(max_new_tokens=8))
    again = c.answer(frame, QUESTION, GenerationOptions(max_new_tokens=8))
    assert answer.token_ids == again.token_ids and answer.finish_reason in ("stop", "length")


def _spins(engine: Engine) -> bool:
    options = engine.sessions["decoder"].get_session_options()
    try:
        return options.get_session_config_entry("session.intra_op.allow_spinning") != "0"
    except RuntimeError:  # onnxruntime raises for an entry never set: its default, spinning
        return True


def test_onnx_runtime_does_not_spin_beside_the_c_decoder(bundles):
    """ONNX Runtime's idle workers spinning after a prefill kept the cores from the C decoder's pool: on 2 cores at
    2 threads a step took 11-12 ms after a spinning prefill against 5.4 ms after one that did not (AVX2 path, smol)."""
    c_path = Engine.load(bundles["gated"], EngineConfig(threads=2))
    onnx_path = Engine.load(bundles["gated"], EngineConfig(threads=2, decoder="onnx"))
    assert (c_path.decoder_backend, c_path.spin, _spins(c_path)) == ("c", False, False)
    assert (onnx_path.decoder_backend, onnx_path.spin, _spins(onnx_path)) == ("onnx", True, True)
    quiet = Engine.load(bundles["gated"], EngineConfig(threads=2, decoder="onnx", spin=False))
    assert not quiet.spin and not _spins(quiet)
