"""Shared plumbing for `torch.onnx.export` of the frozen backbone's parts (vision.py, decoder.py).

The TorchScript exporter (`dynamo=False`) is used: it exports these graphs ~100x faster than dynamo
(docs/architecture.md §6). During export every attention module runs its "eager" implementation: plain
MatMul/Softmax ops with an additive mask, no SDPA-specific IsNaN guards or shape-dependent branches.
The parity checks in fidelity.py compare the exported graphs with the model as PyTorch runs it (SDPA).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from crome_edge.backbones.eager import eager_attention  # noqa: F401  (re-exported: vision.py, decoder.py)


def export_onnx(
    module: nn.Module,
    args: tuple,
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
) -> None:
    """torch.onnx.export (TorchScript tracer) with the tracer's expected warnings silenced and
    nn.TransformerEncoderLayer's fused fast path off (its `_transformer_encoder_layer_fwd` has no ONNX form)."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about Python-int shapes in HF code we do not own
            torch.onnx.export(
                module, args, str(path), input_names=input_names, output_names=output_names,
                dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False, do_constant_folding=True,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
