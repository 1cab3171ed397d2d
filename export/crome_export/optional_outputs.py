"""A graph's optional outputs kept out of quantisation: split off before, grafted back after.

vision.onnx's formats.OUT_QUERY_ATTENTION reads the Q-Former's attention softmaxes. Quantised with the graph, it would
move calibration (more tensors), and as a second reader of a DequantizeLinear it stops ONNX Runtime fusing that
Q/DQ pair into its MatMul: the main output would change and slow down. So the graph is quantised without its optional
branch — the same graph as before the branch existed, so the same INT8 main output bit for bit (tests/test_explain.py)
— and the branch is added back reading the float tensors it read before (a softmax's output, not its Q/DQ copy).
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx

from crome_runtime import formats

OPTIONAL_OUTPUTS = (formats.OUT_QUERY_ATTENTION,)


def needed_nodes(graph: onnx.GraphProto, outputs: set[str]) -> set[int]:
    """Indices of the nodes that `outputs` depend on."""
    producers = {name: i for i, node in enumerate(graph.node) for name in node.output}
    wanted, stack = set(), [producers[name] for name in outputs if name in producers]
    while stack:
        i = stack.pop()
        if i in wanted:
            continue
        wanted.add(i)
        stack.extend(producers[name] for name in graph.node[i].input if name in producers)
    return wanted


def split_optional(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list, list, list]:
    """-> (the model without its optional outputs, and their nodes, initializers and output value infos)."""
    graph = model.graph
    main_outputs = {o.name for o in graph.output if o.name not in OPTIONAL_OUTPUTS}
    keep = needed_nodes(graph, main_outputs)
    branch_nodes = [node for i, node in enumerate(graph.node) if i not in keep]
    branch_inputs = {name for node in branch_nodes for name in node.input}
    main = onnx.ModelProto()
    main.CopyFrom(model)
    del main.graph.node[:]
    main.graph.node.extend(node for i, node in enumerate(graph.node) if i in keep)
    del main.graph.output[:]
    main.graph.output.extend(o for o in graph.output if o.name in main_outputs)
    main_inputs = {name for node in main.graph.node for name in node.input} | main_outputs
    del main.graph.initializer[:]
    main.graph.initializer.extend(t for t in graph.initializer if t.name in main_inputs)
    branch_initializers = [t for t in graph.initializer if t.name in branch_inputs and t.name not in main_inputs]
    shared = [t for t in graph.initializer if t.name in branch_inputs and t.name in main_inputs]
    optional = [o for o in graph.output if o.name in OPTIONAL_OUTPUTS]
    return main, branch_nodes, branch_initializers + shared, optional


def graft(model: onnx.ModelProto, nodes: list, initializers: list, outputs: list) -> None:
    """Adds a split-off branch to `model` (in place). The tensors it reads from the main graph must still be there
    under their names; ValueError naming the first one that is not."""
    graph = model.graph
    present = ({t.name for t in graph.initializer} | {i.name for i in graph.input}
               | {name for node in graph.node for name in node.output})
    own = {name for node in nodes for name in node.output}
    if own & present:
        raise ValueError(f"the optional branch's tensor {sorted(own & present)[0]!r} is also in the quantised graph")
    existing = {t.name for t in graph.initializer}
    graph.initializer.extend(t for t in initializers if t.name not in existing)
    present |= {t.name for t in initializers}
    missing = sorted(name for node in nodes for name in node.input if name and name not in present | own)
    if missing:
        raise ValueError(f"the optional outputs read {missing[0]!r}, which quantisation removed from the graph")
    graph.node.extend(nodes)
    graph.output.extend(outputs)


def quantize_around_optional_outputs(source: Path, target: Path, quantize: Callable[[Path, Path], dict]) -> dict:
    """quantize(source, target) on the graph without its optional outputs, then those outputs added back."""
    source, target = Path(source).resolve(), Path(target).resolve()
    model = onnx.load(str(source))
    if not any(o.name in OPTIONAL_OUTPUTS for o in model.graph.output):
        return quantize(source, target)
    main, nodes, initializers, outputs = split_optional(model)
    with tempfile.TemporaryDirectory(prefix="crome-optional-") as tmp:
        stripped = Path(tmp) / source.name
        onnx.save(main, str(stripped))
        description = quantize(stripped, target)
    quantized = onnx.load(str(target))
    graft(quantized, nodes, initializers, outputs)
    onnx.save(quantized, str(target))
    description["optional_outputs"] = [o.name for o in outputs]
    return description
