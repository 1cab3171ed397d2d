"""CromeModel: frozen backbone + CROME adapter -> teacher-forced loss and KV-cache generation.

LLM input = concat(adapter(V, visual), adapter(T, text)) where V are the projected visual queries and T
the prompt's token embeddings (docs/architecture.md §2). Answer tokens (training) and generated tokens (decoding)
enter through the plain embedding table, so decode steps never pay for the adapter.
Not here: the training loop (train.py), adapter files (adapter_file.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from crome_edge.gated_adapter import CromeAdapter
from crome_edge.backbones.base import CromeBackbone
from crome_runtime.manifest import GenerationDefaults


@dataclass
class GenerationConfig(GenerationDefaults):
    """The bundle's generation settings (temperature 0 = greedy) plus the sampler's seed."""

    seed: int = 0


@dataclass
class PrefixBatch:
    """The LLM's input prefix for a batch, left-padded so that every row ends at the same position."""

    embeds: torch.Tensor  # (B, L, d)
    attention_mask: torch.Tensor  # (B, L) int64, 0 on padding
    position_ids: torch.Tensor  # (B, L) int64


class CromeModel(nn.Module):
    def __init__(self, backbone: CromeBackbone, adapter: CromeAdapter | None = None):
        super().__init__()
        self.backbone = backbone
        self.adapter = adapter

    # --- adapter on/off -------------------------------------------------------------------------
    def attach_adapter(self, adapter: CromeAdapter) -> None:
        if adapter.config.d_model != self.backbone.info.d_model:
            raise ValueError(
                f"adapter width d={adapter.config.d_model} does not match backbone "
                f"{self.backbone.short_description()}"
            )
        self.adapter = adapter

    def detach_adapter(self) -> CromeAdapter | None:
        adapter, self.adapter = self.adapter, None
        return adapter

    # --- pieces ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.backbone.llm.parameters()).device

    def visual_embeds(self, pixel_values: torch.Tensor, questions: list[str]) -> torch.Tensor:
        """Frozen visual path: (B, 3, H, W) -> V (B, Nq, d), instruction-aware when the Q-Former is."""
        return self.visual_from_features(self.backbone.image_features(pixel_values), questions)

    def visual_from_features(self, features: torch.Tensor, questions: list[str]) -> torch.Tensor:
        """`visual_embeds` from the vision tower's output (B, Np, Dv): pretraining caches it when the tower is frozen."""
        if not self.backbone.info.instruction_aware:
            return self.backbone.encode_features(features)
        ids, mask = pad_right([self.backbone.tokenize_instruction(q) for q in questions], pad_id=0)
        return self.backbone.encode_features(features, ids.to(self.device), mask.to(self.device))

    def adapt(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        return x if self.adapter is None else self.adapter(x, modality)

    def prompt_ids(self, question: str) -> list[int]:
        return self.backbone.info.prompt.prompt_ids(self.backbone.llm_tokenizer, question)

    def answer_ids(self, answer: str) -> list[int]:
        """Answer tokens plus the template's stop suffix, so the model learns where to stop."""
        return self.backbone.info.prompt.answer_ids(self.backbone.llm_tokenizer, answer)

    def prefix_rows(self, visual: torch.Tensor, questions: list[str]) -> list[torch.Tensor]:
        """Per row: concat(adapted V, adapted T) -> list of (Nq + Nt_i, d); with a template that places the image
        inside the prompt (LLaVA, Idefics3), adapted V sits where the image token was: T[:at], V, T[at:]."""
        rows = []
        for i, question in enumerate(questions):
            ids, at = self.backbone.info.prompt.prompt_parts(self.backbone.llm_tokenizer, question)
            text = self.adapt(self.backbone.embed_tokens(torch.tensor(ids, device=self.device)[None]), "text")
            vis = self.adapt(visual[i : i + 1], "visual")  # (1, Nq, d)
            rows.append(torch.cat([text[:, :at], vis, text[:, at:]], dim=1)[0])
        return rows

    # --- training -------------------------------------------------------------------------------
    def loss(self, pixel_values: torch.Tensor, questions: list[str], answers: list[str]) -> torch.Tensor:
        """Mean cross-entropy over answer tokens only (prompt and visual positions carry no loss)."""
        return self.loss_from_visual(self.visual_embeds(pixel_values, questions), questions, answers)

    def loss_from_visual(self, visual: torch.Tensor, questions: list[str], answers: list[str]) -> torch.Tensor:
        """`loss` from precomputed visual queries V (B, Nq, d): adapter fine-tuning caches V once."""
        prefixes = self.prefix_rows(visual, questions)
        answer_ids = [torch.tensor(self.answer_ids(a), device=self.device) for a in answers]
        rows = [torch.cat([p, self.backbone.embed_tokens(a[None])[0]]) for p, a in zip(prefixes, answer_ids)]
        embeds, mask = pad_right_embeds(rows)  # (B, L, d), (B, L)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.backbone.llm.base_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions
        ).last_hidden_state  # (B, L, d)
        # Logits only where an answer token is predicted: the position before each answer token.
        batch_index: list[int] = []
        source_index: list[int] = []
        targets: list[torch.Tensor] = []
        for b, (p, a) in enumerate(zip(prefixes, answer_ids)):
            start = p.shape[0] - 1
            batch_index += [b] * len(a)
            source_index += range(start, start + len(a))
            targets.append(a)
        picked = hidden[torch.tensor(batch_index), torch.tensor(source_index)]  # (T, d)
        logits = self.backbone.llm.get_output_embeddings()(picked).float()  # (T, vocab)
        return F.cross_entropy(logits, torch.cat(targets))

    # --- inference ------------------------------------------------------------------------------
    def build_prefix(self, pixel_values: torch.Tensor, questions: list[str]) -> PrefixBatch:
        return self.prefix_from_visual(self.visual_embeds(pixel_values, questions), questions)

    def prefix_from_visual(self, visual: torch.Tensor, questions: list[str]) -> PrefixBatch:
        """`build_prefix` from precomputed visual queries V (B, Nq, d)."""
        rows = self.prefix_rows(visual, questions)
        embeds, mask = pad_left_embeds(rows)
        return PrefixBatch(embeds, mask, (mask.cumsum(-1) - 1).clamp(min=0))

    def build_text_prefix(self, questions: list[str]) -> PrefixBatch:
        """A text-only prompt (no image): the adapter's text branch alone feeds the LLM."""
        rows = []
        for question in questions:
            ids = torch.tensor(self.prompt_ids(question), device=self.device)
            rows.append(self.adapt(self.backbone.embed_tokens(ids[None]), "text")[0])
        embeds, mask = pad_left_embeds(rows)
        return PrefixBatch(embeds, mask, (mask.cumsum(-1) - 1).clamp(min=0))

    @torch.no_grad()
    def generate(
        self, pixel_values: torch.Tensor, questions: list[str], config: GenerationConfig | None = None
    ) -> list[list[int]]:
        """KV-cache decoding; returns the generated ids per row, without the stop token."""
        return self.generate_from_prefix(self.build_prefix(pixel_values, questions), config)

    @torch.no_grad()
    def generate_from_prefix(self, prefix: PrefixBatch, config: GenerationConfig | None = None) -> list[list[int]]:
        from transformers import DynamicCache

        config = config or GenerationConfig()
        sampler = TokenSampler(config)
        stop_ids = self.backbone.stop_token_ids()
        batch = prefix.embeds.shape[0]
        mask, positions = prefix.attention_mask, prefix.position_ids
        cache = cache_argument(self.backbone.llm, DynamicCache())  # the cache is updated in place by every call
        out = self.backbone.llm(
            inputs_embeds=prefix.embeds, attention_mask=mask, position_ids=positions,
            use_cache=True, logits_to_keep=1, **cache,
        )
        generated: list[list[int]] = [[] for _ in range(batch)]
        finished = [False] * batch
        for _ in range(config.max_new_tokens):
            next_ids = sampler.next_tokens(out.logits[:, -1].float(), generated)  # (B,)
            for b, token in enumerate(next_ids.tolist()):
                if finished[b]:
                    continue
                if token in stop_ids:
                    finished[b] = True
                else:
                    generated[b].append(token)
            if all(finished) or len(generated[0]) >= config.max_new_tokens:
                break
            mask = torch.cat([mask, torch.ones(batch, 1, dtype=mask.dtype, device=mask.device)], dim=1)
            positions = positions[:, -1:] + 1
            out = self.backbone.llm(
                inputs_embeds=self.backbone.embed_tokens(next_ids[:, None]), attention_mask=mask,
                position_ids=positions, use_cache=True, **cache,
            )
        return generated

    def answer(self, pixel_values: torch.Tensor, questions: list[str], config: GenerationConfig | None = None) -> list[str]:
        return [self.backbone.decode(ids) for ids in self.generate(pixel_values, questions, config)]


