"""vision.onnx's optional query_attention output (docs/explain.md): what it holds, and that adding it changed nothing
else — the FP32 and the INT8 graphs' main output bit for bit what the graph without it gives (tiny backbone)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from crome_runtime import formats

QUESTIONS = ["what part is this?", "colour?"] * 4


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, tiny_backbone):
    from crome_export.quantize import quantize_vision_dynamic, quantize_vision_static
    from crome_export.vision import export_vision
    from crome_runtime.vision_inputs import vision_feeds

    directory = tmp_path_factory.mktemp("explain-vision")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_vision(tiny_backbone, directory / "with.onnx", 18)
        export_vision(tiny_backbone, directory / "without.onnx", 18, explain=False)  # the graph before the feature
    finally:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    feeds = [vision_feeds(rng.standard_normal((8, 3, 32, 32)).astype(np.float32), QUESTIONS, tiny_backbone.info,
                          tiny_backbone.qformer_tokenizer) for _ in range(3)]
    for name in ("with", "without"):
        quantize_vision_static(directory / f"{name}.onnx", directory / f"{name}.int8.onnx", feeds)
        quantize_vision_dynamic(directory / f"{name}.onnx", directory / f"{name}.dyn.onnx")
    return directory, feeds


def test_the_attention_output_is_the_q_formers_cross_attention_over_the_patch_grid(graphs, tiny_backbone):
    directory, feeds = graphs
    feed = feeds[0]
    visual, attention = _session(directory / "with.onnx").run(None, feed)
    # tiny: 32 px, 8 px patches -> a 4x4 grid after the class token; 4 queries
    assert attention.shape == (8, tiny_backbone.info.num_query_tokens, 4, 4)
    with torch.no_grad():
        ref_visual, ref = tiny_backbone.encode_image_explained(
            *(torch.from_numpy(feed[n]) for n in (formats.IN_PIXEL_VALUES, formats.IN_INSTRUCTION_IDS,
                                                  formats.IN_INSTRUCTION_MASK)))
    np.testing.assert_allclose(attention, ref.numpy(), atol=1e-5)  # ONNX = PyTorch (eager) to float tolerance
    np.testing.assert_allclose(visual, ref_visual.numpy(), atol=1e-4)
    sums = attention.sum(axis=(2, 3))  # the class token's share is left out: each query's map sums to < 1
    assert np.all(sums > 0.3) and np.all(sums <= 1 + 1e-5)


@pytest.mark.parametrize("suffix", ["onnx", "int8.onnx", "dyn.onnx"])
def test_the_main_output_is_bit_identical_to_the_graph_without_the_optional_output(graphs, suffix):
    directory, feeds = graphs
    with_map, without = _session(directory / f"with.{suffix}"), _session(directory / f"without.{suffix}")
    assert [o.name for o in with_map.get_outputs()] == [formats.OUT_VISUAL_EMBEDS, formats.OUT_QUERY_ATTENTION]
    assert [o.name for o in without.get_outputs()] == [formats.OUT_VISUAL_EMBEDS]
    for feed in feeds:
        main = with_map.run([formats.OUT_VISUAL_EMBEDS], feed)[0]
        both = with_map.run(None, feed)
        before = without.run(None, feed)[0]
        assert np.array_equal(main, before), f"{suffix}: max |diff| {np.abs(main - before).max()}"
        assert np.array_equal(both[0], before)


def test_the_int8_attention_output_stays_float_and_close_to_fp32(graphs):
    directory, feeds = graphs
    fp32 = _session(directory / "with.onnx")
    int8 = _session(directory / "with.int8.onnx")
    for feed in feeds:
        reference = fp32.run([formats.OUT_QUERY_ATTENTION], feed)[0]
        got = int8.run([formats.OUT_QUERY_ATTENTION], feed)[0]
        assert got.dtype == np.float32 and got.shape == reference.shape
        # INT8 moves the softmax's inputs, not the map's meaning: within 0.05 of FP32 per cell (tiny's maps ~0.06)
        assert np.abs(got - reference).max() < 0.05
