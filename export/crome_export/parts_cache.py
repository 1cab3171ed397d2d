"""Cache of exported backbone parts, so that a second adapter for the same backbone exports in seconds.

An entry is `<cache>/export-parts/<key>/`: the part files plus `entry.json` (what the key was made of,
every file's sha256 and size, and the builder's notes). Keys are sha256 over the backbone fingerprint, the
precision, the calibration set, the opset, the decoder INT8 method and the exporting tools' versions.
Entries are written by crome_runtime.cache_entry, as the model store's are: built in a temporary directory
inside the cache and renamed into place (complete or absent; a concurrent export of the same key succeeds too;
build directories of killed exports are removed after a day).
With the cache disabled (`export --no-cache`) parts are built into temporary directories that the cache owns
and removes on close() (use it as a context manager; a failed build removes its directory at once).
Bundles hard-link the entries' files (BundleWriter.add_cached) instead of copying them: the cache never writes a
file in place (an entry is only ever replaced whole), but a bundle file is the cache's inode, so a user's edit of it
in place (e.g. onnx.save over bundle/decoder.onnx) changes the entry too. Such an entry is never used: a file
modified after its entry was recorded (newer than entry.json) makes the lookup a miss that removes the entry (it is
built again), and an edit that kept the old mtime is caught by the sha256 the writer computes as it links (the
entry is then removed and the export stops, saying so). Read-only files (0444) were not chosen: the mode travels
with the inode into every bundle, and with `cp -a` / copytree into every copy of one, so editing a copy of a
bundle, an ordinary thing to do, would fail; ext4 has no copy-on-write clones.
`<cache>` is crome_runtime.user_cache_dir.cache_root(), as for the model store.
Not here: what goes into an entry (backbone_parts.py).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path

from crome_runtime.user_cache_dir import cache_root
from crome_runtime.cache_entry import ENTRY_FILE, write_entry, write_json_atomic
from crome_runtime.manifest import sha256_file
from crome_runtime import input_files

CACHE_FORMAT_VERSION = 4  # bumped whenever what a key builds changes
_OLD_STAGING = ".*.partial-*"  # the build directories of earlier versions, removed once stale like the new ones


def _remove_all(directories: list[Path]) -> None:
    while directories:
        shutil.rmtree(directories.pop(), ignore_errors=True)


def tool_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def parts_key(fields: dict) -> str:
    """A readable, collision-safe directory name for `fields` (which must hold `fingerprint`, `precision`)."""
    payload = json.dumps({**fields, "cache_format": CACHE_FORMAT_VERSION, "tools": tool_versions()}, sort_keys=True)
    return f"{fields['fingerprint'][:12]}-{fields['precision']}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


class PartsCache:
    def __init__(self, root: Path | None = None, enabled: bool = True):
        self.root = (root or cache_root()) / "export-parts"
        self.enabled = enabled
        self._temporary: list[Path] = []  # enabled=False: the directories build() made, removed by close()
        # a safety net for a cache that is never closed: at garbage collection or interpreter exit
        self._finalizer = weakref.finalize(self, _remove_all, self._temporary)

    def __enter__(self) -> "PartsCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Removes the temporary directories of a disabled cache (their paths are invalid afterwards)."""
        _remove_all(self._temporary)

    def lookup(self, key: str) -> tuple[Path, dict] | None:
        """The entry's directory and entry.json when it is complete (every file there, sizes match) and unaltered
        (no file modified after entry.json was written: an altered entry is removed, so it is built again)."""
        if not self.enabled:
            return None
        directory = self.root / key
        try:
            recorded = (directory / ENTRY_FILE).stat().st_mtime_ns
            entry = input_files.read_json(directory / ENTRY_FILE)
            altered = False
            for name, record in entry["files"].items():
                status = (directory / name).stat()
                if status.st_size != record["bytes"]:
                    return None
                altered = altered or status.st_mtime_ns > recorded
        except (OSError, ValueError, KeyError):
            return None
        if altered:
            self.invalidate(key)
            return None
        return directory, entry

    def recorded_sha256(self, path: Path) -> str | None:
        """The sha256 the entry holding `path` recorded for it (a file of this cache), else None."""
        path = Path(path)
        if not self.enabled or path.parent.parent != self.root:
            return None
        try:
            return input_files.read_json(path.parent / ENTRY_FILE)["files"][path.name]["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def build(self, key: str, fields: dict, builder: Callable[[Path], dict]) -> tuple[Path, dict]:
        """Runs builder(dir) -> notes into a fresh directory and stores it under `key`. With the cache
        disabled, builds into a temporary directory that lives until close()."""
        if not self.enabled:
            directory = Path(tempfile.mkdtemp(prefix="crome-export-parts-"))
            self._temporary.append(directory)
            try:
                entry = self._record(directory, fields, builder(directory))
                write_json_atomic(directory / ENTRY_FILE, entry)
                return directory, entry
            except BaseException:
                self._temporary.remove(directory)
                shutil.rmtree(directory, ignore_errors=True)
                raise
        target = self.root / key
        entries: list[dict] = []

        def record(staging: Path) -> dict:
            entries.append(self._record(staging, fields, builder(staging)))
            return entries[0]

        if not write_entry(target, record, what="export cache", stale_patterns=(_OLD_STAGING,)):
            found = self.lookup(key)  # a concurrent export of the same key installed its entry first
            if found is not None:
                return found
        return target, entries[0]

    def invalidate(self, key: str) -> None:
        shutil.rmtree(self.root / key, ignore_errors=True)  # bundles linked to its files keep them (hard links)

    def discard(self, path: Path) -> None:
        """Removes the entry holding `path` (a file found altered), so the next export builds it again."""
        if Path(path).parent.parent == self.root:
            self.invalidate(Path(path).parent.name)

    @staticmethod
    def _record(directory: Path, fields: dict, notes: dict) -> dict:
        files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                 for p in sorted(directory.iterdir()) if p.is_file() and p.name != ENTRY_FILE}
        return {"key": fields, "files": files, "notes": notes, "tools": tool_versions()}
