"""The on-disk model cache: where entries live, how they are written atomically and how they are verified.

An entry is a directory `<cache>/models/<key>/` holding a model's files and `entry.json` (sha256, size
and mtime of every file, plus where the files came from). It is built in a temporary directory inside
the cache and renamed into place, so an entry is complete or absent (crome_runtime.cache_entry writes it).
This module knows nothing about particular models; `registry.py` and `smollm2.py` do.
"""
from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

from crome_runtime import cache_entry
from crome_runtime.user_cache_dir import cache_root
from crome_runtime.cache_entry import ENTRY_FILE, write_json_atomic
from crome_runtime.manifest import sha256_file
from crome_runtime import input_files

ENTRY_FORMAT_VERSION = 1

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


def read_entry(directory: Path) -> dict | None:
    """The entry record of a cache directory, or None if there is no complete entry there."""
    try:
        return input_files.read_json(directory / ENTRY_FILE)
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):  # absent, or damaged beyond use
        return None


def write_entry(directory: Path, build: Callable[[Path], dict]) -> Path:
    """Build an entry atomically: `build(tmp)` writes the files into `tmp` and returns the source record.

    Any previous entry at `directory` is replaced. If `build` raises, nothing is left in the cache.
    """
    def record(tmp: Path) -> dict:
        source = build(tmp)
        return {"format_version": ENTRY_FORMAT_VERSION, "source": source, "files": _file_records(tmp)}

    cache_entry.write_entry(directory, record, what="model cache")
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
                write_json_atomic(directory / ENTRY_FILE, record)
    if problems:
        _verified_this_process.discard(directory)
    else:
        _verified_this_process.add(directory)
    return problems


def entry_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
