"""Adapter part of a bundle: one ONNX graph per modality holding a single fused gated projection.

The fused form (docs/architecture.md §2) is an ONNX *function* `FusedGatedProjection` in the crome domain
(formats.CROME_ONNX_DOMAIN), so a runtime or a TensorRT plugin can match it as one op, while ONNX Runtime
inlines its body:

    FusedGatedProjection(x, w_down_gate, w_up):   h = x · [Wd | Wg]            (B, N, 2r)   one GEMM
                                                  zd, zg = Split(h, 2)         (B, N, r) each
                                                  z = zg · Sigmoid(zg) · zd    SiLU·mul epilogue
                                                  y = x + z · Wu               (B, N, d)    GEMM + residual

Built directly with onnx.helper (no tracing: the graph is the formula). Also lists which kernels ONNX
Runtime really runs for it after its graph optimisations (`ort_kernels`), for the fidelity report.
"""
from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from crome_runtime import formats
from crome_runtime.formats import ADAPTER_MODALITIES
from crome_runtime import input_files

FUNCTION_OPSET = 18  # Split with num_outputs


def fused_gated_projection_function(opset: int) -> onnx.FunctionProto:
    nodes = [
        helper.make_node("MatMul", ["X", "W_down_gate"], ["H"]),  # (B, N, 2r)
        helper.make_node("Split", ["H"], ["Z_down", "Z_gate"], axis=-1, num_outputs=2),
        helper.make_node("Sigmoid", ["Z_gate"], ["Gate_sigmoid"]),
        helper.make_node("Mul", ["Z_gate", "Gate_sigmoid"], ["Gate_silu"]),  # SiLU(x·Wg)
        helper.make_node("Mul", ["Gate_silu", "Z_down"], ["Z"]),  # (B, N, r)
        helper.make_node("MatMul", ["Z", "W_up"], ["U"]),  # (B, N, d)
        helper.make_node("Add", ["X", "U"], ["Y"]),
    ]
    return helper.make_function(
        formats.CROME_ONNX_DOMAIN, formats.FUSED_GATED_PROJECTION_OP,
        inputs=["X", "W_down_gate", "W_up"], outputs=["Y"], nodes=nodes,
        opset_imports=[helper.make_opsetid("", max(opset, FUNCTION_OPSET))],
        doc_string="y = x + (SiLU(x·Wg) * (x·Wd))·Wu with W_down_gate = [Wd | Wg] (d, 2r), W_up (r, d)",
    )


def pooled_step_nodes(read: np.ndarray, map_: np.ndarray, bias: np.ndarray) -> tuple[list, list, str]:
    """Nodes computing x' = x with its last token t moved by (t · read) · map + bias (the adapter's pooled map);
    (nodes, initializers, the name of x')."""
    int64 = lambda name, values: numpy_helper.from_array(np.array(values, dtype=np.int64), name)  # noqa: E731
    initializers = [
        numpy_helper.from_array(np.ascontiguousarray(read, dtype=np.float32), "pooled_read"),
        numpy_helper.from_array(np.ascontiguousarray(map_, dtype=np.float32), "pooled_map"),
        numpy_helper.from_array(np.ascontiguousarray(bias, dtype=np.float32), "pooled_bias"),
        int64("zero", [0]), int64("minus_one", [-1]), int64("end", [np.iinfo(np.int64).max]), int64("token_axis", [1]),
    ]
    x = formats.IN_ADAPTER_X
    nodes = [
        helper.make_node("Slice", [x, "zero", "minus_one", "token_axis"], ["x_head"]),  # (B, N-1, d)
        helper.make_node("Slice", [x, "minus_one", "end", "token_axis"], ["x_last"]),  # (B, 1, d)
        helper.make_node("MatMul", ["x_last", "pooled_read"], ["pooled_features"]),  # (B, 1, F)
        helper.make_node("MatMul", ["pooled_features", "pooled_map"], ["pooled_mapped"]),  # (B, 1, d)
        helper.make_node("Add", ["pooled_mapped", "pooled_bias"], ["pooled_moved"]),
        helper.make_node("Add", ["x_last", "pooled_moved"], ["x_last_moved"]),
        helper.make_node("Concat", ["x_head", "x_last_moved"], ["x_pooled"], axis=1),
    ]
    return nodes, initializers, "x_pooled"


