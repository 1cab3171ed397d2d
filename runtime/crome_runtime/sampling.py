"""Next-token sampling: the numpy reference and `sample_next_token`, which the engine calls.

Greedy, temperature, top-k, top-p and a repetition penalty, defined once by `sample_reference`. The C
core's crome_sample implements the same definition and is what `sample_next_token` runs (it wins the
benchmark, benchmarks/RESULTS.md). Randomness comes only from the caller's seeded numpy Generator: one
uniform draw per sampled token (none when greedy), so both paths give the same token for the same seed.
numpy only (no torch).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

MIN_TEMPERATURE = 1e-6  # below this (but above 0) logit / temperature can overflow; use 0 for greedy


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 = greedy; top_k 0 = off; top_p 1 = off; repetition_penalty 1 = off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self):
        t, p, r = self.temperature, self.top_p, self.repetition_penalty
        if not (t == 0.0 or (math.isfinite(t) and t >= MIN_TEMPERATURE)):
            raise ValueError(f"temperature must be 0 (greedy) or a finite value >= {MIN_TEMPERATURE}, got {t}")
        if not (isinstance(self.top_k, (int, np.integer)) and 0 <= self.top_k < 2**31):
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if not 0.0 < p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {p}")
        if not (math.isfinite(r) and r > 0.0):
            raise ValueError(f"repetition_penalty must be finite and > 0 (1 = off), got {r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SamplingParams:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown sampling parameters {sorted(unknown)}; known: {[f.name for f in fields(cls)]}")
        return cls(**d)


def sample_next_token(
    logits: np.ndarray,
    params: SamplingParams,
    recent_tokens,
    rng: np.random.Generator,
) -> int:
    """The next token id from one row of logits (vocab,), in the C core. recent_tokens: ids the
    repetition penalty applies to (any int sequence). Draws one rng.random() unless params.greedy."""
    from crome_runtime import ccore

    u = 0.0 if params.greedy else float(rng.random())
    return ccore.sample(logits, params, recent_tokens, u)


# --- reference ---------------------------------------------------------------------------------------


def sample_reference(logits: np.ndarray, params: SamplingParams, recent_tokens=(), u: float = 0.0) -> int:
    """The definition of sampling, in numpy; u is the uniform draw in [0, 1).

    1. penalty: each distinct recent id's float32 logit l -> l / penalty if l > 0 else l * penalty
    2. greedy (temperature 0 or top_k 1): first argmax
    3. x = logit / temperature in float64; candidates ordered by (logit descending, id ascending):
       the top_k first when top-k is on, all ids in id order when neither top-k nor top-p is on
    4. e = exp(x - max x); c = cumsum(e) along the candidates; with top-p, keep the shortest prefix whose
       mass reaches top_p * (sum of e over the candidates, or over the vocabulary when top-k is off)
    5. the first kept candidate j with c[j] > u * c[last kept]
    """
    z = _penalised(logits, recent_tokens, params.repetition_penalty)  # (V,) float32
    if params.greedy:
        return int(np.argmax(z))
    ids, e = _kept(z, params)
    c = np.cumsum(e)
    j = _inverse_cdf(e, c, u * c[-1])
    return j if ids is None else int(ids[j])


def draw_distribution(logits: np.ndarray, params: SamplingParams, recent_tokens=()) -> tuple[np.ndarray | None, np.ndarray]:
    """The distribution a token is drawn from, as sample_reference defines it: (ids, p) with p float64 summing to 1
    over ids (None: every id, in id order). Greedy picks this distribution's mode, so for greedy it is the
    penalised softmax at temperature 1 (the model's own belief, which a confidence is about)."""
    z = _penalised(logits, recent_tokens, params.repetition_penalty)  # (V,) float32
    if params.greedy:
        e = np.exp(z.astype(np.float64) - float(z.max()))
        return None, e / e.sum()
    ids, e = _kept(z, params)
    return ids, e / np.cumsum(e)[-1]


def _kept(z: np.ndarray, params: SamplingParams) -> tuple[np.ndarray | None, np.ndarray]:
    """Steps 3-4 of sample_reference: the kept candidates (ids; None: every id, in id order) and their unnormalised
    weights e (float64), in the order the inverse CDF walks them."""
    n, t = z.size, params.temperature
    k = params.top_k if 0 < params.top_k < n else n
    m = float(z.max()) / t
    if k == n and params.top_p >= 1.0:
        return None, np.exp(z.astype(np.float64) / t - m)
    if k < n:
        ids = _top_ids(z, k)
        e = np.exp(z[ids].astype(np.float64) / t - m)
        c = np.cumsum(e)
        threshold = params.top_p * c[-1]
    else:  # top-p over the whole vocabulary: grow the sorted prefix until it holds the mass
        x = z.astype(np.float64) / t - m
        threshold = params.top_p * np.exp(x).sum()
        kk = min(64, n)
        while True:
            ids = _top_ids(z, kk)
            e = np.exp(x[ids])
            c = np.cumsum(e)
            if c[-1] >= threshold or kk == n:
                break
            kk = min(4 * kk, n)
    kept = min(int(np.searchsorted(c, threshold, side="left")), c.size - 1) + 1 if params.top_p < 1.0 else c.size
    return ids[:kept], e[:kept]


def _penalised(logits: np.ndarray, recent_tokens, penalty: float) -> np.ndarray:
    if not isinstance(logits, np.ndarray) or logits.ndim != 1 or logits.size == 0:
        raise ValueError(f"logits must be a non-empty 1-D array, got {getattr(logits, 'shape', type(logits).__name__)}")
    z = logits.astype(np.float32)  # a copy
    if np.isnan(z).any() or np.isposinf(z).any():
        raise ValueError("logits contain NaN or +inf")
    if np.isneginf(z).all():
        raise ValueError("every logit is -inf: nothing can be sampled")
    ids = np.unique(np.asarray(recent_tokens, dtype=np.int64))
    if ids.size and (ids[0] < 0 or ids[-1] >= z.size):
        raise ValueError(f"recent token ids must be in [0, {z.size}), got {ids[0]}..{ids[-1]}")
    if penalty != 1.0 and ids.size:
        v = z[ids]
        p = np.float32(penalty)
        z[ids] = np.where(v > 0, v / p, v * p)
    return z


def _top_ids(z: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest z, ordered by (z descending, id ascending); ties at the cut keep low ids."""
    n = z.size
    if k >= n:
        ids = np.arange(n)
    else:
        kth = np.partition(z, n - k)[n - k]  # the k-th largest value
        above = np.flatnonzero(z > kth)
        ids = np.concatenate([above, np.flatnonzero(z == kth)[: k - above.size]])
    return ids[np.lexsort((ids, -z[ids]))]


def _inverse_cdf(e: np.ndarray, c: np.ndarray, target: float) -> int:
    """First j with c[j] > target; rounding at the top end falls back to the last positive weight."""
    j = min(int(np.searchsorted(c, target, side="right")), c.size - 1)
    while j > 0 and e[j] == 0.0:
        j -= 1
    return j
