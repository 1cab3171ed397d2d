"""What the adapter let through, and where in the image it came from: one heat map per answer (docs/explain.md).

Per visual query q (a row x of the vision graph's output V, before the adapter), from the adapter's own weights
(crome_edge.gated_adapter's formula, Z = SiLU(x·Wg) ⊙ (x·Wd), y = x + Z·Wu):
  change_q = ‖y − x‖ / ‖x‖   how much the adapter moved the query (0: passed through untouched); an adapter's
                             pooled map (crome_runtime.adapter_kernel.PooledStep) moves the last query first
  gate_q   = mean σ(x·Wg)    how far the SiLU gate is open, over its r channels (SiLU(u) = u·σ(u)), in (0, 1)
and where q looks: vision.onnx's optional query_attention output, (Nq, gh, gw) over the tower's patch grid
(crome_edge.query_attention). The answer's map is the queries' maps weighted by change × gate, scaled to sum to 1.
The frozen backbone (no adapter) changes nothing: its map weights every query alike and says so.

Computed only when asked (Engine.explain): the normal answer path never reads the attention output nor runs this.
Torch-free (numpy). Not here: the attention maps themselves (export side), drawing (explain_image.py), CLI and API.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crome_runtime import formats
from crome_runtime.adapter_kernel import PooledStep, read_adapter_tensors
from crome_runtime.errors import EngineError

WEIGHTING_ADAPTER = "change x gate"
WEIGHTING_NONE = "uniform (no adapter answered: the frozen backbone changes no query)"
REEXPORT = "crome-edge export --adapter ADAPTER --out BUNDLE --force"  # the hint for bundles without the output


@dataclass(frozen=True)
class VisualWeights:
    """An adapter's visual branch: Wd, Wg (d, r) and the shared Wu (r, d), float32, and its pooled map if it has one."""

    down: np.ndarray
    gate: np.ndarray
    up: np.ndarray
    pooled: PooledStep | None = None

    @classmethod
    def read(cls, path: Path) -> "VisualWeights":
        tensors = read_adapter_tensors(path)  # BundleError when unreadable or incomplete
        pooled = PooledStep.from_tensors(tensors, tensors["up"].shape[1], path.name)
        return cls(tensors["visual.down"], tensors["visual.gate"], tensors["up"], pooled)


def query_stats(x: np.ndarray, weights: VisualWeights) -> tuple[np.ndarray, np.ndarray]:
    """x: the visual queries before the adapter (Nq, d) -> (change (Nq,), gate (Nq,)), as the module docstring says.
    An adapter's pooled map moves the last query before the gated projection: its move counts in that query's change."""
    x = x.astype(np.float64)
    moved = weights.pooled(x) if weights.pooled is not None else x
    u = moved @ weights.gate  # (Nq, r)
    sig = 1.0 / (1.0 + np.exp(-u))
    z = u * sig * (moved @ weights.down)  # (Nq, r): SiLU(x·Wg) ⊙ (x·Wd)
    delta = moved - x + z @ weights.up  # (Nq, d): y - x
    change = np.linalg.norm(delta, axis=1) / np.maximum(np.linalg.norm(x, axis=1), 1e-12)
    return change, sig.mean(axis=1)


@dataclass(frozen=True)
class Explanation:
    """One answer's heat map and the per-query numbers it was made from."""

    grid: np.ndarray  # (gh, gw) float32, sums to 1: the answer's map over the patch grid
    attention: np.ndarray  # (Nq, gh, gw): where each query looks
    change: np.ndarray  # (Nq,)
    gate: np.ndarray  # (Nq,)
    weight: np.ndarray  # (Nq,) the queries' share of the map, sums to 1
    adapter: str | None
    weighting: str

    def to_dict(self) -> dict:
        """The JSON form (the API's "crome"."explain"): small, rounded to 4 decimals."""
        r = lambda a: np.round(a.astype(np.float64), 4).tolist()  # noqa: E731
        return {
            "grid": r(self.grid), "grid_shape": list(self.grid.shape), "adapter": self.adapter,
            "weighting": self.weighting,
            "queries": [{"change": c, "gate": g, "weight": w} for c, g, w in zip(r(self.change), r(self.gate),
                                                                              r(self.weight))],
        }


def explain(x: np.ndarray, attention: np.ndarray, weights: VisualWeights | None, adapter: str | None) -> Explanation:
    """x: visual queries before the adapter (Nq, d); attention: (Nq, gh, gw); weights: the answering adapter's visual
    branch, None for the frozen backbone."""
    queries = x.shape[0]
    if attention.shape[0] != queries:
        raise EngineError(f"{formats.VISION_ONNX}'s {formats.OUT_QUERY_ATTENTION} has {attention.shape[0]} queries, "
                          f"its {formats.OUT_VISUAL_EMBEDS} {queries}; re-export the bundle")
    if weights is None:
        change, gate = np.zeros(queries), np.zeros(queries)
        raw, weighting = np.ones(queries), WEIGHTING_NONE
    else:
        change, gate = query_stats(x, weights)
        raw, weighting = change * gate, WEIGHTING_ADAPTER
        if not raw.sum() > 0:  # an adapter that changes nothing (a fresh one: Wu = 0)
            raw, weighting = np.ones(queries), "uniform (the adapter changed no query)"
    weight = raw / raw.sum()
    grid = np.tensordot(weight, attention.astype(np.float64), axes=1)  # (gh, gw)
    total = grid.sum()
    grid = grid / total if total > 0 else np.full_like(grid, 1.0 / grid.size)
    return Explanation(grid.astype(np.float32), attention.astype(np.float32), change, gate, weight, adapter, weighting)
