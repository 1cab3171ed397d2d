"""Each exported graph against PyTorch on the tiny backbone, and the TensorRT-compatibility rules.

Tolerances: FP32 graphs within 1e-4 absolute of PyTorch (float32 reassociation only); the fused adapter
within 1e-5; INT8 vision cosine >= 0.99 against FP32 (docs/architecture.md §6; the MatMul/Conv/Gemm-only recipe measured 0.999 on InstructBLIP).
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from crome_edge.gated_adapter import AdapterConfig, CromeAdapter
from crome_runtime import formats


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny graphs: one thread is as fast, and immune to a busy shared machine (see test_export_bundle)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, tiny_backbone):
    from crome_export.decoder import export_decoder
    from crome_export.vision import export_vision

    directory = tmp_path_factory.mktemp("graphs")
    export_vision(tiny_backbone, directory / formats.VISION_ONNX, 18)
    export_decoder(tiny_backbone.llm, directory / formats.DECODER_ONNX, 18)
    return directory


def _random_adapter(d, seed=1):
    torch.manual_seed(seed)
    adapter = CromeAdapter(AdapterConfig(d_model=d, rank=8))
    torch.nn.init.normal_(adapter.up, std=0.3)
    return adapter.eval()


def test_adapter_graph_is_one_crome_op_equal_to_the_reference(tmp_path):
    from crome_export.adapter_graph import export_adapter_graphs, ort_kernels
    from crome_export.trt_check import check_graph

    adapter = _random_adapter(64)
    paths = export_adapter_graphs(adapter, tmp_path, 18)
    x = torch.randn(3, 7, 64)
    for modality, path in paths.items():
        model = onnx.load(str(path))
        assert [(n.domain, n.op_type) for n in model.graph.node] == [(formats.CROME_ONNX_DOMAIN, formats.FUSED_GATED_PROJECTION_OP)]
        y = _session(path).run(None, {formats.IN_ADAPTER_X: x.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(y, adapter(x, modality).numpy(), atol=1e-5)
        assert check_graph(path).ok
    kernels = ort_kernels(paths["visual"])
    assert kernels["graph_ops"] == [f"{formats.CROME_ONNX_DOMAIN}.{formats.FUSED_GATED_PROJECTION_OP}"]
    assert kernels["ort_optimized_ops_extended"].count("MatMul") == 2  # [Wd | Wg] GEMM and Wu GEMM
    assert "com.microsoft.QuickGelu" in kernels["ort_optimized_ops_extended"]  # SiLU fused by ORT
    assert sum(kernels["ort_executed_kernels_all"].values()) >= 5


def test_vision_graph_matches_pytorch_with_dynamic_batch_and_instruction(graphs, tiny_backbone):
    from crome_runtime.vision_inputs import vision_feeds

    session = _session(graphs / formats.VISION_ONNX)
    questions = ["what part is this?", "colour?", "is the part defective, and how?", "x"]
    for batch in (1, 4):
        pixels = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        feeds = vision_feeds(pixels.numpy(), questions[:batch], tiny_backbone.info, tiny_backbone.qformer_tokenizer)
        with torch.no_grad():
            ids = torch.from_numpy(feeds[formats.IN_INSTRUCTION_IDS])
            reference = tiny_backbone.encode_image(pixels, ids, torch.from_numpy(feeds[formats.IN_INSTRUCTION_MASK]))
        np.testing.assert_allclose(session.run(None, feeds)[0], reference.numpy(), atol=1e-4)


@pytest.mark.parametrize("batch,past,step", [(1, 0, 9), (3, 0, 6), (2, 7, 1), (2, 5, 3)])
def test_decoder_graph_matches_hf_with_kv_cache_and_left_padding(graphs, tiny_backbone, batch, past, step):
    from transformers import DynamicCache

    from crome_edge.model import cache_argument
    from crome_export.decoder import DecoderDims, decoder_input_names

    llm = tiny_backbone.llm
    dims = DecoderDims.of(llm)
    g = torch.Generator().manual_seed(batch * 100 + past)
    embeds = torch.randn(batch, step, dims.d_model, generator=g)
    mask = torch.ones(batch, past + step, dtype=torch.long)
    mask[0, :2] = 0  # left padding on row 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
    cache_tensors = [torch.randn(batch, dims.num_kv_heads, past, dims.head_dim, generator=g) for _ in range(2 * dims.num_layers)]
    names = decoder_input_names(dims.num_layers)
    outputs = _session(graphs / formats.DECODER_ONNX).run(
        None, dict(zip(names, [t.numpy() for t in (embeds, mask, positions, *cache_tensors)])))
    cache = DynamicCache()
    if past:
        cache = DynamicCache(ddp_cache_data=[(cache_tensors[2 * i], cache_tensors[2 * i + 1]) for i in range(dims.num_layers)])
    with torch.no_grad():
        reference = llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                        **cache_argument(llm, cache))
    assert outputs[0].shape == (batch, 1, dims.vocab_size)
    np.testing.assert_allclose(outputs[0][:, -1], reference.logits[:, -1].numpy(), atol=1e-4)
    for i in range(dims.num_layers):  # present = past + new; compare unpadded positions (row 0 starts at 2)
        key = outputs[1 + 2 * i]
        assert key.shape == (batch, dims.num_kv_heads, past + step, dims.head_dim)
        np.testing.assert_allclose(key[:, :, 2:], cache.layers[i].keys[:, :, 2:].numpy(), atol=1e-4)


def test_int8_vision_is_tensorrt_style_qdq_and_close_to_fp32(graphs, tiny_backbone, tmp_path):
    from crome_runtime.vision_inputs import vision_feeds
    from crome_export.quantize import quantize_vision_static
    from crome_export.trt_check import check_graph

    rng = np.random.default_rng(0)
    questions = ["what part is this?", "colour?"] * 4
    feeds = [vision_feeds(rng.standard_normal((8, 3, 32, 32)).astype(np.float32), questions, tiny_backbone.info,
                          tiny_backbone.qformer_tokenizer) for _ in range(4)]
    info = quantize_vision_static(graphs / formats.VISION_ONNX, tmp_path / "vision_int8.onnx", feeds)
    assert info["method"] == "static-qdq" and info["calibration_frames"] == 32
    check = check_graph(tmp_path / "vision_int8.onnx")
    assert check.ok, check.problems
    assert check.qdq_pairs > 0 and check.weight_dq > 0
    assert not list(tmp_path.glob("*.data")) and not list(tmp_path.glob("sym_shape_infer_temp.onnx"))
    x = _session(graphs / formats.VISION_ONNX).run(None, feeds[0])[0].ravel()
    y = _session(tmp_path / "vision_int8.onnx").run(None, feeds[0])[0].ravel()
    assert x @ y / np.linalg.norm(x) / np.linalg.norm(y) >= 0.99


def test_trt_check_flags_bad_qdq_and_unsupported_ops(graphs, tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from crome_export.trt_check import check_graph

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
        helper.make_node("Relu", ["dq"], ["r"]),  # DQ feeding a Relu: not a TensorRT Q/DQ placement
        helper.make_node("Gelu", ["r"], ["y"], domain="com.microsoft"),  # contrib op
    ]
    graph = helper.make_graph(nodes, "bad", [x], [y], initializer=[
        numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(3, np.int8), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(tmp_path / "bad.onnx"))
    problems = " | ".join(check_graph(tmp_path / "bad.onnx", full_check=False).problems)
    assert "feeds ['Relu']" in problems and "zero point must be 0" in problems and "com.microsoft.Gelu" in problems
    assert check_graph(graphs / formats.DECODER_ONNX).ok  # the FP32 decoder is plain ONNX


def test_int8_decoder_rewrites_for_tensorrt_and_stays_close(graphs, tiny_backbone, tmp_path):
    from crome_export.decoder import DecoderDims, decoder_input_names
    from crome_export.engines import tensorrt_ready_model
    from crome_export.quantize import quantize_decoder
    from crome_export.trt_check import check_graph

    quantize_decoder(graphs / formats.DECODER_ONNX, tmp_path / "decoder_int8.onnx", "matmulnbits8")
    assert not check_graph(tmp_path / "decoder_int8.onnx").ok  # MatMulNBits is ONNX Runtime-only ...
    onnx.save(tensorrt_ready_model(tmp_path / "decoder_int8.onnx"), str(tmp_path / "decoder_trt.onnx"))
    check = check_graph(tmp_path / "decoder_trt.onnx")
    assert check.ok, check.problems  # ... rewritten to INT8 per-channel DQ -> MatMul for TensorRT
    assert check.weight_dq == 2 * 7  # q k v o gate up down per layer; the LM head stays FP32
    dims = DecoderDims.of(tiny_backbone.llm)
    rng = np.random.default_rng(0)
    feeds = dict(zip(decoder_input_names(dims.num_layers), [
        rng.standard_normal((1, 5, dims.d_model)).astype(np.float32), np.ones((1, 5), np.int64),
        np.arange(5)[None], *[np.zeros((1, dims.num_kv_heads, 0, dims.head_dim), np.float32)] * (2 * dims.num_layers)]))
    a = _session(graphs / formats.DECODER_ONNX).run(None, feeds)[0].ravel()
    b = _session(tmp_path / "decoder_trt.onnx").run(None, feeds)[0].ravel()
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.99


@pytest.mark.parametrize("family", ["llama_tied_gqa", "opt"])
def test_decoder_export_covers_tied_embeddings_and_opt(family, tmp_path):
    """SmolLM2 ties lm_head to the embeddings (9 heads / 3 kv heads); BLIP-2 ships OPT decoders."""
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    from crome_edge.model import cache_argument
    from crome_export.decoder import decoder_input_names, export_decoder

    torch.manual_seed(0)
    if family == "opt":
        llm = OPTForCausalLM(OPTConfig(vocab_size=300, hidden_size=48, ffn_dim=96, num_hidden_layers=2,
                                       num_attention_heads=4, word_embed_proj_dim=48, max_position_embeddings=128))
    else:
        llm = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=54, intermediate_size=96, num_hidden_layers=2,
                                           num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True))
    llm.eval()
    dims = export_decoder(llm, tmp_path / "decoder.onnx", 18)
    weights = sum(int(np.prod(t.dims)) for t in onnx.load(str(tmp_path / "decoder.onnx")).graph.initializer)
    assert weights < sum(p.numel() for p in llm.parameters()) + 1000  # a tied table is stored once, not twice
    batch, past, step = 2, 4, 3
    embeds = torch.randn(batch, step, dims.d_model)
    mask = torch.ones(batch, past + step, dtype=torch.long)
    mask[0, :2] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
    cache_tensors = [torch.randn(batch, dims.num_kv_heads, past, dims.head_dim) for _ in range(2 * dims.num_layers)]
    got = _session(tmp_path / "decoder.onnx").run(None, dict(zip(
        decoder_input_names(dims.num_layers), [t.numpy() for t in (embeds, mask, positions, *cache_tensors)])))[0]
    cache = DynamicCache(ddp_cache_data=[(cache_tensors[2 * i], cache_tensors[2 * i + 1]) for i in range(dims.num_layers)])
    with torch.no_grad():
        reference = llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                        **cache_argument(llm, cache))
    np.testing.assert_allclose(got[:, -1], reference.logits[:, -1].numpy(), atol=1e-4)


def test_export_handles_torch_transformer_layers(tmp_path):
    """A vision tower built from nn.TransformerEncoderLayer (ViTs of users' own backbones): its eval fast path has no
    ONNX form."""
    from crome_export.torch_export import export_onnx

    layer = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2)
    layer = layer.eval().requires_grad_(False)
    x = torch.randn(2, 5, 32)
    export_onnx(layer, (x,), tmp_path / "layer.onnx", ["x"], ["y"], {"x": {0: "b"}, "y": {0: "b"}}, 18)
    with torch.no_grad():
        np.testing.assert_allclose(_session(tmp_path / "layer.onnx").run(None, {"x": x.numpy()})[0], layer(x).numpy(), atol=1e-5)
    assert torch.backends.mha.get_fastpath_enabled()  # restored
