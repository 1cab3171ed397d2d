"""What machine a number was measured on: the CPU model and the ISA features that decide which int8 and
bf16 kernels ONNX Runtime and PyTorch pick (read from /proc/cpuinfo, never assumed from the build).

    describe_cpu() -> {"model": "AMD EPYC ...", "arch": "x86_64", "features": {"avx2": True, ...},
                       "int8_kernels": "x86 avx512-vnni", "onnxruntime": "1.32.0"}

An export's report and `crome-edge verify` record it, so a bundle's fidelity numbers say which ISA they
hold on. Torch-free. Not here: choosing kernels (ONNX Runtime and PyTorch do that at run time).
"""
from __future__ import annotations

import functools
import platform
from pathlib import Path

# x86 flags (Linux names) and ARM `Features` names that change int8 / bf16 arithmetic.
X86_FEATURES = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
ARM_FEATURES = {"asimd": "neon", "asimddp": "dotprod", "i8mm": "i8mm", "bf16": "bf16", "sve": "sve"}


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def _first(text: str, *keys: str) -> str | None:
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() in keys and value.strip():
            return value.strip()
    return None


def _model(text: str) -> str:
    model = _first(text, "model name", "hardware")
    if model:
        return model
    try:  # Jetson and other ARM boards name themselves in the device tree
        return Path("/proc/device-tree/model").read_text(errors="replace").strip("\x00\n ") or platform.processor()
    except OSError:
        return platform.processor() or platform.machine()


def features(text: str | None = None, arch: str | None = None) -> dict[str, bool]:
    """The int8/bf16-relevant ISA features of this CPU (or of a /proc/cpuinfo text, for tests)."""
    text = _cpuinfo() if text is None else text
    arch = arch or platform.machine()
    if arch in ("x86_64", "AMD64", "i686"):
        flags = set((_first(text, "flags") or "").split())
        return {name: name in flags for name in X86_FEATURES}
    flags = set((_first(text, "features") or "").split())
    return {name: flag in flags for flag, name in ARM_FEATURES.items()}


def int8_kernels(found: dict[str, bool]) -> str:
    """Which family of int8 dot products this CPU has (what decides int8 saturation and speed)."""
    if "avx2" in found:
        if found.get("avx512_vnni"):
            return "x86 avx512-vnni"
        if found.get("avx_vnni"):
            return "x86 avx-vnni"
        if found.get("avx2"):
            return "x86 avx2 without vnni (u8*s8 pair sums saturate at int16)"
        return "x86 without avx2"
    if found.get("i8mm"):
        return "arm i8mm"
    if found.get("dotprod"):
        return "arm dotprod"
    return "arm neon" if found.get("neon") else "unknown"


def native_bf16(found: dict[str, bool] | None = None) -> bool:
    """Whether this CPU computes bf16 matmuls in hardware (else bf16 is emulated, ~50x slower than fp32)."""
    found = features() if found is None else found
    return bool(found.get("avx512_bf16") or found.get("amx_bf16") or found.get("bf16"))


@functools.lru_cache(maxsize=1)
def describe_cpu() -> dict:
    text = _cpuinfo()
    found = features(text)
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return {"model": _model(text), "arch": platform.machine(), "features": found, "int8_kernels": int8_kernels(found),
            "onnxruntime": ort_version}
