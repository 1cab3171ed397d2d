"""Adapter files: the five CROME tensors + metadata in one `.safetensors` (docs/architecture.md §4).

`save_adapter` writes atomically (temp file + rename). `load_adapter` checks format, version, tensor
names, shapes, dtype, finiteness and — given a backbone — its fingerprint, and says how to fix a mismatch.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from crome_edge.backbones.hf_vlm import VLM_ARCHITECTURES
from crome_edge.gated_adapter import AdapterConfig, CromeAdapter
from crome_runtime.adapter_kernel import pooled_map_shapes
from crome_runtime.atomic import atomic_path
from crome_runtime.limits import listed
from crome_edge.errors import CromeError
from crome_runtime import formats, safetensors_header
from crome_runtime.prompt import PromptTemplate
from crome_runtime import input_files


class AdapterFileError(CromeError):
    pass


@dataclass
class AdapterMetadata:
    config: AdapterConfig
    backbone_name: str
    backbone_fingerprint: str
    prompt: PromptTemplate
    training: dict = field(default_factory=dict)
    train_data: str = ""  # dataset the adapter was trained on (calibration frames for export)
    train_data_recipe: dict | None = None  # how to regenerate a synthetic train_data (crome_edge.synth.recipe)
    format_version: int = formats.ADAPTER_FORMAT_VERSION

    def to_strings(self) -> dict[str, str]:
        strings = {
            formats.META_FORMAT: formats.ADAPTER_FORMAT,
            formats.META_FORMAT_VERSION: str(self.format_version),
            formats.META_ADAPTER_CONFIG: self.config.to_json(),
            formats.META_BACKBONE_NAME: self.backbone_name,
            formats.META_BACKBONE_FINGERPRINT: self.backbone_fingerprint,
            formats.META_PROMPT_TEMPLATE: self.prompt.to_json(),
            formats.META_TRAINING: json.dumps(self.training, sort_keys=True),
            formats.META_TRAIN_DATA: self.train_data,
        }
        if self.train_data_recipe is not None:  # optional key: files without it read as before
            strings[formats.META_TRAIN_DATA_RECIPE] = json.dumps(self.train_data_recipe, sort_keys=True)
        return strings


def adapter_tensors(adapter: CromeAdapter) -> dict[str, torch.Tensor]:
    """The file's tensors; a PooledMap in its folded form (formats.ADAPTER_POOLED_TENSORS)."""
    tensors = {
        "visual.down": adapter.down["visual"], "visual.gate": adapter.gate["visual"],
        "text.down": adapter.down["text"], "text.gate": adapter.gate["text"], "up": adapter.up,
    }
    if adapter.pooled is not None:
        tensors.update(zip(formats.ADAPTER_POOLED_TENSORS, adapter.pooled.folded()))
    return tensors


def save_adapter(path: Path, adapter: CromeAdapter, metadata: AdapterMetadata) -> None:
    path = Path(path)
    if not path.parent.is_dir():
        raise AdapterFileError(f"cannot write {path}: directory {path.parent} does not exist (create it first)")
    tensors = {name: t.detach().to(torch.float32).contiguous().cpu() for name, t in adapter_tensors(adapter).items()}
    strings = metadata.to_strings()
    strings[formats.META_TRAIN_DATA] = portable_path(metadata.train_data, path.parent)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=strings)


def portable_path(recorded: str, home: Path) -> str:
    """A path as an artifact in `home` records it: relative to `home`, never the making machine's absolute path
    (an artifact copied to another machine would print it, and it says nothing there)."""
    if not recorded or not os.path.isabs(recorded):
        return recorded
    return os.path.relpath(recorded, os.path.abspath(home))


def resolved_path(recorded: str, home: Path) -> str:
    """`portable_path` read back: a relative record is relative to the artifact's directory."""
    if not recorded or os.path.isabs(recorded):
        return recorded
    return os.path.normpath(os.path.join(os.path.abspath(home), recorded))


def read_metadata(path: Path) -> AdapterMetadata:
    """Reads and validates the header only (cheap; no tensors)."""
    path = Path(path)
    if not path.is_file():
        from crome_edge.weights import SHIPPED_ADAPTERS

        raise AdapterFileError(f"adapter file {path} does not exist (shipped adapters, by name: {', '.join(SHIPPED_ADAPTERS)})")
    try:
        raw = safetensors_header.read_metadata(path)
    except (safetensors_header.SafetensorsHeaderError, OSError) as error:
        raise AdapterFileError(
            f"{path} is not a readable safetensors file ({error}); is it truncated or a different format?"
        ) from None
    if raw.get(formats.META_FORMAT) != formats.ADAPTER_FORMAT:
        raise AdapterFileError(f"{path} is a safetensors file but not a crome-edge adapter (no '{formats.META_FORMAT}' metadata)")
    text = raw.get(formats.META_FORMAT_VERSION, "0")
    if not text.isdigit():
        raise AdapterFileError(f"{path}: adapter format_version {text!r:.40} is not a whole number; the file is damaged "
                               "or not written by crome-edge (re-train or re-export the adapter)")
    version = int(text)
    if version > formats.ADAPTER_FORMAT_VERSION:
        raise AdapterFileError(
            f"{path} has adapter format version {version}; this crome-edge reads up to "
            f"{formats.ADAPTER_FORMAT_VERSION}. Upgrade crome-edge."
        )
    try:
        recipe = input_files.loads(raw[formats.META_TRAIN_DATA_RECIPE], formats.META_TRAIN_DATA_RECIPE) if formats.META_TRAIN_DATA_RECIPE in raw else None
        if recipe is not None and not isinstance(recipe, dict):
            raise ValueError(f"{formats.META_TRAIN_DATA_RECIPE} is not a JSON object")
        training = input_files.loads(raw.get(formats.META_TRAINING, "{}"), formats.META_TRAINING)
        if not isinstance(training, dict):
            raise ValueError(f"{formats.META_TRAINING} is not a JSON object")
        return AdapterMetadata(
            config=AdapterConfig.from_json(raw[formats.META_ADAPTER_CONFIG]),
            backbone_name=raw[formats.META_BACKBONE_NAME],
            backbone_fingerprint=raw[formats.META_BACKBONE_FINGERPRINT],
            prompt=PromptTemplate.from_json(raw[formats.META_PROMPT_TEMPLATE]),
            training=training,
            train_data=resolved_path(raw.get(formats.META_TRAIN_DATA, ""), path.parent),
            train_data_recipe=recipe,
            format_version=version,
        )
    except KeyError as error:
        raise AdapterFileError(f"{path}: adapter metadata is incomplete or malformed (no {error} entry); "
                               "re-train the adapter") from None
    except (ValueError, TypeError) as error:
        raise AdapterFileError(f"{path}: adapter metadata is incomplete or malformed ({error}); "
                               "re-train the adapter") from None


