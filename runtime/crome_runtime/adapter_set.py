"""The adapters an engine runs: one object that owns, per adapter of the bundle, its ONNX sessions, its C
kernels, its route, its generation defaults and its caches, plus the pinning that overrides the routes.

    adapters = AdapterSet.open(bundle, open_session, backbone_signatures, "c")      # at load
    name = adapters.route("What colour is it?")                                      # -> "colour" or None
    y = adapters.apply(name, "visual", x)                                            # (N, d) -> (N, d)
    adapters = AdapterSet.open(new_bundle, ..., previous=adapters)                   # at reload: the same way

`open` is the one way a set is made, at load and at reload alike: every adapter's graphs are opened (or, at
reload, taken over from `previous` when its files are byte-identical), checked against the backbone's
graphs, and given its C kernel when the set runs on the C core; anything wrong raises before the caller
swaps anything in. Caches are per adapter (each adapter's adapted visual queries and text embeddings, at the
engine's configured sizes), so an adapter added at reload gets its own and an unchanged one keeps its
entries. `None` is the frozen backbone (no adapter): its "adapted" outputs are the raw ones, cached the same
way. Torch-free. Not here: the manifest entries and routes (adapter_entries.py), the C kernel (adapter_kernel.py), the
answer path (engine.py).
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np

from crome_runtime import formats
from crome_runtime.adapter_entries import GRAPH_ROLES, NONE, REQUIRED_ROLES, AdapterEntry
from crome_runtime.adapter_entries import route as route_question
from crome_runtime.bundle import Bundle, GraphSignature, check_graphs
from crome_runtime.lru_cache import LRUCache
from crome_runtime.errors import EngineError

BACKENDS = ("c", "onnx")
MODALITIES = formats.ADAPTER_MODALITIES


@dataclass
class Caches:
    """One adapter's adapted outputs: visual queries (Nq, d) per vision key, text embeddings (Nt, d) per prompt."""

    vision: LRUCache
    text: LRUCache


@dataclass
class LoadedAdapter:
    entry: AdapterEntry
    sessions: dict  # modality -> onnxruntime.InferenceSession of its graph
    kernels: dict | None  # modality -> ccore.GatedProjection (the C backend), else None
    caches: Caches
    fingerprint: tuple  # the sha256 of its required files: what "unchanged" means at reload


def choose_backend(choice: str, bundle: Bundle, on_gpu: bool) -> str:
    """The adapter backend an engine runs: "c" (the C core's fused kernel on the adapters' .safetensors) or "onnx"
    (their graphs). auto: c when the decoder runs on the CPU, the C core is built and every adapter has its
    weights file. EngineError for an unknown choice, or "c" that cannot run."""
    from crome_runtime import ccore

    if choice not in ("auto",) + BACKENDS:
        raise EngineError(f"adapter backend {choice!r} is not one of auto, c, onnx")
    usable = ccore.available() and all(_has_weights(bundle, entry) for entry in bundle.manifest.adapters)
    if choice == "c" and not usable:
        raise EngineError("the C adapter kernel needs the bundle's adapter .safetensors and the built C core; "
                          "use adapter='onnx'")
    if choice == "onnx" or (choice == "auto" and (on_gpu or not usable)):
        return "onnx"
    return "c"


def _graph(entry: AdapterEntry, role: str) -> str:
    """An adapter's graph file (every adapter has both: the manifest reader refuses an entry without them)."""
    name = entry.file(role)
    assert name is not None, f"adapter {entry.name} has no {role} graph"
    return name


def _has_weights(bundle: Bundle, entry: AdapterEntry) -> bool:
    name = entry.file("weights")
    return name is not None and name in bundle.manifest.files and (bundle.path / name).is_file()


