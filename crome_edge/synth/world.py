"""The synthetic conveyor world: one industrial part on a grey striped belt, drawn with OpenCV.

What it is: a deterministic, seeded renderer of BGR uint8 frames (like OpenCV images) with ground
truth (`SceneInfo`: kind, colour, defect, geometry). Every drawn defect is checked to be visible on
the part before the scene is accepted (docs/architecture.md §7), so defect labels are not noise.
What it is not: a physics or photometric simulation; no torch here (cv2 + numpy only).

Pipeline of one frame: sample a `Part` (kind, colour, defect, radius, angle) and draw it once into a
small sprite with its mask -> paint the belt -> paste the sprite with a drop shadow -> lighting,
slight blur, sensor noise. `camera.py` reuses the same pieces with a moving belt.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

KINDS: tuple[str, ...] = ("hex nut", "washer", "bolt", "gear", "bracket")
# Paint colours as BGR (OpenCV order); each part jitters its colour a little around these.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (40, 40, 205),
    "orange": (30, 135, 245),
    "yellow": (40, 215, 230),
    "green": (60, 165, 45),
    "blue": (200, 105, 30),
    "purple": (155, 50, 135),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
DEFECTS: tuple[str, ...] = ("scratch", "crack", "missing hole", "dent")
NO_DEFECT = "none"
DEFECT_RATE = 0.4
# Frames with no part to judge: an empty belt, or a part leaving the frame with only a sliver in view. Every
# conveyor question answers them NO_PART. Decided from the seed by a stream of its own, so every frame with a
# part renders exactly as before this existed.
NO_PART = "no part"
NO_PART_RATE = 0.1
LEAVING_SLIVER = 0.3  # of the part's radius still inside the frame when it is "leaving"

DEFAULT_SIZE = 128
# Part radius (half its largest extent) as a fraction of the frame's shorter side.
RADIUS_RANGE = (0.2, 0.32)

# Visibility check for defects: a pixel "shows" the defect when the clean and the defective sprite
# (both over belt grey) differ there by at least VISIBLE_DELTA, summed over B, G and R; a defect is
# accepted when at least max(VISIBLE_MIN_FRACTION of the part's area, VISIBLE_MIN_PIXELS scaled to
# the part's radius) pixels show it.
VISIBLE_DELTA = 80
VISIBLE_MIN_FRACTION = 0.03
VISIBLE_MIN_PIXELS = 45  # at radius 25 px; scales with radius²
_DEFECT_TRIES = 12  # placements of a defect per pose
_POSE_TRIES = 200  # poses per part before giving up (never reached for the shipped constants; tested)

_NO_PART_STREAM = 0x4E50  # rng stream tag of the no-part decision
_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT


@dataclass(frozen=True)
class Geometry:
    """Where the part is in the frame: centre (pixels), radius (half its largest extent), angle (deg)."""

    cx: float
    cy: float
    radius: float
    angle: float


@dataclass(frozen=True)
class SceneInfo:
    """Ground truth of one frame. `seed` is the render_scene seed (None for camera parts)."""

    kind: str
    colour: str
    defect: str  # NO_DEFECT or one of DEFECTS
    geometry: Geometry
    seed: int | None = None

    @property
    def defective(self) -> bool:
        return self.defect != NO_DEFECT

    @property
    def present(self) -> bool:
        """False for a frame with no part to judge (an empty belt, a part leaving the frame)."""
        return self.kind != NO_PART

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SceneInfo:
        return cls(
            kind=data["kind"],
            colour=data["colour"],
            defect=data["defect"],
            geometry=Geometry(**data["geometry"]),
            seed=data.get("seed"),
        )


@dataclass
class Part:
    """One drawn part: labels plus its sprite (S, S, 3) uint8 and mask (S, S) uint8 {0, 1}.

    `clean_sprite`/`clean_mask` are the same part without its defect (equal to sprite/mask when the
    part has none); tests and `render_scene(draw_defect=False)` use them.
    """

    kind: str
    colour: str
    defect: str
    radius: float
    angle: float
    sprite: np.ndarray
    mask: np.ndarray
    clean_sprite: np.ndarray
    clean_mask: np.ndarray


@dataclass(frozen=True)
class Look:
    """Per-scene appearance: belt, lighting and sensor parameters (not labels)."""

    belt_grey: float
    belt_tint: tuple[float, float, float]
    stripe_period: float
    stripe_width: float
    stripe_phase: float
    stripe_delta: float
    gain: float
    tint: tuple[float, float, float]
    light_angle: float  # direction the light comes from (radians)
    light_slope: float  # brightness change across the frame
    shadow_px: float
    blur_sigma: float
    noise_sigma: float


@dataclass
class _Style:
    """Colours and sizes a part is drawn with (derived from its paint colour and radius)."""

    base: np.ndarray  # (3,) float BGR
    line: int = 1
    extras: dict = field(default_factory=dict)

    def shade(self, factor: float, add: float = 0.0) -> tuple[float, float, float]:
        c = np.clip(self.base * factor + add, 0, 255)
        return (float(c[0]), float(c[1]), float(c[2]))


# --------------------------------------------------------------------------------------------------
# Sampling


def sample_labels(rng: np.random.Generator) -> tuple[str, str, str]:
    """Kind and colour uniform; a defect with probability DEFECT_RATE, its type uniform."""
    kind = KINDS[rng.integers(len(KINDS))]
    colour = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
    defect = DEFECTS[rng.integers(len(DEFECTS))] if rng.random() < DEFECT_RATE else NO_DEFECT
    return kind, colour, defect


def _triple(values: np.ndarray) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return a, b, c


def sample_look(rng: np.random.Generator, scale: float) -> Look:
    """Belt, light and sensor for one scene; `scale` is frame side / 128 (sizes grow with it)."""
    return Look(
        belt_grey=float(rng.uniform(95, 145)),
        belt_tint=_triple(rng.uniform(-6, 6, 3)),
        stripe_period=float(rng.uniform(8, 16) * scale),
        stripe_width=float(rng.uniform(0.25, 0.5)),
        stripe_phase=float(rng.uniform(0, 1)),
        stripe_delta=float(rng.uniform(-28, -12)),
        gain=float(rng.uniform(0.78, 1.18)),
        tint=_triple(rng.uniform(0.93, 1.07, 3)),
        light_angle=float(rng.uniform(0, 2 * math.pi)),
        light_slope=float(rng.uniform(0.0, 0.25)),
        shadow_px=float(rng.uniform(1.5, 3.5) * scale),
        blur_sigma=float(rng.uniform(0.3, 0.8) * scale),
        noise_sigma=float(rng.uniform(2.0, 6.0)),
    )


def make_part(
    rng: np.random.Generator,
    radius_range: tuple[float, float],
    labels: tuple[str, str, str],
) -> Part:
    """Draw a part with the given (kind, colour, defect) at a random radius (pixels) and angle.

    A defect is redrawn at new random places until it is visible (see VISIBLE_*); if a pose offers no
    visible placement, a new pose is drawn. The labels are never changed to make a defect fit.
    """
    kind, colour, defect = labels
    for _ in range(_POSE_TRIES):
        # The colour jitter is redrawn with the pose: some jitters leave a defect invisible in every pose
        # (a missing hole on a purple gear whose paint is near the belt's grey), which would loop forever.
        jitter = rng.uniform(-14, 14, 3)
        base = np.clip(np.array(COLOURS[colour], np.float64) + jitter, 0, 255)
        radius = float(rng.uniform(*radius_range))
        angle = float(rng.uniform(0, 360))
        style = _Style(base=base, line=max(1, round(radius / 13)))
        style.extras = _sample_kind_extras(rng, kind)
        clean_sprite, clean_mask = _draw_part(kind, radius, angle, style, missing_hole=None)
        if defect == NO_DEFECT:
            return Part(kind, colour, defect, radius, angle, clean_sprite, clean_mask, clean_sprite, clean_mask)
        for _ in range(_DEFECT_TRIES):
            sprite, mask = _draw_defective(rng, kind, radius, angle, style, defect, clean_sprite, clean_mask)
            if defect_is_visible(clean_sprite, clean_mask, sprite, mask, radius):
                return Part(kind, colour, defect, radius, angle, sprite, mask, clean_sprite, clean_mask)
    raise RuntimeError(f"no visible {defect} found on a {colour} {kind} in {_POSE_TRIES} poses (synth bug)")


def defect_is_visible(
    clean_sprite: np.ndarray, clean_mask: np.ndarray, sprite: np.ndarray, mask: np.ndarray, radius: float
) -> bool:
    """True when enough pixels differ visibly between the clean and the defective part."""
    return visible_defect_pixels(clean_sprite, clean_mask, sprite, mask) >= min_visible_pixels(clean_mask, radius)


def visible_defect_pixels(clean_sprite, clean_mask, sprite, mask) -> int:
    # Composite both on a belt-grey background so a missing hole (belt -> paint) counts too.
    grey = np.full_like(sprite, 120)
    a = np.where(clean_mask[..., None] > 0, clean_sprite, grey).astype(np.int16)
    b = np.where(mask[..., None] > 0, sprite, grey).astype(np.int16)
    return int((np.abs(a - b).sum(axis=2) >= VISIBLE_DELTA).sum())


def min_visible_pixels(clean_mask: np.ndarray, radius: float) -> int:
    area = int(clean_mask.sum())
    return int(max(VISIBLE_MIN_FRACTION * area, VISIBLE_MIN_PIXELS * (radius / 25.0) ** 2))


# --------------------------------------------------------------------------------------------------
# Drawing a part into its sprite


def _sample_kind_extras(rng: np.random.Generator, kind: str) -> dict:
    if kind == "gear":
        return {"teeth": int(rng.integers(8, 13))}
    if kind == "bracket":
        return {"mirror": bool(rng.random() < 0.5)}
    return {}


def _sprite_size(radius: float) -> int:
    return 2 * math.ceil(radius * 1.05) + 6


class _Canvas:
    """A sprite being drawn: points are given in units of the radius, in the part's own frame."""

    def __init__(self, radius: float, angle: float):
        self.r = radius
        self.size = _sprite_size(radius)
        self.c = self.size / 2.0
        a = math.radians(angle)
        self.rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        self.img = np.zeros((self.size, self.size, 3), np.uint8)
        self.mask = np.zeros((self.size, self.size), np.uint8)

    def pts(self, local) -> np.ndarray:
        p = np.asarray(local, np.float64) @ self.rot.T * self.r + self.c
        return np.round(p * _ONE).astype(np.int32)

    def pt(self, local) -> tuple[int, int]:
        p = self.pts([local])[0]
        return int(p[0]), int(p[1])

    def rad(self, r: float) -> int:
        return int(round(r * self.r * _ONE))

    def poly(self, local, colour, mask_value: int | None = 1):
        p = self.pts(local)
        cv2.fillPoly(self.img, [p], colour, cv2.LINE_AA, _SHIFT)
        if mask_value is not None:
            cv2.fillPoly(self.mask, [p], mask_value, cv2.LINE_8, _SHIFT)

    def circle(self, centre, r, colour, mask_value: int | None = 1, thickness: int = -1):
        c, rr = self.pt(centre), self.rad(r)
        cv2.circle(self.img, c, rr, colour, thickness, cv2.LINE_AA, _SHIFT)
        if mask_value is not None:
            cv2.circle(self.mask, c, rr, mask_value, thickness, cv2.LINE_8, _SHIFT)

    def outline(self, local, colour, thickness: int):
        cv2.polylines(self.img, [self.pts(local)], True, colour, thickness, cv2.LINE_AA, _SHIFT)

    def hole(self, centre, r):
        """A through hole: the belt shows, so the mask is cleared."""
        self.circle(centre, r, (0, 0, 0), mask_value=0)


