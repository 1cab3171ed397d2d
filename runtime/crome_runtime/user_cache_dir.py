"""Where crome-edge keeps what it computes once per machine: the model store (crome_edge.store), the export
cache of backbone parts (crome_export.parts_cache) and ONNX Runtime's TensorRT engines for read-only bundles.

`$CROME_EDGE_CACHE` when set, else the platform's user cache directory (e.g. ~/.cache/crome-edge). Torch-free.
Not here: what goes inside (each user makes its own subdirectory).
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$CROME_EDGE_CACHE`, else the platform's user cache dir (e.g. ~/.cache/crome-edge)."""
    override = os.environ.get("CROME_EDGE_CACHE")
    if override:
        return Path(override).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("crome-edge"))
