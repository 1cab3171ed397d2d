"""Vision part of a bundle: vision encoder + Q-Former + frozen projection as one ONNX graph.

Inputs (formats.py names): pixel_values (B, 3, H, W) float32, normalised; for instruction-aware
(InstructBLIP-style) Q-Formers also qformer_input_ids / qformer_attention_mask (B, L) int64, the
instruction right-padded with 0. Output: visual_embeds (B, Nq, d), the projected query embeddings V.
Batch and L are dynamic. Not here: quantisation (quantize.py), the adapter (adapter_graph.py).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from crome_edge.backbones.base import CromeBackbone
from crome_export.torch_export import eager_attention, export_onnx
from crome_runtime import formats


class _VisionPath(nn.Module):
    def __init__(self, backbone: CromeBackbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, pixel_values, qformer_input_ids=None, qformer_attention_mask=None):
        return self.backbone.encode_image(pixel_values, qformer_input_ids, qformer_attention_mask)  # (B, Nq, d)


def vision_input_names(instruction_aware: bool) -> list[str]:
    names = [formats.IN_PIXEL_VALUES]
    if instruction_aware:
        names += [formats.IN_INSTRUCTION_IDS, formats.IN_INSTRUCTION_MASK]
    return names


def export_vision(backbone: CromeBackbone, path: Path, opset: int) -> None:
    info = backbone.info
    pixels = torch.randn(2, 3, info.image_size, info.image_size, generator=torch.Generator().manual_seed(0))
    args: tuple = (pixels,)
    dynamic = {formats.IN_PIXEL_VALUES: {0: "batch"}, formats.OUT_VISUAL_EMBEDS: {0: "batch"}}
    if info.instruction_aware:
        ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]])  # (2, L): right-padded like CromeModel
        args = (pixels, ids, (ids != 0).long())
        dynamic[formats.IN_INSTRUCTION_IDS] = {0: "batch", 1: "instruction_length"}
        dynamic[formats.IN_INSTRUCTION_MASK] = {0: "batch", 1: "instruction_length"}
    module = _VisionPath(backbone).eval()
    with eager_attention(backbone):
        export_onnx(
            module, args, path, input_names=vision_input_names(info.instruction_aware),
            output_names=[formats.OUT_VISUAL_EMBEDS], dynamic_axes=dynamic, opset=opset,
        )
