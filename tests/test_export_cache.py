"""The export parts cache (crome_export.parts_cache.PartsCache) writes its entries atomically: a concurrent export of
the same key succeeds, a killed export's build directory is removed after a day, a failed build leaves
nothing, a full disk says what to do. The model store's side of the same writer is in test_store.py."""
from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from crome_export.parts_cache import PartsCache
from crome_runtime.errors import CromeError

FIELDS = {"fingerprint": "f" * 16, "precision": "fp32"}


def _builder(content: bytes):
    def build(directory: Path) -> dict:
        (directory / "part.bin").write_bytes(content)
        return {"made_by": content.decode()}
    return build


def _debris(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_an_export_that_finishes_between_our_check_and_our_rename_does_not_fail_ours(tmp_path, monkeypatch):
    cache = PartsCache(tmp_path)
    target = cache.root / "k"
    real_replace, real_rename = os.replace, os.rename
    other: list[tuple[Path, dict]] = []
    started: list[bool] = []

    def other_export_lands_first(real):
        def move(src, dst, *args, **kwargs):
            if Path(dst) == target and not started:  # the other process renames its entry into place right now
                started.append(True)
                other.append(cache.build("k", FIELDS, _builder(b"other")))
            return real(src, dst, *args, **kwargs)
        return move

    monkeypatch.setattr(os, "replace", other_export_lands_first(real_replace))
    monkeypatch.setattr(os, "rename", other_export_lands_first(real_rename))
    directory, entry = cache.build("k", FIELDS, _builder(b"ours"))
    assert other and directory == target
    assert cache.lookup("k") == (target, entry)  # what we return is what is on disk, complete
    assert (target / "part.bin").read_bytes() == entry["notes"]["made_by"].encode()
    assert _debris(cache.root) == []


def test_several_exports_of_one_key_at_once_all_succeed(tmp_path):
    cache = PartsCache(tmp_path)
    barrier = threading.Barrier(4)
    results, errors = [], []

    def export(n: int) -> None:
        def build(directory: Path) -> dict:
            barrier.wait(timeout=30)  # all four are building at the same time
            return _builder(f"builder-{n}".encode())(directory)
        try:
            results.append(cache.build("k", FIELDS, build))
        except BaseException as error:  # noqa: BLE001 - reported by the assert below
            errors.append(error)

    threads = [threading.Thread(target=export, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(results) == 4
    found = cache.lookup("k")
    assert found is not None and (found[0] / "part.bin").read_bytes() == found[1]["notes"]["made_by"].encode()
    assert _debris(cache.root) == []


def test_a_killed_exports_build_directories_are_removed_by_the_next_build_after_a_day(tmp_path):
    cache = PartsCache(tmp_path)
    cache.root.mkdir(parents=True)
    killed = [cache.root / ".k.partial-abc123", cache.root / ".tmp-k-def456"]  # this version's and the one before
    running = cache.root / ".tmp-other-789"
    for directory in (*killed, running):
        directory.mkdir()
        (directory / "half.onnx").write_bytes(b"x")
    for directory in killed:
        os.utime(directory, (0, 0))
    cache.build("k", FIELDS, _builder(b"new"))
    assert sorted(p.name for p in cache.root.iterdir()) == [running.name, "k"]


@pytest.mark.parametrize("interrupt", [RuntimeError("the exporter failed"), KeyboardInterrupt()])
def test_an_interrupted_build_leaves_no_entry_and_keeps_the_old_one(tmp_path, interrupt):
    cache = PartsCache(tmp_path)

    def failing(directory: Path) -> dict:
        (directory / "part.bin").write_bytes(b"half")
        raise interrupt

    with pytest.raises(type(interrupt)):
        cache.build("fresh", FIELDS, failing)
    assert cache.lookup("fresh") is None and not (cache.root / "fresh").exists()
    old_dir, old_entry = cache.build("k", FIELDS, _builder(b"old"))
    with pytest.raises(type(interrupt)):
        cache.build("k", FIELDS, failing)
    assert cache.lookup("k") == (old_dir, old_entry) and (old_dir / "part.bin").read_bytes() == b"old"
    assert _debris(cache.root) == []


def test_an_existing_entry_is_replaced_whole(tmp_path):
    cache = PartsCache(tmp_path)
    cache.build("k", FIELDS, _builder(b"old"))
    (cache.root / "k" / "stray.bin").write_bytes(b"from the old entry")
    directory, entry = cache.build("k", FIELDS, _builder(b"new"))
    assert sorted(p.name for p in directory.iterdir()) == ["entry.json", "part.bin"]
    assert entry["notes"] == {"made_by": "new"} and _debris(cache.root) == []


def test_a_full_disk_while_building_says_what_to_do(tmp_path):
    cache = PartsCache(tmp_path)

    def full(directory: Path) -> dict:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CromeError, match="no space left for the export cache.*CROME_EDGE_CACHE"):
        cache.build("k", FIELDS, full)
    assert _debris(cache.root) == [] and not (cache.root / "k").exists()


def _staged(tmp_path: Path, source: Path, sha256: str, link=os.link):
    """add_cached of `source` into a BundleWriter's staging directory -> (writer, staged path)."""
    from crome_export.bundle import BundleWriter

    writer = BundleWriter(tmp_path / "out.bundle")
    writer.__enter__()
    return writer, writer.add_cached(source, "part.bin", "fp32", sha256)


def test_a_bundle_links_the_cache_file_and_hashes_it_once(tmp_path, monkeypatch):
    import hashlib

    cache = PartsCache(tmp_path / "cache")
    directory, entry = cache.build("k", FIELDS, _builder(b"weights"))
    source = directory / "part.bin"
    sha256 = cache.recorded_sha256(source)
    assert sha256 == entry["files"]["part.bin"]["sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert cache.recorded_sha256(tmp_path / "elsewhere.bin") is None
    writer, staged = _staged(tmp_path, source, sha256)
    assert os.path.samefile(writer.staging / "part.bin", source)  # a hard link: no copy
    assert staged.sha256 == sha256 and staged.bytes == len(b"weights")
    writer.__exit__(None, None, None)

    def no_links(src, dst):  # another file system
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    writer, staged = _staged(tmp_path, source, sha256)
    assert not os.path.samefile(writer.staging / "part.bin", source)  # a copy, hashed as it was written
    assert (writer.staging / "part.bin").read_bytes() == b"weights" and staged.sha256 == sha256
    writer.__exit__(None, None, None)


@pytest.mark.parametrize("linked", [True, False])
def test_a_cache_file_whose_bytes_changed_is_not_staged(tmp_path, monkeypatch, linked):
    """An edit in place that kept the file's mtime (the lookup cannot see it) is caught by the sha256 the writer
    computes as it links (or copies): nothing is staged under the name."""
    from crome_export.bundle import CachedFileAltered

    cache = PartsCache(tmp_path / "cache")
    directory, entry = cache.build("k", FIELDS, _builder(b"weights"))
    source = directory / "part.bin"
    with open(source, "r+b") as f:
        f.write(b"W")
    if not linked:
        monkeypatch.setattr(os, "link", lambda src, dst: (_ for _ in ()).throw(OSError(errno.EXDEV, "cross-device")))
    with pytest.raises(CachedFileAltered, match="changed after it was cached"):
        _staged(tmp_path, source, entry["files"]["part.bin"]["sha256"])
    staging = next((tmp_path).glob(".out.bundle.partial-*"))
    assert not (staging / "part.bin").exists()
    cache.discard(source)
    assert cache.lookup("k") is None and not directory.exists()


def test_an_entry_with_a_file_changed_after_it_was_recorded_is_a_miss_and_is_removed(tmp_path):
    """A bundle file is the cache's inode: a user's edit of it in place changes the entry's file (and its mtime). The
    lookup then misses and removes the entry, so the next build starts clean; an untouched entry is found."""
    cache = PartsCache(tmp_path)
    directory, entry = cache.build("k", FIELDS, _builder(b"weights"))
    bundle = tmp_path / "a.bundle"
    bundle.mkdir()
    os.link(directory / "part.bin", bundle / "part.bin")  # what export does
    recorded = (directory / "entry.json").stat().st_mtime_ns
    os.utime(directory / "entry.json", ns=(recorded - 10**9, recorded - 10**9))  # the entry was written a while ago
    os.utime(directory / "part.bin", ns=(recorded - 2 * 10**9, recorded - 2 * 10**9))
    assert cache.lookup("k") == (directory, entry)
    with open(bundle / "part.bin", "r+b") as f:  # the user's edit, through the bundle
        f.write(b"W")
    assert cache.lookup("k") is None and not directory.exists()
    assert (bundle / "part.bin").read_bytes() == b"Weights"  # the bundle keeps its (edited) file
    rebuilt, _ = cache.build("k", FIELDS, _builder(b"weights"))
    assert cache.lookup("k") is not None and (rebuilt / "part.bin").read_bytes() == b"weights"
