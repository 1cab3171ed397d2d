"""The bundle manifest (`manifest.json`): what a bundle is, what it was made from, and every file's sha256.

Torch-free. The exporter writes it (crome_export), the runtime reads and verifies it (crome_runtime).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import stat
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from crome_runtime import formats
from crome_runtime.errors import CromeError
from crome_runtime.hf_image import ResizeRecipe
from crome_runtime.prompt import PromptTemplate
from crome_runtime import input_files

if TYPE_CHECKING:  # adapter_entries.py imports BundleError from here: imported where used
    from crome_runtime.adapter_entries import AdapterEntry


class BundleError(CromeError, ValueError):
    """A bundle that cannot be used as it is; the message names the file and the fix."""


@dataclass(kw_only=True)
class BackboneSchema:
    """What a backbone is to every stage: its dims, its image preprocessing and its Q-Former's instruction
    budget. The one schema: crome_edge's BackboneInfo (CromeBackbone.info) is it plus the prompt template,
    the manifest's BackboneSpec is it plus the fingerprint."""

    name: str
    architecture: str  # "instructblip" | "blip2" | "smol" | "llava" | "idefics3" | "smolvlm"
    d_model: int  # LLM width d
    num_query_tokens: int  # Nq
    image_size: int  # S: frames are resized to S×S
    instruction_aware: bool  # InstructBLIP-style Q-Former that also reads the question
    image_mean: tuple[float, ...]  # per RGB channel, after scaling pixels to [0, 1]
    image_std: tuple[float, ...]
    max_instruction_tokens: int = 64  # instruction-aware Q-Formers read at most this many question tokens
    # how a frame becomes S×S: crome's own OpenCV resize, or a HF image processor's (crome_runtime.hf_image)
    resize: ResizeRecipe = field(default_factory=ResizeRecipe)

    def __post_init__(self) -> None:
        self.image_mean, self.image_std = tuple(self.image_mean), tuple(self.image_std)
        self.resize = ResizeRecipe.of(self.resize)  # the JSON form (a manifest's) or the recipe itself
        for name in ("d_model", "num_query_tokens", "image_size"):
            if not _whole(getattr(self, name), 1):
                raise ValueError(f"backbone {name} must be a whole number >= 1, got {getattr(self, name)!r}")
        if not _whole(self.max_instruction_tokens, 0):
            raise ValueError(f"backbone max_instruction_tokens must be a whole number >= 0, got {self.max_instruction_tokens!r}")
        for name, values in (("image_mean", self.image_mean), ("image_std", self.image_std)):
            if len(values) != 3 or not all(_real(v) and math.isfinite(v) for v in values):
                raise ValueError(f"backbone {name} must be 3 finite numbers (R, G, B), got {list(values)!r:.80}")
        if not all(v > 0 for v in self.image_std):
            raise ValueError(f"backbone image_std must be > 0 for every channel (pixels are divided by it), "
                             f"got {list(self.image_std)}")

    def schema_fields(self) -> dict:
        """The schema's fields only (what BackboneInfo and BackboneSpec share)."""
        return {f.name: getattr(self, f.name) for f in fields(BackboneSchema)}


@dataclass(kw_only=True)
class BackboneSpec(BackboneSchema):
    """The manifest's `backbone` section: the schema plus the fingerprint the bundle was exported from."""

    fingerprint: str  # sha256 over the frozen tensors (crome_edge.backbones.base.tensor_fingerprint)

    @classmethod
    def of(cls, schema: BackboneSchema, fingerprint: str) -> "BackboneSpec":
        return cls(**schema.schema_fields(), fingerprint=fingerprint)


@dataclass
class LlmSpec:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int

    def __post_init__(self) -> None:
        for f in fields(self):
            if not _whole(getattr(self, f.name), 1):
                raise ValueError(f"llm {f.name} must be a whole number >= 1, got {getattr(self, f.name)!r}")


@dataclass
class FileEntry:
    sha256: str
    bytes: int
    precision: str  # "fp32" | "fp16" | "int8" | "data"


