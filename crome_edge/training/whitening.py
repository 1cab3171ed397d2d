"""Whitened training of the adapter's visual projections (`crome-edge train --whiten`).

The adapter reads visual tokens whose task-relevant directions can be tiny next to what every frame shares: on
real photographs the pooled token's variation between images is a small part of its length. AdamW moves each
weight at about the same rate, so a direction of the input that varies little also changes the output little,
and 200 steps never learn it. With `--whiten` the visual down and gate matrices train as W = whitening · V: V
reads the tokens' centred, whitened coordinates, in which every direction the training frames vary along has unit
variance. The product whitening · V is one (d, r) matrix again, so the saved adapter, the export and the runtime are
exactly what they were (the file holds W).

Which tokens set the statistics: the pooled token where the backbone has one (the last visual token: it carries
the frame as a whole, and its statistics, not the queries', are what lifts real photographs), else the covariance
within each token position, pooled over positions. The adapter has no bias, so the tokens cannot be centred by a
subtraction; instead the whitened direction of their mean is left out, so that mean · W = 0 and x · W = (x - mean)
· W for every x.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from crome_edge.errors import CromeError
from crome_edge.gated_adapter import CromeAdapter

# Eigenvalues below this share of the largest are directions the training frames do not vary along (the pooled
# token has at most as many as the eye's pooled channels); whitening them would amplify rounding noise.
EIGENVALUE_FLOOR = 1e-5


class Whitening(nn.Module):
    """The parametrization W = whitening · V of a (d, r) adapter matrix; `whitening` is (d, k), k ≤ d."""

    def __init__(self, tokens: torch.Tensor, floor: float = EIGENVALUE_FLOOR):
        """tokens: (n, positions, d); the covariance within each position, pooled over positions."""
        super().__init__()
        x = tokens.detach().to(torch.float64).cpu()
        n, positions, d = x.shape
        if n < 2:
            raise CromeError(f"--whiten needs at least 2 training frames to measure their tokens, got {n}")
        within = (x - x.mean(0)).reshape(n * positions, d)
        values, vectors = torch.linalg.eigh(within.T @ within / (n * positions - positions))
        kept = values > values.max() * floor
        if int(kept.sum()) < 2:
            raise CromeError("--whiten: the training frames' visual tokens do not vary (all frames look alike to "
                             "the backbone); train without --whiten")
        whitening = vectors[:, kept] / values[kept].sqrt()  # (d, k)
        mean_image = x.mean((0, 1)) @ whitening
        if float(mean_image.norm()) > 0:
            m = mean_image / mean_image.norm()
            complement = torch.linalg.qr(torch.eye(len(m), dtype=m.dtype) - m[:, None] * m[None])[0][:, :-1]
            whitening = whitening @ complement
        self.register_buffer("whitening", whitening.to(torch.float32))

    @property
    def width(self) -> int:
        return self.whitening.shape[1]

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.whitening.to(v.dtype) @ v


def statistics_tokens(visual: torch.Tensor, has_pooled_token: bool) -> torch.Tensor:
    """visual: (n, Nq, d) training tokens -> the (n, positions, d) tokens whose statistics whiten (module doc)."""
    return visual[:, -1:] if has_pooled_token else visual


def whiten_visual(adapter: CromeAdapter, tokens: torch.Tensor, generator: torch.Generator | None = None) -> None:
    """Reparametrizes the adapter's visual down and gate as whitening · V, V drawn so that x · W has unit variance
    per column (as the default init gives on unit-scale tokens); up stays as it is (zero: still the identity)."""
    whitening = Whitening(tokens).to(adapter.up.device)
    for weights in (adapter.down, adapter.gate):
        v = torch.randn(whitening.width, adapter.config.rank, generator=generator) * whitening.width**-0.5
        weights["visual"] = nn.Parameter(v.to(adapter.up.device))
        parametrize.register_parametrization(weights, "visual", whitening, unsafe=True)


def is_whitened(adapter: CromeAdapter) -> bool:
    return parametrize.is_parametrized(adapter.down, "visual")
