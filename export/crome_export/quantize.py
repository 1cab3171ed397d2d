"""INT8 for a bundle's backbone parts, with ONNX Runtime's quantisation tools.

- Vision, convolutional towers (smol's EfficientNet eye): `_quantize_conv_tower`, uint8 activations through the
  whole tower (ONNX Runtime's QLinearConv), the same 7-bit weights; not yet TensorRT's explicit-quantisation form
  (asymmetric activations: trt_check.py says so in the report).
- Vision, transformers: static QDQ, symmetric INT8 activations (zero point 0) and per-channel symmetric 7-bit weights
  (int8 storage, values in [-64, 64]), restricted to MatMul/Conv/Gemm (quantising every op type broke
  InstructBLIP: the attention-mask add) with float biases, calibrated on real frames. That is the form
  TensorRT's explicit-quantisation path accepts as well as ONNX Runtime (trt_check.py verifies it).
  `quantize_vision_dynamic` is the fallback the report names.
- Why 7-bit weights (ONNX Runtime's `reduce_range`): a bundle runs on CPUs the exporter never saw. On x86
  without VNNI, ONNX Runtime computes int8 products with VPMADDUBSW (u8 x s8, pairs summed in int16), which
  saturates when |w| > 64: measured on the tiny backbone, full-range weights gave vision cosine 0.9992 with
  AVX-512 VNNI but 0.9825 on AVX2 (Haswell, under qemu); 7-bit weights give 0.99859 on both, bit for bit.
  255 * 64 * 2 = 32640 fits int16, so no CPU saturates; VNNI, ARM NEON/dotprod and TensorRT lose nothing but
  one bit of weight precision.
- Decoder: INT8 weights (when asked for, see DEFAULT_DECODER_INT8) for every transformer-layer MatMul; the
  LM head (tied to the embedding table in SmolLM2) stays FP32.
- FP16: float16 weights and compute, float32 inputs and outputs.

The tools write `*.data` and `sym_shape_infer_temp.onnx` into the working directory, so every call runs
inside its own temporary directory. Not here: which frames calibrate (frames.py), accuracy (fidelity.py).
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from crome_export.optional_outputs import quantize_around_optional_outputs

STATIC_OP_TYPES = ("MatMul", "Conv", "Gemm")
# The INT8 vision recipe (part of the export cache key): change the name when what it builds changes.
VISION_INT8_RECIPE = "static-qdq-s8s8-w7"
VISION_INT8_CONV_RECIPE = "static-qdq-conv-u8s8-w7-mm-fh"  # graphs with a convolutional tower (_quantize_conv_tower)
CONV_TOWER_MIN_CONVS = 8  # a ViT has one (patch) conv; smol's eye 33
TOWER_OP_TYPES = ("Clip", "Relu", "Add")
# A conv that reads at most this many input channels per group (an RGB stem's 3, a depthwise conv's 1) at the tower's
# full resolution runs faster in float than as QLinearConv on ONNX Runtime's CPU kernels: the int8 product has
# almost nothing to sum over. The tower's leading run of them stays float (float_head).
FLOAT_HEAD_MAX_GROUP_CHANNELS = 4
VISION_INT8_FALLBACK = "dynamic-qint8-w7"  # when the static recipe measures below the cosine floor (backbone_parts.py)
DECODER_INT8_METHODS = ("fp32", "matmulnbits8", "dynamic-qint8")
# Measured on smol + line3, 2 CPU threads (benchmarks/RESULTS.md, export section): no INT8 form of SmolLM2's
# decoder is both accurate and fast on ONNX Runtime's CPU kernels. dynamic-qint8: 68 tok/s but logit cosine
# 0.41 (activation outliers); MatMulNBits with int8 activations (accuracy level 4): −12 points; weight-only
# MatMulNBits (level 1): −2 points at 3.8 tok/s. The FP32 decoder runs 38 tok/s with no loss, so an "int8"
# bundle keeps its decoder in FP32 unless --decoder-int8 asks otherwise (e.g. for GPUs with 8-bit kernels).
DEFAULT_DECODER_INT8 = "fp32"
NBITS_BLOCK_SIZE = 32
# 1 = fp32 activations (weight-only INT8). Level 4 also quantises activations to int8: on smol + line3 it
# cost 12 accuracy points (logit cosine 0.989), far beyond the 1-point budget.
NBITS_ACCURACY_LEVEL = 1


@contextlib.contextmanager
def _scratch_dir() -> Iterator[Path]:
    previous = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="crome-quantize-") as tmp:
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(previous)


class _FeedsReader:
    """onnxruntime CalibrationDataReader over a list of feed dicts (one batch each)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)

    def rewind(self):  # not needed by MinMax calibration, part of the protocol
        pass


