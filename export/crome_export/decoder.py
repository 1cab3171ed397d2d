"""Decoder part of a bundle: the frozen LLM over `inputs_embeds` with a KV cache, as one ONNX graph.

One graph serves prefill (past length P = 0) and decode (S = 1). Inputs (formats.py names):
inputs_embeds (B, S, d) float32; attention_mask (B, P + S) int64, 0 on left padding; position_ids
(B, S) int64; past_key_values.{i}.key/.value (B, kv_heads, P, head_dim) per layer. Outputs: logits
(B, 1, vocab) for the last position only, and present.{i}.key/.value (B, kv_heads, P + S, head_dim).

The causal + padding mask is built inside the graph from attention_mask alone (key j is visible to query
i when mask[j] = 1 and j <= P + i), as an additive float mask with finfo.min rather than -inf, so a
fully padded query row stays finite. Works for any Hugging Face decoder-only LLM that accepts a 4-D
mask (LLaMA family incl. GQA and tied embeddings, OPT, Mistral, Qwen2). Also writes the token-embedding
table (formats.EMBEDDINGS_FILE). Not here: INT8 (quantize.py), the generation loop (crome_runtime.engine).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from crome_edge.backbones.base import llm_context_length
from crome_export.torch_export import eager_attention, export_onnx
from crome_runtime import formats

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class DecoderDims:
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    d_model: int
    vocab_size: int
    max_position_embeddings: int

    @classmethod
    def of(cls, llm: PreTrainedModel) -> "DecoderDims":
        config = llm.config
        heads = config.num_attention_heads
        return cls(
            num_layers=config.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            d_model=config.hidden_size,
            vocab_size=llm.get_output_embeddings().weight.shape[0],
            max_position_embeddings=llm_context_length(llm),
        )


def decoder_input_names(num_layers: int) -> list[str]:
    names = [formats.IN_INPUTS_EMBEDS, formats.IN_ATTENTION_MASK, formats.IN_POSITION_IDS]
    for i in range(num_layers):
        names += [formats.past_key_name(i), formats.past_value_name(i)]
    return names


def decoder_output_names(num_layers: int) -> list[str]:
    names = [formats.OUT_LOGITS]
    for i in range(num_layers):
        names += [formats.present_key_name(i), formats.present_value_name(i)]
    return names


def additive_attention_mask(attention_mask: torch.Tensor, position_ids: torch.Tensor, dtype) -> torch.Tensor:
    """(B, T) padding mask, (B, S) queries -> (B, 1, S, T) additive mask; shape-free ops only (traces dynamic)."""
    key_index = torch.cumsum(torch.ones_like(attention_mask), -1) - 1  # (B, T): 0 .. T-1
    total = key_index[:, -1:] + 1  # (B, 1): T
    steps = torch.ones_like(position_ids)
    query_index = torch.cumsum(steps, -1) - 1 + (total - steps.sum(-1, keepdim=True))  # (B, S): P .. T-1
    visible = (key_index[:, None, :] <= query_index[:, :, None]) & (attention_mask[:, None, :] > 0)  # (B, S, T)
    blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype)
    return torch.where(visible, torch.zeros((), dtype=dtype), blocked)[:, None]  # (B, 1, S, T)


class _DecoderStep(nn.Module):
    def __init__(self, llm: PreTrainedModel, num_layers: int):
        super().__init__()
        self.llm = llm
        self.num_layers = num_layers

    def forward(self, inputs_embeds, attention_mask, position_ids, *past):
        from transformers.cache_utils import DynamicCache, DynamicLayer

        from crome_edge.model import cache_argument

        cache = DynamicCache()
        cache.layers = []
        for i in range(self.num_layers):  # filled directly: DynamicCache(data) concats onto an empty 1-D tensor
            layer = DynamicLayer()
            layer.keys, layer.values = past[2 * i], past[2 * i + 1]  # (B, kv_heads, P, head_dim)
            layer.is_initialized, layer.device, layer.dtype = True, inputs_embeds.device, inputs_embeds.dtype
            cache.layers.append(layer)
        mask = additive_attention_mask(attention_mask, position_ids, inputs_embeds.dtype)
        hidden = self.llm.base_model(
            inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=position_ids, use_cache=True,
            **cache_argument(self.llm.base_model, cache),
        ).last_hidden_state  # (B, S, d)
        logits = self.llm.get_output_embeddings()(hidden[:, -1:])  # (B, 1, vocab)
        present = [t for layer in cache.layers for t in (layer.keys, layer.values)]
        return (logits, *present)


def export_decoder(llm: PreTrainedModel, path: Path, opset: int) -> DecoderDims:
    dims = DecoderDims.of(llm)
    batch, past, step = 2, 3, 4  # S > 1 so that no decode-only (S == 1) branch is traced in
    generator = torch.Generator().manual_seed(0)
    embeds = torch.randn(batch, step, dims.d_model, generator=generator)
    mask = torch.ones(batch, past + step, dtype=torch.long)
    mask[1, 0] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
    cache = [torch.randn(batch, dims.num_kv_heads, past, dims.head_dim, generator=generator) for _ in range(2 * dims.num_layers)]
    inputs, outputs = decoder_input_names(dims.num_layers), decoder_output_names(dims.num_layers)
    dynamic = {
        formats.IN_INPUTS_EMBEDS: {0: "batch", 1: "sequence"},
        formats.IN_ATTENTION_MASK: {0: "batch", 1: "total_sequence"},
        formats.IN_POSITION_IDS: {0: "batch", 1: "sequence"},
        formats.OUT_LOGITS: {0: "batch"},
    }
    dynamic.update({name: {0: "batch", 2: "past_sequence"} for name in inputs[3:]})
    dynamic.update({name: {0: "batch", 2: "total_sequence"} for name in outputs[1:]})
    with eager_attention(llm):
        export_onnx(
            _DecoderStep(llm, dims.num_layers).eval(), (embeds, mask, positions, *cache), path,
            input_names=inputs, output_names=outputs, dynamic_axes=dynamic, opset=opset,
        )
    return dims


def save_embeddings(llm: PreTrainedModel, path: Path) -> None:
    """The frozen LLM's input-embedding table, (vocab, d) float32 .npy (the runtime gathers rows)."""
    table = llm.get_input_embeddings().get_parameter("weight").detach().to(torch.float32).cpu().numpy()
    np.save(path, np.ascontiguousarray(table))
