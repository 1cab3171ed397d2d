"""Datasets for the tests: `crome-edge data synth` at the tiny backbone's image size (training, replay, routing,
evaluation and the regeneration recipe all start from one)."""
from __future__ import annotations

from pathlib import Path


def synth_dataset(root: Path, n: int = 24, task: str = "line3", seed: int = 0) -> Path:
    """`crome-edge data synth` at 32 px (the tiny backbone's image size); returns the data.jsonl."""
    from crome_cli.main import main

    assert main(["data", "synth", "--out", str(root), "--n", str(n), "--seed", str(seed), "--task", task, "--size", "32"]) == 0
    return root / "data.jsonl"