def conv_tower_nodes(model: onnx.ModelProto) -> list[str]:
    """The nodes of a convolutional tower: every Conv, and each Clip/Relu/Add whose inputs all come from the tower
    (or are constants) — the ReLU6s and residual adds between convs, not the transformer's adds after them."""
    constants = {i.name for i in model.graph.initializer}
    produced_by_tower: set[str] = set()
    tower = []
    for node in model.graph.node:  # ONNX nodes are in topological order
        inputs = [name for name in node.input if name and name not in constants]
        if node.op_type == "Conv" or (node.op_type in TOWER_OP_TYPES and inputs
                                      and all(name in produced_by_tower for name in inputs)):
            tower.append(node.name)
            produced_by_tower.update(node.output)
    return tower


def float_head(model: onnx.ModelProto, tower: list[str]) -> list[str]:
    """The tower's leading nodes up to its first conv that reads more than FLOAT_HEAD_MAX_GROUP_CHANNELS input channels
    per group (on EfficientNet-Lite0: the stem and block 0's depthwise conv, both at 112×112, and their ReLU6s).
    Measured on smol's vision graph, one thread, AVX-512 VNNI, interleaved on a quiet machine: INT8 4.31 ms with the
    head in float, 4.36 ms without (FP32 7.79 ms); a small gain, and a larger one under load (benchmarks/RESULTS.md)."""
    weights = {t.name: t.dims for t in model.graph.initializer}
    nodes = {node.name: node for node in model.graph.node}
    head = []
    for name in tower:
        node = nodes[name]
        if node.op_type == "Conv":
            dims = weights.get(node.input[1])
            if dims is None or dims[1] > FLOAT_HEAD_MAX_GROUP_CHANNELS:
                break
        head.append(name)
    return head


def quantize_vision_static(source: Path, target: Path, calibration_feeds: list[dict[str, np.ndarray]]) -> dict:
    """Static QDQ INT8 of a vision graph; returns a description for the manifest and the report. A graph with a
    convolutional tower (at least CONV_TOWER_MIN_CONVS convs: smol's EfficientNet eye) takes the conv recipe
    (`_quantize_conv_tower`), every other graph (ViTs: one patch conv, then transformers) the MatMul recipe below.
    The optional outputs (optional_outputs.py) are quantised around: the graph without them is quantised exactly as
    before they existed, and their float branch is added back after."""
    if not calibration_feeds:
        raise ValueError("static quantisation needs at least one calibration batch")
    return quantize_around_optional_outputs(source, target, lambda s, t: _quantize_static(s, t, calibration_feeds))


