"""A general synthetic curriculum: shapes, counts, positions, sizes, colours, printed words and patterns.

What it is: a deterministic, seeded renderer (OpenCV + numpy, no torch) of frames that teach the Q-Former to
carry general visual facts, not only conveyor facts (docs/architecture.md §7), with closed-set answers so
exact-match accuracy is a fair score. Every frame gets a random background (plain, gradient, stripes, noise,
checks), clutter lines, lighting, blur and sensor noise. Three scene kinds, one per seed by `seed % 3`:

    shapes  1-4 shapes           "How many shapes are there?"  "What shape is this?"  "What colour is the shape?"
                                  "Where is the shape?"  "Is the shape big or small?"   (single-shape questions
                                  are asked only of one-shape frames)
    text    one printed word      "What does the text say?"    (several Hershey fonts, colours, sizes, tilts)
    pattern a full-frame pattern  "What pattern is this?"

What it is not: the conveyor world (world.py) or a line task.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross")
# BGR paint colours, far enough apart to name without doubt
GENERAL_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (40, 40, 210),
    "green": (50, 170, 40),
    "blue": (210, 90, 30),
    "yellow": (30, 220, 230),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COUNTS: tuple[str, ...] = ("one", "two", "three", "four")
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right", "centre")
SIZES: tuple[str, ...] = ("small", "big")
WORDS: tuple[str, ...] = (
    "stop", "open", "exit", "push", "pull", "hot", "cold", "left", "right", "up",
    "down", "on", "off", "yes", "no", "ok", "bin", "line", "part", "safe",
)
PATTERNS: tuple[str, ...] = ("stripes", "dots", "checks", "grid", "plain")
FONTS: tuple[int, ...] = (
    cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_COMPLEX_SMALL,
)

Q_COUNT = "How many shapes are there?"
Q_SHAPE = "What shape is this?"
Q_SHAPE_COLOUR = "What colour is the shape?"
Q_POSITION = "Where is the shape?"
Q_SIZE = "Is the shape big or small?"
Q_TEXT = "What does the text say?"
Q_PATTERN = "What pattern is this?"

GENERAL_ANSWERS: dict[str, tuple[str, ...]] = {
    Q_COUNT: COUNTS,
    Q_SHAPE: SHAPES,
    Q_SHAPE_COLOUR: tuple(GENERAL_COLOURS),
    Q_POSITION: POSITIONS,
    Q_SIZE: SIZES,
    Q_TEXT: WORDS,
    Q_PATTERN: PATTERNS,
}
SCENE_KINDS: tuple[str, ...] = ("shapes", "text", "pattern")
DEFAULT_GENERAL_SIZE = 160


@dataclass(frozen=True)
class GeneralScene:
    """Ground truth of one general frame: its (question, answer) pairs."""

    kind: str
    qa: tuple[tuple[str, str], ...]
    seed: int

    def to_dict(self) -> dict:
        return {"kind": self.kind, "seed": self.seed, "qa": [list(pair) for pair in self.qa]}


def _colour(rng: np.random.Generator, exclude: str | None = None) -> tuple[str, tuple[int, int, int]]:
    names = [n for n in GENERAL_COLOURS if n != exclude]
    name = names[int(rng.integers(len(names)))]
    jitter = rng.integers(-15, 16, 3)
    b, g, r = (int(np.clip(c + j, 0, 255)) for c, j in zip(GENERAL_COLOURS[name], jitter))
    return name, (b, g, r)


def _background(rng: np.random.Generator, size: int, muted: bool) -> tuple[np.ndarray, str]:
    """A background and the pattern it shows; `muted` keeps contrast low so shapes and text stand out."""
    base = rng.uniform(90, 170, 3) if muted else rng.uniform(30, 225, 3)
    other = base + rng.uniform(-35, 35, 3) if muted else rng.uniform(30, 225, 3)
    if not muted and np.abs(other - base).sum() < 120:  # a pattern must be visible to be named
        other = np.clip(255 - base, 0, 255)
    frame = np.empty((size, size, 3), np.float32)
    frame[:] = base
    pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    period = int(rng.integers(max(6, size // 16), max(8, size // 5)))
    yy, xx = np.mgrid[0:size, 0:size]
    angle = rng.uniform(0, math.pi)
    if pattern == "stripes":
        u = xx * math.cos(angle) + yy * math.sin(angle)
        frame[(u % period) < period / 2] = other
    elif pattern == "checks":
        frame[((xx // period) + (yy // period)) % 2 == 0] = other
    elif pattern == "grid":
        frame[((xx % period) < max(1, period // 6)) | ((yy % period) < max(1, period // 6))] = other
    elif pattern == "dots":
        radius = max(1.5, period / 4)
        cy, cx = (yy % period) - period / 2, (xx % period) - period / 2
        frame[cy**2 + cx**2 < radius**2] = other
    else:  # plain: a gentle gradient, still "plain"
        frame += (xx / size - 0.5)[..., None] * rng.uniform(-30, 30)
    return frame, pattern


def _clutter(rng: np.random.Generator, frame: np.ndarray, n: int) -> None:
    size = frame.shape[0]
    for _ in range(n):
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        colour = tuple(float(c) for c in rng.uniform(60, 200, 3))
        cv2.line(frame, (int(p1[0]), int(p1[1])), (int(p2[0]), int(p2[1])), colour, 1, cv2.LINE_AA)


def _shape_points(shape: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    if shape == "square":
        n, radii = 4, [r]
    elif shape == "triangle":
        n, radii = 3, [r]
    elif shape == "hexagon":
        n, radii = 6, [r]
    elif shape == "star":
        n, radii = 10, [r, r * 0.45]
    else:  # cross
        w = r * 0.38
        pts = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]
        c, s = math.cos(angle), math.sin(angle)
        return np.array([(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts], np.float32)
    pts = []
    for i in range(n):
        a = angle + 2 * math.pi * i / n
        rad = radii[i % len(radii)]
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return np.array(pts, np.float32)


def _draw_shape(frame: np.ndarray, shape: str, cx: float, cy: float, r: float, angle: float, colour) -> None:
    colour = tuple(float(c) for c in colour)
    if shape == "circle":
        cv2.circle(frame, (int(round(cx)), int(round(cy))), int(round(r)), colour, -1, cv2.LINE_AA)
        return
    pts = np.round(_shape_points(shape, cx, cy, r, angle)).astype(np.int32)
    cv2.fillPoly(frame, [pts], colour, cv2.LINE_AA)


def _position_name(cx: float, cy: float, size: int) -> str:
    third = size / 3
    if third <= cx < 2 * third and third <= cy < 2 * third:
        return "centre"
    return f"{'top' if cy < size / 2 else 'bottom'} {'left' if cx < size / 2 else 'right'}"


def _render_shapes(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[tuple[str, str]]]:
    frame, _ = _background(rng, size, muted=True)
    _clutter(rng, frame, int(rng.integers(0, 4)))
    count = int(rng.integers(1, 5))
    qa = [(Q_COUNT, COUNTS[count - 1])]
    if count == 1:
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        big = bool(rng.integers(2))
        r = size * (rng.uniform(0.22, 0.3) if big else rng.uniform(0.08, 0.12))
        position = POSITIONS[int(rng.integers(len(POSITIONS)))]
        # a centre inside the named region, far enough from its borders that the name is not in doubt
        if position == "centre":
            cx, cy = rng.uniform(0.42, 0.58, 2) * size
        else:
            top, left = position.startswith("top"), position.endswith("left")
            lo, hi = (r + 2) / size, 0.3
            fx, fy = rng.uniform(lo, max(lo, hi)), rng.uniform(lo, max(lo, hi))
            cx = (fx if left else 1 - fx) * size
            cy = (fy if top else 1 - fy) * size
        name, colour = _colour(rng)
        _draw_shape(frame, shape, cx, cy, r, rng.uniform(0, 2 * math.pi), colour)
        assert _position_name(cx, cy, size) == position, (position, cx, cy)
        qa += [(Q_SHAPE, shape), (Q_SHAPE_COLOUR, name), (Q_POSITION, position), (Q_SIZE, "big" if big else "small")]
        return frame, qa
    # several shapes: non-overlapping placements in a 3×3 grid of cells
    cells = rng.permutation(9)[:count]
    for cell in cells:
        r = size * rng.uniform(0.07, 0.13)
        cx = (cell % 3 + 0.5) * size / 3 + rng.uniform(-0.05, 0.05) * size
        cy = (cell // 3 + 0.5) * size / 3 + rng.uniform(-0.05, 0.05) * size
        _, colour = _colour(rng)
        _draw_shape(frame, SHAPES[int(rng.integers(len(SHAPES)))], cx, cy, r, rng.uniform(0, 2 * math.pi), colour)
    return frame, qa


def _render_text(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[tuple[str, str]]]:
    frame, _ = _background(rng, size, muted=True)
    _clutter(rng, frame, int(rng.integers(0, 3)))
    word = WORDS[int(rng.integers(len(WORDS)))]
    text = word.upper() if rng.integers(2) else word
    font = FONTS[int(rng.integers(len(FONTS)))]
    thickness = int(rng.integers(1, 4))
    (w, h), _ = cv2.getTextSize(text, font, 1.0, thickness)
    scale = min(size * rng.uniform(0.4, 0.85) / w, size * 0.45 / h)
    (w, h), base = cv2.getTextSize(text, font, scale, thickness)
    x = int(rng.uniform(2, max(3, size - w - 2)))
    y = int(rng.uniform(h + 2, max(h + 3, size - base - 2)))
    canvas = np.zeros(frame.shape, np.uint8)
    ink = np.zeros(frame.shape[:2], np.uint8)
    _, colour = _colour(rng)
    cv2.putText(canvas, text, (x, y), font, scale, tuple(float(c) for c in colour), thickness, cv2.LINE_AA)
    cv2.putText(ink, text, (x, y), font, scale, 255, thickness, cv2.LINE_AA)
    tilt = cv2.getRotationMatrix2D((size / 2, size / 2), rng.uniform(-12, 12), 1.0)
    layer = cv2.warpAffine(canvas, tilt, (size, size)).astype(np.float32)
    alpha = cv2.warpAffine(ink, tilt, (size, size)).astype(np.float32)[..., None] / 255
    # ink must stand out from the background: push it away from the local background brightness
    if np.abs(layer.mean(-1) - frame.mean(-1))[alpha[..., 0] > 0.5].mean() < 60:
        layer = layer * 0.2 if frame.mean() > 128 else 255 - (255 - layer) * 0.2
    frame = frame * (1 - alpha) + layer * alpha
    return frame, [(Q_TEXT, word)]


def _render_pattern(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[tuple[str, str]]]:
    frame, pattern = _background(rng, size, muted=False)
    return frame, [(Q_PATTERN, pattern)]


RENDERERS = {"shapes": _render_shapes, "text": _render_text, "pattern": _render_pattern}


def render_general(seed: int, size: int = DEFAULT_GENERAL_SIZE) -> tuple[np.ndarray, GeneralScene]:
    """The general frame of `seed` (BGR uint8, size×size) and its Q&A. Deterministic per (seed, size)."""
    if size < 64:
        raise ValueError(f"general frames need at least 64 pixels to print words legibly, got {size}")
    rng = np.random.default_rng([seed, 0x6E])
    kind = SCENE_KINDS[seed % len(SCENE_KINDS)]
    frame, qa = RENDERERS[kind](rng, size)
    # lighting, slight blur, sensor noise
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    light = 1 + rng.uniform(-0.25, 0.25) * (xx - 0.5) + rng.uniform(-0.25, 0.25) * (yy - 0.5)
    frame = frame * light[..., None] * rng.uniform(0.8, 1.15)
    sigma = rng.uniform(0, 1.2)
    if sigma > 0.3:
        frame = cv2.GaussianBlur(frame, (0, 0), sigma)
    frame = frame + rng.normal(0, rng.uniform(1, 8), frame.shape)
    image = np.clip(frame, 0, 255).astype(np.uint8)
    return image, GeneralScene(kind, tuple(qa), seed)
