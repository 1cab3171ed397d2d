"""Static checks that a bundle's ONNX graphs are ones TensorRT can build, without TensorRT installed.

- every node's op type is in TensorRT's ONNX parser support list (TRT 10, onnx-tensorrt operators.md),
  after inlining local functions (the crome FusedGatedProjection inlines to MatMul/Split/Sigmoid/Mul/Add);
- Q/DQ placement follows explicit quantisation: a QuantizeLinear feeds only DequantizeLinear nodes, a
  DequantizeLinear feeds only MatMul/Conv/Gemm, activation Q/DQ are INT8 with zero point 0 and a scalar
  scale, weight DQ are INT8 with zero point 0, per-tensor or per-channel along the output-channel axis;
- the graph passes onnx.checker with full_check (opset, types and shapes consistent).
Graphs with ONNX Runtime contrib ops (e.g. the decoder's com.microsoft.MatMulNBits) are reported here;
engines.py rewrites those before handing a graph to TensorRT (`tensorrt_ready_model`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx.inliner
from onnx import numpy_helper

QDQ_CONSUMERS = ("MatMul", "Conv", "Gemm")

# TensorRT 10 ONNX parser: supported operators (ai.onnx domain).
TENSORRT_ONNX_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization BlackmanWindow
Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv
DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If
InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop
LpNormalization LpPool LRN LSTM MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg
NonMaxSuppression NonZero Not OneHot Or Pad Pow PRelu QuantizeLinear RandomNormal RandomNormalLike
RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign
Round Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax
Softplus Softsign SpaceToDepth Split Sqrt Squeeze STFT Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose
Trilu Unsqueeze Upsample Where Xor
""".split())


@dataclass
class GraphCheck:
    name: str
    opset: int
    op_types: dict[str, int]
    problems: list[str] = field(default_factory=list)
    qdq_pairs: int = 0
    weight_dq: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"opset": self.opset, "ok": self.ok, "problems": self.problems, "op_types": self.op_types,
                "activation_qdq_pairs": self.qdq_pairs, "weight_dequantize": self.weight_dq}


def check_graph(path: Path, full_check: bool = True) -> GraphCheck:
    model = onnx.load(str(path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    problems = []
    try:
        onnx.checker.check_model(model, full_check=full_check)
    except onnx.checker.ValidationError as error:  # also raised by full_check's strict shape inference
        problems.append(f"onnx.checker: {str(error).splitlines()[0]}")
    except onnx.shape_inference.InferenceError as error:
        problems.append(f"onnx shape inference: {str(error).splitlines()[0]}")
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        key = f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        counts[key] = counts.get(key, 0) + 1
        if node.domain not in ("", "ai.onnx") or node.op_type not in TENSORRT_ONNX_OPS:
            problems.append(f"op {key} ({node.name or 'unnamed'}) is not a TensorRT ONNX op")
    check = GraphCheck(Path(path).name, opset, dict(sorted(counts.items())), _dedupe(problems))
    _check_qdq(model, check)
    return check


def _check_qdq(model: onnx.ModelProto, check: GraphCheck) -> None:
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    constants = {n.output[0]: n.attribute[0].t for n in graph.node if n.op_type == "Constant" and n.attribute}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def value(name: str):
        tensor = initializers.get(name) or constants.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            users = consumers.get(node.output[0], [])
            if not users or any(u.op_type != "DequantizeLinear" for u in users):
                check.problems.append(f"QuantizeLinear {node.name} feeds {[u.op_type for u in users]}, not only DequantizeLinear")
            _check_scale_zero_point(node, value, check, activation=True)
        elif node.op_type == "DequantizeLinear":
            users = consumers.get(node.output[0], [])
            bad = [u.op_type for u in users if u.op_type not in QDQ_CONSUMERS]
            if bad or not users:
                check.problems.append(f"DequantizeLinear {node.name} feeds {bad or 'nothing'}; Q/DQ belong on MatMul/Conv/Gemm inputs only")
            weight = value(node.input[0])
            if weight is None:
                check.qdq_pairs += 1
                _check_scale_zero_point(node, value, check, activation=True)
                continue
            check.weight_dq += 1
            if weight.dtype != np.int8:
                check.problems.append(f"weight DequantizeLinear {node.name} reads {weight.dtype}; TensorRT wants int8 weights")
            _check_scale_zero_point(node, value, check, activation=False)
            _check_weight_axis(node, weight, users, check)


def _check_scale_zero_point(node, value, check: GraphCheck, activation: bool) -> None:
    scale = value(node.input[1])
    zero_point = value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if scale is None:
        check.problems.append(f"{node.op_type} {node.name}: scale is not a constant")
        return
    if activation and scale.size != 1:
        check.problems.append(f"{node.op_type} {node.name}: activation scale must be per-tensor, has {scale.size} values")
    if np.any(scale <= 0) or not np.all(np.isfinite(scale)):
        check.problems.append(f"{node.op_type} {node.name}: scale must be finite and positive")
    if zero_point is not None:
        if zero_point.dtype != np.int8:
            check.problems.append(f"{node.op_type} {node.name}: zero point is {zero_point.dtype}, TensorRT needs int8")
        if np.any(zero_point != 0):
            check.problems.append(f"{node.op_type} {node.name}: zero point must be 0 (symmetric)")


def _check_weight_axis(node, weight: np.ndarray, users, check: GraphCheck) -> None:
    scale_size = _attr(node, "axis", None)
    per_channel = weight.ndim > 1 and scale_size is not None
    if not per_channel:
        return
    axis = scale_size % weight.ndim
    for user in users:
        slot = list(user.input).index(node.output[0])
        if user.op_type == "Conv" and slot == 1:
            expected = 0
        elif user.op_type == "MatMul" and slot == 1:
            expected = weight.ndim - 1
        elif user.op_type == "Gemm" and slot == 1:
            expected = 0 if _attr(user, "transB", 0) else 1
        else:
            expected = None
        if expected is not None and axis != expected:
            check.problems.append(
                f"DequantizeLinear {node.name}: per-channel axis {axis} is not the output-channel axis {expected} of {user.op_type}"
            )


def _attr(node, name, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _dedupe(problems: list[str]) -> list[str]:
    seen, out = set(), []
    for problem in problems:
        key = problem.split(" (")[0]
        if key not in seen:
            seen.add(key)
            out.append(problem)
    return out
