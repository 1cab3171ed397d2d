"""atomic_path: the target is the old file or the whole new one, never half; new files get the umask's mode."""
import os
import stat

import pytest

from crome_runtime.atomic import atomic_path


def test_success_replaces_the_target_with_the_umask_mode(tmp_path):
    target = tmp_path / "line3.safetensors"
    target.write_bytes(b"old")
    old_mask = os.umask(0o022)
    try:
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp != target
            tmp.write_bytes(b"new")
            assert target.read_bytes() == b"old"  # untouched until the block succeeds
    finally:
        os.umask(old_mask)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["line3.safetensors"]


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "parts.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts.safetensors"]


def test_a_writer_that_replaces_the_temporary_still_gives_the_umask_mode(tmp_path):
    import torch
    from safetensors.torch import save_file

    target = tmp_path / "adapter.safetensors"
    old_mask = os.umask(0o022)
    try:
        with atomic_path(target) as tmp:
            save_file({"up": torch.zeros(2)}, str(tmp))  # safetensors writes its own file and renames it over tmp
    finally:
        os.umask(old_mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
