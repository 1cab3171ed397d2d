"""The CROME gated cross-modal adapter (arXiv 2408.06610, docs/architecture.md §2) and its fused form.

For each modality m in {visual, text}:
    Z_m = SiLU(X_m · Wg_m) ⊙ (X_m · Wd_m)        Wg_m, Wd_m: d×r
    Y_m = X_m + Z_m · Wu                         Wu: r×d, shared by both modalities
Bias-free; Wu starts at zero so a fresh adapter is the identity. 5·d·r parameters.
The fused form computes [Wd_m | Wg_m] as one d×2r GEMM, then a split + SiLU·mul epilogue.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F
from crome_runtime.formats import ADAPTER_MODALITIES

MODALITIES = ADAPTER_MODALITIES


@dataclass(frozen=True)
class AdapterConfig:
    d_model: int  # LLM width d
    rank: int  # r; the default a training run uses is TrainConfig.rank

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "AdapterConfig":
        """ValueError naming the problem for anything but {"d_model": d, "rank": r} (crome_runtime.adapter_kernel's rule)."""
        from crome_runtime.adapter_kernel import adapter_dims

        d_model, rank = adapter_dims(text)
        return cls(d_model, rank)


class PooledMap(nn.Module):
    """The adapter's own reading of the backbone's pooled token t (the last visual token; smol's PooledToken):
        t += (t · read - shift) · map + bias
    `read` and `shift` are fixed before training (`fit`): t's pooled features, read back exactly through the pseudo-
    inverse of the backbone's linear map and standardised with the training frames' own statistics. So the trained
    `map` sees features that vary across the user's task on one scale. Without it, AdamW moves the few directions
    that tell the user's photographs apart as slowly as the ones that never change (benchmarks/RESULTS.md, "Issue 19
    measured again"). Files carry the folded form (`folded`): read, map and bias - shift · map."""

    read: torch.Tensor  # buffers, registered below
    shift: torch.Tensor

    def __init__(self, d_model: int, features: int):
        super().__init__()
        self.register_buffer("read", torch.zeros(d_model, features))
        self.register_buffer("shift", torch.zeros(features))
        self.map = nn.Parameter(torch.randn(features, d_model) * (POOLED_MAP_STD / features**0.5))
        self.bias = nn.Parameter(torch.zeros(d_model))

    @torch.no_grad()
    def fit(self, tokens: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """tokens (n, d): the training frames' pooled tokens t = weight · u + bias, weight (d, F) of full column rank."""
        read_back = torch.linalg.pinv(weight.double()).T  # (d, F): u = (t - bias) · read_back
        features = (tokens.double() - bias.double()) @ read_back
        scale = features.std(0) + POOLED_STD_FLOOR
        self.read.copy_(read_back / scale)
        self.shift.copy_((bias.double() @ read_back + features.mean(0)) / scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, d) -> (B, N, d), the last token moved."""
        with torch.autocast(x.device.type, enabled=False):  # read amplifies rounding: float32 throughout
            last = x[:, -1].float()
            moved = last + (last @ self.read - self.shift) @ self.map + self.bias
        return torch.cat([x[:, :-1], moved[:, None].to(x.dtype)], dim=1)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(read, map, bias - shift · map): the form files and the runtime use (shift = 0)."""
        return self.read, self.map, self.bias - self.shift @ self.map


POOLED_MAP_STD = 0.136  # the initial map's scale over sqrt(F): smol's embedding scale, as measured
POOLED_STD_FLOOR = 1e-3  # added to each feature's standard deviation: a feature constant over the frames stays bounded


class CromeAdapter(nn.Module):
    def __init__(self, config: AdapterConfig, pooled_features: int = 0):
        """pooled_features F > 0: also a PooledMap of the backbone's pooled token (F features)."""
        super().__init__()
        self.config = config
        self.pooled = PooledMap(config.d_model, pooled_features) if pooled_features else None
        d, r = config.d_model, config.rank
        # Stored as (in, out) matrices so X · W reads like the paper.
        self.down = nn.ParameterDict({m: nn.Parameter(torch.empty(d, r)) for m in MODALITIES})
        self.gate = nn.ParameterDict({m: nn.Parameter(torch.empty(d, r)) for m in MODALITIES})
        self.up = nn.Parameter(torch.zeros(r, d))
        for m in MODALITIES:
            nn.init.normal_(self.down[m], std=d**-0.5)
            nn.init.normal_(self.gate[m], std=d**-0.5)

    def forward(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """x: (B, N, d) -> (B, N, d), the reference (unfused) form."""
        x = self.pooled_step(x, modality)
        z = F.silu(x @ self.gate[modality]) * (x @ self.down[modality])  # (B, N, r)
        return x + z @ self.up

    def pooled_step(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        return self.pooled(x) if self.pooled is not None and modality == "visual" else x

    def fused_weight(self, modality: str) -> torch.Tensor:
        """[Wd | Wg]: (d, 2r), the single GEMM of the fused form."""
        return torch.cat([self.down[modality], self.gate[modality]], dim=1)

    def forward_fused(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        return fused_gated_projection(self.pooled_step(x, modality), self.fused_weight(modality), self.up)


def fused_gated_projection(x: torch.Tensor, w_down_gate: torch.Tensor, w_up: torch.Tensor) -> torch.Tensor:
    """y = x + (SiLU(x·Wg) ⊙ (x·Wd))·Wu with w_down_gate = [Wd | Wg] (d, 2r) and w_up (r, d)."""
    rank = w_up.shape[0]
    h = x @ w_down_gate  # (B, N, 2r)
    z = F.silu(h[..., rank:]) * h[..., :rank]  # (B, N, r)
    return x + z @ w_up
