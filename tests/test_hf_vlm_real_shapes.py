"""Slow: the export at the real layer shapes of SmolVLM-256M and LLaVA-1.5-7B, one layer deep (random weights).

Every width, head count, patch grid, connector and vocabulary is the real checkpoint's; only the depth is cut to
one LLM layer (two tower layers for LLaVA, whose projector reads layer -2). Checks what a user's first export of the
real model will build: the visual token count and width the adapter sees, the exported graphs' input/output shapes,
the vision graph against PyTorch, and the memory plan (weights per layer, KV cache per token) that
docs/bring-your-own-model.md extrapolates to the full depth.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tests.support.bundles import torch_threads
from tests.support.vlm_dirs import LLAVA_15_7B, SMOLVLM_256M, write_idefics3_dir, write_llava_dir

pytestmark = pytest.mark.slow

CASES = {
    # name: (writer, shape cut to one LLM layer, visual tokens, d, full-depth LLM layers)
    "smolvlm-256m": (write_idefics3_dir, dataclasses.replace(SMOLVLM_256M, text_layers=1, vision_layers=1), 64, 576, 30),
    "llava-1.5-7b": (write_llava_dir, dataclasses.replace(LLAVA_15_7B, text_layers=1, vision_layers=2), 576, 4096, 32),
}


@pytest.mark.parametrize("name", CASES)
def test_one_layer_at_real_shapes_exports_with_the_real_dims(name, tmp_path):
    import onnxruntime as ort

    from crome_edge.backbones.registry import load_backbone
    from crome_export.decoder import export_decoder
    from crome_export.vision import export_vision
    from crome_runtime import formats

    write, shape, tokens, d, full_layers = CASES[name]
    with torch_threads(2):
        path = write(tmp_path / name, shape)
        backbone = load_backbone(str(path))
        info = backbone.info
        assert (info.num_query_tokens, info.d_model, info.image_size) == (tokens, d, shape.image_size)
        export_vision(backbone, tmp_path / formats.VISION_ONNX, formats.DEFAULT_OPSET)
        dims = export_decoder(backbone.llm, tmp_path / formats.DECODER_ONNX, formats.DEFAULT_OPSET)
        pixels = torch.randn(1, 3, shape.image_size, shape.image_size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = backbone.encode_image(pixels).numpy()  # (1, Nq, d)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    vision = ort.InferenceSession(str(tmp_path / formats.VISION_ONNX), options, providers=["CPUExecutionProvider"])
    assert vision.get_inputs()[0].shape[1:] == [3, shape.image_size, shape.image_size]
    assert vision.get_outputs()[0].shape[2] == d  # Nq is symbolic after Idefics3's pixel-shuffle reshapes
    got = vision.run(None, {formats.IN_PIXEL_VALUES: pixels.numpy()})[0]
    cosine = float((got * expected).sum() / np.linalg.norm(got) / np.linalg.norm(expected))
    assert got.shape == (1, tokens, d) and cosine > 0.9999, cosine

    decoder = ort.InferenceSession(str(tmp_path / formats.DECODER_ONNX), options, providers=["CPUExecutionProvider"])
    assert [i.name for i in decoder.get_inputs()][:3] == [formats.IN_INPUTS_EMBEDS, formats.IN_ATTENTION_MASK,
                                                          formats.IN_POSITION_IDS]
    assert decoder.get_inputs()[3].shape[1:] == [shape.text_kv_heads, "past_sequence", d // shape.text_heads]
    assert dims.vocab_size == shape.vocab_size and dims.d_model == d

    # the memory plan at full depth, from this one layer: weights and KV cache per token
    layer_params = sum(p.numel() for p in backbone.llm.base_model.layers[0].parameters())
    kv_bytes_per_token = 2 * full_layers * shape.text_kv_heads * (d // shape.text_heads) * 4
    decoder_bytes = (tmp_path / formats.DECODER_ONNX).stat().st_size
    table = shape.vocab_size * d * 4
    assert decoder_bytes == pytest.approx(layer_params * 4 + table, rel=0.05)  # one layer + the head, fp32
    print(f"{name}: {tokens} visual tokens x {d}; LLM layer {layer_params / 1e6:.1f} M params; "
          f"full-depth fp32 decoder ~{(full_layers * layer_params * 4 + table) / 2**30:.2f} GiB + embeddings "
          f"{table / 2**30:.2f} GiB; KV cache {kv_bytes_per_token / 2**10:.0f} KiB/token")