def _ngon(n: int, r: float, centre=(0.0, 0.0), phase: float = 0.0) -> np.ndarray:
    t = phase + np.arange(n) * 2 * math.pi / n
    return np.stack([centre[0] + r * np.cos(t), centre[1] + r * np.sin(t)], axis=1)


# Where each kind's holes are (centre, radius in units of the part radius). "missing hole" fills one.
def _holes(kind: str, extras: dict) -> list[tuple[tuple[float, float], float]]:
    if kind == "hex nut":
        return [((0.0, 0.0), 0.42)]
    if kind == "washer":
        return [((0.0, 0.0), 0.48)]
    if kind == "gear":
        return [((0.0, 0.0), 0.22)]
    if kind == "bolt":
        return [((-0.62, 0.0), 0.17)]  # the hex socket in the head
    if kind == "bracket":
        s = -1.0 if extras.get("mirror") else 1.0
        return [((0.38, -0.46 * s), 0.15), ((-0.46, 0.38 * s), 0.15)]
    raise ValueError(kind)


def _draw_part(kind: str, radius: float, angle: float, style: _Style, missing_hole: int | None):
    cv = _Canvas(radius, angle)
    holes = _holes(kind, style.extras)
    dark = style.shade(0.62)
    t = style.line
    if kind == "hex nut":
        hexagon = _ngon(6, 1.0)
        cv.poly(hexagon, style.shade(0.85))
        cv.circle((0, 0), 0.86, style.shade(1.0), mask_value=None)  # chamfered face
        cv.outline(hexagon, dark, t)
        cv.circle((0, 0), 0.52, style.shade(0.72), mask_value=None)  # thread ring
    elif kind == "washer":
        cv.circle((0, 0), 1.0, style.shade(0.95))
        cv.circle((0, 0), 0.8, style.shade(1.08), mask_value=None)
        cv.circle((0, 0), 0.98, dark, mask_value=None, thickness=t)
    elif kind == "gear":
        n = style.extras["teeth"]
        pitch = 2 * math.pi / n
        for i in range(n):
            a = i * pitch
            tooth = [
                (0.72 * math.cos(a - 0.3 * pitch), 0.72 * math.sin(a - 0.3 * pitch)),
                (1.0 * math.cos(a - 0.17 * pitch), 1.0 * math.sin(a - 0.17 * pitch)),
                (1.0 * math.cos(a + 0.17 * pitch), 1.0 * math.sin(a + 0.17 * pitch)),
                (0.72 * math.cos(a + 0.3 * pitch), 0.72 * math.sin(a + 0.3 * pitch)),
            ]
            cv.poly(tooth, style.shade(0.9))
        cv.circle((0, 0), 0.78, style.shade(1.0))
        cv.circle((0, 0), 0.42, style.shade(0.8), mask_value=None)  # hub
        cv.circle((0, 0), 0.36, style.shade(1.05), mask_value=None)
    elif kind == "bolt":
        shaft = [(-0.4, -0.16), (1.0, -0.16), (1.0, 0.16), (-0.4, 0.16)]
        cv.poly(shaft, style.shade(0.95))
        for x in np.arange(-0.05, 0.95, 0.11):
            a, b = cv.pt((x, -0.16)), cv.pt((x + 0.05, 0.16))
            cv2.line(cv.img, a, b, style.shade(0.7), max(1, t - 1), cv2.LINE_AA, _SHIFT)
        head = _ngon(6, 0.38, centre=(-0.62, 0.0))
        cv.poly(head, style.shade(1.05))
        cv.outline(head, dark, t)
    elif kind == "bracket":
        s = -1.0 if style.extras["mirror"] else 1.0
        ell = [(-0.7, -0.7 * s), (0.7, -0.7 * s), (0.7, -0.22 * s), (-0.22, -0.22 * s), (-0.22, 0.7 * s), (-0.7, 0.7 * s)]
        cv.poly(ell, style.shade(0.98))
        a, b = cv.pt((-0.22, -0.22 * s)), cv.pt((-0.7, -0.7 * s))
        cv2.line(cv.img, a, b, style.shade(0.75), t, cv2.LINE_AA, _SHIFT)  # the bend
        cv.outline(ell, dark, t)
    else:
        raise ValueError(f"unknown part kind {kind!r}")
    for i, (centre, r) in enumerate(holes):
        if i == missing_hole:
            continue
        if kind == "bolt":  # a blind hex socket: dark, but still part of the bolt
            cv.poly(_ngon(6, r, centre=centre, phase=math.pi / 6), (22, 22, 22))
        else:
            cv.hole(centre, r)
    cv.img[cv.mask == 0] = 0
    return cv.img, cv.mask


