"""The embedded default bundle: the smol backbone + the shipped line3 and line5 adapters, exported once into the
user cache and reused by `crome-edge serve` when no --bundle is given. Each adapter answers the questions it was
trained on (its routes); every other question reaches the frozen backbone ("What part is this?" names the part).

The export needs the `[train]` extra (torch, transformers, onnx); a torch-free device cannot make it and is
told to export elsewhere and pass --bundle. The cache entry is named by a sha256 over the shipped weights,
crome-edge's version and the bundle contract (crome_runtime/formats.py: the file names and formats a bundle
holds), so a crome-edge whose weights or bundle layout changed exports afresh instead of serving a bundle the
current exporter would not make. (Not the exporter's every source file: in a working tree that changes far
more often than what a bundle is.) Not here: the export
itself (crome_export.pipeline), serving (crome_runtime.serve).
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Callable

from crome_runtime.errors import CromeError

ADAPTERS = ("line3", "line5")  # shipped demo adapters, routed by their training questions
PRECISION = "int8"  # the deployment form (INT8 vision, FP32 decoder): what `crome-edge export` makes by default
EVAL_LIMIT = 50  # held-out prompts in the default bundle's fidelity report (the export's default 200 takes minutes)
BUNDLES_DIR = "bundles"  # under the user cache dir


def default_bundle_path() -> Path:
    from importlib import resources

    import crome_edge
    from crome_edge.weights import shipped_adapter, weights_dir
    from crome_runtime.user_cache_dir import cache_root

    contract = Path(str(resources.files("crome_runtime"))) / "formats.py"
    digest = hashlib.sha256(f"crome-edge {crome_edge.__version__} {PRECISION} {EVAL_LIMIT}".encode())
    for path in (*map(shipped_adapter, ADAPTERS), weights_dir() / "smol_vision.safetensors", contract):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return cache_root() / BUNDLES_DIR / f"smol-{'-'.join(ADAPTERS)}-{PRECISION}-{digest.hexdigest()[:12]}"


def ensure_default_bundle(say: Callable[[str], None]) -> Path:
    """The default bundle's directory, exported first if it is not in the cache yet (a minute or two)."""
    path = default_bundle_path()
    if (path / "manifest.json").is_file():
        return path
    try:
        import torch  # noqa: F401  (the export's own imports would fail later, less clearly)

        from crome_export.multi import export_adapters
        from crome_export.pipeline import ExportConfig
    except ImportError as error:
        raise CromeError(
            f"no --bundle given, and the embedded default bundle is not in the cache yet ({path}). Making it "
            f"needs the [train] extra ({error.name} is missing): pip install 'crome-edge[train]'. On a torch-free "
            "device, export a bundle on another machine (crome-edge export --adapter line3 --adapter line5 --out "
            "default.bundle), copy it here and pass --bundle default.bundle") from None
    from crome_edge.weights import shipped_adapter

    say(f"exporting the embedded default bundle (smol + {' + '.join(ADAPTERS)}, {PRECISION}) once into {path}; "
        "later starts reuse it")
    path.parent.mkdir(parents=True, exist_ok=True)
    adapters = [shipped_adapter(name) for name in ADAPTERS]
    export_adapters(ExportConfig(adapter=adapters[0], precision=PRECISION, out=path, eval_limit=EVAL_LIMIT), adapters)
    for old in path.parent.glob(f"smol-*-{PRECISION}-*"):  # earlier exports of the default: stale now
        if old != path and (old / "manifest.json").is_file():
            say(f"removing the stale default bundle {old}")
            shutil.rmtree(old)
    return path
