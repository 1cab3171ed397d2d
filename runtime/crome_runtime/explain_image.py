"""The heat map drawn: the grid of crome_runtime.explain over a frame, and `crome-edge run --explain OUT.png`'s file.

The grid covers the whole frame: a bundle resizes the whole frame to its square input (crome_runtime.preprocess's
OpenCV resize; a HF "pil" recipe that crops would put the grid over the crop, docs/explain.md). OpenCV only.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from crome_runtime.errors import CromeError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def check_explain_output(path: Path, inputs=(), within=()) -> Path:
    """OutputError/CromeError before any work when --explain's image could not be written: not .png/.jpg, or not a
    writable new name or regular file (crome_runtime.outputs.check_output's rules)."""
    from crome_runtime.outputs import check_output

    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise CromeError(f"--explain {path}: the heat map is written as PNG or JPEG; give a path ending in .png or "
                         f".jpg (got {path.suffix or 'no suffix'!r})")
    path = check_output(path, "--explain", inputs, within=within)
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise CromeError(f"--explain {path}: the directory {path.parent} is not writable; choose another directory")
    return path


def write_explain_image(path: Path, image: np.ndarray, grid: np.ndarray, caption: str) -> None:
    """The frame with the map over it and the caption below, written atomically (crome_runtime.atomic)."""
    import cv2

    from crome_runtime.atomic import atomic_path

    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix.lower(), overlay(image, grid, caption))
    if not ok:
        raise CromeError(f"--explain {path}: OpenCV could not encode the image as {path.suffix}")
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(encoded.tobytes())
    except PermissionError as error:
        raise CromeError(f"--explain {path}: cannot write there ({error.strerror}); choose another directory") from None


def heat(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """The grid drawn over a (height, width) frame: bilinear, float32 (H, W), summing to 1 (what mass-on-part reads).
    The grid covers the whole frame: a bundle resizes the whole frame to its square input (crome_runtime.preprocess)."""
    import cv2

    up = cv2.resize(grid.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    up = np.maximum(up, 0)
    return up / up.sum() if up.sum() > 0 else np.full((height, width), 1.0 / (height * width), np.float32)


def overlay(image: np.ndarray, grid: np.ndarray, caption: str, alpha: float = 0.5) -> np.ndarray:
    """A BGR uint8 frame with the heat map blended over it (JET: red = most weight) and `caption` in a band below."""
    import cv2

    height, width = image.shape[:2]
    level = heat(grid, height, width)
    level = level / level.max()  # 0..1 for the colour map
    colours = cv2.applyColorMap((level * 255).astype(np.uint8), cv2.COLORMAP_JET)
    mix = (alpha * level)[..., None]  # cold regions keep the frame, hot ones take the colour
    blended = (image.astype(np.float32) * (1 - mix) + colours.astype(np.float32) * mix).astype(np.uint8)
    scale = max(0.4, width / 640)
    thickness = max(1, round(scale))
    (_, text_h), base = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    lines = _wrap(caption, max(8, int(width / (text_h * 0.62))))
    band = np.zeros((len(lines) * (text_h + base + 6) + 6, width, 3), np.uint8)
    for i, line in enumerate(lines):
        y = 6 + (i + 1) * (text_h + base + 6) - base - 3
        cv2.putText(band, line, (6, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return np.concatenate([blended, band])


def _wrap(text: str, width: int) -> list[str]:
    """Lines of at most `width` characters (OpenCV draws one line at a time; its fonts are ASCII: others show '?')."""
    text = "".join(c if 32 <= ord(c) < 127 else "?" for c in " ".join(text.split())) or " "
    lines: list[str] = []
    for word in text.split(" "):
        while len(word) > width:
            lines.append(word[:width])
            word = word[width:]
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines[:6]