# --------------------------------------------------------------------------------------------------
# Defects


def _draw_defective(rng, kind, radius, angle, style, defect, clean_sprite, clean_mask):
    if defect == "missing hole":
        holes = _holes(kind, style.extras)
        return _draw_part(kind, radius, angle, style, missing_hole=int(rng.integers(len(holes))))
    img = clean_sprite.copy()
    layer = np.zeros_like(clean_mask)
    t = style.line
    ys, xs = np.nonzero(clean_mask)
    k = int(rng.integers(len(xs)))
    p = np.array([xs[k], ys[k]], np.float64)  # a random point on the part
    if defect == "scratch":
        length = rng.uniform(0.7, 1.3) * radius
        a = rng.uniform(0, 2 * math.pi)
        d = np.array([math.cos(a), math.sin(a)]) * length / 2
        metal = tuple(float(v) for v in rng.uniform(205, 240) + rng.uniform(-8, 8, 3))
        a_pt, b_pt = _fix(p - d), _fix(p + d)
        cv2.line(img, a_pt, b_pt, metal, t, cv2.LINE_AA, _SHIFT)
        cv2.line(layer, a_pt, b_pt, 1, t + 1, cv2.LINE_8, _SHIFT)
    elif defect == "crack":
        # starts at the part's edge and runs inward in jagged steps
        edge = clean_mask - cv2.erode(clean_mask, np.ones((3, 3), np.uint8))
        ey, ex = np.nonzero(edge)
        k = int(rng.integers(len(ex)))
        p = np.array([ex[k], ey[k]], np.float64)
        centre = np.array([clean_mask.shape[1], clean_mask.shape[0]]) / 2.0
        heading = math.atan2(*(centre - p)[::-1]) + rng.uniform(-0.6, 0.6)
        points = [p]
        for _ in range(int(rng.integers(3, 6))):
            heading += rng.uniform(-0.6, 0.6)
            step = rng.uniform(0.15, 0.3) * radius
            points.append(points[-1] + step * np.array([math.cos(heading), math.sin(heading)]))
        poly = np.round(np.array(points) * _ONE).astype(np.int32)
        cv2.polylines(img, [poly], False, (20, 20, 24), t, cv2.LINE_AA, _SHIFT)
        cv2.polylines(layer, [poly], False, 1, t + 1, cv2.LINE_8, _SHIFT)
    elif defect == "dent":
        # centred well inside the part, so that most of it lands on paint (not in a gear's tooth gap)
        r = rng.uniform(0.2, 0.3) * radius
        axes = (int(r * _ONE), int(r * rng.uniform(0.65, 0.9) * _ONE))
        tilt = float(rng.uniform(0, 180))
        k_size = max(3, int(r) | 1)
        inner = cv2.erode(clean_mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k_size, k_size)))
        iy, ix = np.nonzero(inner)
        if len(ix):
            k = int(rng.integers(len(ix)))
            p = np.array([ix[k], iy[k]], np.float64)
        c = _fix(p)
        cv2.ellipse(img, c, axes, tilt, 0, 360, style.shade(0.42), -1, cv2.LINE_AA, _SHIFT)
        cv2.ellipse(img, c, axes, tilt, 200, 340, style.shade(1.3, 45), t, cv2.LINE_AA, _SHIFT)
        cv2.ellipse(layer, c, axes, tilt, 0, 360, 1, -1, cv2.LINE_8, _SHIFT)
    else:
        raise ValueError(f"unknown defect {defect!r}")
    # keep the defect on the part: outside the part's mask the clean sprite (i.e. nothing) stays
    on = (layer > 0) & (clean_mask > 0)
    out = clean_sprite.copy()
    out[on] = img[on]
    return out, clean_mask


