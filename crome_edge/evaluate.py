"""Exact-match accuracy of a backbone (+ adapter) on a dataset: greedy, batched generation.

A prediction is correct when `normalize_answer(prediction) == normalize_answer(answer)` (the runtime's
normalisation: case, punctuation and spacing do not count). The trainer's validation uses the same
`generate_answers` and `score`, so validation accuracy and `crome-edge eval` agree.
Not here: the CLI (crome_cli.eval) or datasets (crome_edge.data).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from crome_edge.data.dataset import Sample
from crome_runtime.prompt import normalize_answer

EXTRA_TOKENS = 4  # generation stops this many tokens past the longest reference answer


@dataclass
class QuestionScore:
    n: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


@dataclass
class EvalResult:
    n: int
    correct: int
    per_question: dict[str, QuestionScore] = field(default_factory=dict)
    seconds: float = 0.0
    examples: list[dict] = field(default_factory=list)  # a few wrong answers, for the reader

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "n": self.n,
            "correct": self.correct,
            "per_question": {
                q: {"accuracy": s.accuracy, "n": s.n, "correct": s.correct} for q, s in sorted(self.per_question.items())
            },
            "seconds": round(self.seconds, 3),
            "samples_per_second": round(self.n / self.seconds, 2) if self.seconds > 0 else None,
            "wrong_examples": self.examples,
        }


def exact_match(prediction: str, answer: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(answer)


def score(samples: list[Sample], predictions: list[str], keep_examples: int = 5) -> EvalResult:
    result = EvalResult(n=0, correct=0)
    for sample, prediction in zip(samples, predictions, strict=True):
        ok = exact_match(prediction, sample.answer)
        per = result.per_question.setdefault(sample.question, QuestionScore())
        per.n += 1
        per.correct += ok
        result.n += 1
        result.correct += ok
        if not ok and len(result.examples) < keep_examples:
            result.examples.append(
                {"image": str(sample.image), "question": sample.question, "answer": sample.answer, "predicted": prediction}
            )
    return result


def generation_budget(model, samples: list[Sample], cap: int | None = None) -> int:
    """Longest reference answer (in tokens) + EXTRA_TOKENS, at most `cap`."""
    longest = max(len(model.answer_ids(s.answer)) for s in samples)
    budget = longest + EXTRA_TOKENS
    return min(budget, cap) if cap else budget


def generate_answers(
    model, prefix_fn: Callable, samples: list[Sample], batch_size: int, max_new_tokens: int, on_batch=None
) -> list[str]:
    """Greedy answers for `samples`, `batch_size` at a time; `prefix_fn(samples) -> PrefixBatch`."""
    import torch

    from crome_edge.model import GenerationConfig

    generation = GenerationConfig(max_new_tokens=max_new_tokens)
    answers: list[str] = []
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            ids = model.generate_from_prefix(prefix_fn(chunk), generation)
            answers += [model.backbone.decode(row) for row in ids]
            if on_batch is not None:
                on_batch(len(chunk))
    return answers


def evaluate(
    model, samples: list[Sample], pixels, batch_size: int = 16, max_new_tokens: int | None = None, progress: bool = False
) -> EvalResult:
    """`model`: a CromeModel (adapter attached or not); `pixels`: a prepared crome_edge.data.pixels.PixelStore."""
    started = time.perf_counter()
    budget = generation_budget(model, samples, max_new_tokens)

    def prefix(chunk: list[Sample]):
        return model.build_prefix(pixels.batch(chunk).to(model.device), [s.question for s in chunk])

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(samples), desc="eval", unit="sample", leave=False)
    try:
        predictions = generate_answers(model, prefix, samples, batch_size, budget, on_batch=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()
    result = score(samples, predictions)
    result.seconds = time.perf_counter() - started
    return result
