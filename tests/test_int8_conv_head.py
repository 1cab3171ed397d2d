"""The conv INT8 recipe leaves a tower's float head in float: the leading convs that sum over a few inputs per
position (an RGB stem, a depthwise conv), where ONNX Runtime's QLinearConv is slower than its float conv
(benchmarks/RESULTS.md, "INT8 against FP32 vision"); every conv after them runs as QLinearConv."""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from crome_export.quantize import conv_tower_nodes, float_head, quantize_vision_static


def _tower(path) -> None:
    """An EfficientNet-like tower: RGB stem, depthwise, then pointwise/depthwise pairs (10 convs, ReLU6 between)."""
    rng = np.random.default_rng(0)
    nodes, weights, x = [], [], "pixel_values"
    layers = [(3, 8, 3, 1), (8, 8, 3, 8)] + [(8, 16, 1, 1), (16, 16, 3, 16), (16, 8, 1, 1)] * 2 + [(8, 16, 1, 1),
                                                                                                   (16, 8, 1, 1)]
    for i, (c_in, c_out, k, groups) in enumerate(layers):
        w = (rng.standard_normal((c_out, c_in // groups, k, k)) / np.sqrt(c_in // groups * k * k)).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(c_out, np.float32), f"b{i}")]
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", group=groups,
                                      pads=[k // 2] * 4, strides=[2 if i == 0 else 1] * 2))
        nodes.append(helper.make_node("Clip", [f"c{i}", "lo", "hi"], [f"r{i}"], name=f"relu6_{i}"))
        x = f"r{i}"
    weights += [numpy_helper.from_array(np.array(0, np.float32), "lo"), numpy_helper.from_array(np.array(6, np.float32), "hi")]
    graph = helper.make_graph(nodes, "tower", [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 8, 16, 16])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def test_the_stem_and_first_depthwise_stay_float_and_every_later_conv_is_int8(tmp_path):
    _tower(tmp_path / "fp32.onnx")
    model = onnx.load(str(tmp_path / "fp32.onnx"))
    assert float_head(model, conv_tower_nodes(model)) == ["conv0", "relu6_0", "conv1", "relu6_1"]
    rng = np.random.default_rng(1)
    feeds = [{"pixel_values": rng.uniform(-2, 2, (1, 3, 32, 32)).astype(np.float32)} for _ in range(8)]
    description = quantize_vision_static(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", feeds)
    assert description["float_head"] == ["conv0", "conv1", "relu6_0", "relu6_1"]
    int8 = onnx.load(str(tmp_path / "int8.onnx"))
    dequantised = {n.output[0] for n in int8.graph.node if n.op_type == "DequantizeLinear"}
    convs = {n.name: n for n in int8.graph.node if n.op_type == "Conv"}
    assert [name for name, n in sorted(convs.items()) if n.input[1] in dequantised] == [f"conv{i}" for i in range(2, 10)]
    assert not {convs["conv0"].input[1], convs["conv1"].input[1]} & dequantised  # float weights

    def run(path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds[0])[0].ravel()

    a, b = run(tmp_path / "fp32.onnx").astype(np.float64), run(tmp_path / "int8.onnx").astype(np.float64)
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.98
