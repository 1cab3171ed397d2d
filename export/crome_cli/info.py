"""`crome-edge info FILE`: say what a file is — adapter, backbone parts, training checkpoint or bundle.

Bundles are read torch-free (crome_runtime.manifest), so this works on a deployment device; adapter
and parts files are recognised from their safetensors header without torch, then fully validated.
"""
from __future__ import annotations

import argparse
import json
import stat
from pathlib import Path

from crome_runtime import formats, input_files
from crome_runtime.errors import CromeError
from crome_runtime.safetensors_header import SafetensorsHeaderError, read_header, tensor_shapes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="adapter .safetensors (or a shipped adapter's name: line3, line5), backbone-parts "
                                     ".safetensors, training checkpoint or bundle directory")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--verify", action="store_true", help="bundles: also check every file's sha256")


def run(args: argparse.Namespace) -> int:
    from crome_edge.weights import resolve_adapter

    path = resolve_adapter(args.path)  # a path as given, or a shipped adapter's name
    if not path.exists():
        raise CromeError(f"{path} does not exist")
    info = describe(path, verify=args.verify)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        print(render(info))
    return 0


def describe(path: Path, verify: bool = False) -> dict:
    if path.is_dir():
        return _describe_bundle(path, verify)
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):  # reading a FIFO would wait for a writer forever; a device never ends
        raise CromeError(f"{path} is {input_files.file_kind(mode)}, not a crome-edge file; give an adapter or "
                         "backbone-parts .safetensors, a training checkpoint or a bundle directory")
    if _is_zip(path):
        return _describe_checkpoint(path)
    try:
        header = read_header(path)
    except SafetensorsHeaderError as error:
        raise CromeError(f"{path} is not a crome-edge file (adapter, backbone parts, training checkpoint or bundle): "
                         f"{error}") from None
    kind = header.get("__metadata__", {}).get(formats.META_FORMAT)
    if kind == formats.ADAPTER_FORMAT:
        return _describe_adapter(path)
    if kind == formats.PARTS_FORMAT:
        return _describe_parts(path, header)
    raise CromeError(f"{path} is a safetensors file but not a crome-edge file (format {kind!r})")


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _describe_adapter(path: Path) -> dict:
    from crome_edge.adapter_file import load_adapter

    adapter, meta = load_adapter(path)  # validates names, shapes, dtypes and finiteness
    return {
        "kind": "adapter",
        "path": str(path),
        "bytes": path.stat().st_size,
        "format_version": meta.format_version,
        "config": {"d_model": meta.config.d_model, "rank": meta.config.rank},
        "parameters": sum(p.numel() for p in adapter.parameters()),
        "backbone": {"name": meta.backbone_name, "fingerprint": meta.backbone_fingerprint},
        "prompt": meta.prompt.to_dict(),
        "training": meta.training,
        "train_data": meta.train_data,
        "train_data_recipe": meta.train_data_recipe,
    }


def _describe_parts(path: Path, header: dict) -> dict:
    from math import prod

    from crome_edge.backbones.parts_file import read_parts_metadata

    meta = read_parts_metadata(path)
    counts: dict[str, int] = {}
    for name, shape in tensor_shapes(header).items():
        part = name.split(".", 1)[0]
        counts[part] = counts.get(part, 0) + prod(shape)
    return {
        "kind": "backbone parts",
        "path": str(path),
        "bytes": path.stat().st_size,
        "format_version": meta["format_version"],
        "backbone": {"name": meta["backbone_name"], "llm_fingerprint": meta["llm_fingerprint"]},
        "parameters": counts,
        "training": meta["training"],
    }


def _describe_checkpoint(path: Path) -> dict:
    from crome_edge.training.checkpoint import load_checkpoint

    try:
        state = load_checkpoint(path)
    except CromeError:
        raise CromeError(f"{path} is not a crome-edge file (a zip archive, but not a training checkpoint)") from None
    config = input_files.loads(state.get("config", "{}"), "its training config")
    return {
        "kind": "training checkpoint",
        "path": str(path),
        "step": state["step"],
        "stage": state["compat"]["stage"],
        "backbone": {"name": config.get("backbone"), "fingerprint": state["compat"]["backbone_fingerprint"]},
        "data": config.get("data"),
        "out": config.get("out"),
        "seconds": state.get("seconds"),
        "epochs_done": len(state["history"]["epochs"]),
    }


def _describe_bundle(path: Path, verify: bool) -> dict:
    from crome_runtime.manifest import BundleError, read_manifest

    try:
        manifest = read_manifest(path, verify=verify)
    except BundleError as error:
        raise CromeError(f"{path} is not a usable crome-edge bundle: {error}") from None
    missing = [name for name in manifest.files if not _regular_file(path, name)]
    fidelity = _fidelity(path, manifest) if not missing else {}
    return {
        "kind": "bundle",
        "path": str(path),
        "format_version": manifest.read_version,  # as written in the file (every version reads into one model)
        "backbone": {
            "name": manifest.backbone.name, "fingerprint": manifest.backbone.fingerprint,
            "architecture": manifest.backbone.architecture, "d_model": manifest.backbone.d_model,
            "image_size": manifest.backbone.image_size,
        },
        "adapters": [{"name": e.name, "rank": e.rank, "sha256": e.sha256, "route": e.route.to_dict(),
                      "max_new_tokens": e.max_new_tokens} for e in manifest.adapters],
        "precision": manifest.precision,
        "prompt": manifest.prompt.to_dict(),
        "files": {name: {"bytes": e.bytes, "precision": e.precision} for name, e in sorted(manifest.files.items())},
        "missing_files": missing,
        "verified": verify,
        "tools": manifest.tools,
        "fidelity": fidelity,
    }


def _fidelity(path: Path, manifest) -> dict:
    """Per adapter, from report.json: its export's gates (ok or not) and what that export took from an earlier one
    instead of measuring it again (the report's `reused`, crome_export.reuse)."""
    from crome_runtime.fidelity import describe_reuse
    from crome_runtime.manifest import BundleError, read_report

    try:
        report = read_report(path, manifest) or {}
    except BundleError as error:
        raise CromeError(str(error)) from None
    sections = report.get("adapters") or {}
    return {name: {"gates": {g: "ok" if v.get("ok") else "FAILED" for g, v in (section.get("gates") or {}).items()},
                   "reused": {k: describe_reuse(v) for k, v in (section.get("reused") or {}).items()}}
            for name, section in sections.items() if isinstance(section, dict)}


def _regular_file(bundle: Path, name: str) -> bool:
    """A listed file that is there as a regular file (never followed through a symbolic link)."""
    from crome_runtime.manifest import BundleError, bundle_file

    try:
        bundle_file(bundle, name)
    except BundleError:
        return False
    return True


def render(info: dict) -> str:
    """Readable text: one `key: value` line per field, nested dicts indented."""
    lines = [f"{info['path']}: crome-edge {info['kind']}"]

    def walk(data: dict, indent: int) -> None:
        for key, value in data.items():
            if key in ("kind", "path"):
                continue
            pad = "  " * indent
            if isinstance(value, dict) and value:
                lines.append(f"{pad}{key}:")
                walk(value, indent + 1)
            else:
                lines.append(f"{pad}{key}: {json.dumps(value) if isinstance(value, (list, tuple, dict)) else value}")

    walk(info, 1)
    return "\n".join(lines)
