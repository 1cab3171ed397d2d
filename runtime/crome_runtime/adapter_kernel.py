"""The CROME adapter on the CPU: the bundle's adapter.safetensors run by the C core's fused gated projection.

docs/architecture.md §5 keeps the C kernel because it beats the ONNX Runtime adapter graph on the CPU
(benchmarks/RESULTS.md, "Runtime C core"); the engine uses it when the decoder runs on the CPU and the
adapter graphs (adapter_visual.onnx / adapter_text.onnx, same weights, checked against the backbone's
width at load) everywhere else. Per modality W1 = [Wd | Wg] (d, 2r), shared Wu (r, d), as
crome_edge.gated_adapter.CromeAdapter.fused_weight lays them out. Torch-free (safetensors' numpy reader).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from crome_runtime import formats
from crome_runtime.manifest import BundleError
from crome_runtime import input_files

MODALITIES = formats.ADAPTER_MODALITIES


def adapter_dims(config_json: str) -> tuple[int, int]:
    """(d_model, rank) from an adapter file's `adapter_config` metadata, the JSON {"d_model": d, "rank": r} with
    whole numbers >= 1 and nothing else; ValueError saying what is wrong. The one parser: crome_edge's
    AdapterConfig.from_json and the bundle loader both read the field through it."""
    try:
        data = input_files.loads(config_json, "adapter_config")
    except (TypeError, ValueError):
        raise ValueError(f"adapter_config {config_json!r:.60} is not JSON") from None
    if not isinstance(data, dict) or set(data) != {"d_model", "rank"}:
        raise ValueError(f"adapter_config must be {{\"d_model\": d, \"rank\": r}}, got {config_json!r:.80}")
    dims = data["d_model"], data["rank"]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in dims):
        raise ValueError(f"adapter_config d_model and rank must be whole numbers >= 1, got {dims}")
    return dims


def pooled_map_shapes(present: dict[str, tuple[int, ...]], d_model: int) -> dict[str, tuple[int, ...]]:
    """The shapes an adapter's pooled-map tensors must have (formats.ADAPTER_POOLED_TENSORS), given those a file holds
    as name -> shape ({} for an adapter without a pooled map); ValueError saying what is wrong for a partial set, a
    feature count F outside 1..formats.MAX_POOLED_FEATURES or a shape that does not fit d_model. The one rule:
    crome_edge's adapter files and the bundle loader both check pooled maps through it."""
    if not present:
        return {}
    if set(present) != set(formats.ADAPTER_POOLED_TENSORS):
        raise ValueError(f"it has {', '.join(sorted(present))} but not all of {formats.ADAPTER_POOLED_TENSORS}: a "
                         "pooled map needs all three")
    read, map_, bias = formats.ADAPTER_POOLED_TENSORS
    read_shape = tuple(present[read])
    features = read_shape[1] if len(read_shape) == 2 else 0
    if not 1 <= features <= formats.MAX_POOLED_FEATURES:
        raise ValueError(f"{read} has shape {read_shape}; expected (d, F) with 1 <= F <= {formats.MAX_POOLED_FEATURES}")
    expected = {read: (d_model, features), map_: (features, d_model), bias: (d_model,)}
    for name, shape in expected.items():
        if tuple(present[name]) != shape:
            raise ValueError(f"{name} has shape {tuple(present[name])}, expected {shape} for d={d_model}")
    return expected


def read_adapter_tensors(path: Path) -> dict[str, np.ndarray]:
    """The adapter tensors (formats.ADAPTER_TENSORS) of a bundle's adapter weights file, float32 and contiguous;
    BundleError when it cannot be read or lacks one."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise BundleError(f"{path.name} in {path.parent} cannot be read ({error}); re-export the bundle") from None
    missing = sorted(set(formats.ADAPTER_TENSORS) - set(tensors))
    if missing:
        raise BundleError(f"{path.name} lacks the adapter tensors {missing}; re-export the bundle")
    pooled = tuple(name for name in formats.ADAPTER_POOLED_TENSORS if name in tensors)
    return {name: np.ascontiguousarray(tensors[name], dtype=np.float32) for name in formats.ADAPTER_TENSORS + pooled}


class PooledStep:
    """An adapter's own map of the pooled token (crome_edge.gated_adapter.PooledMap, folded): the last visual token
    t += (t · read) · map + bias. read (d, F), map (F, d), bias (d,), as pooled_map_shapes checks them."""

    def __init__(self, read: np.ndarray, map_: np.ndarray, bias: np.ndarray):
        self.read, self.map, self.bias = read, map_, bias

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], d_model: int, name: str) -> "PooledStep | None":
        """The step of an adapter file's tensors (None when it has no pooled map); BundleError when they do not fit."""
        present = {n: tensors[n].shape for n in formats.ADAPTER_POOLED_TENSORS if n in tensors}
        try:
            expected = pooled_map_shapes(present, d_model)
        except ValueError as error:
            raise BundleError(f"{name}: {error}; re-export the bundle") from None
        return cls(*(tensors[n] for n in formats.ADAPTER_POOLED_TENSORS)) if expected else None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(N, d) -> (N, d), the last row moved."""
        out = x.copy()
        out[-1] += (x[-1] @ self.read) @ self.map + self.bias
        return out


class PooledThenProjection:
    """The visual branch of an adapter with a pooled map: the PooledStep, then the C core's gated projection."""

    def __init__(self, step: PooledStep, projection):
        self.step, self.projection = step, projection

    def apply(self, x: np.ndarray) -> np.ndarray:
        return self.projection.apply(np.ascontiguousarray(self.step(x)))


def load_c_adapter(path: Path, d_model: int) -> dict:
    """modality -> ccore.GatedProjection for the adapter file at `path`; BundleError if it does not fit."""
    from crome_runtime.ccore import GatedProjection

    tensors = read_adapter_tensors(path)
    up = tensors["up"]  # (r, d)
    rank = up.shape[0]
    projections = {}
    for modality in MODALITIES:
        down, gate = tensors[f"{modality}.down"], tensors[f"{modality}.gate"]  # (d, r) each
        if down.shape != (d_model, rank) or gate.shape != (d_model, rank) or up.shape != (rank, d_model):
            raise BundleError(
                f"{path.name}: {modality} adapter weights are {down.shape}/{gate.shape}/{up.shape}, expected "
                f"({d_model}, {rank})/({d_model}, {rank})/({rank}, {d_model}) for this backbone; re-export the bundle"
            )
        w1 = np.ascontiguousarray(np.concatenate([down, gate], axis=1), dtype=np.float32)  # (d, 2r) = [Wd | Wg]
        projections[modality] = GatedProjection(w1, up)
    step = PooledStep.from_tensors(tensors, d_model, path.name)
    if step is not None:
        return {**projections, "visual": PooledThenProjection(step, projections["visual"])}
    return projections
