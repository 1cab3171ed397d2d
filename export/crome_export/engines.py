"""`crome-edge build-engines`: TensorRT engines for a bundle, built on the target device.

For each graph of the bundle: make it TensorRT-ready (`tensorrt_ready_model`: inline the crome function
unless a FusedGatedProjection plugin is registered; rewrite ONNX Runtime's 8-bit MatMulNBits into INT8
per-channel DequantizeLinear -> MatMul, TensorRT's weight-only form), parse it, add one optimisation
profile per dynamic input (`engine_profiles`, from the manifest's dims), share one timing cache across
builds (engines/timing.cache), and serialise engines/<graph>.engine plus engines/engines.json (every
adapter's graphs included).
TensorRT is optional (extra `[trt]`) and imported lazily; without it the command says how to install it.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.inliner
from onnx import helper, numpy_helper

from crome_edge.errors import CromeError
from crome_runtime import formats

@dataclass
class EngineLimits:
    max_batch: int = 8
    max_prompt_tokens: int = 128  # text tokens of a prompt (adapter_text, part of the prefill)
    max_total_tokens: int = 512  # prefix + generated tokens (decoder KV length)


Shapes = tuple[tuple[int, ...], ...]  # one input's (min, opt, max) shapes


def engine_profiles(manifest, limits: EngineLimits) -> dict[str, dict[str, Shapes]]:
    """graph file (the vision graph, every adapter's two graphs, the decoder) -> input name -> (min, opt, max) shapes
    for one TensorRT optimisation profile."""
    b, llm = manifest.backbone, manifest.llm
    batch = (1, max(1, limits.max_batch // 2), limits.max_batch)
    size, d, nq = b.image_size, b.d_model, b.num_query_tokens
    vision: dict[str, Shapes] = {formats.IN_PIXEL_VALUES: tuple((n, 3, size, size) for n in batch)}
    if b.instruction_aware:
        lengths = (1, max(1, b.max_instruction_tokens // 2), b.max_instruction_tokens)
        for name in (formats.IN_INSTRUCTION_IDS, formats.IN_INSTRUCTION_MASK):
            vision[name] = tuple((n, length) for n, length in zip(batch, lengths))
    prefill = nq + limits.max_prompt_tokens
    total = limits.max_total_tokens
    decoder: dict[str, Shapes] = {
        formats.IN_INPUTS_EMBEDS: ((1, 1, d), (batch[1], 1, d), (batch[2], prefill, d)),
        formats.IN_ATTENTION_MASK: ((1, 1), (batch[1], prefill), (batch[2], total)),
        formats.IN_POSITION_IDS: ((1, 1), (batch[1], 1), (batch[2], prefill)),
    }
    for i in range(llm.num_layers):
        for name in (formats.past_key_name(i), formats.past_value_name(i)):
            decoder[name] = tuple((n, llm.num_kv_heads, p, llm.head_dim) for n, p in zip(batch, (0, prefill, total - 1)))
    adapter: dict[str, dict[str, Shapes]] = {"adapter_visual": {formats.IN_ADAPTER_X: tuple((n, nq, d) for n in batch)},
               "adapter_text": {formats.IN_ADAPTER_X: ((1, 1, d), (1, 32, d), (batch[2], limits.max_prompt_tokens, d))}}
    profiles = {formats.VISION_ONNX: vision}
    for entry in manifest.adapters:  # each adapter's two graphs
        profiles.update({entry.file(role): shapes for role, shapes in adapter.items()})
    profiles[formats.DECODER_ONNX] = decoder
    return profiles


# --- graph preparation ----------------------------------------------------------------------------
def tensorrt_ready_model(path: Path, keep_crome_function: bool = False) -> onnx.ModelProto:
    model = onnx.load(str(path))
    if model.functions and not keep_crome_function:
        model = onnx.inliner.inline_local_functions(model)
    if any(n.op_type == "MatMulNBits" for n in model.graph.node):
        model = matmulnbits_to_qdq(model)
    return model


def matmulnbits_to_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """com.microsoft.MatMulNBits (8-bit, block-wise) -> DequantizeLinear(int8 (K, N), per-channel) -> MatMul."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.op_type != "MatMulNBits":
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("bits") != 8 or len([i for i in node.input if i]) > 4:
            raise CromeError(f"{node.name}: only 8-bit MatMulNBits without bias/g_idx can be rewritten for TensorRT")
        k, n, block = attrs["K"], attrs["N"], attrs["block_size"]
        packed = numpy_helper.to_array(initializers[node.input[1]]).reshape(n, -1)[:, :k].astype(np.float32)  # (N, K)
        scales = numpy_helper.to_array(initializers[node.input[2]]).reshape(n, -1).astype(np.float32)  # (N, blocks)
        if len(node.input) > 3 and node.input[3]:
            zero = numpy_helper.to_array(initializers[node.input[3]]).reshape(n, -1).astype(np.float32)
        else:
            zero = np.full_like(scales, 128.0)
        blocks = np.arange(k) // block
        weight = (packed - zero[:, blocks]) * scales[:, blocks]  # (N, K) float
        channel_scale = np.maximum(np.abs(weight).max(axis=1), 1e-12) / 127.0  # (N,)
        q = np.clip(np.round(weight / channel_scale[:, None]), -127, 127).astype(np.int8).T  # (K, N)
        base = node.name or node.output[0]
        q_name, s_name, z_name, w_name = f"{base}_w_int8", f"{base}_w_scale", f"{base}_w_zero", f"{base}_w"
        graph.initializer.extend([
            numpy_helper.from_array(np.ascontiguousarray(q), q_name),
            numpy_helper.from_array(channel_scale.astype(np.float32), s_name),
            numpy_helper.from_array(np.zeros(n, dtype=np.int8), z_name),
        ])
        nodes.append(helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [w_name], axis=1, name=f"{base}_dq"))
        nodes.append(helper.make_node("MatMul", [node.input[0], w_name], list(node.output), name=f"{base}_matmul"))
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for node in graph.node for i in node.input}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)
    for opset in list(model.opset_import):
        if opset.domain == "com.microsoft" and not any(n.domain == "com.microsoft" for n in graph.node):
            model.opset_import.remove(opset)
    return model


