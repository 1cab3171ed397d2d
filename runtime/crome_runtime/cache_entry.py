"""One on-disk cache entry, written atomically: the model store (crome_edge.store), the export cache of backbone
parts (crome_export.parts_cache), the regenerated synthetic datasets (crome_edge.synth.recipe) and the unpacked
tritonserver with its stub environment (crome_runtime.triton.server) all write their entries here.

An entry is a directory `<parent>/<name>/` holding files and `entry.json` (the record its owner defines). It is
built in a temporary directory `<parent>/.tmp-<name>-*` and renamed into place, so a reader sees the entry
complete or not at all. An existing entry is moved aside first and removed after. When two processes build
the same entry at once, both succeed: the later rename replaces the earlier entry, or, if the other
process's rename lands between our two renames, its entry is kept and ours discarded. Temporary directories
older than a day belong to killed processes and are removed by the next build in the same parent.
Torch-free. Not here: what goes into an entry or how an entry is verified (each owner does that).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from crome_runtime.errors import CromeError

ENTRY_FILE = "entry.json"
STALE_BUILD_S = 24 * 3600  # a temporary build dir this old belongs to a killed process
BUILD_PREFIX = ".tmp-"


def write_json_atomic(path: Path, content: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(tmp, path)


def remove_stale_builds(parent: Path, patterns: Iterable[str] = (f"{BUILD_PREFIX}*",)) -> None:
    """Removes the temporary build directories in `parent` older than STALE_BUILD_S (a killed build's)."""
    for pattern in patterns:
        for tmp in parent.glob(pattern):
            with contextlib.suppress(FileNotFoundError):  # another process may be cleaning up too
                if time.time() - tmp.stat().st_mtime > STALE_BUILD_S:
                    shutil.rmtree(tmp, ignore_errors=True)


def _make_build_dir(directory: Path, what: str) -> Path:
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{BUILD_PREFIX}{directory.name}-", dir=directory.parent))
    except OSError as error:
        raise CromeError(
            f"cannot write the {what} in {directory.parent} ({error.strerror}); "
            "set CROME_EDGE_CACHE to a writable directory"
        ) from error


def _install(tmp: Path, directory: Path) -> bool:
    """Renames `tmp` to `directory`; False if another process installed its entry there meanwhile (kept)."""
    old = None
    try:
        if directory.exists():  # replacing a corrupt, outdated or concurrently built entry: move it aside
            old = Path(tempfile.mkdtemp(prefix=f"{BUILD_PREFIX}{directory.name}-old-", dir=directory.parent))
            with contextlib.suppress(FileNotFoundError):  # another builder moved it aside first
                os.replace(directory, old / directory.name)
        try:
            os.replace(tmp, directory)
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            return False  # another builder's rename landed between ours: its entry is as good as ours
        return True
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_entry(directory: Path, build: Callable[[Path], dict], *, what: str,
                stale_patterns: Iterable[str] = ()) -> bool:
    """Builds the entry `directory` atomically: `build(tmp)` writes the files into `tmp` and returns the entry
    record, written as entry.json. Any previous entry is replaced. If `build` raises, nothing is left in the
    cache. `what` names the cache in errors ("model cache"); `stale_patterns` adds older names of build dirs.
    Returns False when a concurrent builder's entry was kept instead of ours.
    """
    tmp = _make_build_dir(directory, what)
    remove_stale_builds(directory.parent, (f"{BUILD_PREFIX}*", *stale_patterns))
    try:
        write_json_atomic(tmp / ENTRY_FILE, build(tmp))
        for path in [tmp, *tmp.iterdir()]:  # mkdtemp and some writers use 0o700/0o600: entries are public
            path.chmod(0o755 if path.is_dir() else 0o644)
        return _install(tmp, directory)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        raise CromeError(
            f"no space left for the {what} in {directory.parent}; free some space or set "
            "CROME_EDGE_CACHE to a directory on a larger disk"
        ) from error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename
