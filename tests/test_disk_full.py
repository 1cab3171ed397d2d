"""`train` into a full disk (issue 21 row 14): one clear error line, nothing half-written — it was a SafetensorError
traceback. A real full file system: a 256 KiB tmpfs, filled to the last byte (needs root, as this machine and CI
run; skipped elsewhere with the reason).
"""
from __future__ import annotations

import errno
import os
import re
import subprocess
from pathlib import Path

import pytest
from tests.support.bundles import tiny_bundle

from crome_cli.main import main


@pytest.fixture
def full_disk(tmp_path):
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)  # every block taken, unbuffered
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError as error:  # the tmpfs is full: what the fixture is for
            if error.errno != errno.ENOSPC:
                raise
        finally:
            os.close(fd)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)["data"]


def _train(data: Path, out: Path, checkpoint: Path, capsys) -> tuple[int, str]:
    code = main(["train", "--backbone", "tiny", "--data", str(data), "--out", str(out), "--checkpoint", str(checkpoint),
                 "--steps", "1", "--threads", "1", "--no-progress", "--val-fraction", "0"])
    return code, capsys.readouterr().err


def test_the_adapter_into_a_full_disk_is_one_line_and_nothing_half_written(full_disk, data, tmp_path, capsys):
    code, err = _train(data, full_disk / "a.safetensors", tmp_path / "a.ckpt", capsys)
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err and "SafetensorError" not in err, err
    assert "the disk is full" in errors[0]
    fallback = re.search(r"saved to (\S+) instead", errors[0])  # the finished run, saved where there was room
    assert fallback and Path(fallback.group(1)).stat().st_size > 0
    Path(fallback.group(1)).unlink()
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


def test_a_checkpoint_into_a_full_disk_is_one_warning_and_nothing_half_written(full_disk, data, tmp_path, capsys):
    """A checkpoint is insurance: training goes on without it, says so once, and does not claim one was kept."""
    code, err = _train(data, tmp_path / "a.safetensors", full_disk / "a.ckpt", capsys)
    warnings = [line for line in err.splitlines() if line.startswith("warning: could not write the checkpoint")]
    assert code == 0 and len(warnings) == 1 and "Traceback" not in err, err
    assert f"cannot write {full_disk / 'a.ckpt'}: the disk is full" in warnings[0]
    assert "no checkpoint (see above)" in err
    assert (tmp_path / "a.safetensors").stat().st_size > 0
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]
