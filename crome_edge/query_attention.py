"""Where each visual query looks: one map per query over the vision tower's patch grid (docs/explain.md).

With a Q-Former (smol, tiny, BLIP-2, InstructBLIP) a query's map is its cross-attention over the tower's tokens,
averaged over heads and over the Q-Former's cross-attention layers: the heads of one layer split the same softmax
budget, and each layer reads the same patches again, so the mean is still a distribution over patches (it sums to 1)
and no head or layer is picked by hand. A class token (ViT towers: Np = 1 + g²) is dropped, so a row sums to <= 1.
Without a Q-Former (LLaVA, Idefics3) visual token i *is* grid cell i (a patch, or Idefics3's pixel-shuffled block of
patches): its map is that cell alone. A pooled token after the queries (smol) reads every patch alike: its map is
uniform. A tower whose tokens form no square grid has no map (None).
Torch only; the export writes this as vision.onnx's optional output formats.OUT_QUERY_ATTENTION.
"""
from __future__ import annotations

import math

import torch


def square_side(count: int) -> int | None:
    side = math.isqrt(count)
    return side if side * side == count else None


def patch_grid_attention(cross: tuple[torch.Tensor, ...] | None, num_patches: int,
                         visual: torch.Tensor) -> torch.Tensor | None:
    """cross: the Q-Former's cross-attention per layer, (B, heads, Nq, Np) each (None without a Q-Former); visual:
    the visual tokens (B, Nq, d), the queries' and any pooled token's -> (B, Nq, g, g), or None when the tokens form
    no square grid."""
    if cross is None:
        queries = visual.shape[1]
        side = square_side(queries)
        if side is None:
            return None
        eye = torch.eye(queries, dtype=visual.dtype, device=visual.device).reshape(1, queries, side, side)
        return eye.expand(visual.shape[0], -1, -1, -1)  # (B, Nq, g, g): token i is cell i
    mean = torch.stack([layer.mean(dim=1) for layer in cross]).mean(dim=0)  # (B, Nq, Np)
    pooled = visual.shape[1] - mean.shape[1]  # visual tokens after the queries, each made from every patch alike
    if pooled > 0:
        mean = torch.cat([mean, mean.new_full((mean.shape[0], pooled, num_patches), 1.0 / num_patches)], dim=1)
    side = square_side(num_patches)
    if side is None:
        side = square_side(num_patches - 1)
        if side is None:
            return None
        mean = mean[..., 1:]  # a class token first: not a place in the image
    return mean.reshape(mean.shape[0], mean.shape[1], side, side)  # (B, Nq, g, g)