def load_adapter(path: Path, backbone=None) -> tuple[CromeAdapter, AdapterMetadata]:
    """Loads and validates an adapter; with `backbone`, also checks it was trained for that backbone."""
    path = Path(path)
    meta = read_metadata(path)
    if backbone is not None:
        check_backbone_match(meta, backbone, path)
    d, r = meta.config.d_model, meta.config.rank
    expected: dict[str, tuple[int, ...]] = {"visual.down": (d, r), "visual.gate": (d, r), "text.down": (d, r),
                                            "text.gate": (d, r), "up": (r, d)}
    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            pooled = pooled_shapes(path, f, names, d)
            expected.update(pooled)
            if names != set(expected):
                missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
                found = "; ".join(part for part in (
                    f"missing {listed(missing, ', ')}" if missing else "",
                    f"{len(extra):,} unexpected: {listed([repr(n)[:60] for n in extra], ', ')}" if extra else "") if part)
                raise AdapterFileError(f"{path}: its tensors do not match the CROME adapter's {sorted(expected)} "
                                       f"({found}); this is not a crome-edge adapter file")
            tensors = {name: f.get_tensor(name) for name in expected}
    except (SafetensorError, OSError) as error:
        raise AdapterFileError(f"{path}: cannot read tensors ({error}); the file may be truncated") from None
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != expected[name]:
            raise AdapterFileError(
                f"{path}: tensor {name} has shape {tuple(tensor.shape)}, expected {expected[name]} for d={d}, r={r}"
            )
        if not tensor.is_floating_point():
            raise AdapterFileError(f"{path}: tensor {name} has dtype {tensor.dtype}; adapters are floating point")
        if not torch.isfinite(tensor).all():
            raise AdapterFileError(f"{path}: tensor {name} contains NaN or Inf; the training run diverged — retrain")
    read, map_, bias = formats.ADAPTER_POOLED_TENSORS
    adapter = CromeAdapter(meta.config, pooled_features=pooled[map_][0] if pooled else 0)
    targets = {name: t for name, t in adapter_tensors(adapter).items() if name in formats.ADAPTER_TENSORS}
    if adapter.pooled is not None:  # the folded form: shift stays 0
        targets.update({read: adapter.pooled.read, map_: adapter.pooled.map, bias: adapter.pooled.bias})
    with torch.no_grad():
        for name, target in targets.items():
            target.copy_(tensors[name].to(torch.float32))
    return adapter, meta


def pooled_shapes(path: Path, f, names: set[str], d: int) -> dict[str, tuple[int, ...]]:
    """The expected shapes of the file's PooledMap tensors ({} when it has none); AdapterFileError for a partial set or
    a feature count out of bounds."""
    present = {n: tuple(f.get_slice(n).get_shape()) for n in formats.ADAPTER_POOLED_TENSORS if n in names}
    try:
        return pooled_map_shapes(present, d)
    except ValueError as error:
        raise AdapterFileError(f"{path}: {error}; retrain the adapter") from None


def check_backbone_match(meta: AdapterMetadata, backbone, path: Path) -> None:
    info = backbone.info
    if meta.config.d_model != info.d_model or meta.backbone_fingerprint != backbone.fingerprint():
        if meta.backbone_name == info.name and info.architecture in VLM_ARCHITECTURES:  # a HF checkpoint directory
            fix = (f"this {info.name} directory holds another checkpoint (other weights) than the one it was trained "
                   "on. Re-train the adapter on this checkpoint, or pass --backbone the directory it was trained with")
        elif meta.backbone_name == info.name:  # the same name with other weights: --backbone NAME would change nothing
            fix = (f"this {info.name} has other weights than the one it was trained on (another crome-edge version "
                   f"or other --backbone-parts). Re-train the adapter on this backbone, or load the {info.name} "
                   "weights it was trained with")
        else:
            fix = f"Re-train the adapter on this backbone or pass --backbone {meta.backbone_name}"
        raise AdapterFileError(
            f"adapter {path.name} was trained for backbone {meta.backbone_name} "
            f"(d={meta.config.d_model}, fingerprint {meta.backbone_fingerprint[:12]}…); this backbone is "
            f"{backbone.short_description()}; {fix}"
        )
