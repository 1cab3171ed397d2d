"""The on-disk model cache: where entries live, how they are written atomically and how they are verified.

An entry is a directory `<cache>/models/<key>/` holding a model's files and `entry.json` (sha256, size
and mtime of every file, plus where the files came from). It is built in a temporary directory inside
the cache and renamed into place, so an entry is complete or absent. This module knows nothing about
particular models; `registry.py` and `smollm2.py` do.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from crome_edge.errors import CromeError
from crome_runtime.cache_dir import cache_root
from crome_runtime.manifest import sha256_file

ENTRY_FILE = "entry.json"
ENTRY_FORMAT_VERSION = 1
_STALE_TMP_S = 24 * 3600  # a temporary build dir this old belongs to a killed process

_verified_this_process: set[Path] = set()


def entry_dir(key: str) -> Path:
    return cache_root() / "models" / key


def say(message: str) -> None:
    """Progress and repair notes for the person waiting (stderr, so stdout stays clean for `models list`)."""
    print(f"crome-edge: {message}", file=sys.stderr, flush=True)


def _file_records(directory: Path) -> dict[str, dict]:
    records = {}
    for path in sorted(p for p in directory.iterdir() if p.is_file() and p.name != ENTRY_FILE):
        stat = path.stat()
        records[path.name] = {"sha256": sha256_file(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return records


def _write_json_atomic(path: Path, content: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(tmp, path)


def read_entry(directory: Path) -> dict | None:
    """The entry record of a cache directory, or None if there is no complete entry there."""
    try:
        return json.loads((directory / ENTRY_FILE).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):  # absent, or damaged beyond use
        return None


def _remove_stale_builds(parent: Path) -> None:
    for tmp in parent.glob(".tmp-*"):
        with contextlib.suppress(FileNotFoundError):  # another process may be cleaning up too
            if time.time() - tmp.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)


def _make_build_dir(directory: Path) -> Path:
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".tmp-{directory.name}-", dir=directory.parent))
    except OSError as error:
        raise CromeError(
            f"cannot write the model cache in {directory.parent} ({error.strerror}); "
            "set CROME_EDGE_CACHE to a writable directory"
        ) from error


def write_entry(directory: Path, build: Callable[[Path], dict]) -> Path:
    """Build an entry atomically: `build(tmp)` writes the files into `tmp` and returns the source record.

    Any previous entry at `directory` is replaced. If `build` raises, nothing is left in the cache.
    """
    tmp = _make_build_dir(directory)
    _remove_stale_builds(directory.parent)
    try:
        source = build(tmp)
        record = {"format_version": ENTRY_FORMAT_VERSION, "source": source, "files": _file_records(tmp)}
        _write_json_atomic(tmp / ENTRY_FILE, record)
        for path in [tmp, *tmp.iterdir()]:  # mkdtemp and some writers use 0o700/0o600: weights are public
            path.chmod(0o755 if path.is_dir() else 0o644)
        if directory.exists():  # replacing a corrupt or outdated entry: move it aside, then swap
            old = Path(tempfile.mkdtemp(prefix=f".tmp-{directory.name}-old-", dir=directory.parent))
            os.replace(directory, old / directory.name)
            shutil.rmtree(old)
        os.replace(tmp, directory)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        raise CromeError(
            f"no space left for the model cache in {directory.parent}; free some space or set "
            "CROME_EDGE_CACHE to a directory on a larger disk"
        ) from error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename
    _verified_this_process.add(directory)
    return directory


def entry_problems(directory: Path, *, full: bool) -> list[str]:
    """What is wrong with a cache entry; empty if it is intact.

    `full=False` compares sizes and mtimes with entry.json (instant); `full=True` re-hashes every file.
    """
    record = read_entry(directory)
    if record is None:
        return [f"{ENTRY_FILE} missing"]
    if record.get("format_version") != ENTRY_FORMAT_VERSION:
        return [f"entry format {record.get('format_version')} (expected {ENTRY_FORMAT_VERSION})"]
    problems = []
    for name, expected in record["files"].items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        stat = path.stat()
        if stat.st_size != expected["size"]:
            problems.append(f"{name}: size {stat.st_size} != {expected['size']}")
        elif full and sha256_file(path) != expected["sha256"]:
            problems.append(f"{name}: sha256 mismatch")
        elif not full and stat.st_mtime_ns != expected["mtime_ns"]:
            problems.append(f"{name}: modified since it was written")
    return problems


def check_entry(directory: Path, *, full: bool = False) -> list[str]:
    """Problems of an entry, checked cheaply once per process unless `full`.

    A file whose mtime changed (a copied cache) is re-hashed; if its content is intact the new mtime is
    recorded, so the next check is instant again.
    """
    if not full and directory in _verified_this_process:
        return []
    problems = entry_problems(directory, full=full)
    if problems and not full and all(p.endswith("modified since it was written") for p in problems):
        problems = entry_problems(directory, full=True)
        if not problems:
            record = read_entry(directory)
            assert record is not None  # the entry was just found intact
            for name, file_record in record["files"].items():
                file_record["mtime_ns"] = (directory / name).stat().st_mtime_ns
            with contextlib.suppress(OSError):  # a read-only cache: it is simply re-hashed in the next process
                _write_json_atomic(directory / ENTRY_FILE, record)
    if problems:
        _verified_this_process.discard(directory)
    else:
        _verified_this_process.add(directory)
    return problems


def entry_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