class AdapterSet:
    def __init__(self, bundle: Bundle, adapters: dict[str, LoadedAdapter], backend: str, frozen: Caches,
                 cache_sizes: tuple[int, int]):
        self.bundle, self.backend, self.cache_sizes = bundle, backend, cache_sizes
        self._adapters = adapters  # name -> LoadedAdapter, in manifest order
        self._frozen = frozen  # the frozen backbone's caches (no adapter)
        self._pinned: list[str | None] = []  # pin(): the adapter every stage and answer uses meanwhile

    @classmethod
    def open(cls, bundle: Bundle, open_session: Callable, backbone: dict[str, GraphSignature], backend: str,
             cache_sizes: tuple[int, int], previous: "AdapterSet | None" = None) -> "AdapterSet":
        """The set of `bundle`'s adapters. open_session(path) -> an ORT session; backbone: the vision and decoder
        graphs' signatures (every adapter graph is checked against them and the manifest); backend: "c" | "onnx"
        (choose_backend); cache_sizes: (vision, text) entries per adapter. previous: the set this one replaces
        (reload): its adapters whose files are unchanged are taken over with their sessions, kernels and caches,
        and the pins carry over. BundleError/EngineError before anything is returned."""
        from crome_runtime.adapter_kernel import load_c_adapter

        manifest = bundle.manifest
        adapters: dict[str, LoadedAdapter] = {}
        for entry in manifest.adapters:
            fingerprint = tuple((role, manifest.files[name].sha256 if name in manifest.files else None)
                                for role in REQUIRED_ROLES if (name := entry.file(role)) is not None)
            kept = previous._adapters.get(entry.name) if previous is not None else None
            if kept is not None and kept.fingerprint == fingerprint and (backend == "onnx" or kept.kernels is not None):
                adapters[entry.name] = dataclasses.replace(kept, entry=entry)
                continue
            sessions = {m: open_session(bundle.path / _graph(entry, f"adapter_{m}")) for m in MODALITIES}
            signatures = dict(backbone)
            signatures.update({f"adapter_{m}": GraphSignature.of_session(s) for m, s in sessions.items()})
            check_graphs(bundle, signatures, {role: _graph(entry, role) for role in GRAPH_ROLES})
            kernels = None
            if backend == "c":
                if not _has_weights(bundle, entry):
                    raise EngineError(f"adapter {entry.name} has no weights file (.safetensors), which the C adapter "
                                      "kernel this engine runs needs; re-export it")
                kernels = load_c_adapter(bundle.path / str(entry.file("weights")), manifest.backbone.d_model)
            adapters[entry.name] = LoadedAdapter(entry, sessions, kernels, _caches(cache_sizes), fingerprint)
        frozen = previous._frozen if previous is not None else _caches(cache_sizes)
        new = cls(bundle, adapters, backend, frozen, cache_sizes)
        if previous is not None:
            new._pinned = list(previous._pinned)
        return new

    def changes(self, previous: "AdapterSet") -> dict:
        """What a reload changed: {"added", "replaced", "removed", "kept"}: adapter names."""
        old = previous._adapters
        same = [n for n, a in self._adapters.items() if n in old and a.sessions is old[n].sessions]
        return {"added": [n for n in self._adapters if n not in old],
                "replaced": [n for n in self._adapters if n in old and n not in same],
                "removed": [n for n in old if n not in self._adapters],
                "kept": same}

    # --- which adapter answers ----------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._adapters)

    @property
    def entries(self) -> list[AdapterEntry]:
        return [a.entry for a in self._adapters.values()]

    def entry(self, adapter: str | None) -> AdapterEntry | None:
        """`adapter`'s manifest entry (None: the frozen backbone, which has none)."""
        return None if adapter is None else self._adapters[adapter].entry

    def route(self, question: str, adapter: str | None = None) -> str | None:
        """The adapter that answers `question`: the pinned one (pin()), else `adapter` when given ("none": the frozen
        backbone alone), else the bundle's routes; None means the frozen backbone with no adapter. EngineError for
        a name the bundle does not have."""
        choice = self._pinned[-1] if self._pinned else adapter
        if choice is not None or self._pinned:
            return self.check(choice)
        return route_question(self.entries, question)

    def check(self, name: str | None) -> str | None:
        """`name` as an adapter of this set (None/"none": the frozen backbone); EngineError for an unknown one."""
        if name is None or name.lower() == NONE:
            return None
        if name not in self._adapters:
            have = ", ".join(self.names) or "none"
            raise EngineError(f"this bundle has no adapter {name!r:.80} (it has: {have}; '{NONE}' is the frozen "
                              "backbone alone)")
        return name

    @contextmanager
    def pin(self, adapter: str | None):
        """Every answer and stage call inside uses `adapter` (a name, or None/"none": the frozen backbone), whatever
        the routes say: how export and verify measure one adapter of a bundle."""
        self._pinned.append(self.check(adapter))
        try:
            yield self
        finally:
            self._pinned.pop()

    def stage_adapter(self) -> str | None:
        """The adapter a bare stage call (no adapter named) uses: the pinned one, else the bundle's only one."""
        if self._pinned:
            return self._pinned[-1]
        if len(self._adapters) == 1:
            return self.names[0]
        raise EngineError(f"this bundle has {len(self._adapters)} adapters; name the one to use "
                          "(Engine.pin(name) or adapt(..., adapter=name))")

    # --- what an adapter does -----------------------------------------------------------------------
    def generation_defaults(self, adapter: str | None, defaults):
        """The generation defaults an answer by `adapter` starts from: the bundle's (`defaults`), with the adapter's
        own generation cap."""
        if adapter is None:
            return defaults
        return dataclasses.replace(defaults, max_new_tokens=self._adapters[adapter].entry.max_new_tokens)

    def apply(self, adapter: str, modality: str, x: np.ndarray) -> np.ndarray:
        """(N, d) float32 C-contiguous -> (N, d) through `adapter`'s branch of `modality`."""
        loaded = self._adapters[adapter]
        if loaded.kernels is not None:
            return loaded.kernels[modality].apply(x)
        return loaded.sessions[modality].run(None, {formats.IN_ADAPTER_X: x[None]})[0][0]

    def caches(self, adapter: str | None) -> Caches:
        """`adapter`'s caches (None: the frozen backbone's)."""
        return self._frozen if adapter is None else self._adapters[adapter].caches

    def clear_caches(self) -> None:
        for caches in [self._frozen] + [a.caches for a in self._adapters.values()]:
            caches.vision.clear()
            caches.text.clear()

    def cache_stats(self) -> dict:
        """{"vision": ..., "text": ...}: entries, size, hits and misses summed over every adapter and the frozen
        backbone (each has its own caches of the configured size)."""
        every = [self._frozen] + [a.caches for a in self._adapters.values()]
        return {kind: {key: sum(getattr(c, kind).stats()[key] for c in every)
                       for key in ("entries", "size", "hits", "misses")} for kind in ("vision", "text")}

    def session_providers(self) -> dict[str, list[str]]:
        """graph ("NAME.adapter_visual", ...) -> the providers ONNX Runtime runs it on."""
        return {f"{name}.adapter_{m}": list(s.get_providers())
                for name, a in self._adapters.items() for m, s in a.sessions.items()}


def _caches(sizes: tuple[int, int]) -> Caches:
    return Caches(LRUCache(sizes[0]), LRUCache(sizes[1]))
