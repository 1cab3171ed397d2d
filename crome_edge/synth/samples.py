"""In-memory samples (image, question, answer, scene) for fast training loops: nothing touches disk.

`iter_samples(task, seeds)` renders each seed once and yields its Q&A; `iter_split(task, split, n)`
does the same over a split's seed range (`splits.py`). `dataset_writer.py` writes the same samples
to PNG + JSONL.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from crome_edge.synth.general import GeneralScene, render_general
from crome_edge.synth.line3 import LINE3_QUESTION, line3_answer
from crome_edge.synth.line5 import LINE5_QUESTION, line5_answer
from crome_edge.synth.qa import PRETRAIN_QUESTIONS, answer
from crome_edge.synth.splits import TASKS, split_seeds
from crome_edge.synth.world import DEFAULT_SIZE, SceneInfo, render_scene

# The line tasks: task -> (its one question, the rule that answers it).
LINE_TASKS = {"line3": (LINE3_QUESTION, line3_answer), "line5": (LINE5_QUESTION, line5_answer)}
LINE_RULES = dict(LINE_TASKS.values())  # question -> rule

# How pretraining frames are asked: every question per frame, or one question per frame.
QUESTION_MODES: tuple[str, ...] = ("all", "one")


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # (H, W, 3) BGR uint8; shared by the samples of one frame, do not modify
    question: str
    answer: str
    scene: SceneInfo | GeneralScene


def questions_for(task: str, seed: int, mode: str = "all") -> tuple[str, ...]:
    """The questions asked of frame `seed`: a line task asks its one question; pretrain asks all
    PRETRAIN_QUESTIONS ("all") or PRETRAIN_QUESTIONS[seed % 5] ("one", balanced over a seed range)."""
    if task in LINE_TASKS:
        return (LINE_TASKS[task][0],)
    if task != "pretrain":
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if mode == "all":
        return PRETRAIN_QUESTIONS
    if mode == "one":
        return (PRETRAIN_QUESTIONS[seed % len(PRETRAIN_QUESTIONS)],)
    raise ValueError(f"unknown question mode {mode!r}; expected one of {QUESTION_MODES}")


def task_answer(question: str, scene: SceneInfo) -> str:
    rule = LINE_RULES.get(question)
    return rule(scene) if rule is not None else answer(question, scene)


def iter_samples(
    task: str, seeds: Iterable[int], size: int = DEFAULT_SIZE, questions: str = "all"
) -> Iterator[Sample]:
    """Render each seed once and yield one Sample per question asked of it (see `questions_for`; a general frame
    is asked its own questions, general.py, or one of them by seed with questions="one")."""
    if task == "general":
        for seed in seeds:
            image, general = render_general(seed, size)
            pairs = general.qa if questions == "all" else (general.qa[seed // 3 % len(general.qa)],)
            for question, reply in pairs:
                yield Sample(image, question, reply, general)
        return
    for seed in seeds:
        asked = questions_for(task, seed, questions)
        image, scene = render_scene(seed, size)
        for question in asked:
            yield Sample(image, question, task_answer(question, scene), scene)


def iter_split(
    task: str, split: str, n: int, start: int = 0, size: int = DEFAULT_SIZE, questions: str = "all"
) -> Iterator[Sample]:
    """Samples of frames start .. start+n-1 of a task's split (train/val/test seed ranges are disjoint)."""
    return iter_samples(task, split_seeds(task, split, n, start), size, questions)
