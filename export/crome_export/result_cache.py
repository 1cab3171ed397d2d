"""Measured results an export keeps for the next one: `<cache>/<kind>/<key>/` holding result.json (a JSON
document) and result.npz (float32/int arrays, read with allow_pickle=False), written atomically by
crome_runtime.cache_entry (complete or absent). The key is sha256 over every field that determines the result
(the caller's), so an entry is either exactly the result for those fields or not found; an unreadable entry is
a miss, never an error. At most MAX_ENTRIES per kind are kept, the least recently used going first.
`<cache>` is crome_runtime.user_cache_dir.cache_root(), as for the backbone parts.
Not here: what is cached and its key fields (reuse.py).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from crome_runtime import input_files
from crome_runtime.cache_entry import ENTRY_FILE, write_entry
from crome_runtime.user_cache_dir import cache_root

MAX_ENTRIES = 16
DOCUMENT, ARRAYS = "result.json", "result.npz"


def result_key(fields: dict) -> str:
    """sha256 of `fields` (JSON, keys sorted): an entry's directory name."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class ResultCache:
    def __init__(self, kind: str, root: Path | None = None, enabled: bool = True):
        self.root = (root or cache_root()) / kind
        self.enabled = enabled

    def get(self, fields: dict) -> tuple[dict, dict[str, np.ndarray]] | None:
        """(document, arrays) stored for exactly `fields`, else None."""
        if not self.enabled:
            return None
        directory = self.root / result_key(fields)
        try:
            entry = input_files.read_json(directory / ENTRY_FILE)
            if entry.get("fields") != input_files.loads(json.dumps(fields)):  # the key's own fields, not a collision
                return None
            document = input_files.read_json(directory / DOCUMENT)
            with np.load(directory / ARRAYS, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (OSError, ValueError, KeyError, AttributeError, zipfile.BadZipFile, EOFError):
            return None
        os.utime(directory)  # recently used: kept by prune()
        return document, arrays

    def put(self, fields: dict, document: dict, arrays: dict[str, np.ndarray]) -> None:
        if not self.enabled:
            return

        def build(directory: Path) -> dict:
            buffer = io.BytesIO()
            named: dict[str, Any] = dict(arrays)  # numpy's stubs type **kwds of savez as its allow_pickle flag
            np.savez(buffer, **named)
            (directory / ARRAYS).write_bytes(buffer.getvalue())
            (directory / DOCUMENT).write_text(json.dumps(document))
            return {"fields": fields}

        self.root.mkdir(parents=True, exist_ok=True)
        write_entry(self.root / result_key(fields), build, what=f"export cache ({self.root.name})")
        self.prune()

    def prune(self, keep: int = MAX_ENTRIES) -> None:
        entries = [p for p in self.root.iterdir() if p.is_dir() and (p / ENTRY_FILE).is_file()]
        entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for stale in entries[keep:]:
            shutil.rmtree(stale, ignore_errors=True)
