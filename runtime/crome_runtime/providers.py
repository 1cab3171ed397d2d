"""Execution providers: which ONNX Runtime execution provider runs a bundle, and what actually runs.

Preference (docs/architecture.md §5): TensorRT → CUDA → CPU. `--provider auto` takes the best one ONNX Runtime offers
here; `--provider cpu|cuda|tensorrt` asks for one and fails with the list of what is available when it is
not. onnxruntime-gpu falls back to CPU silently when it cannot load CUDA/TensorRT, so after a session is
made its `get_providers()` is read back: an explicit request that fell back is an error, an automatic
choice that fell back is reported as such.

TensorRT runs through ONNX Runtime's TensorRT execution provider, which builds engines from the bundle's
graphs on first use and caches them in `<bundle>/engines/ort-trt-cache` (or under crome-edge's cache directory,
user_cache_dir.py, when the bundle is read-only). Engines that `crome-edge build-engines` serialised into `<bundle>/engines` are
reported but not executed: loading them needs a native TensorRT runner, which this runtime does not have
yet (no TensorRT was available to test one). Torch-free; onnxruntime is imported when a plan is made.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from crome_runtime import formats
from crome_runtime.errors import ProviderError

CHOICES = formats.PROVIDER_CHOICES
ORT_NAMES = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
PREFERENCE = ("tensorrt", "cuda", "cpu")
GPU_EXTRA = "install onnxruntime-gpu: pip install 'crome-edge[gpu]' on a machine with an NVIDIA GPU and its CUDA libraries"


@dataclass
class ProviderPlan:
    """What a session is asked to run on: ORT provider names in order, each with its options."""

    requested: str  # one of CHOICES
    providers: list[str]  # ORT names, best first; CPU is always last
    options: list[dict]
    device: str  # "cuda" when the KV cache can live on the GPU, else "cpu"
    notes: list[str] = field(default_factory=list)

    def session_arguments(self) -> dict:
        return {"providers": list(self.providers), "provider_options": [dict(o) for o in self.options]}


@dataclass
class ProviderReport:
    """What each graph's session actually runs on (from `session.get_providers()`)."""

    requested: str
    planned: list[str]
    actual: dict[str, list[str]]  # graph -> providers ONNX Runtime registered, best first
    notes: list[str] = field(default_factory=list)

    @property
    def primary(self) -> str:
        """The provider running the decoder (the hot loop), e.g. "CPUExecutionProvider"."""
        return self.actual.get("decoder", self.planned)[0]

    def to_dict(self) -> dict:
        return {"requested": self.requested, "planned": self.planned, "actual": self.actual, "notes": self.notes}

    def summary(self) -> str:
        distinct = sorted({providers[0] for providers in self.actual.values()})
        return ", ".join(name.removesuffix("ExecutionProvider") for name in distinct)


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def plan(requested: str, bundle_dir: Path, precision: str = "fp32", available: list[str] | None = None) -> ProviderPlan:
    """The provider list for `requested` (auto|cpu|cuda|tensorrt); ProviderError when it is not available."""
    if requested not in CHOICES:
        raise ProviderError(f"--provider {requested!r} is not one of {', '.join(CHOICES)}")
    available = available_providers() if available is None else list(available)
    if requested == "auto":
        choice = next(p for p in PREFERENCE if ORT_NAMES[p] in available or p == "cpu")
    else:
        choice = requested
        if ORT_NAMES[choice] not in available:
            fix = ("reinstall onnxruntime" if choice == "cpu" else
                   f"{GPU_EXTRA}{' and TensorRT' if choice == 'tensorrt' else ''}, or use --provider cpu")
            raise ProviderError(f"--provider {choice}: ONNX Runtime here has no {ORT_NAMES[choice]} (available: "
                                f"{', '.join(available) or 'none'}). Fix: {fix}")
    chain = list(PREFERENCE[PREFERENCE.index(choice):])
    chain = [p for p in chain if ORT_NAMES[p] in available or p == "cpu"]
    options = [_options(p, bundle_dir, precision) for p in chain]
    notes = []
    engines = bundle_dir / formats.ENGINES_DIR / formats.ENGINES_MANIFEST
    if engines.is_file():
        notes.append(f"{engines.parent} holds TensorRT engines from `crome-edge build-engines`; this runtime runs the "
                     "ONNX graphs (through the TensorRT execution provider where available) and does not load them")
    return ProviderPlan(requested, [ORT_NAMES[p] for p in chain], options, "cuda" if chain[0] != "cpu" else "cpu", notes)


def _options(provider: str, bundle_dir: Path, precision: str) -> dict:
    if provider == "tensorrt":
        return {
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(_trt_cache_dir(bundle_dir)),
            "trt_fp16_enable": "True" if precision in ("fp16", "int8") else "False",
        }
    return {}


def _trt_cache_dir(bundle_dir: Path) -> Path:
    engines = bundle_dir / formats.ENGINES_DIR
    if os.access(bundle_dir, os.W_OK) and (not engines.exists() or os.access(engines, os.W_OK)):
        return engines / "ort-trt-cache"
    from crome_runtime.user_cache_dir import cache_root

    return cache_root() / "ort-trt-cache" / bundle_dir.absolute().name


def check_actual(plan_: ProviderPlan, graph: str, actual: list[str]) -> str | None:
    """Raises ProviderError when an explicitly requested provider was dropped by ONNX Runtime; returns a note
    when an automatic choice fell back, else None."""
    wanted = plan_.providers[0]
    if not actual or actual[0] == wanted:
        return None
    why = (f"ONNX Runtime offers {wanted} but the {graph} session runs on {actual[0]}: it could not load the "
           f"GPU libraries (CUDA/cuDNN{'/TensorRT' if 'Tensorrt' in wanted else ''}; see the ONNX Runtime messages above)")
    if plan_.requested != "auto":
        raise ProviderError(f"{why}. Fix the GPU installation or use --provider cpu")
    return why


def open_session(path: Path, plan_: ProviderPlan, threads: int = 0, spin: bool = True):
    """An ONNX Runtime session for one graph. threads: intra-op threads (0 = ONNX Runtime's default, one per
    core); spin: let idle worker threads spin (lower latency, burns CPU that other processes could use)."""
    import onnxruntime as ort

    from crome_runtime.manifest import BundleError

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(0, int(threads))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, **plan_.session_arguments())
    except Exception as error:  # onnxruntime's pybind exceptions share no narrower public base class
        raise BundleError(f"ONNX Runtime {ort.__version__} cannot load {path.name} ({error}); the file may be damaged "
                          "or need a newer onnxruntime: re-export the bundle or upgrade onnxruntime") from None
