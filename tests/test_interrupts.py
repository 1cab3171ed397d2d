"""Interrupted and failing work leaves nothing behind, and a finished training run is never lost.

`crome-edge export` and `crome-edge data synth` are real subprocesses sent a real SIGTERM at several points
(an export at the moment its progress output reaches a stage), with TMPDIR set to a directory of the test's
own; afterwards neither the temp directory nor the output's parent holds anything of theirs
(`crome-export-*`, `crome-export-parts-*`, `crome-quantize-*`, `.X.bundle.partial-*`, `.X.tmp-*`). The export
cache's own temporary directories (`--no-cache`) are removed on success too. A training run whose --out can no
longer be written when it finishes is saved to a fallback file, and the error says where.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.bundles import tiny_bundle

from crome_edge.errors import CromeError

OURS = ("crome", ".partial-", ".tmp-", ".fp32-candidate-", ".old-")  # names our temporary files and dirs carry


def _debris(*directories: Path) -> list[str]:
    return sorted(f"{d.name}/{n}" for d in directories for n in os.listdir(d) if any(mark in n for mark in OURS))


def _cli(args: list[str], tmp: Path) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1", "CROME_EDGE_CACHE": str(tmp.parent / "cache")}
    return subprocess.Popen([sys.executable, "-m", "crome_cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)


# A stage's first output line -> what is on disk then: the INT8 quantiser's temp directory and the cache's
# temporary parts; the fused adapter graphs in crome-export-*; the candidate bundle in .x.bundle.partial-*;
# the acceptance set being written just before the commit. None: run to the end (a successful --no-cache export).
STAGES = ["vision INT8: static QDQ", "[5/7] adapter graphs", "[6/7] candidate bundle", "[7/7] writing", None]


@pytest.mark.parametrize("marker", STAGES)
def test_sigterm_during_export_leaves_no_debris(exported, tmp_path, marker):
    tmp, out = tmp_path / "tmp", tmp_path / "out"
    tmp.mkdir(), out.mkdir()
    proc = _cli(["export", "--adapter", str(exported["adapter"]), "--out", str(out / "x.bundle"), "--precision", "int8",
                 "--calib", "8", "--eval-limit", "4", "--threads", "1", "--no-cache"], tmp)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if marker is not None and marker in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.communicate(timeout=600)[1]
    output = "".join(seen) + rest
    if marker is not None and not marker.startswith("[7/7]"):  # seconds of work were left when the signal came
        assert proc.returncode == 143, output
    if marker is None or proc.returncode == 0:  # finished (the signal can come after the commit): a whole bundle
        assert proc.returncode == 0, output
        assert (out / "x.bundle" / "manifest.json").is_file()
    else:
        assert proc.returncode == 143, output
        assert "terminated (SIGTERM); temporary files were removed" in rest and "Traceback" not in output
        assert os.listdir(out) == [], "a partial bundle is left beside the output"
    assert _debris(tmp, out) == [], output


def test_sigterm_during_data_synth_leaves_no_debris(tmp_path):
    tmp, parent = tmp_path / "tmp", tmp_path / "data"
    tmp.mkdir(), parent.mkdir()
    proc = _cli(["data", "synth", "--out", str(parent / "ds"), "--n", "20000", "--size", "64"], tmp)
    for _ in range(6000):  # until the writer's temporary directory exists (a few seconds at most)
        if _debris(parent) or proc.poll() is not None:
            break
        time.sleep(0.01)
    assert _debris(parent), "data synth made no temporary directory"
    time.sleep(0.3)  # a few frames into it
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143 and "Traceback" not in err, err
    assert _debris(parent, tmp) == [] and not (parent / "ds").exists()


def test_a_disabled_export_cache_removes_its_temporary_parts(tmp_path, monkeypatch):
    import tempfile

    from crome_export.parts_cache import PartsCache

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    cache = PartsCache(tmp_path / "cache", enabled=False)

    def builder(directory: Path) -> dict:
        (directory / "part.bin").write_bytes(b"x" * 10)
        return {}

    def failing(directory: Path) -> dict:
        (directory / "half.bin").write_bytes(b"x")
        raise RuntimeError("the exporter failed")

    with cache:
        first, entry = cache.build("k1", {"fingerprint": "f", "precision": "fp32"}, builder)
        second, _ = cache.build("k2", {"fingerprint": "f", "precision": "int8"}, builder)
        assert (first / "part.bin").is_file() and entry["files"]["part.bin"]["bytes"] == 10
        with pytest.raises(RuntimeError):
            cache.build("k3", {"fingerprint": "f", "precision": "fp16"}, failing)
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("crome-")) == sorted([first.name, second.name])
    assert not first.exists() and not second.exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith("crome-")] == []
    assert not (tmp_path / "cache").exists()  # a disabled cache never writes the cache directory


def test_a_finished_run_whose_out_cannot_be_written_is_saved_elsewhere(tiny_backbone, exported, tmp_path, monkeypatch):
    import tempfile

    from crome_edge.adapter_file import load_adapter
    from crome_edge.training.config import TrainConfig
    from crome_edge.training.trainer import Trainer

    fallback_dir = tmp_path / "fallback"
    fallback_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(fallback_dir))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (tmp_path / "ckpt").mkdir()
    config = TrainConfig(data=str(exported["data"]), out=str(out_dir / "line3.safetensors"), backbone="tiny", steps=2,
                         rank=4, batch_size=4, checkpoint=str(tmp_path / "ckpt" / "line3.ckpt"), progress=False,
                         threads=1)

    def remove_out_dir(step: int, loss: float) -> None:  # the directory disappears while the run trains
        shutil.rmtree(out_dir, ignore_errors=True)

    with pytest.raises(CromeError) as error:
        Trainer(config, backbone=tiny_backbone, on_step=remove_out_dir).run()
    message = str(error.value)
    assert "could not write --out" in message and "the finished run was saved to" in message
    saved = [p for p in fallback_dir.iterdir() if p.name.startswith("line3-") and p.suffix == ".safetensors"]
    assert len(saved) == 1 and str(saved[0]) in message
    adapter, meta = load_adapter(saved[0], tiny_backbone)  # a whole, loadable adapter
    assert meta.training["steps"] == 2 and adapter.config.rank == 4
