"""CromeBackbone: the frozen multimodal LLM the adapter sits on, whatever checkpoint it came from.

Holds the parts in one shape for every source (HF BLIP-2/InstructBLIP, `tiny`, `smol`, HF LLaVA and
SmolVLM/Idefics3): vision tower (pixels -> patch features), learned query tokens, Q-Former, projection to the
LLM width, optionally a pooled token (one more visual token made from the whole feature map, smol), and the decoder
LLM with its tokenizer. LLaVA-style backbones have no queries and no Q-Former: their
connector (LLaVA's MLP projector, Idefics3's pixel shuffle + linear) is the projection, and the visual tokens it
makes are what the adapter sees. It is not the adapter and not the training loop.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
from tokenizers import Tokenizer
from torch import nn

from crome_runtime.manifest import BackboneSchema, BackboneSpec
from crome_runtime.prompt import PromptTemplate, instruction_ids

if TYPE_CHECKING:
    from transformers import PreTrainedModel

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(kw_only=True)
class BackboneInfo(BackboneSchema):
    """The backbone schema (crome_runtime.manifest.BackboneSchema, shared with the bundle manifest) plus the
    prompt template adapters for this backbone are trained and run with."""

    prompt: PromptTemplate = field(default_factory=PromptTemplate)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["prompt"] = self.prompt.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "BackboneInfo":
        return cls(**{**data, "prompt": PromptTemplate.from_dict(data["prompt"])})


class CromeBackbone(nn.Module):
    def __init__(
        self,
        info: BackboneInfo,
        parts: "BackboneParts",
        llm_tokenizer: Tokenizer,
        qformer_tokenizer: Tokenizer | None = None,
    ):
        super().__init__()
        self.info = info
        self.vision = parts.vision
        self.query_tokens = parts.query_tokens
        self.qformer = parts.qformer
        self.projection = parts.projection
        self.pooled_token = parts.pooled_token
        self.llm = parts.llm
        self.llm_tokenizer = llm_tokenizer
        self.qformer_tokenizer = qformer_tokenizer
        self._fingerprint: str | None = None
        self.freeze()

    # --- freezing -------------------------------------------------------------------------------
    def freeze(self) -> None:
        """Everything frozen and in eval mode; a training stage unfreezes exactly what it trains."""
        self.requires_grad_(False)
        self.eval()

    # --- forward pieces -------------------------------------------------------------------------
    def encode_image(
        self,
        pixel_values: torch.Tensor,  # (B, 3, H, W)
        qformer_input_ids: torch.Tensor | None = None,  # (B, L)
        qformer_attention_mask: torch.Tensor | None = None,  # (B, L)
    ) -> torch.Tensor:
        """Frozen visual path -> projected query embeddings V: (B, Nq, d)."""
        return self.encode_features(self.image_features(pixel_values), qformer_input_ids, qformer_attention_mask)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The vision tower alone: (B, 3, H, W) -> patch features (B, Np, Dv). Pretraining caches these when the
        tower stays frozen."""
        features = self.vision(pixel_values)
        if not isinstance(features, torch.Tensor):  # HF vision models return a ModelOutput
            features = features.last_hidden_state  # (B, Np, Dv)
        return features

    def encode_features(
        self,
        features: torch.Tensor,  # (B, Np, Dv)
        qformer_input_ids: torch.Tensor | None = None,
        qformer_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Q-Former + projection over the tower's features -> V: (B, Nq, d). Without a Q-Former (LLaVA, Idefics3):
        the connector over the features."""
        return self._encode(features, qformer_input_ids, qformer_attention_mask, False)[0]

    def encode_image_explained(
        self,
        pixel_values: torch.Tensor,  # (B, 3, H, W)
        qformer_input_ids: torch.Tensor | None = None,
        qformer_attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """encode_image's V (B, Nq, d), and where each query looks: (B, Nq, gh, gw) over the tower's patch grid
        (crome_edge.query_attention), or None for a tower whose tokens form no square grid."""
        from crome_edge.backbones.eager import eager_attention
        from crome_edge.query_attention import patch_grid_attention

        with eager_attention(self):  # SDPA returns no attention maps
            features = self.image_features(pixel_values)
            visual, cross = self._encode(features, qformer_input_ids, qformer_attention_mask, True)
        return visual, patch_grid_attention(cross, features.shape[1], visual)

    def _encode(self, features, qformer_input_ids, qformer_attention_mask, attentions: bool):
        """-> (V (B, Nq, d), the Q-Former's cross-attention maps per layer (B, heads, Nq, Np) when `attentions`, else
        None; None too without a Q-Former)."""
        if self.qformer is None or self.query_tokens is None:
            return self.projection(features), None  # (B, Nq, d): Nq = the connector's visual tokens
        batch = features.shape[0]
        queries = self.query_tokens.expand(batch, -1, -1)  # (B, Nq, Dq)
        image_mask = torch.ones(features.shape[:2], dtype=torch.long, device=features.device)
        instruction = {}
        if self.info.instruction_aware:
            if qformer_input_ids is None:
                raise ValueError("this backbone's Q-Former reads the instruction: pass qformer_input_ids")
            if qformer_attention_mask is None:
                qformer_attention_mask = torch.ones_like(qformer_input_ids)
            query_mask = torch.ones(queries.shape[:2], dtype=torch.long, device=features.device)
            instruction = {"input_ids": qformer_input_ids,
                           "attention_mask": torch.cat([query_mask, qformer_attention_mask], dim=1)}
        if attentions:
            instruction["output_attentions"] = True
        out = self.qformer(query_embeds=queries, encoder_hidden_states=features, encoder_attention_mask=image_mask,
                           return_dict=True, **instruction)
        query_output = out.last_hidden_state[:, : queries.shape[1]]  # (B, Nq, Dq)
        visual = self.projection(query_output)  # (B, Nq, d)
        if self.pooled_token is not None:  # after the queries: (B, Nq + 1, d)
            visual = torch.cat([visual, self.pooled_token(features)], dim=1)
        return visual, (out.cross_attentions if attentions else None)

    def qformer_parts(self) -> tuple[nn.Parameter, nn.Module]:
        """(query tokens, Q-Former) of a BLIP-2-style backbone; ValueError for one without (LLaVA, Idefics3)."""
        if self.query_tokens is None or self.qformer is None:
            raise ValueError(f"backbone {self.info.name} ({self.info.architecture}) has no Q-Former")
        return self.query_tokens, self.qformer

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, N, d) through the frozen LLM's input-embedding table."""
        return self.llm.get_input_embeddings()(input_ids)

    # --- tokenisation (the rules are crome_runtime.prompt's, shared with the runtime) ------------------
    def tokenize(self, text: str) -> list[int]:
        return self.info.prompt.encode(self.llm_tokenizer, text)

    def tokenize_instruction(self, question: str) -> list[int]:
        """Ids for an instruction-aware Q-Former (its own tokenizer), truncated to its budget."""
        assert self.qformer_tokenizer is not None
        return instruction_ids(self.qformer_tokenizer, question, self.info.max_instruction_tokens)

    def stop_token_ids(self) -> frozenset[int]:
        return self.info.prompt.stop_ids(self.llm_tokenizer)

    def decode(self, ids: list[int]) -> str:
        return self.llm_tokenizer.decode(ids, skip_special_tokens=True)

    # --- identity -------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """sha256 over every frozen tensor's name, shape, dtype and bytes (computed once per object)."""
        if self._fingerprint is None:
            self._fingerprint = tensor_fingerprint(self.state_dict())
        return self._fingerprint

    def invalidate_fingerprint(self) -> None:
        """Call after changing weights in place (pretraining the visual side, loading parts)."""
        self._fingerprint = None

    def spec(self) -> BackboneSpec:
        """The bundle manifest's `backbone` section: this backbone's schema and fingerprint."""
        return BackboneSpec.of(self.info, self.fingerprint())

    def context_length(self) -> int:
        """Positions the LLM attends over: visual queries + prompt + answer must fit (crome_runtime.limits)."""
        return llm_context_length(self.llm)

    def short_description(self) -> str:
        return f"{self.info.name} (d={self.info.d_model}, fingerprint {self.fingerprint()[:12]}…)"


def llm_context_length(llm: PreTrainedModel) -> int:
    """A decoder LLM's context in positions, from its HF config (2048 where the config does not say); the exported
    decoder's manifest records the same number (crome_export.decoder.DecoderDims)."""
    return int(getattr(llm.config, "max_position_embeddings", 2048))


@dataclass
class BackboneParts:
    vision: nn.Module
    query_tokens: nn.Parameter | None  # (1, Nq, Dq); None without a Q-Former (LLaVA, Idefics3)
    qformer: nn.Module | None
    projection: nn.Module  # Q-Former width -> d, or the connector: tower features -> visual tokens (B, Nq, d)
    llm: PreTrainedModel  # a Hugging Face decoder-only CausalLM
    # Q-Former backbones may add one visual token made from the tower's whole map: features (B, Np, Dv) -> (B, 1, d)
    pooled_token: nn.Module | None = None


def tensor_fingerprint(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().contiguous().cpu()
        digest.update(json.dumps([name, list(tensor.shape), str(tensor.dtype)]).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)  # the buffer itself: no copy of 540 MB
    return digest.hexdigest()