def _quantize_static(source: Path, target: Path, calibration_feeds: list[dict[str, np.ndarray]]) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, target = Path(source).resolve(), Path(target).resolve()
    if sum(node.op_type == "Conv" for node in onnx.load(str(source)).graph.node) >= CONV_TOWER_MIN_CONVS:
        return _quantize_conv_tower(source, target, calibration_feeds)
    with _scratch_dir() as tmp:
        prepared = tmp / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)  # InstructBLIP needs the skip
        quantize_static(
            str(prepared), str(target), _FeedsReader(calibration_feeds),
            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(STATIC_OP_TYPES),
            per_channel=True, reduce_range=True,  # 7-bit weights: no int16 saturation on any CPU (above)
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={
                "ActivationSymmetric": True,  # TensorRT: INT8 activations with zero point 0
                "WeightSymmetric": True,
                "QuantizeBias": False,  # biases stay float (TensorRT fuses them in float)
                "DedicatedQDQPair": True,  # one Q/DQ pair per consumer: each MatMul/Conv owns its inputs' scales
                "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},  # output channels of a (K, N) weight
                "OpTypesToExcludeOutputQuantization": list(STATIC_OP_TYPES),  # Q/DQ on inputs only
            },
        )
    model = onnx.load(str(target))
    restrict_dequantized_consumers(model, STATIC_OP_TYPES)
    onnx.save(model, str(target))
    return {
        "method": "static-qdq",
        "op_types": list(STATIC_OP_TYPES),
        "activations": "int8 symmetric per-tensor (MinMax)",
        "weights": "int8 symmetric per-channel, 7-bit range [-64, 64] (reduce_range)",
        "recipe": VISION_INT8_RECIPE,
        "calibration_batches": len(calibration_feeds),
        "calibration_frames": int(sum(next(iter(f.values())).shape[0] for f in calibration_feeds)),
    }


def _quantize_conv_tower(source: Path, target: Path, calibration_feeds: list[dict[str, np.ndarray]]) -> dict:
    """The conv recipe: the tower's Conv, ReLU6 (Clip) and residual Add nodes fully in QDQ (inputs *and* outputs), so
    ONNX Runtime runs them as QLinearConv/QLinearAdd end to end; uint8 activations (asymmetric: ReLU6 maps are
    non-negative, and u8 x s8 is the fast int8 product on x86 and ARM) and the same per-channel 7-bit symmetric
    weights as the MatMul recipe (reduce_range: no int16 saturation on CPUs without VNNI). The Q-Former's MatMuls
    after the tower get Q/DQ on their inputs only (ONNX Runtime fuses them to MatMulIntegerToFloat; with outputs
    quantised too they measured slower). Measured on smol's vision graph, one thread, AVX-512 VNNI: inputs-only QDQ
    on convs (the MatMul recipe) ran 2.7x *slower* than FP32 (float convs between Q/DQ pairs); symmetric int8
    activations 1.3x slower (ORT's s8s8 QLinearConv on x86); the tower alone in u8 2.1x faster, with the MatMul
    inputs too 2.3x (benchmarks/RESULTS.md). The tower's float_head (an RGB stem, a depthwise conv at full
    resolution) stays float: QLinearConv is slower than ONNX Runtime's float conv where it sums over a few inputs."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _scratch_dir() as tmp:
        prepared = tmp / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        tower = conv_tower_nodes(model)
        head = set(float_head(model, tower))
        tower = [name for name in tower if name not in head]
        matmuls = [node.name for node in model.graph.node if node.op_type == "MatMul"]
        quantize_static(
            str(prepared), str(target), _FeedsReader(calibration_feeds),
            quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv", *TOWER_OP_TYPES, "MatMul"],
            nodes_to_quantize=tower + matmuls, per_channel=True, reduce_range=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"WeightSymmetric": True, "QuantizeBias": False,
                           "OpTypesToExcludeOutputQuantization": ["MatMul"]},  # the Q-Former's MatMuls: inputs only
        )
    return {
        "method": "static-qdq",
        "op_types": ["Conv", *TOWER_OP_TYPES, "MatMul"],
        "nodes": len(tower) + len(matmuls),
        "float_head": sorted(head),
        "activations": "uint8 asymmetric per-tensor (MinMax): the convolutional tower end to end, MatMul inputs",
        "weights": "int8 symmetric per-channel, 7-bit range [-64, 64] (reduce_range)",
        "recipe": VISION_INT8_CONV_RECIPE,
        "calibration_batches": len(calibration_feeds),
        "calibration_frames": int(sum(next(iter(f.values())).shape[0] for f in calibration_feeds)),
    }


def restrict_dequantized_consumers(model: onnx.ModelProto, op_types: tuple[str, ...]) -> int:
    """Rewires every consumer of a DequantizeLinear output that is not one of `op_types` (e.g. a Shape
    reading the same activation as a Conv) to the float tensor the QuantizeLinear read, then drops Q/DQ
    pairs left without consumers. Returns how many inputs were rewired."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    rewired = 0
    for dq in [n for n in graph.node if n.op_type == "DequantizeLinear"]:
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue  # a constant INT8 weight: only its MatMul/Conv/Gemm reads it
        for node in graph.node:
            if node.op_type in op_types:
                continue
            for i, name in enumerate(node.input):
                if name == dq.output[0]:
                    node.input[i] = q.input[0]
                    rewired += 1
    graph_outputs = {o.name for o in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | graph_outputs
        dead = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.output[0] not in used]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for initializer in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(initializer)
    return rewired


