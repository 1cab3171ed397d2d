"""Bundles for the tests: a tiny adapter that learned a colour question,
exported to an FP32 bundle with the exporter's own Python API (`crome_export.pipeline.export_bundle`).

Exported once per pytest session into the session's base temp directory and shared by every
tests/test_runtime_*.py module that asks for it (~1 minute on a busy 2-core machine, mostly the export's
fidelity report). The export side uses torch; the runtime under test does not.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tests.support.adapters import train_tiny_adapter

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


def multi_bundle(tmp_path_factory) -> dict:
    """tiny_bundle's paths plus {"warm", "both"}: a second tiny adapter trained on WARM_QUESTION, and the bundle of
    both adapters (colour routed QUESTION, warm WARM_QUESTION), exported on first use."""
    paths = tiny_bundle(tmp_path_factory)
    root = tmp_path_factory.getbasetemp() / "runtime-multi"
    both = {**paths, "warm": root / "warm.safetensors", "both": root / "both.bundle", "tmp": root}
    if (both["both"] / "manifest.json").is_file():
        return both
    from crome_edge.backbones.tiny import build_tiny
    from crome_export.multi import export_adapters
    from crome_export.pipeline import ExportConfig

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    with cache_env(paths["root"] / "cache"):  # the colour export's backbone parts
        with torch_threads(1):
            train_tiny_adapter(build_tiny(seed=0), _warm_dataset(root / "warm-data"), both["warm"])
            config = ExportConfig(adapter=paths["adapter"], precision="fp32", out=both["both"], threads=1)
            export_adapters(config, [paths["adapter"], both["warm"]], quiet=True)
    return both


def vlm_bundle(tmp_path_factory, family: str) -> Path:
    """The FP32 bundle of a colour adapter on the small LLaVA ("llava") or SmolVLM/Idefics3 ("idefics3") directory of
    tests/support/vlm_dirs.py (random weights), exported on first use and shared by the session."""
    root = tmp_path_factory.getbasetemp() / f"runtime-{family}"
    bundle = root / "colour.bundle"
    if (bundle / "manifest.json").is_file():
        return bundle
    from crome_edge.training.config import TrainConfig
    from crome_edge.training.trainer import Trainer
    from crome_export.pipeline import ExportConfig, Progress, export_bundle
    from tests.support.vlm_dirs import write_idefics3_dir, write_llava_dir

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    path = {"llava": write_llava_dir, "idefics3": write_idefics3_dir}[family](root / family)
    data, adapter = _dataset(root / "data", 12), root / "colour.safetensors"
    with cache_env(root / "cache"), torch_threads(1):
        Trainer(TrainConfig(data=str(data), out=str(adapter), backbone=str(path), steps=6, rank=4, lr=2e-2,
                            batch_size=4, threads=1, progress=False)).run()
        export_bundle(ExportConfig(adapter=adapter, backbone=str(path), precision="fp32", out=bundle, threads=1,
                                   data=data), Progress(7, enabled=False))
    return bundle


WARM_QUESTION = "Is it a warm colour?"
WARM = {"red": "yes", "green": "no", "blue": "no"}


def _warm_dataset(directory: Path, count: int = 60) -> Path:
    import cv2

    (directory / "images").mkdir(parents=True)
    lines = []
    for i in range(count):
        name = list(COLOURS)[i % 3]
        cv2.imwrite(str(directory / "images" / f"{i:03d}.png"), colour_image(name, 500 + i))
        lines.append(json.dumps({"image": f"images/{i:03d}.png", "question": WARM_QUESTION, "answer": WARM[name]}))
    (directory / "data.jsonl").write_text("\n".join(lines) + "\n")
    return directory / "data.jsonl"


def as_version1(bundle: Path, target: Path) -> Path:
    """A copy of a one-adapter bundle as crome-edge wrote bundles before they held several adapters (manifest format
    version 1): the adapter's files under their plain names, an `adapter` section instead of `adapters`, the
    bundle's generation cap its adapter's, and report.json that adapter's own report."""
    data = json.loads((bundle / "manifest.json").read_text())
    (entry,) = data.pop("adapters")
    prefix = entry["name"] + "."
    target.mkdir()
    files = {}
    for name, record in data["files"].items():
        plain = name.removeprefix(prefix)
        if name == "report.json":
            report = json.loads((bundle / name).read_text())["adapters"][entry["name"]]
            (target / name).write_text(json.dumps(report, indent=2, sort_keys=True))
            record = {**record, "sha256": hashlib.sha256((target / name).read_bytes()).hexdigest(),
                      "bytes": (target / name).stat().st_size}
        else:
            shutil.copyfile(bundle / name, target / plain)
        files[plain] = record
    data.update(format_version=1, files=files,
                adapter={k: entry[k] for k in ("name", "sha256", "rank", "training")},
                generation={**data["generation"], "max_new_tokens": entry["max_new_tokens"]})
    (target / "manifest.json").write_text(json.dumps(data, indent=2, sort_keys=True))
    return target


def adapter_path(bundle: Path, role: str, adapter: int = 0) -> Path:
    """The path of a bundle's adapter's file of `role` (crome_runtime.adapter_entries.ROLES): NAME.<role's plain name>."""
    from crome_runtime.manifest import read_manifest

    return Path(bundle) / read_manifest(bundle, verify=False).adapters[adapter].file(role)


def adapter_report(bundle: Path, adapter: int = 0) -> dict:
    """The fidelity report of a bundle's adapter: its section of report.json."""
    from crome_runtime.manifest import read_manifest

    name = read_manifest(bundle, verify=False).adapters[adapter].name
    return json.loads((Path(bundle) / "report.json").read_text())["adapters"][name]


def copy_bundle(bundle: Path, target: Path) -> Path:
    shutil.copytree(bundle, target)
    return target


def rewrite_manifest(bundle: Path, edit) -> None:
    """Applies edit(dict) to manifest.json (e.g. to simulate a hand-assembled or newer bundle)."""
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


def with_q8_blocks(source: dict, tiny_backbone, target: Path) -> Path:
    """The bundle `target` with a weight-only Q8_0 decoder-blocks file of `tiny_backbone` listed in its manifest;
    `source` goes into the blocks' source record (e.g. {"gate": "passed"})."""
    from crome_export.blocks import from_float
    from crome_runtime import decoder_blocks_file, formats
    from crome_runtime.manifest import sha256_file

    blocks = from_float(tiny_backbone.llm, "q8_0")
    blocks.source.update(source)
    path = target / formats.DECODER_BLOCKS_FILE
    decoder_blocks_file.save(blocks, path)
    entry = {"sha256": sha256_file(path), "bytes": path.stat().st_size, "precision": "data"}
    rewrite_manifest(target, lambda m: m["files"].__setitem__(formats.DECODER_BLOCKS_FILE, entry))
    return target
