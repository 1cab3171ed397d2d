"""A Hugging Face image processor's resize, crop and normalisation, reproduced bit for bit without PIL or torch.

LLaVA (CLIP/SigLIP processors) and SmolVLM/Idefics3 checkpoints were trained on frames their HF image processor made:
PIL resampling on uint8 (an antialiased separable filter in 22-bit fixed point, rounded to uint8 after each pass),
then x·(1/255) in float64 cast to float32, then (x - mean) / std in float32. `ResizeRecipe` says which steps a
backbone's processor takes (read from its preprocessor_config.json by crome_edge.backbones.hf_vlm); `hf_preprocess`
runs them in numpy. tests/test_hf_vlm.py compares the result with the HF processor bit for bit.

Not here: crome's own preprocessing (OpenCV bilinear straight to S×S, the C core's one pass: preprocess.py), and
multi-tile image splitting (SmolVLM's `do_image_splitting`: one tile only).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

CV2 = "cv2"  # crome's own: cv2.resize INTER_LINEAR straight to S×S (preprocess.preprocess_image, the C core)
PIL = "pil"  # a Hugging Face processor's PIL resampling (this module)
FILTERS = ("bilinear", "bicubic", "lanczos")
PIL_RESAMPLE_CODES = {2: "bilinear", 3: "bicubic", 1: "lanczos"}  # PIL.Image.Resampling values in processor configs
PRECISION_BITS = 32 - 8 - 2  # PIL's Resample.c fixed point for 8-bit images
MAX_LONGEST_EDGE = 4096  # Idefics3's MAX_IMAGE_SIZE: a longest-edge resize never goes beyond it


@dataclass(frozen=True)
class ResizeRecipe:
    """How a frame becomes the S×S encoder input. `method` "cv2" is crome's own; "pil" a HF processor's:
    optionally the longest edge to `longest_edge` first (Idefics3, aspect kept, even sides), then either the
    shortest edge to `shortest_edge` and a centre crop to S×S (CLIP) or straight to S×S."""

    method: str = CV2
    resample: str = "bilinear"  # pil: bilinear | bicubic | lanczos
    shortest_edge: int = 0  # pil: > 0 -> shortest edge to this (aspect kept), then centre crop S×S
    longest_edge: int = 0  # pil: > 0 -> longest edge to this first (Idefics3's `size`), then on

    def __post_init__(self) -> None:
        if self.method not in (CV2, PIL):
            raise ValueError(f"resize method must be {CV2!r} or {PIL!r}, got {self.method!r:.40}")
        if self.resample not in FILTERS:
            raise ValueError(f"resize resample must be one of {', '.join(FILTERS)}, got {self.resample!r:.40}")
        for name in ("shortest_edge", "longest_edge"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_LONGEST_EDGE:
                raise ValueError(f"resize {name} must be a whole number in 0..{MAX_LONGEST_EDGE}, got {value!r:.40}")

    @classmethod
    def of(cls, value: "ResizeRecipe | dict | None") -> "ResizeRecipe":
        """A recipe from its JSON form (a manifest's), or the default for None."""
        if value is None:
            return cls()
        if isinstance(value, ResizeRecipe):
            return value
        if not isinstance(value, dict) or set(value) - {"method", "resample", "shortest_edge", "longest_edge"}:
            raise ValueError(f"resize must be an object with method, resample, shortest_edge, longest_edge; got "
                             f"{value!r:.80}")
        return cls(**value)


# --- PIL's filters and its two-pass uint8 resampling (libImaging/Resample.c) ----------------------------------


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _sinc(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        y = np.sin(x * math.pi) / (x * math.pi)
    return np.where(x == 0.0, 1.0, y)


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where((x > -3.0) & (x < 3.0), _sinc(x) * _sinc(x / 3.0), 0.0)


_FILTER: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float]] = {
    "bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0), "lanczos": (_lanczos, 3.0),
}


def _coefficients(in_size: int, out_size: int, resample: str) -> tuple[np.ndarray, np.ndarray]:
    """Per output pixel: the first source index and the taps in fixed point -> (xmin (n,), weights (n, k) int64,
    zero beyond the pixel's tap count), as PIL's precompute_coeffs + normalize_coeffs_8bpc compute them: float64,
    the taps summed left to right before they are normalised (vectorised over pixels, sequential over taps)."""
    fn, filter_support = _FILTER[resample]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = filter_support * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale  # (n,)
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)  # C's (int) cast, then clamp
    count = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64) - xmin
    taps = np.arange(ksize)[None, :]  # (1, k)
    weights = fn((taps + xmin[:, None] - center[:, None] + 0.5) * (1.0 / filterscale))  # (n, k)
    weights = np.where(taps < count[:, None], weights, 0.0)
    total = np.zeros(out_size)
    for k in range(ksize):  # left to right, as the C loop sums
        total = total + weights[:, k]
    weights = np.where(total[:, None] != 0.0, weights / np.where(total == 0.0, 1.0, total)[:, None], weights)
    fixed = np.trunc(np.where(weights < 0, -0.5, 0.5) + weights * (1 << PRECISION_BITS)).astype(np.int64)
    return xmin, fixed