def build_adapter_graph(w_down_gate: np.ndarray, w_up: np.ndarray, modality: str, opset: int,
                        pooled: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> onnx.ModelProto:
    """w_down_gate: (d, 2r) = [Wd | Wg]; w_up: (r, d). Input `x` (B, N, d) -> output `y` (B, N, d). pooled: the
    adapter's folded pooled map (read, map, bias), applied to the last token first (the visual graph)."""
    d, two_r = w_down_gate.shape
    if w_up.shape != (two_r // 2, d):
        raise ValueError(f"w_up has shape {w_up.shape}, expected {(two_r // 2, d)} for w_down_gate {w_down_gate.shape}")
    x = helper.make_tensor_value_info(formats.IN_ADAPTER_X, TensorProto.FLOAT, ["batch", "tokens", d])
    y = helper.make_tensor_value_info(formats.OUT_ADAPTER_Y, TensorProto.FLOAT, ["batch", "tokens", d])
    nodes, initializers, source = pooled_step_nodes(*pooled) if pooled is not None else ([], [], formats.IN_ADAPTER_X)
    nodes.append(helper.make_node(
        formats.FUSED_GATED_PROJECTION_OP, [source, formats.ADAPTER_W_DOWN_GATE, formats.ADAPTER_W_UP],
        [formats.OUT_ADAPTER_Y], domain=formats.CROME_ONNX_DOMAIN, name=f"crome_adapter_{modality}",
    ))
    graph = helper.make_graph(
        nodes, f"crome_adapter_{modality}", [x], [y],
        initializer=[
            numpy_helper.from_array(np.ascontiguousarray(w_down_gate, dtype=np.float32), formats.ADAPTER_W_DOWN_GATE),
            numpy_helper.from_array(np.ascontiguousarray(w_up, dtype=np.float32), formats.ADAPTER_W_UP),
        ] + initializers,
    )
    opset = max(opset, FUNCTION_OPSET)
    model = helper.make_model(
        graph, functions=[fused_gated_projection_function(opset)],
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(formats.CROME_ONNX_DOMAIN, 1)],
        producer_name="crome-edge",
    )
    model.ir_version = min(model.ir_version, 10)  # readable by older ONNX Runtime / TensorRT parsers
    onnx.checker.check_model(model, full_check=True)
    return model


def export_adapter_graphs(adapter, directory: Path, opset: int) -> dict[str, Path]:
    """Writes adapter_visual.onnx and adapter_text.onnx for a CromeAdapter; returns modality -> path."""
    paths = {}
    w_up = adapter.up.detach().cpu().numpy()
    for modality in ADAPTER_MODALITIES:
        w_down_gate = adapter.fused_weight(modality).detach().cpu().numpy()
        pooled = None
        if modality == "visual" and adapter.pooled is not None:
            pooled = tuple(t.detach().cpu().numpy() for t in adapter.pooled.folded())
        path = directory / formats.adapter_onnx(modality)
        onnx.save(build_adapter_graph(w_down_gate, w_up, modality, opset, pooled), str(path))
        paths[modality] = path
    return paths


def ort_kernels(path: Path) -> dict:
    """What ONNX Runtime makes of an adapter graph: the op types as written, the graph after ORT's
    optimisations (saved at ORT_ENABLE_EXTENDED: an ORT_ENABLE_ALL graph bakes in hardware-specific
    layouts), and the kernels a profiled run executes at ORT_ENABLE_ALL (what a runtime session uses)."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    d = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    feed = {formats.IN_ADAPTER_X: np.zeros((1, 3, d), dtype=np.float32)}
    with tempfile.TemporaryDirectory(prefix="crome-ort-kernels-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(str(Path(tmp) / "optimized.onnx"))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        session.run(None, feed)
        profile = input_files.read_json(Path(session.end_profiling()))
    executed = Counter(
        f"{event['args']['op_name']}@{event['args'].get('provider', '?')}"
        for event in profile
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time")
    )
    return {
        "graph_ops": [_op_name(n) for n in model.graph.node],
        "function_body_ops": [n.op_type for f in model.functions for n in f.node],
        "ort_optimized_ops_extended": [_op_name(n) for n in optimized.graph.node],
        "ort_executed_kernels_all": dict(sorted(executed.items())),
    }


def _op_name(node: onnx.NodeProto) -> str:
    return f"{node.domain}.{node.op_type}" if node.domain else node.op_type
