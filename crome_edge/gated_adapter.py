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


class CromeAdapter(nn.Module):
    def __init__(self, config: AdapterConfig):
        super().__init__()
        self.config = config
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
        z = F.silu(x @ self.gate[modality]) * (x @ self.down[modality])  # (B, N, r)
        return x + z @ self.up

    def fused_weight(self, modality: str) -> torch.Tensor:
        """[Wd | Wg]: (d, 2r), the single GEMM of the fused form."""
        return torch.cat([self.down[modality], self.gate[modality]], dim=1)

    def forward_fused(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        return fused_gated_projection(x, self.fused_weight(modality), self.up)


def fused_gated_projection(x: torch.Tensor, w_down_gate: torch.Tensor, w_up: torch.Tensor) -> torch.Tensor:
    """y = x + (SiLU(x·Wg) ⊙ (x·Wd))·Wu with w_down_gate = [Wd | Wg] (d, 2r) and w_up (r, d)."""
    rank = w_up.shape[0]
    h = x @ w_down_gate  # (B, N, 2r)
    z = F.silu(h[..., rank:]) * h[..., :rank]  # (B, N, r)
    return x + z @ w_up
