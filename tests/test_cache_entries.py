"""The regenerated synthetic datasets (crome_edge.synth.recipe) and the tritonserver unpack
(crome_runtime.triton.server) are cache entries written by crome_runtime.cache_entry, like the model store's
(test_store.py) and the export parts' (test_export_cache.py): two writers of the same key at once both succeed,
a killed writer leaves no entry and its build directory is removed by the next write a day later, an entry is
complete or absent."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from crome_edge.synth import dataset_writer
from crome_edge.synth.recipe import DATASETS_DIR, SynthRecipe, content_sha256, materialize
from crome_runtime.cache_entry import ENTRY_FILE
from crome_runtime.triton import server as triton

RECIPE = SynthRecipe("line3", "train", 2, 0, 32, "all")
WAIT_S = 120.0  # bound on a subprocess importing OpenCV on a loaded 2-core machine


def _debris(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _at_once(n: int, work) -> list:
    """Runs work(i) in n threads; the results, or the first error raised."""
    results: list = [None] * n
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            results[i] = work(i)
        except BaseException as error:  # noqa: BLE001 - re-raised below
            errors.append(error)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def _complete_dataset(data: Path) -> None:
    entry = json.loads((data.parent / ENTRY_FILE).read_text())
    assert entry == {"recipe": RECIPE.to_dict(), "sha256": content_sha256(data.parent)}


# --- regenerated datasets ------------------------------------------------------------------------------------------

def test_two_renders_of_one_recipe_at_once_both_succeed(tmp_path, monkeypatch):
    barrier = threading.Barrier(2)
    real = dataset_writer.render_into

    def render_together(directory, config):
        barrier.wait(timeout=WAIT_S)  # both are building their entry at the same time
        return real(directory, config)

    monkeypatch.setattr(dataset_writer, "render_into", render_together)
    first, second = _at_once(2, lambda i: materialize(RECIPE, cache_root=tmp_path))
    assert first == second and first.parent.parent == tmp_path / DATASETS_DIR
    _complete_dataset(first)
    assert _debris(tmp_path / DATASETS_DIR) == []


KILLED_RENDER = """
import sys, time
from pathlib import Path
from crome_edge.synth import dataset_writer, recipe

def half_written(directory, config):
    (directory / "data.jsonl").write_text("half\\n")
    print("building", flush=True)
    time.sleep(600)

dataset_writer.render_into = half_written
recipe.materialize(recipe.SynthRecipe("line3", "train", 2, 0, 32, "all"), cache_root=Path(sys.argv[1]))
"""


def test_a_killed_render_leaves_no_dataset_and_its_build_directory_goes_a_day_later(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", KILLED_RENDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "building\n"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=WAIT_S)
    datasets = tmp_path / DATASETS_DIR
    left = _debris(datasets)
    assert [p.name for p in datasets.iterdir() if not p.name.startswith(".")] == []  # absent, not half there
    assert len(left) == 1 and left[0].startswith(".tmp-")
    older = datasets / f".line3-train-2-{RECIPE.key()[:16]}.tmp-killed"  # the dataset writer's build dir before
    older.mkdir()
    fresh = datasets / ".tmp-another-running"
    fresh.mkdir()
    for name in (*left, older.name):
        os.utime(datasets / name, (0, 0))  # a day has passed
    data = materialize(RECIPE, cache_root=tmp_path)
    _complete_dataset(data)
    assert _debris(datasets) == [fresh.name]


def test_a_failed_render_keeps_the_entry_there_was(tmp_path, monkeypatch):
    data = materialize(RECIPE, cache_root=tmp_path)
    (data.parent / "images" / "000000.png").write_bytes(b"damaged")  # rendered again on the next use

    def failing(directory, config):
        (directory / "data.jsonl").write_text("half\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(dataset_writer, "render_into", failing)
    with pytest.raises(KeyboardInterrupt):
        materialize(RECIPE, cache_root=tmp_path)
    assert (data.parent / "images" / "000000.png").read_bytes() == b"damaged" and _debris(data.parent.parent) == []


# --- the tritonserver unpack ---------------------------------------------------------------------------------------

@pytest.fixture
def fake_wheel(tmp_path, monkeypatch):
    """A wheel laid out like nvidia-pytriton's server part, accepted as the real one; the cache in tmp_path."""
    wheel = tmp_path / triton.WHEEL_NAME
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("pytriton/tritonserver/bin/tritonserver", "#!/bin/sh\n")
        archive.writestr("pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub", "#!/bin/sh\n")
        archive.writestr("nvidia_pytriton.libs/libfake.so", b"\0")
        archive.writestr("pytriton/__init__.py", "")  # not part of the server: not unpacked
    monkeypatch.setattr(triton, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setenv("CROME_EDGE_CACHE", str(tmp_path / "cache"))
    return wheel


def _complete_unpack(target: Path) -> None:
    assert sorted(p.name for p in target.iterdir()) == [ENTRY_FILE, "nvidia_pytriton.libs", "pytriton"]
    assert json.loads((target / ENTRY_FILE).read_text())["version"] == triton.VERSION
    assert os.access(target / "pytriton" / "tritonserver" / "bin" / "tritonserver", os.X_OK)
    assert (triton.wheel_home() / "bin" / "tritonserver").is_file()  # where locate() finds the unpacked server


def test_two_unpacks_at_once_both_succeed(fake_wheel, monkeypatch):
    barrier = threading.Barrier(2)
    real = triton._sha256

    def hash_together(path):
        barrier.wait(timeout=WAIT_S)  # both are unpacking into their build directories
        return real(path)

    monkeypatch.setattr(triton, "_sha256", hash_together)
    first, second = _at_once(2, lambda i: triton.fetch_wheel(fake_wheel, say=lambda message: None))
    assert first == second == triton.cache_dir()
    _complete_unpack(first)
    assert _debris(first.parent) == []


def test_a_killed_unpack_is_absent_and_its_directories_go_a_day_later(fake_wheel):
    parent = triton.cache_dir().parent
    parent.mkdir(parents=True)
    killed = [parent / f".tmp-{triton.cache_dir().name}-killed", parent / ".fetch-killed"]  # this writer's, the one before
    running = parent / ".tmp-stub-env-running"
    for directory in (*killed, running):
        (directory / "pytriton").mkdir(parents=True)
    for directory in killed:
        os.utime(directory, (0, 0))
    assert not triton.cache_dir().exists()  # what a killed unpack leaves is not where locate() looks
    target = triton.fetch_wheel(fake_wheel, say=lambda message: None)
    _complete_unpack(target)
    assert _debris(parent) == [running.name]


def test_a_wrong_wheel_leaves_the_unpacked_server_as_it_was(fake_wheel, tmp_path):
    target = triton.fetch_wheel(fake_wheel, say=lambda message: None)
    before = (target / ENTRY_FILE).read_text()
    wrong = tmp_path / "other.whl"
    wrong.write_bytes(b"not the wheel")
    with pytest.raises(triton.TritonError, match="is not the nvidia-pytriton"):
        triton.fetch_wheel(wrong, say=lambda message: None)
    assert (target / ENTRY_FILE).read_text() == before and _debris(target.parent) == []
    _complete_unpack(target)
