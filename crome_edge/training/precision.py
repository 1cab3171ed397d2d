"""Whether `--bf16` really trains under bf16 autocast: only where the device computes bf16 natively.

CUDA GPUs with bf16 (Ampere and later, Jetson Orin) and CPUs with AVX512_BF16, AMX or ARM's bf16 extension
run bf16 matmuls in hardware. Elsewhere PyTorch emulates them: on an AVX2 CPU a 256×576 @ 576×1536 bf16
matmul took 362 ms against 7.3 ms in fp32, and the smol line3 recipe's 400 steps would have taken hours. There
`--bf16` falls back to fp32 and says so once (log line + training summary). Torch-free: the trainer passes
in what it knows about the device. Not here: the autocast context itself (trainer.py).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bf16Choice:
    use: bool  # autocast the forward to bfloat16
    note: str | None = None  # why --bf16 was not honoured (None when it was, or was not asked for)


def decide_bf16(requested: bool, device_type: str, cpu_features: dict[str, bool] | None = None,
                cuda_bf16: bool = True, cpu_model: str = "this CPU") -> Bf16Choice:
    """requested: --bf16; device_type: "cpu" | "cuda" | ...; cpu_features: crome_runtime.machine.features()
    (read from this machine when None); cuda_bf16: torch.cuda.is_bf16_supported() for a CUDA device."""
    if not requested:
        return Bf16Choice(False)
    if device_type == "cuda":
        if cuda_bf16:
            return Bf16Choice(True)
        return Bf16Choice(False, "--bf16: this GPU has no native bf16 (needs compute capability 8.0+); training in fp32")
    if device_type == "cpu":
        from crome_runtime.machine import features, native_bf16

        found = features() if cpu_features is None else cpu_features
        if native_bf16(found):
            return Bf16Choice(True)
        return Bf16Choice(False, (
            f"--bf16: {cpu_model} has no native bf16 (avx512_bf16, amx_bf16 or ARM bf16), where bf16 matmuls are "
            "emulated and ~50x slower than fp32; training in fp32 instead"))
    return Bf16Choice(False, f"--bf16: bf16 autocast is not supported on device {device_type!r}; training in fp32")
