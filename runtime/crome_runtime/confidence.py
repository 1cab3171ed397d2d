"""How sure an answer is: the first token's top-2 margin, the answer's mean token log-probability, and for a
closed-set adapter the probability of each answer it was trained to give.

- first_token_margin = p(top-1) - p(top-2) of the first answer token, in *probability*, not logit: it lies in
  [0, 1] whatever the prompt, adapter or logit scale (a logit gap is unbounded and shifts with the vocabulary's
  spread), so one `serve --min-margin` threshold means the same for every adapter.
- mean_logprob: the mean natural log-probability of the sampled tokens under the distribution each was actually
  drawn from (sampling.draw_distribution: penalty, temperature, top-k/top-p; greedy = the softmax at temperature 1,
  whose mode greedy takes). The stop token counts when the answer stopped on it: stopping is a choice the model
  made, and the candidates below are scored with it too.
- candidates: the adapter's answer set (adapter_entries.AdapterEntry.answers, recorded at export from its training
  data when it has at most MAX_ANSWER_SET distinct answers), each scored teacher-forced by the model at temperature
  1 on exactly the ids training scored (the answer plus the template's stop suffix, prompt.answer_ids): its
  sequence probability, normalised over the set; `candidate_mass` is the set's total, unnormalised (how much of
  the model's belief the closed set holds; low means it wanted to say something else). Scored after the answer,
  from the prompt's KV cache, all candidates in one batched decoder call (decoder.KVDecoder.branch_logits) or as
  a depth-first walk over their shared prefixes (cdecoder.CDecoder.branch_logits); only when asked
  (GenerationOptions.candidates), being a decoder run per answer.

Torch-free. Not here: running the decoder (engine.py), the API's view of it (serve/protocol.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from crome_runtime.sampling import SamplingParams, draw_distribution

MAX_ANSWER_SET = 32  # an adapter with more distinct training answers is open-set: no candidates are recorded


@dataclass(frozen=True)
class Confidence:
    first_token_margin: float | None = None  # None: no token was drawn (max_new_tokens 0, no room in the context)
    mean_logprob: float | None = None
    candidates: dict[str, float] | None = None  # answer -> probability within the set, most likely first
    candidate_mass: float | None = None  # sum of the candidates' unnormalised sequence probabilities

    def to_dict(self) -> dict:
        data: dict = {"first_token_margin": _round(self.first_token_margin), "mean_logprob": _round(self.mean_logprob)}
        if self.candidates is not None:
            data["candidates"] = {answer: _round(p) for answer, p in self.candidates.items()}
            data["candidate_mass"] = _round(self.candidate_mass)
        return data


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def answer_set(answers) -> list[str] | None:
    """The closed answer set of training answers: the distinct stripped answers, sorted, when there are at most
    MAX_ANSWER_SET of them; None otherwise (open-set, or no answers). The one rule, for training and export."""
    distinct = sorted({str(a).strip() for a in answers if str(a).strip()})
    return distinct if 0 < len(distinct) <= MAX_ANSWER_SET else None


@dataclass
class Meter:
    """Collects an answer's confidence while it is decoded: `drawn` once per sampled token (stop token included)."""

    params: SamplingParams
    margin: float | None = None
    logprobs: list[float] = field(default_factory=list)

    def drawn(self, logits: np.ndarray, recent, token: int) -> None:
        ids, p = draw_distribution(logits, self.params, recent)
        if ids is None:
            chosen = p[token]
        else:
            where = np.flatnonzero(ids == token)
            chosen = p[where[0]] if where.size else 0.0
        if self.margin is None:
            top = np.partition(p, p.size - 2)[-2:] if p.size > 1 else np.array([0.0, p[0]])  # the two largest
            self.margin = float(top.max() - top.min())
        self.logprobs.append(math.log(chosen) if chosen > 0 else -math.inf)

    def confidence(self, candidates: dict[str, float] | None = None, mass: float | None = None) -> Confidence:
        mean = float(np.mean(self.logprobs)) if self.logprobs else None
        return Confidence(self.margin, mean, candidates, mass)


def logsumexp(logits: np.ndarray) -> float:
    """log(sum(exp(logits))) of one row (vocab,), in float64: the normaliser of the softmax at temperature 1."""
    x = logits.astype(np.float64)
    top = float(x.max())
    return top + math.log(float(np.exp(x - top).sum()))


def branch_paths(sequences: list[list[int]]) -> list[tuple[int, ...]]:
    """Every proper, non-empty prefix of the sequences, once, sorted (a prefix before its extensions): the token
    paths whose next-token distribution scoring needs (the first token's comes from the prompt's own logits)."""
    return sorted({tuple(s[:k]) for s in sequences for k in range(1, len(s))})


def score_candidates(answers: list[str], sequences: list[list[int]], first: np.ndarray,
                     branches: dict[tuple[int, ...], np.ndarray]) -> tuple[dict[str, float], float]:
    """answers and their token ids; first: the prompt's logits (vocab,); branches: path -> logits after it
    (branch_paths) -> ({answer: probability within the set}, the set's unnormalised mass)."""
    logits = {(): first, **branches}
    norms = {path: logsumexp(row) for path, row in logits.items()}  # once per path, not per candidate

    def logprob(path: tuple[int, ...], token: int) -> float:
        return float(logits[path][token]) - norms[path]

    totals = [sum(logprob(tuple(ids[:k]), ids[k]) for k in range(len(ids))) for ids in sequences]
    scores = np.array(totals)
    top = scores.max()
    weights = np.exp(scores - top)
    share = weights / weights.sum()
    order = np.argsort(-scores, kind="stable")
    return {answers[i]: float(share[i]) for i in order}, float(np.exp(scores).sum())