def _fix(p) -> tuple[int, int]:
    return int(round(p[0] * _ONE)), int(round(p[1] * _ONE))


# --------------------------------------------------------------------------------------------------
# Belt, compositing and the camera effects


def draw_belt(height: int, width: int, look: Look, offset: float = 0.0) -> np.ndarray:
    """The belt as (H, W, 3) uint8: grey with stripes across it; `offset` moves it along x (pixels)."""
    x = np.arange(width, dtype=np.float32) - offset
    phase = (x / look.stripe_period + look.stripe_phase) % 1.0
    row = look.belt_grey + look.stripe_delta * (phase < look.stripe_width)
    row3 = row[:, None] + np.asarray(look.belt_tint, np.float32)[None, :]
    belt = np.clip(row3, 0, 255).astype(np.uint8)  # (W, 3)
    return np.broadcast_to(belt[None], (height, width, 3)).copy()


def paste_part(frame: np.ndarray, sprite: np.ndarray, mask: np.ndarray, cx: float, cy: float, look: Look) -> None:
    """Paste a sprite centred at (cx, cy) with a drop shadow; parts may hang over the frame's edges."""
    s = sprite.shape[0]
    x0, y0 = int(round(cx - s / 2)), int(round(cy - s / 2))
    dx = int(round(-math.cos(look.light_angle) * look.shadow_px))
    dy = int(round(-math.sin(look.light_angle) * look.shadow_px))
    shadow = _clip_region(frame, x0 + dx, y0 + dy, s)
    if shadow is not None:
        (fy, fx), (sy, sx) = shadow
        region = frame[fy, fx]
        np.copyto(region, cv2.convertScaleAbs(region, alpha=0.55), where=mask[sy, sx, None] > 0)
    part = _clip_region(frame, x0, y0, s)
    if part is not None:
        (fy, fx), (sy, sx) = part
        np.copyto(frame[fy, fx], sprite[sy, sx], where=mask[sy, sx, None] > 0)


