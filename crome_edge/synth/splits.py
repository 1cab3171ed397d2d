"""Seed ranges of every synthetic dataset split, in one place so that they stay disjoint.

A frame is `render_scene(seed)`; a split is a range of seeds. Pretraining and line-task ranges never
overlap, so no line-3 validation/test frame is ever seen while the backbone is pretrained. Other
users of `render_scene` keep out of these ranges (stage A of the smol recipe uses 50M-60M, export's
synthetic fidelity frames 90M+).
"""
from __future__ import annotations

from crome_edge.errors import CromeError

TASKS: tuple[str, ...] = ("pretrain", "line3", "line5", "general")
SPLITS: tuple[str, ...] = ("train", "val", "test")

# (task, split) -> (first seed, number of seeds)
SEED_RANGES: dict[tuple[str, str], tuple[int, int]] = {
    ("pretrain", "train"): (0, 10_000_000),
    ("pretrain", "val"): (10_000_000, 1_000_000),
    ("pretrain", "test"): (11_000_000, 1_000_000),
    ("line3", "train"): (20_000_000, 1_000_000),
    ("line3", "val"): (21_000_000, 1_000_000),
    ("line3", "test"): (22_000_000, 1_000_000),
    ("line5", "train"): (30_000_000, 1_000_000),
    ("line5", "val"): (31_000_000, 1_000_000),
    ("line5", "test"): (32_000_000, 1_000_000),
    # the general curriculum (general.py: shapes, counts, words, patterns), its own world
    ("general", "train"): (40_000_000, 1_000_000),
    ("general", "val"): (41_000_000, 1_000_000),
    ("general", "test"): (42_000_000, 1_000_000),
}


def split_seeds(task: str, split: str, n: int, start: int = 0) -> range:
    """Seeds of frames start .. start+n-1 of a split (start is an offset inside the split's range)."""
    if (task, split) not in SEED_RANGES:
        raise CromeError(f"unknown task/split {task}/{split}; tasks: {', '.join(TASKS)}; splits: {', '.join(SPLITS)}")
    first, count = SEED_RANGES[(task, split)]
    if n < 0 or start < 0:
        raise CromeError(f"frame count and start must be non-negative (got n={n}, start={start})")
    if start + n > count:
        raise CromeError(
            f"{task}/{split} holds {count:,} seeds; start {start:,} + n {n:,} runs past its end "
            "(use a smaller --seed or --n)"
        )
    return range(first + start, first + start + n)