# --- building -------------------------------------------------------------------------------------
def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise CromeError(
            "TensorRT is not installed in this environment. On the target device (Jetson: it ships with "
            "JetPack; x86 + NVIDIA GPU: pip install 'crome-edge[trt]'), then run crome-edge build-engines again. "
            "Without engines the bundle runs on ONNX Runtime."
        ) from None
    return tensorrt


def build_engines(bundle: Path, precision: str = "fp16", workspace_mb: int = 2048,
                  limits: EngineLimits | None = None, say=print) -> Path:
    """Builds engines/<graph>.engine for every graph of `bundle`; returns the engines directory."""
    from crome_export.bundle import bundle_lock

    with bundle_lock(bundle, "build-engines"):  # engines/ is written into the bundle: one writer at a time
        return _build_engines(bundle, precision, workspace_mb, limits, say)


def _build_engines(bundle: Path, precision: str, workspace_mb: int, limits: EngineLimits | None, say) -> Path:
    from crome_runtime.manifest import read_manifest

    manifest = read_manifest(Path(bundle))  # BundleError
    if precision not in ("fp32", "fp16", "int8"):
        raise CromeError(f"unknown engine precision {precision!r}")
    limits = limits or EngineLimits()
    profiles = engine_profiles(manifest, limits)
    trt = import_tensorrt()
    engines = Path(bundle) / formats.ENGINES_DIR
    engines.mkdir(exist_ok=True)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantisation: scales come from the graphs' Q/DQ
    cache_path = engines / formats.TIMING_CACHE_FILE
    timing_cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(timing_cache, ignore_mismatch=False)
    plugin_names = {c.name for c in trt.get_plugin_registry().plugin_creator_list}
    record = {"tensorrt": trt.__version__, "precision": precision, "workspace_mb": workspace_mb,
              "limits": vars(limits), "engines": {}}
    for name in profiles:
        started = time.perf_counter()
        say(f"building {name} -> TensorRT ({precision})")
        model = tensorrt_ready_model(Path(bundle) / name, formats.FUSED_GATED_PROJECTION_OP in plugin_names)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(model.SerializeToString()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise CromeError(f"TensorRT cannot parse {name}: {errors}")
        profile = builder.create_optimization_profile()
        for input_name, (low, opt, high) in profiles[name].items():
            profile.set_shape(input_name, low, opt, high)
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise CromeError(f"TensorRT failed to build {name}; see the messages above")
        engine_name = name.replace(".onnx", ".engine")
        (engines / engine_name).write_bytes(bytes(serialized))
        record["engines"][engine_name] = {"source": name, "seconds": round(time.perf_counter() - started, 1),
                                          "profile": {k: [list(s) for s in v] for k, v in profiles[name].items()}}
        config = _fresh_config(builder, config, trt, workspace_mb, precision, timing_cache)
    cache_path.write_bytes(bytes(timing_cache.serialize()))
    (engines / formats.ENGINES_MANIFEST).write_text(json.dumps(record, indent=2))
    return engines


def _fresh_config(builder, old, trt, workspace_mb, precision, timing_cache):
    """A builder config holds its profiles; each graph gets its own, sharing the timing cache."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)
    return config