def _clip_region(frame: np.ndarray, x0: int, y0: int, s: int):
    h, w = frame.shape[:2]
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + s, w), min(y0 + s, h)
    if fx0 >= fx1 or fy0 >= fy1:
        return None
    return (slice(fy0, fy1), slice(fx0, fx1)), (slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0))


def light_map(height: int, width: int, look: Look) -> np.ndarray:
    """(H, W, 1) float32 per-pixel gain: the overall gain x a brightness slope (tint applied apart)."""
    ys = (np.arange(height, dtype=np.float32) - height / 2) / max(height, width)
    xs = (np.arange(width, dtype=np.float32) - width / 2) / max(height, width)
    ca, sa = math.cos(look.light_angle), math.sin(look.light_angle)
    ramp = look.gain * (1 + look.light_slope * (ca * xs[None, :] + sa * ys[:, None]))  # (H, W)
    return ramp[..., None]


_NOISE_SIDE = 512
_noise_bank: np.ndarray | None = None


def _noise(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Unit Gaussian sensor noise (H, W, 3) float32: a random window of a fixed noise field.

    Drawing fresh normals costs more than the rest of a 128x128 frame; a window at a random offset
    (and flip) of a 512x512 field built once is as good for training and ~10x cheaper. Larger frames
    draw fresh noise.
    """
    global _noise_bank
    h, w, _ = shape
    if h > _NOISE_SIDE or w > _NOISE_SIDE:
        return rng.standard_normal(shape, dtype=np.float32)
    if _noise_bank is None:
        _noise_bank = np.random.default_rng(0x5EED).standard_normal((_NOISE_SIDE, _NOISE_SIDE, 3), dtype=np.float32)
    y, x, flip = rng.integers(0, _NOISE_SIDE - h + 1), rng.integers(0, _NOISE_SIDE - w + 1), rng.integers(2)
    window = _noise_bank[y : y + h, x : x + w]
    return window[:, ::-1] if flip else window


def camera_effects(
    frame: np.ndarray, look: Look, rng: np.random.Generator, lights: np.ndarray | None = None
) -> np.ndarray:
    """Slight optical blur, lighting (`light_map`, pass it in to reuse it), then sensor noise."""
    h, w = frame.shape[:2]
    img = cv2.GaussianBlur(frame, (3, 3), look.blur_sigma) if look.blur_sigma > 0.05 else frame
    out = img.astype(np.float32)
    out *= light_map(h, w, look) if lights is None else lights
    out *= np.asarray(look.tint, np.float32)
    out += _noise(rng, out.shape) * np.float32(look.noise_sigma)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# One frame


def render_scene(seed: int, size: int = DEFAULT_SIZE, draw_defect: bool = True) -> tuple[np.ndarray, SceneInfo]:
    """Render the scene of `seed` as a (size, size, 3) BGR uint8 image, with its ground truth.

    Deterministic: the same seed and size give the same bytes. `draw_defect=False` renders the very
    same scene (pose, light, noise) with the defect left out — for checking that defects are visible;
    the returned SceneInfo still names the sampled defect.
    """
    image, scene, _ = _render(seed, size, draw_defect)
    return image, scene


def render_scene_regions(seed: int, size: int = DEFAULT_SIZE) -> tuple[np.ndarray, SceneInfo, np.ndarray, np.ndarray]:
    """render_scene's image and ground truth (the same bytes), plus where the part and its defect are: (size, size)
    bool masks of the part's pixels in view and of the pixels its defect changed (a scratch, crack or dent drawn
    over the paint; a missing hole's filled-in disc), all False for an empty belt or no defect. For checks of what
    a model looks at (benchmarks/explain_maps.py); training never reads them."""
    image, scene, placed = _render(seed, size, True)
    part = np.zeros((size, size), bool)
    defect = np.zeros((size, size), bool)
    if placed is not None:
        drawn, cx, cy = placed
        changed = (drawn.mask != drawn.clean_mask) | np.any(drawn.sprite != drawn.clean_sprite, axis=2)
        _place(part, drawn.mask > 0, cx, cy)
        _place(defect, changed & ((drawn.mask > 0) | (drawn.clean_mask > 0)), cx, cy)
    return image, scene, part, defect


def _place(frame_mask: np.ndarray, sprite_mask: np.ndarray, cx: float, cy: float) -> None:
    """A sprite-sized mask into a frame-sized one where paste_part puts the sprite."""
    s = sprite_mask.shape[0]
    region = _clip_region(frame_mask, int(round(cx - s / 2)), int(round(cy - s / 2)), s)
    if region is not None:
        (fy, fx), (sy, sx) = region
        frame_mask[fy, fx] |= sprite_mask[sy, sx]


def _render(seed: int, size: int, draw_defect: bool) -> tuple[np.ndarray, SceneInfo, tuple | None]:
    """-> (image, ground truth, (the pasted Part, cx, cy) or None when the belt is empty)."""
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    rng = np.random.default_rng(seed)
    scale = size / DEFAULT_SIZE
    labels = sample_labels(rng)
    part = make_part(rng, (RADIUS_RANGE[0] * size, RADIUS_RANGE[1] * size), labels)
    look = sample_look(rng, scale)
    margin = part.radius + 2
    cx = float(np.round(rng.uniform(margin, size - margin)))
    cy = float(np.round(rng.uniform(margin, size - margin)))
    frame = draw_belt(size, size, look)
    sprite, mask = (part.sprite, part.mask) if draw_defect else (part.clean_sprite, part.clean_mask)
    absent = np.random.default_rng([seed, _NO_PART_STREAM])
    if absent.random() >= NO_PART_RATE:
        paste_part(frame, sprite, mask, cx, cy, look)
        image = camera_effects(frame, look, rng)
        geometry = Geometry(cx, cy, round(part.radius, 3), round(part.angle, 3))
        return image, SceneInfo(part.kind, part.colour, part.defect, geometry, seed), (part, cx, cy)
    placed = None
    if absent.random() < 0.5:  # a part leaving: its centre beyond an edge, a sliver of it in view
        edge = int(absent.integers(4))
        beyond = -part.radius * (1 - LEAVING_SLIVER)
        cx, cy = {0: (beyond, cy), 1: (size - 1 - beyond, cy), 2: (cx, beyond), 3: (cx, size - 1 - beyond)}[edge]
        paste_part(frame, sprite, mask, cx, cy, look)
        placed = (part, cx, cy)
    image = camera_effects(frame, look, rng)
    geometry = Geometry(float(cx), float(cy), round(part.radius, 3), round(part.angle, 3))
    return image, SceneInfo(NO_PART, NO_PART, NO_DEFECT, geometry, seed), placed
