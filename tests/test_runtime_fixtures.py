"""Bundles for the runtime tests (helpers only, no tests): a tiny adapter that learned a colour question,
exported to an FP32 bundle with the exporter's own Python API (`crome_export.pipeline.export_bundle`).

Exported once per pytest session into the session's base temp directory and shared by every
tests/test_runtime_*.py module that asks for it (~1 minute on a busy 2-core machine, mostly the export's
fidelity report). The export side uses torch; the runtime under test does not.
"""
from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tiny_adapter import train_tiny_adapter

COLOURS = {"red": (0, 0, 220), "green": (0, 200, 0), "blue": (220, 0, 0)}  # BGR
QUESTION = "What colour is it?"


def colour_image(name: str, seed: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noisy = np.full((size, size, 3), COLOURS[name], int) + rng.integers(-30, 30, (size, size, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)  # (H, W, 3) BGR


def _dataset(directory: Path, count: int = 60) -> Path:
    import cv2

    (directory / "images").mkdir(parents=True)
    lines = []
    for i in range(count):
        name = list(COLOURS)[i % 3]
        cv2.imwrite(str(directory / "images" / f"{i:03d}.png"), colour_image(name, i))
        lines.append(json.dumps({"image": f"images/{i:03d}.png", "question": QUESTION, "answer": name}))
    (directory / "data.jsonl").write_text("\n".join(lines) + "\n")
    return directory / "data.jsonl"


def _train_adapter(data: Path, out: Path, steps: int = 125) -> Path:
    from crome_edge.backbones.tiny import build_tiny

    return train_tiny_adapter(build_tiny(seed=0), data, out, seed=0, steps=steps)


@contextmanager
def cache_env(path: Path):
    """$CROME_EDGE_CACHE = path for a while, then as it was (module-scoped fixtures have no monkeypatch)."""
    import pytest

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CROME_EDGE_CACHE", str(path))
        yield


@contextmanager
def torch_threads(count: int = 1):
    """PyTorch with `count` threads for a while: on this shared 2-core machine two OpenMP threads made a tiny
    training step 100x slower (3.9 s vs 0.034 s) while other jobs ran."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def tiny_bundle(tmp_path_factory) -> dict:
    """{"root", "data", "adapter", "bundle"}: the shared tiny FP32 bundle, exported on first use."""
    root = tmp_path_factory.getbasetemp() / "runtime-tiny"
    paths = {"root": root, "data": root / "data" / "data.jsonl", "adapter": root / "colour.safetensors",
             "bundle": root / "colour.bundle"}
    if (paths["bundle"] / "manifest.json").is_file():
        return paths
    from crome_export.pipeline import ExportConfig, Progress, export_bundle

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    _dataset(root / "data")
    with cache_env(root / "cache"):
        with torch_threads(1):
            _train_adapter(paths["data"], paths["adapter"])
            export_bundle(ExportConfig(adapter=paths["adapter"], precision="fp32", out=paths["bundle"], threads=1),
                          Progress(7, enabled=False))
    return paths


def copy_bundle(bundle: Path, target: Path) -> Path:
    shutil.copytree(bundle, target)
    return target


def rewrite_manifest(bundle: Path, edit) -> None:
    """Applies edit(dict) to manifest.json (e.g. to simulate a hand-assembled or newer bundle)."""
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))