def cache_argument(llm: nn.Module, cache) -> dict:
    """transformers >= 5.24 names the KV cache `cache`; older releases call it `past_key_values`."""
    import inspect

    parameters = inspect.signature(llm.forward).parameters
    return {"cache": cache} if "cache" in parameters else {"past_key_values": cache}


class TokenSampler:
    """Greedy in torch; temperature/top-k/top-p/repetition penalty through the runtime's own sampler,
    so PyTorch and the deployed runtime draw tokens the same way."""

    def __init__(self, config: GenerationConfig):
        self.config = config
        self.greedy = config.temperature <= 0 and config.repetition_penalty == 1.0
        if not self.greedy:
            import numpy as np

            from crome_runtime.sampling import SamplingParams

            self.params = SamplingParams(
                temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
                repetition_penalty=config.repetition_penalty,
            )
            self.rng = np.random.default_rng(config.seed)

    def next_tokens(self, logits: torch.Tensor, generated: list[list[int]]) -> torch.Tensor:
        if self.greedy:
            return logits.argmax(-1)
        from crome_runtime.sampling import sample_next_token

        rows = [
            sample_next_token(logits[b].numpy(), self.params, generated[b], self.rng) for b in range(len(generated))
        ]
        return torch.tensor(rows, dtype=torch.long, device=logits.device)


def pad_right(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def pad_right_embeds(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return _pad_embeds(rows, left=False)


def pad_left_embeds(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return _pad_embeds(rows, left=True)


def _pad_embeds(rows: list[torch.Tensor], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacks (N_i, d) rows into (B, L, d) with an attention mask that is 0 on the padding."""
    width = max(r.shape[0] for r in rows)
    embeds = rows[0].new_zeros((len(rows), width, rows[0].shape[-1]))
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=rows[0].device)
    for i, row in enumerate(rows):
        span = slice(width - row.shape[0], width) if left else slice(0, row.shape[0])
        embeds[i, span] = row
        mask[i, span] = 1
    return embeds, mask
