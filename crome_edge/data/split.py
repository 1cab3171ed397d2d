"""Deterministic train/validation split, and re-creating an adapter's split from its metadata.

The split is by image: all questions about one image land on the same side, so validation accuracy
measures unseen frames. The exporter calls `load_training_split` to calibrate on the same validation
images the trainer held out. Torch-free.
"""
from __future__ import annotations

import random

from crome_edge.data.dataset import Dataset, Sample, load_dataset
from crome_edge.errors import CromeError


def split_dataset(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """-> (train, validation), each in the input order. round(val_fraction × distinct images) images
    (at least one, and at least one left for training) go to validation, chosen by `seed`."""
    if not 0.0 <= val_fraction < 1.0:
        raise CromeError(f"--val-fraction must be in [0, 1), not {val_fraction}")
    if val_fraction == 0.0:
        return list(samples), []
    images = list(dict.fromkeys(s.image for s in samples))  # distinct, first-seen order
    if len(images) < 2:
        raise CromeError(
            f"cannot hold out a validation split from {len(images)} image(s); add images or pass --val-fraction 0"
        )
    n_val = min(max(1, round(val_fraction * len(images))), len(images) - 1)
    order = sorted(images, key=str)  # independent of the file's line order
    random.Random(seed).shuffle(order)
    held_out = set(order[:n_val])
    train = [s for s in samples if s.image not in held_out]
    val = [s for s in samples if s.image in held_out]
    return train, val


def load_training_split(train_data: str, training: dict) -> tuple[Dataset, list[Sample], list[Sample]]:
    """Re-creates (dataset, train, validation) from an adapter's `train_data` and training summary."""
    if not train_data:
        raise CromeError("the adapter does not record its training data (no train_data metadata)")
    dataset = load_dataset(train_data, question=training.get("question"))
    train, val = split_dataset(dataset.samples, float(training.get("val_fraction", 0.0)), int(training.get("split_seed", 0)))
    return dataset, train, val
