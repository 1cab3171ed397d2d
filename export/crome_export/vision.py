"""Vision part of a bundle: vision encoder + Q-Former + frozen projection as one ONNX graph.

Inputs (formats.py names): pixel_values (B, 3, H, W) float32, normalised; for instruction-aware
(InstructBLIP-style) Q-Formers also qformer_input_ids / qformer_attention_mask (B, L) int64, the
instruction right-padded with 0. Outputs: visual_embeds (B, Nq, d), the projected query embeddings V, and, where the
tower's tokens form a square grid, the optional query_attention (B, Nq, gh, gw): where each query looks
(crome_edge.query_attention; read only when `--explain` asks, docs/explain.md). Batch and L are dynamic. Not here: quantisation (quantize.py), the adapter (adapter_graph.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from crome_edge.backbones.base import CromeBackbone
from crome_export.torch_export import eager_attention, export_onnx
from crome_runtime import formats


class _VisionPath(nn.Module):
    def __init__(self, backbone: CromeBackbone, explain: bool):
        super().__init__()
        self.backbone, self.explain = backbone, explain

    def forward(self, pixel_values, qformer_input_ids=None, qformer_attention_mask=None):
        if self.explain:  # (B, Nq, d), (B, Nq, gh, gw)
            return self.backbone.encode_image_explained(pixel_values, qformer_input_ids, qformer_attention_mask)
        return self.backbone.encode_image(pixel_values, qformer_input_ids, qformer_attention_mask)  # (B, Nq, d)


def vision_input_names(instruction_aware: bool) -> list[str]:
    names = [formats.IN_PIXEL_VALUES]
    if instruction_aware:
        names += [formats.IN_INSTRUCTION_IDS, formats.IN_INSTRUCTION_MASK]
    return names


def export_vision(backbone: CromeBackbone, path: Path, opset: int, explain: bool = True) -> None:
    """explain: add the optional query_attention output where the backbone has one (False: the graph as before it
    existed, what tests compare against)."""
    info = backbone.info
    pixels = torch.randn(2, 3, info.image_size, info.image_size, generator=torch.Generator().manual_seed(0))
    args: tuple = (pixels,)
    dynamic = {formats.IN_PIXEL_VALUES: {0: "batch"}, formats.OUT_VISUAL_EMBEDS: {0: "batch"}}
    if info.instruction_aware:
        ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]])  # (2, L): right-padded like CromeModel
        args = (pixels, ids, (ids != 0).long())
        dynamic[formats.IN_INSTRUCTION_IDS] = {0: "batch", 1: "instruction_length"}
        dynamic[formats.IN_INSTRUCTION_MASK] = {0: "batch", 1: "instruction_length"}
    outputs = [formats.OUT_VISUAL_EMBEDS]
    with torch.no_grad():  # one pass tells both how many tokens and whether there is a map
        visual, maps = backbone.encode_image_explained(*args) if explain else (backbone.encode_image(*args), None)
    tokens = visual.shape[1]
    if tokens != info.num_query_tokens:  # the manifest would promise what the graph does not make
        raise ValueError(f"backbone {info.name} declares {info.num_query_tokens} visual tokens, "
                         f"its vision path makes {tokens}")
    explain = explain and maps is not None  # a tower with no square grid: no map
    if explain:
        outputs.append(formats.OUT_QUERY_ATTENTION)
        dynamic[formats.OUT_QUERY_ATTENTION] = {0: "batch"}
    module = _VisionPath(backbone, explain).eval()
    with eager_attention(backbone):
        export_onnx(
            module, args, path, input_names=vision_input_names(info.instruction_aware),
            output_names=outputs, dynamic_axes=dynamic, opset=opset,
        )
    fold_pads_into_convs(path)
    pin_token_axis(path, tokens)


def pin_token_axis(path: Path, tokens: int) -> None:
    """Writes the visual-token axis of the outputs as the number it is. A pooled token concatenated after the queries
    (smol) leaves the exporter a symbolic dim there, and the bundle's graph check can only hold a number to the
    manifest."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)  # weights stay where they are
    changed = False
    for output in model.graph.output:
        if output.name in (formats.OUT_VISUAL_EMBEDS, formats.OUT_QUERY_ATTENTION):
            axis = output.type.tensor_type.shape.dim[1]
            if axis.HasField("dim_param"):
                axis.dim_value = tokens  # replaces the dim_param (a oneof)
                changed = True
    if changed:
        onnx.save(model, str(path))


def fold_pads_into_convs(path: Path) -> int:
    """Folds every constant zero Pad whose only consumer is a Conv into that Conv's `pads` (ONNX Conv pads may be
    asymmetric; PyTorch's may not, so TF-"SAME" towers export a Pad before each stride-2 conv). Without this the
    INT8 graph dequantises around each Pad, and a Pad costs a full copy of its map. Returns how many were folded."""
    import onnx
    from onnx import numpy_helper

    if not any(node.op_type == "Pad" for node in onnx.load(str(path)).graph.node):
        return 0
    import onnxruntime as ort

    options = ort.SessionOptions()  # basic level: constant folding only, nothing tied to this machine's CPU
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(path)
    options.log_severity_level = 3  # errors only
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])  # writes the folded graph
    model = onnx.load(str(path))
    graph = model.graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}  # folded: pads are initializers now
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    folded = []
    for pad in graph.node:
        if pad.op_type != "Pad" or pad.input[1] not in constants:
            continue
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        value = constants.get(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else None
        users = consumers.get(pad.output[0], [])
        if mode != b"constant" or (value is not None and np.any(value != 0)) or len(users) != 1 or users[0].op_type != "Conv":
            continue
        amounts = constants[pad.input[1]].reshape(-1).tolist()  # [n, c, h, w begins, n, c, h, w ends]
        if len(amounts) != 8 or any(amounts[i] for i in (0, 1, 4, 5)):
            continue
        conv = users[0]
        old = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [0, 0, 0, 0])
        new = [old[0] + amounts[2], old[1] + amounts[3], old[2] + amounts[6], old[3] + amounts[7]]
        for attribute in list(conv.attribute):
            if attribute.name in ("pads", "auto_pad"):
                conv.attribute.remove(attribute)
        conv.attribute.append(onnx.helper.make_attribute("pads", new))
        conv.input[0] = pad.input[0]
        folded.append(pad)
    for pad in folded:
        graph.node.remove(pad)
    if folded:
        onnx.save(model, str(path))
    return len(folded)
