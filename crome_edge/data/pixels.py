"""Images -> normalised pixel tensors (3, S, S), through the runtime's own preprocessing.

`crome_runtime.preprocess` is what the deployed runtime runs on camera frames; training and evaluation
use it too, so a model never sees differently prepared pixels in deployment. Every distinct image is
decoded once up front (so a bad image fails before any training or output) and kept preprocessed in
memory while that fits `memory_budget`; beyond it, images are re-read on demand.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from crome_edge.data.dataset import Sample, decode_images

DEFAULT_MEMORY_BUDGET = 2 << 30  # bytes of float32 pixels kept in memory


class PixelStore:
    def __init__(self, size: int, mean, std, memory_budget: int = DEFAULT_MEMORY_BUDGET, resize=None):
        self.size, self.mean, self.std = size, tuple(mean), tuple(std)
        self.resize = resize  # crome_runtime.hf_image.ResizeRecipe (None: crome's own OpenCV resize)
        self.memory_budget = memory_budget
        self._cache: dict[Path, torch.Tensor] = {}

    @classmethod
    def for_backbone(cls, info, **kwargs) -> "PixelStore":
        return cls(info.image_size, info.image_mean, info.image_std, resize=info.resize, **kwargs)

    def prepare(self, samples: list[Sample]) -> None:
        """Decodes every distinct image (CromeError naming the bad ones) and caches what fits."""
        per_image = 3 * self.size * self.size * 4
        n_distinct = len({s.image for s in samples} - set(self._cache))
        keep = (len(self._cache) + n_distinct) * per_image <= self.memory_budget

        def consume(path: Path, bgr: np.ndarray) -> None:
            if keep:
                self._cache[path] = self._preprocess(bgr)

        decode_images(samples, consume)

    def batch(self, samples: list[Sample]) -> torch.Tensor:
        """(B, 3, S, S) float32 for these samples' images."""
        return torch.stack([self.pixels(s.image) for s in samples])

    def pixels(self, path: Path) -> torch.Tensor:
        cached = self._cache.get(path)
        if cached is not None:
            return cached
        from crome_runtime.preprocess import load_image

        return self._preprocess(load_image(path))

    def _preprocess(self, bgr: np.ndarray) -> torch.Tensor:
        from crome_runtime.preprocess import preprocess_image

        chw = preprocess_image(bgr, self.size, self.mean, self.std, self.resize)  # (3, S, S) float32
        return torch.from_numpy(np.ascontiguousarray(chw, dtype=np.float32))
