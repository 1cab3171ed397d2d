"""Eager attention for a while: plain MatMul/Softmax attention in every Hugging Face module under a model.

What the ONNX export traces (crome_export.torch_export) and what returns attention maps (SDPA returns none:
crome_edge.query_attention reads the Q-Former's cross-attention through it).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Switches every Hugging Face config under `model` to eager attention, restoring it afterwards."""
    configs = {id(config): config for m in model.modules()  # config: a Hugging Face PretrainedConfig, duck-typed
               if (config := getattr(m, "config", None)) is not None and hasattr(config, "_attn_implementation")}
    saved = {key: config._attn_implementation for key, config in configs.items()}
    try:
        for config in configs.values():
            config._attn_implementation = "eager"
        yield
    finally:
        for key, config in configs.items():
            config._attn_implementation = saved[key]