def quantize_vision_dynamic(source: Path, target: Path) -> dict:
    return quantize_around_optional_outputs(source, target, _quantize_dynamic)


def _quantize_dynamic(source: Path, target: Path) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, target = Path(source).resolve(), Path(target).resolve()
    with _scratch_dir():
        quantize_dynamic(
            str(source), str(target), op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
            reduce_range=True, weight_type=QuantType.QInt8,
        )
    return {"method": "dynamic-qint8", "op_types": ["MatMul", "Gemm"], "weights": "int8 per-channel, 7-bit range",
            "activations": "quantised at run time (ONNX Runtime only; TensorRT cannot build it)"}


def lm_head_nodes(model: onnx.ModelProto) -> list[str]:
    """The MatMul that produces the logits (the LM head)."""
    from crome_runtime import formats

    return [n.name for n in model.graph.node if n.op_type == "MatMul" and formats.OUT_LOGITS in n.output]


def quantize_decoder(source: Path, target: Path, method: str = DEFAULT_DECODER_INT8) -> dict:
    """INT8 weights for every MatMul of the decoder's layers (attention, MLP); the LM head stays FP32:
    ORT's 8-bit MatMulNBits on SmolLM2's (576, 49152) head made a decode step 8x slower (export/README.md)."""
    source, target = Path(source).resolve(), Path(target).resolve()
    head = lm_head_nodes(onnx.load(str(source)))
    if method == "fp32":
        shutil.copyfile(source, target)
        return {"method": "fp32", "op": "MatMul", "why": "no INT8 decoder form is both accurate and faster here"}
    if method == "matmulnbits8":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)  # per-node INFO

        with _scratch_dir():
            quantizer = MatMulNBitsQuantizer(
                onnx.load(str(source)), bits=8, block_size=NBITS_BLOCK_SIZE, is_symmetric=True, accuracy_level=NBITS_ACCURACY_LEVEL,
                nodes_to_exclude=head,
            )
            quantizer.process()
            onnx.save(quantizer.model.model, str(target))
        return {"method": "matmulnbits8", "op": "com.microsoft.MatMulNBits", "bits": 8,
                "block_size": NBITS_BLOCK_SIZE, "symmetric": True, "accuracy_level": NBITS_ACCURACY_LEVEL,
                "fp32_nodes": head}
    if method == "dynamic-qint8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with _scratch_dir():
            quantize_dynamic(str(source), str(target), op_types_to_quantize=["MatMul"], per_channel=True,
                             reduce_range=True, weight_type=QuantType.QInt8, nodes_to_exclude=head)
        return {"method": "dynamic-qint8", "op": "DynamicQuantizeLinear + MatMulInteger", "weights": "int8 per-channel",
                "fp32_nodes": head}
    raise ValueError(f"unknown decoder INT8 method {method!r}; choose one of {', '.join(DECODER_INT8_METHODS)}")


def convert_fp16(source: Path, target: Path) -> dict:
    """float16 weights and compute; inputs/outputs stay float32 so the runtime feeds the same arrays."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))
    return {"method": "fp16", "io": "float32"}
