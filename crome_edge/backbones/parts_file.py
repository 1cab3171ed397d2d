"""Backbone-parts files: the visual side a `--stage pretrain` run trains, in one `.safetensors`.

Holds the vision tower, query tokens, Q-Former, projection and any pooled token (tensor names `<part>.<name>`), with
metadata naming the backbone and fingerprinting its frozen LLM, so parts are only ever loaded onto the
LLM they were trained against (names and keys: crome_runtime.formats). The embedded `smol` default ships
such a file; the training stage writes one. Not the adapter (see crome_edge.adapter_file).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from crome_runtime.atomic import atomic_path
from crome_edge.backbones.base import CromeBackbone, tensor_fingerprint
from crome_edge.errors import CromeError
from crome_runtime import formats
from crome_runtime.safetensors_header import SafetensorsHeaderError, read_metadata
from crome_runtime import input_files

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def llm_fingerprint(backbone: CromeBackbone) -> str:
    return tensor_fingerprint(backbone.llm.state_dict())


def trained_parts(backbone: CromeBackbone) -> tuple[str, ...]:
    """The modules a parts file holds. A vision tower whose weights come from the model store as they are
    (`stored_weights = True`, e.g. smol's ImageNet eye) is not among them: it is never trained, and a parts file
    must not carry a second, rounded copy of it."""
    vision = () if getattr(backbone.vision, "stored_weights", False) else ("vision",)
    pooled = ("pooled_token",) if backbone.pooled_token is not None else ()
    return (*vision, "qformer", "projection", *pooled)


def parts_state(backbone: CromeBackbone) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {"query_tokens": backbone.qformer_parts()[0]}
    for part in trained_parts(backbone):
        for name, tensor in getattr(backbone, part).state_dict().items():
            state[f"{part}.{name}"] = tensor
    return state


def save_backbone_parts(
    path: str | Path, backbone: CromeBackbone, dtype: torch.dtype | str = torch.float32, training: dict | None = None
) -> None:
    """Writes the visual parts atomically (temp file + rename); floating tensors are stored as `dtype`."""
    path = Path(path)
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    if not path.parent.is_dir():
        raise CromeError(f"cannot write {path}: directory {path.parent} does not exist (create it first)")
    tensors = {
        name: (t.detach().to(dtype) if t.is_floating_point() else t.detach()).contiguous().cpu()
        for name, t in parts_state(backbone).items()
    }
    metadata = {
        formats.META_FORMAT: formats.PARTS_FORMAT,
        formats.META_FORMAT_VERSION: str(formats.PARTS_FORMAT_VERSION),
        formats.META_BACKBONE_NAME: backbone.info.name,
        formats.META_LLM_FINGERPRINT: llm_fingerprint(backbone),
        formats.META_BACKBONE_INFO: json.dumps(backbone.info.to_dict(), sort_keys=True),
        formats.META_TRAINING: json.dumps(_portable(training or {}, path.parent), sort_keys=True),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def _portable(training: dict, home: Path) -> dict:
    """The training record without the making machine's absolute data path (crome_edge.adapter_file.portable_path)."""
    from crome_edge.adapter_file import portable_path

    data = training.get("train_data")
    return {**training, "train_data": portable_path(data, home)} if isinstance(data, str) else training


def read_parts_metadata(path: str | Path) -> dict:
    """Header only: {format_version, backbone_name, llm_fingerprint, backbone_info, training}."""
    path = Path(path)
    if not path.is_file():
        raise CromeError(f"backbone-parts file {path} does not exist")
    try:
        raw = read_metadata(path)
    except (SafetensorsHeaderError, OSError) as error:
        raise CromeError(f"{path} is not a readable safetensors file ({error}); is it truncated?") from None
    if raw.get(formats.META_FORMAT) != formats.PARTS_FORMAT:
        raise CromeError(f"{path} is not a crome-edge backbone-parts file (written by `crome-edge train --stage pretrain`)")
    try:
        version = int(raw.get(formats.META_FORMAT_VERSION, "0"))
    except ValueError:
        raise CromeError(f"{path}: backbone-parts format version {raw[formats.META_FORMAT_VERSION]!r} is not a number") from None
    if version > formats.PARTS_FORMAT_VERSION:
        raise CromeError(f"{path} has backbone-parts format {version}; this crome-edge reads up to "
                         f"{formats.PARTS_FORMAT_VERSION}. Upgrade crome-edge.")
    try:
        return {
            "format_version": version,
            "backbone_name": raw[formats.META_BACKBONE_NAME],
            "llm_fingerprint": raw[formats.META_LLM_FINGERPRINT],
            "backbone_info": input_files.loads(raw.get(formats.META_BACKBONE_INFO, "{}"), "its backbone_info"),
            "training": input_files.loads(raw.get(formats.META_TRAINING, "{}"), "its training metadata"),
        }
    except (KeyError, ValueError) as error:
        raise CromeError(f"{path}: backbone-parts metadata is incomplete or malformed ({error!r})") from None


def load_backbone_parts(path: str | Path, backbone: CromeBackbone) -> dict:
    """Loads the parts into `backbone` in place (after checking they were trained on its LLM); returns
    the metadata. The backbone's fingerprint is recomputed afterwards: it is a different backbone now."""
    path = Path(path)
    meta = read_parts_metadata(path)
    own = llm_fingerprint(backbone)
    if meta["llm_fingerprint"] != own:
        raise CromeError(
            f"{path.name} was trained for backbone {meta['backbone_name']} (LLM fingerprint "
            f"{meta['llm_fingerprint'][:12]}…); this backbone {backbone.info.name} has LLM fingerprint {own[:12]}…. "
            f"Load it onto --backbone {meta['backbone_name']} or pretrain again on this backbone"
        )
    expected = parts_state(backbone)
    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            if names != set(expected):
                missing, extra = sorted(set(expected) - names)[:5], sorted(names - set(expected))[:5]
                raise CromeError(f"{path}: tensors do not match this backbone's parts (missing {missing}, unexpected {extra})")
            tensors = {name: f.get_tensor(name) for name in expected}
    except (SafetensorError, OSError) as error:
        raise CromeError(f"{path}: cannot read tensors ({error}); the file may be truncated") from None
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise CromeError(f"{path}: {name} has shape {tuple(tensor.shape)}, this backbone needs {tuple(expected[name].shape)}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CromeError(f"{path}: {name} contains NaN or Inf; the pretraining run diverged")
    with torch.no_grad():
        for name, target in expected.items():
            target.copy_(tensors[name].to(target.dtype))
    backbone.invalidate_fingerprint()  # the visual side changed
    backbone.freeze()
    return meta
