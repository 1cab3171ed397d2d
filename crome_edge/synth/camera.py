"""A synthetic camera over the conveyor: parts ride the belt across the view at a steady frame rate.

What it is: a stand-in for `cv2.VideoCapture` (`read()`, `release()`, `isOpened()`, `get()`) for tests
and demos where no camera exists (docs/architecture.md §5), plus `write_video` to record its stream to an
`.avi` (MJPG) or `.mp4` (mp4v) file that `cv2.VideoCapture` — and `serve --camera file.avi` — reads.
What it is not: a model of a real sensor's timing jitter, exposure or rolling shutter.

Timeline: part i occupies frames [i*P, (i+1)*P) with P = crossing + gap frames. It enters at the left
edge, crosses at the belt's speed together with the belt's stripes, leaves at the right edge; then the
belt runs empty for the gap and the next part arrives. Frame k depends only on (seed, k), not on time.
With a part centred, the frame's centre square resized to 128 px looks like a `render_scene` frame.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from crome_runtime.atomic import atomic_path
from crome_edge.errors import CromeError
from crome_edge.synth.world import (
    DEFAULT_SIZE,
    RADIUS_RANGE,
    Geometry,
    Part,
    SceneInfo,
    camera_effects,
    draw_belt,
    light_map,
    make_part,
    paste_part,
    sample_labels,
    sample_look,
)

# Codec per video file suffix: what OpenCV here can both write and read (no H.264).
VIDEO_CODECS: dict[str, str] = {".avi": "MJPG", ".mp4": "mp4v"}

# rng stream tags, so that the look, the parts and the per-frame noise never share random numbers
_LOOK, _PART, _FRAME = 0, 1, 2


MAX_SIDE = 4096  # the synthetic camera's largest frame side (a 4096x4096 frame is 48 MB of BGR)


@dataclass(frozen=True)
class _Rider:
    """A part on the belt: its sprite and its fixed height and first frame."""

    part: Part
    cy: float
    first_frame: int


class SyntheticCamera:
    """A conveyor camera: `read() -> (ok, frame_bgr)` like cv2.VideoCapture.

    fps: frame rate; size: (width, height) in pixels; seed: which parts and light (deterministic);
    realtime: pace `read()` to the wall clock like a live camera (a reader slower than `fps` misses
    the frames whose time has passed, counted in `dropped`); realtime=False returns every frame at
    once, as fast as it renders. crossing_s/gap_s: seconds a part takes to cross the view and of empty
    belt before the next one; frames: end the stream (read() -> (False, None)) after this many frames.
    """

    def __init__(
        self,
        fps: float = 15.0,
        size: tuple[int, int] = (320, 240),
        seed: int = 0,
        realtime: bool = True,
        crossing_s: float = 3.0,
        gap_s: float = 0.5,
        frames: int | None = None,
    ):
        width, height = int(size[0]), int(size[1])
        if fps <= 0:
            raise CromeError(f"camera fps must be positive, got {fps}")
        if not (32 <= width <= MAX_SIDE and 32 <= height <= MAX_SIDE):
            raise CromeError(f"camera size must be 32x32 to {MAX_SIDE}x{MAX_SIDE}, got {width}x{height}")
        self.fps = float(fps)
        self.width, self.height = width, height
        self.seed = seed
        self.realtime = realtime
        self.max_frames = frames
        self.crossing_frames = max(2, round(crossing_s * fps))
        self.period = self.crossing_frames + max(0, round(gap_s * fps))  # frames per part
        short = min(width, height)
        self._radius_range = (RADIUS_RANGE[0] * short, RADIUS_RANGE[1] * short)
        self._speed = (width + 2 * self._radius_range[1]) / self.crossing_frames  # pixels per frame
        self._look = sample_look(np.random.default_rng([seed, _LOOK]), short / DEFAULT_SIZE)
        self._lights = light_map(height, width, self._look)
        self._rider: _Rider | None = None
        self._next_frame = 0  # index of the frame read() returns next (at the earliest)
        self._scene: SceneInfo | None = None
        self._start: float | None = None  # monotonic time of frame 0 (realtime)
        self._open = True
        self.dropped = 0

    # -- cv2.VideoCapture-like API ---------------------------------------------------------------

    def isOpened(self) -> bool:  # noqa: N802 (cv2's name)
        return self._open

    def read(self) -> tuple[bool, np.ndarray | None]:
        if not self._open or (self.max_frames is not None and self._next_frame >= self.max_frames):
            return False, None
        index = self._wait_for_frame() if self.realtime else self._next_frame
        if self.max_frames is not None and index >= self.max_frames:
            return False, None
        frame, self._scene = self.render(index)
        self._next_frame = index + 1
        return True, frame

    def release(self) -> None:
        self._open = False

    def get(self, prop: int) -> float:
        """cv2.CAP_PROP_FPS, CAP_PROP_FRAME_WIDTH, CAP_PROP_FRAME_HEIGHT, CAP_PROP_POS_FRAMES, else 0."""
        return {
            cv2.CAP_PROP_FPS: self.fps,
            cv2.CAP_PROP_FRAME_WIDTH: float(self.width),
            cv2.CAP_PROP_FRAME_HEIGHT: float(self.height),
            cv2.CAP_PROP_POS_FRAMES: float(self._next_frame),
        }.get(prop, 0.0)

    def __enter__(self) -> SyntheticCamera:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # -- ground truth ------------------------------------------------------------------------------

    def current_scene(self) -> SceneInfo | None:
        """Ground truth of the part in the last frame read (geometry in that frame's pixels);
        None before the first read and while the belt between two parts is empty."""
        return self._scene

    @property
    def frame_index(self) -> int:
        """Index of the last frame read (-1 before the first)."""
        return self._next_frame - 1

    # -- rendering ---------------------------------------------------------------------------------

    def render(self, index: int) -> tuple[np.ndarray, SceneInfo | None]:
        """Frame `index` of this camera's stream and the scene in view (pure: no pacing, no state
        beyond a cache of the current part)."""
        rider = self._rider_at(index)
        step = index - rider.first_frame
        cx = -self._radius_range[1] + self._speed * step
        frame = draw_belt(self.height, self.width, self._look, offset=self._speed * index)
        part = rider.part
        scene = None
        if cx + part.radius > 0 and cx - part.radius < self.width:
            paste_part(frame, part.sprite, part.mask, cx, rider.cy, self._look)
            geometry = Geometry(round(cx, 3), rider.cy, round(part.radius, 3), round(part.angle, 3))
            scene = SceneInfo(part.kind, part.colour, part.defect, geometry, seed=None)
        image = camera_effects(frame, self._look, np.random.default_rng([self.seed, _FRAME, index]), self._lights)
        return image, scene

    def _rider_at(self, index: int) -> _Rider:
        number = index // self.period
        first = number * self.period
        if self._rider is None or self._rider.first_frame != first:
            rng = np.random.default_rng([self.seed, _PART, number])
            part = make_part(rng, self._radius_range, sample_labels(rng))
            cy = self.height / 2 + float(rng.uniform(-0.1, 0.1)) * self.height
            self._rider = _Rider(part, round(cy, 3), first)
        return self._rider

    def _wait_for_frame(self) -> int:
        """The index of the frame due now; sleeps until the next frame is due if it is not yet."""
        now = time.monotonic()
        if self._start is None:
            self._start = now - self._next_frame / self.fps
        due = math.floor((now - self._start) * self.fps)
        if due < self._next_frame:  # ahead of the camera: wait for the next frame
            time.sleep(max(0.0, self._start + self._next_frame / self.fps - now))
            return self._next_frame
        self.dropped += due - self._next_frame
        return due


def write_video(
    path: str | Path,
    frames: int,
    fps: float = 15.0,
    size: tuple[int, int] = (320, 240),
    seed: int = 0,
) -> list[SceneInfo | None]:
    """Record `frames` frames of SyntheticCamera(fps, size, seed) to an .avi (MJPG) or .mp4 (mp4v) file.

    Returns the ground truth of every frame (None where the belt is empty). Written to a temporary
    file next to `path` and renamed into place, so a failed write leaves nothing behind.
    """
    path = Path(path)
    codec = VIDEO_CODECS.get(path.suffix.lower())
    if codec is None:
        raise CromeError(f"video file {path} must end in {' or '.join(VIDEO_CODECS)} (OpenCV here has no H.264)")
    if not path.parent.is_dir():
        raise CromeError(f"cannot write video {path}: directory {path.parent} does not exist")
    if frames < 1:
        raise CromeError(f"a video needs at least one frame, got {frames}")
    camera = SyntheticCamera(fps=fps, size=size, seed=seed, realtime=False)
    scenes: list[SceneInfo | None] = []
    with atomic_path(path, suffix=path.suffix) as tmp:  # OpenCV picks the container by the suffix
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*codec), float(fps), (camera.width, camera.height))
        try:
            if not writer.isOpened():
                raise CromeError(f"OpenCV cannot write {codec} video to {path}")
            for _ in range(frames):
                _, frame = camera.read()
                assert frame is not None  # no max_frames: a synthetic camera always has the next frame
                writer.write(frame)
                scenes.append(camera.current_scene())
        finally:
            writer.release()
    return scenes