@dataclass
class GenerationDefaults:
    max_new_tokens: int = formats.DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        """Types and signs only; the sampler (crome_runtime.sampling.SamplingParams) checks the value ranges."""
        for name in ("max_new_tokens", "top_k"):
            if not _whole(getattr(self, name), 0):
                raise ValueError(f"generation {name} must be a whole number >= 0, got {getattr(self, name)!r}")
        for name in ("temperature", "top_p", "repetition_penalty"):
            if not _real(getattr(self, name)):
                raise ValueError(f"generation {name} must be a number, got {getattr(self, name)!r}")


def _whole(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class Manifest:
    """A bundle's manifest, in the one adapter model: `adapters` lists zero or more adapters
    (crome_runtime.adapter_entries.AdapterEntry: name, routes, generation cap, files). Whatever version the file has,
    `from_json` reads it into this model (a version-1 manifest's one adapter becomes one entry with the
    catch-all route and the unprefixed file names); `to_json` writes the newest version."""

    backbone: BackboneSpec
    llm: LlmSpec
    prompt: PromptTemplate
    precision: str
    files: dict[str, FileEntry]
    adapters: list[AdapterEntry] = field(default_factory=list)
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)
    tools: dict[str, str] = field(default_factory=dict)  # package versions and the ONNX opset
    quantization: dict = field(default_factory=dict)  # per part ("vision", "decoder"): method and settings
    format: str = formats.BUNDLE_FORMAT
    read_version: int = formats.BUNDLE_FORMAT_VERSION  # the version of the file it was read from (shown by info)

    @property
    def adapter_names(self) -> list[str]:
        """The bundle's adapters, in manifest order."""
        return [entry.name for entry in self.adapters]

    def entry(self, name: str) -> "AdapterEntry":
        """The adapter named `name` (BundleError when the bundle has none)."""
        for entry in self.adapters:
            if entry.name == name:
                return entry
        raise BundleError(f"this bundle has no adapter {name!r:.80} (it has: {', '.join(self.adapter_names) or 'none'})")

    def adapter_files(self) -> set[str]:
        """Every bundle file that belongs to an adapter or to one of its kept versions (the rest is the backbone's,
        and report.json)."""
        return {name for entry in self.adapters for name in entry.owned_files()}

    def kept_owner(self, name: str) -> str | None:
        """"kept version V of adapter A" when bundle file `name` is one of a kept version's, else None."""
        for entry in self.adapters:
            for kept in entry.versions:
                if name in kept.files.values():
                    return f"kept version {kept.entry.sha256[:12]} of adapter {entry.name}"
        return None

    def to_json(self) -> str:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("adapters", "read_version")}
        data = input_files.loads(json.dumps(data, default=_plain), "the manifest")
        data["prompt"] = self.prompt.to_dict()
        data["adapters"] = [entry.to_dict() for entry in self.adapters]
        data["format_version"] = formats.BUNDLE_FORMAT_VERSION
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "manifest.json") -> "Manifest":
        from crome_runtime.adapter_entries import AdapterEntry, check_adapters

        try:
            data = input_files.loads(text, source)
        except json.JSONDecodeError as error:
            raise BundleError(f"{source} is not valid JSON ({error}); re-export the bundle") from None
        if not isinstance(data, dict) or data.get("format") != formats.BUNDLE_FORMAT:
            raise BundleError(f"{source} is not a crome-edge bundle manifest")
        version = data.get("format_version", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise BundleError(f"{source}: format_version must be an integer, got {version!r}; re-export the bundle")
        if version > formats.BUNDLE_FORMAT_VERSION:
            raise BundleError(
                f"{source} has bundle format version {version}; this runtime reads up to "
                f"{formats.BUNDLE_FORMAT_VERSION}. Upgrade crome-edge on this device."
            )
        files = data.get("files")
        if not isinstance(files, dict) or not all(isinstance(entry, dict) for entry in files.values()):
            raise BundleError(f"{source}: `files` must map file names to entries; re-export the bundle")
        for name in files:
            check_file_name(name, source)
        precision = data.get("precision")
        if precision not in formats.PRECISIONS:
            raise BundleError(f"{source}: precision {precision!r} is not one of {', '.join(formats.PRECISIONS)}; "
                              "re-export the bundle")
        try:
            parts = dict(
                backbone=BackboneSpec(**data["backbone"]),
                llm=LlmSpec(**data["llm"]),
                prompt=PromptTemplate.from_dict(data["prompt"]),
                files={name: FileEntry(**entry) for name, entry in files.items()},
                generation=GenerationDefaults(**data.get("generation", {})),
                tools=data.get("tools", {}),
                quantization=data.get("quantization", {}),
            )
        except KeyError as error:
            raise BundleError(f"{source} is missing or has malformed fields (no {error} section); re-export the bundle") from None
        except (TypeError, ValueError, AttributeError) as error:
            raise BundleError(f"{source} is missing or has malformed fields: {error}; re-export the bundle") from None
        if version < 2:  # the one place that knows version 1: its adapter, read into the model
            adapters = [_version1_adapter(data, parts["generation"], source)]
        else:
            if not isinstance(data.get("adapters"), list):
                raise BundleError(f"{source}: a version-{version} manifest must list its `adapters`; re-export the bundle")
            adapters = [AdapterEntry.from_dict(entry, source) for entry in data["adapters"]]
        check_adapters(adapters, source)
        for entry in adapters:
            for name in entry.owned_files():
                check_file_name(name, source)
            for kept in entry.versions:  # a kept version is rolled back to whole: every file listed, with its sha256
                unlisted = sorted(set(kept.files.values()) - set(files))
                if unlisted:
                    raise BundleError(f"{source}: kept version {kept.entry.sha256[:12]} of adapter {entry.name} names "
                                      f"{', '.join(unlisted)}, which `files` does not list; re-export the bundle")
        return cls(**parts, adapters=adapters, precision=precision, format=data["format"], read_version=version)


def _version1_adapter(data: dict, generation: GenerationDefaults, source: str) -> AdapterEntry:
    """A version-1 manifest's `adapter` section as the one adapter of the model: its files under the unprefixed
    names (the weights only when the bundle has them), the catch-all route (it answered every question), the
    bundle's generation cap."""
    from crome_runtime.adapter_entries import ROLES, AdapterEntry, Route

    section = data.get("adapter")
    if not isinstance(section, dict):
        raise BundleError(f"{source} is missing or has malformed fields (no 'adapter' section); re-export the bundle")
    listed = data["files"]
    files = {role: plain for role, plain in ROLES.items() if role != "weights" or plain in listed}
    try:
        unknown = set(section) - {"name", "sha256", "rank", "training"}
        if unknown:
            raise ValueError(f"unexpected adapter field(s) {', '.join(sorted(unknown))}")
        entry = AdapterEntry(name=section["name"], sha256=section["sha256"], rank=section["rank"],
                             route=Route.everything(), max_new_tokens=generation.max_new_tokens,
                             training=section.get("training", {}), files=files)
    except KeyError as error:
        raise BundleError(f"{source} is missing or has malformed fields (no {error} in 'adapter'); re-export the "
                          "bundle") from None
    except (TypeError, ValueError) as error:
        raise BundleError(f"{source} is missing or has malformed fields: {error}; re-export the bundle") from None
    if not isinstance(entry.sha256, str) or not isinstance(entry.rank, int) or not isinstance(entry.training, dict):
        raise BundleError(f"{source}: its adapter section has malformed fields; re-export the bundle")
    return entry


def _plain(value):
    """json.dumps' fallback for the manifest's dataclasses."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    raise TypeError(f"cannot write {type(value).__name__} into a manifest")


def read_report(bundle: Path, manifest: Manifest) -> dict | None:
    """A bundle's report.json in the one report shape (None when the bundle has none): {"format", "format_version",
    "precision", "backbone", "measured_on", "adapters": {NAME: that adapter's fidelity report}}. A version-1
    bundle's report is its one adapter's: it is read into that shape here, beside the manifest it belongs to."""
    if formats.REPORT_FILE not in manifest.files:
        return None
    try:
        report = input_files.read_json(bundle_file(Path(bundle), formats.REPORT_FILE), formats.REPORT_FILE)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"{formats.REPORT_FILE} in {bundle} is not valid JSON ({error}); re-export the bundle") from None
    if not isinstance(report, dict):
        raise BundleError(f"{formats.REPORT_FILE} in {bundle} is not a report object; re-export the bundle")
    if manifest.read_version < 2:
        return bundle_report(manifest, {manifest.adapters[0].name: report})
    return report


def bundle_report(manifest: Manifest, sections: dict[str, dict | None],
                  kept: dict[str, dict[str, dict | None]] | None = None) -> dict:
    """report.json of a bundle whose adapters' fidelity reports are `sections` (name -> report); kept: adapter ->
    version -> the fidelity report of that kept version (crome_runtime.adapter_versions), written only when there
    is one."""
    measured = next((s.get("measured_on") for s in sections.values() if isinstance(s, dict) and s.get("measured_on")),
                    None)
    report = {"format": formats.REPORT_FORMAT, "format_version": formats.REPORT_FORMAT_VERSION,
              "precision": manifest.precision, "measured_on": measured,
              "backbone": {"name": manifest.backbone.name, "fingerprint": manifest.backbone.fingerprint},
              "adapters": dict(sections)}
    kept = {name: versions for name, versions in (kept or {}).items() if versions}
    if kept:
        report[formats.REPORT_KEPT_VERSIONS] = kept
    return report


def check_file_name(name, source: str = "manifest.json") -> None:
    """A bundle's files are plain names inside the bundle: no directories, no `..`, nothing hidden or absolute."""
    if (not isinstance(name, str) or not name or name in (".", "..") or name.startswith(".") or "/" in name
            or "\\" in name or "\x00" in name or len(name) > 255):
        raise BundleError(f"{source} lists the file {name!r}, which is not a plain file name inside the bundle; "
                          "a bundle's files live directly in its directory. Refusing it: re-export the bundle")


def bundle_file(bundle: Path, name: str) -> Path:
    """The path of a listed bundle file, refused when it is a symbolic link (it could point anywhere) or not a
    regular file. `name` must have passed check_file_name."""
    path = Path(bundle) / name
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise BundleError(f"bundle {bundle} is missing {name}; re-export or copy the whole bundle directory") from None
    if stat.S_ISLNK(mode):
        raise BundleError(f"{name} in bundle {bundle} is a symbolic link; a bundle's files must be regular files "
                          "inside it (copy the bundle with `cp -rL`, or re-export it)")
    if not stat.S_ISREG(mode):
        raise BundleError(f"{name} in bundle {bundle} is not a regular file; re-export the bundle")
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path, precision: str) -> FileEntry:
    return FileEntry(sha256=sha256_file(path), bytes=path.stat().st_size, precision=precision)


def read_manifest(bundle: Path, verify: bool = True) -> Manifest:
    """Reads `bundle/manifest.json`; with `verify`, checks every listed file exists and matches its sha256."""
    bundle = Path(bundle)
    path = bundle / formats.MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{bundle} is not a crome-edge bundle (no {formats.MANIFEST_FILE}); export one with `crome-edge export`")
    if path.is_symlink():
        raise BundleError(f"{path} is a symbolic link; a bundle's files must be regular files inside it")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BundleError(f"{path} is not UTF-8 text; it is not a crome-edge manifest (re-export the bundle)") from None
    manifest = Manifest.from_json(text, source=str(path))
    if verify:
        for name, entry in manifest.files.items():
            file = bundle_file(bundle, name)
            if file.stat().st_size != entry.bytes or sha256_file(file) != entry.sha256:
                kept = manifest.kept_owner(name)
                if kept:
                    raise BundleError(f"bundle file {name} ({kept}) was altered (sha256 differs from the manifest); "
                                      "put back the file from a copy of the bundle, or re-export the bundle")
                raise BundleError(f"bundle file {name} was altered (sha256 differs from the manifest); re-export the bundle")
    return manifest