def _pass(image: np.ndarray, out_size: int, resample: str, axis: int) -> np.ndarray:
    """One 8-bit resampling pass of (H, W, C) uint8 along `axis` (1: horizontal, 0: vertical): for each tap k, the
    k-th source row/column of every output pixel, weighted, summed in int32 (exact), then >> 22 and clipped."""
    in_size = image.shape[axis]
    xmin, fixed = _coefficients(in_size, out_size, resample)
    source = np.moveaxis(image, axis, 0)  # (in, other, C) view
    # int32 as in PIL's C (|sum| <= 255 · Σ|w| · 2^22 stays below 2^31 for these filters)
    acc = np.full((out_size,) + source.shape[1:], 1 << (PRECISION_BITS - 1), np.int32)
    fixed32 = fixed.astype(np.int32)
    for k in range(fixed.shape[1]):
        weight = fixed32[:, k]
        if weight.any():
            rows = source[np.minimum(xmin + k, in_size - 1)]  # (n, other, C) uint8; weight 0 past the tap count
            acc += weight[:, None, None] * rows
    out = np.clip(acc >> PRECISION_BITS, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(out, 0, axis))


def pil_resize(rgb: np.ndarray, height: int, width: int, resample: str) -> np.ndarray:
    """(H, W, C) uint8 -> (height, width, C) uint8, equal to Pillow 13's Image.resize((width, height), resample).
    Two passes, each rounded to uint8; the order matters to the last bit. Pillow 13 runs the vertical pass first when
    the height shrinks by more than twice as many pixels as the width does (python-pillow/Pillow#9549; checked here
    on 1,500 random shapes), else the horizontal one."""
    in_height, in_width = rgb.shape[:2]
    if (in_height, in_width) == (height, width):
        return rgb
    vertical_first = in_height > height and in_height - height > 2 * (in_width - width)
    if vertical_first:
        rgb = _pass(rgb, height, resample, axis=0) if in_height != height else rgb
        return _pass(rgb, width, resample, axis=1) if in_width != width else rgb
    rgb = _pass(rgb, width, resample, axis=1) if in_width != width else rgb
    return _pass(rgb, height, resample, axis=0) if in_height != height else rgb


# --- the processor's steps ----------------------------------------------------------------------------------


def longest_edge_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """Idefics3's output size for a longest-edge resize: the long side to `longest`, the other by the aspect ratio,
    rounded up to even (image_processing_idefics3._resize_output_size_rescale_to_max_len and the 4096 bound)."""
    aspect = width / height
    if width >= height:
        width, height = longest, int(longest / aspect)
        height += height % 2
    else:
        height, width = longest, int(longest * aspect)
        width += width % 2
    height, width = max(height, 1), max(width, 1)
    if max(height, width) > MAX_LONGEST_EDGE:  # _resize_output_size_scale_below_upper_bound
        aspect = width / height
        if width >= height:
            width, height = MAX_LONGEST_EDGE, int(MAX_LONGEST_EDGE / aspect)
        else:
            height, width = MAX_LONGEST_EDGE, int(MAX_LONGEST_EDGE * aspect)
        height, width = max(height, 1), max(width, 1)
    return height, width


def shortest_edge_size(height: int, width: int, shortest: int) -> tuple[int, int]:
    """transformers.image_transforms.get_resize_output_image_size(default_to_square=False): the short side to
    `shortest`, the long one int(shortest · long / short)."""
    if width <= height:
        return int(shortest * height / width), shortest
    return shortest, int(shortest * width / height)


def hf_resize(rgb: np.ndarray, size: int, recipe: ResizeRecipe) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (size, size, 3) uint8 RGB: the recipe's resizes and crop."""
    if recipe.longest_edge:
        rgb = pil_resize(rgb, *longest_edge_size(rgb.shape[0], rgb.shape[1], recipe.longest_edge), recipe.resample)
    if not recipe.shortest_edge:
        return pil_resize(rgb, size, size, recipe.resample)
    rgb = pil_resize(rgb, *shortest_edge_size(rgb.shape[0], rgb.shape[1], recipe.shortest_edge), recipe.resample)
    height, width = rgb.shape[:2]
    if height < size or width < size:  # a shortest edge below the crop: zero padding, as center_crop does
        padded = np.zeros((max(height, size), max(width, size), 3), np.uint8)
        top, left = math.ceil((padded.shape[0] - height) / 2), math.ceil((padded.shape[1] - width) / 2)
        padded[top : top + height, left : left + width] = rgb
        rgb, height, width = padded, padded.shape[0], padded.shape[1]
    top, left = (height - size) // 2, (width - size) // 2
    return rgb[top : top + size, left : left + size]


def hf_preprocess(rgb: np.ndarray, size: int, recipe: ResizeRecipe, mean: Sequence[float],
                  std: Sequence[float]) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, size, size) float32: resize and crop, x·(1/255) in float64 cast to float32, then
    (x - mean) / std in float32 (transformers.image_transforms.rescale and normalize)."""
    resized = hf_resize(rgb, size, recipe)
    x = (resized.astype(np.float64) * (1 / 255)).astype(np.float32)  # (size, size, 3)
    normalized = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(normalized.transpose(2, 0, 1))
