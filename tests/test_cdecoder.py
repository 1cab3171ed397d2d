"""The C decode step (crome_runtime.cdecoder over crome_llm) against PyTorch on the tiny backbone.

tiny's decoder is fp32, so the C path reads a weight-only Q8_0 (and, to cover both kernels, Q4_1) form of
it (crome_export.blocks.from_float). Parity is against PyTorch running the very weights those blocks
dequantise to (blocks.load_reference_into): logits cosine >= 0.99999 at every position, greedy tokens
identical, on every ISA path this CPU runs and 1-3 threads; with the ONNX decoder's prefill filling the C
cache, and without it. The blocks' drift from the fp32 weights is a separate, reported number (the
fidelity report gates it like any INT8 stage). Also: the blocks file round-trips and refuses bad files.
"""
import copy

import numpy as np
import pytest
import torch

from crome_runtime import ccore
from crome_runtime import decoder_blocks_file
from crome_runtime.manifest import BundleError

pytest.importorskip("gguf")
from crome_export import blocks as export_blocks  # noqa: E402

PATHS = [isa for isa in ccore.ISAS if isa != "auto" and ccore.isa_supported(isa)]
MIN_COSINE = 0.99999


def _cos(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def llm(tiny_backbone):
    return tiny_backbone.llm


@pytest.fixture(scope="module", params=["q8_0", "q4_1"])
def quantised(request, llm):
    """(blocks, PyTorch LLM running the dequantised blocks)."""
    blocks = export_blocks.from_float(llm, request.param)
    reference = copy.deepcopy(llm).eval()
    export_blocks.load_reference_into(reference, blocks)
    return blocks, reference


def _prefix(llm, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, length, llm.config.hidden_size, generator=g) * 0.5).float()  # (1, L, d)


def _torch_logits(llm, embeds):
    with torch.no_grad():
        return llm(inputs_embeds=embeds).logits[0].numpy()  # (L, vocab)


@pytest.mark.parametrize("isa", PATHS)
@pytest.mark.parametrize("threads", [1, 3])
def test_every_position_matches_pytorch(quantised, isa, threads):
    from crome_runtime.cdecoder import CDecoder

    blocks, reference = quantised
    embeds = _prefix(reference, 13)
    expected = _torch_logits(reference, embeds)
    decoder = CDecoder(blocks, threads=threads, isa=isa)
    decoder.reserve(13)
    x = np.ascontiguousarray(embeds[0].numpy())
    for position in range(13):
        logits = decoder.step(x[position].ctypes.data).copy()
        assert _cos(logits, expected[position]) >= MIN_COSINE, (position, _cos(logits, expected[position]))
        assert int(logits.argmax()) == int(expected[position].argmax())
    assert decoder.length == 13


def test_threads_do_not_change_bits(quantised):
    from crome_runtime.cdecoder import CDecoder

    blocks, reference = quantised
    embeds = np.ascontiguousarray(_prefix(reference, 6)[0].numpy())[None]
    out = []
    for threads in (1, 2, 3):
        decoder = CDecoder(blocks, threads=threads)
        out.append(decoder.prefill(embeds).copy())
    assert np.array_equal(out[0], out[1]) and np.array_equal(out[0], out[2])


def _greedy_torch(llm, embeds, n):
    from crome_edge.model import cache_argument

    tokens = []
    with torch.no_grad():
        out = llm(inputs_embeds=embeds, use_cache=True)
        for _ in range(n):
            token = int(out.logits[0, -1].argmax())
            tokens.append(token)
            row = llm.get_input_embeddings().weight[token][None, None]
            out = llm(inputs_embeds=row, use_cache=True, **cache_argument(llm, out.past_key_values))
    return tokens


def test_ort_prefill_then_c_steps_gives_pytorch_tokens(quantised, tmp_path):
    """The engine's split: the bundle's ONNX decoder prefills (reference weights exported here), its KV is
    copied into the C cache, C decodes. Greedy tokens identical to PyTorch's over 20 steps."""
    import onnxruntime as ort

    from crome_export.decoder import export_decoder
    from crome_runtime.cdecoder import CDecoder
    from crome_runtime.decoder import KVDecoder

    blocks, reference = quantised
    path = tmp_path / "decoder.onnx"
    dims = export_decoder(reference, path, 18)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    kv = KVDecoder(session, dims.num_layers, dims.num_kv_heads, dims.head_dim, dims.d_model, dims.vocab_size)
    decoder = CDecoder(blocks, threads=2, prefill_decoder=kv)
    embeds = _prefix(reference, 9, seed=3)
    table = np.ascontiguousarray(reference.get_input_embeddings().weight.detach().numpy())
    decoder.reserve(9 + 20)
    logits = decoder.prefill(np.ascontiguousarray(embeds.numpy()))
    ours = []
    for _ in range(20):
        token = int(logits.argmax())
        ours.append(token)
        logits = decoder.step(table.ctypes.data + token * table.shape[1] * 4)
    assert ours == _greedy_torch(reference, embeds, 20)


def test_q8_0_drift_from_fp32_is_small_and_measured(llm):
    """The weight-only Q8_0 form changes the weights; how much the logits move is what the report gates."""
    from crome_runtime.cdecoder import CDecoder

    blocks = export_blocks.from_float(llm, "q8_0")
    embeds = _prefix(llm, 8, seed=5)
    fp32 = _torch_logits(llm, embeds)
    decoder = CDecoder(blocks)
    decoder.reserve(8)
    x = np.ascontiguousarray(embeds[0].numpy())
    worst = min(_cos(decoder.step(x[i].ctypes.data), fp32[i]) for i in range(8))
    assert 0.999 <= worst < 1.0  # 8-bit weights: close, not exact (tiny's random weights, 0.2 init std)


def test_blocks_file_round_trip_and_refusals(tmp_path, llm):
    blocks = export_blocks.from_float(llm, "q8_0")
    path = tmp_path / "decoder_blocks.safetensors"
    decoder_blocks_file.save(blocks, path)
    back = decoder_blocks_file.load(path)
    assert back.dims == blocks.dims and back.qtypes == blocks.qtypes and back.source == blocks.source
    assert all(np.array_equal(back.tensors[k], v) for k, v in blocks.tensors.items())
    broken = copy.copy(blocks)
    broken.tensors = dict(blocks.tensors)
    broken.tensors["layers.0.q"] = broken.tensors["layers.0.q"][:-1]
    with pytest.raises(BundleError, match="layers.0.q must be uint8"):
        decoder_blocks_file.check(broken)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(BundleError, match="cannot be read as decoder blocks"):
        decoder_blocks_file.load(path)


def test_identity_check_refuses_other_weights(llm):
    blocks = export_blocks.from_float(llm, "q8_0")
    with pytest.raises(Exception, match="not bit-identical"):
        export_blocks.check_identity(blocks, llm)  # Q8_0 of random fp32 weights is not those weights
    reference = copy.deepcopy(llm)
    export_blocks.load_reference_into(reference, blocks)
    export_blocks.check_identity(blocks, reference)  # but it is exactly what it dequantises to
