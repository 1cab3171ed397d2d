"""The capture side: a reader thread keeps only the newest frame; a lost camera is reopened with backoff.

OpenCV's CAP_PROP_BUFFERSIZE works for V4L2 only, so a network stream read slower than it delivers would
hand out ever older frames; reading continuously on a thread of our own and keeping the newest one is the
fix for every source. Each frame gets an id (counting up across reconnects) and its capture time, which
travel with every answer about it. A frame that is replaced before anything answered it counts as dropped.

Frames are bounded: one over `max_frame_pixels` (a 16000x14000 stream) is resized to fit before it is kept
(INTER_AREA), said once in the log and in /health (`frames_resized`); a camera that declares frames over
MAX_CAMERA_DECLARED_PIXELS when opened is refused before its first frame is decoded.

Not here: what a source is (sources.py), answering (worker.py).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from crome_runtime.limits import MAX_CAMERA_DECLARED_PIXELS
from crome_runtime.serve.config import CameraConfig
from crome_runtime.serve.sources import Capture, CameraError, CameraSource

log = logging.getLogger("crome_runtime.serve")
EXPLAINED_FRAMES_KEPT = 8  # frames of the last explained answers kept for GET /v1/frame.jpg?id= (~1 MB each at 640x480)


@dataclass(frozen=True)
class CapturedFrame:
    id: int
    image: np.ndarray  # (H, W, 3) uint8 BGR
    monotonic_ns: int  # time.monotonic_ns() when read
    unix_s: float  # wall-clock time when read (for logs and clients)

    def age_ms(self, at_ns: int | None = None) -> float:
        return ((time.monotonic_ns() if at_ns is None else at_ns) - self.monotonic_ns) / 1e6


class FrameSlot:
    """The newest frame, nothing older. Thread-safe: the reader puts, the worker takes, viewers peek."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.on_put: Callable[[], None] | None = None  # called on the reader's thread after each new frame
        self._frame: CapturedFrame | None = None
        self._taken = True
        self._next_id = 0
        self.captured = 0
        self.dropped = 0  # replaced before anything answered them
        self.answered = 0  # distinct frames an answer was about
        self._explained: OrderedDict[int, CapturedFrame] = OrderedDict()  # frames of the last explained answers

    def put(self, image: np.ndarray) -> CapturedFrame:
        with self._cond:
            frame = CapturedFrame(self._next_id, image, time.monotonic_ns(), time.time())
            self._next_id += 1
            if self._frame is not None and not self._taken:
                self.dropped += 1
            self._frame, self._taken = frame, False
            self.captured += 1
            self._cond.notify_all()
        if self.on_put is not None:
            self.on_put()
        return frame

    def latest(self) -> CapturedFrame | None:
        """The newest frame, for looking at (does not count as answered)."""
        with self._cond:
            return self._frame

    def take(self) -> CapturedFrame | None:
        """The newest frame, for answering (marks it answered)."""
        with self._cond:
            if self._frame is not None and not self._taken:
                self._taken = True
                self.answered += 1
            return self._frame

    def keep(self, frame: CapturedFrame) -> None:
        """Keeps `frame` (an explained answer's) for `kept`: a heat map is drawn over the frame it was computed on,
        not over the newest one, where a moving part has moved on. Bounded: the last EXPLAINED_FRAMES_KEPT."""
        with self._cond:
            self._explained[frame.id] = frame
            self._explained.move_to_end(frame.id)
            while len(self._explained) > EXPLAINED_FRAMES_KEPT:
                self._explained.popitem(last=False)

    def kept(self, frame_id: int) -> CapturedFrame | None:
        """Frame `frame_id` if it is the newest or one `keep` still holds, else None."""
        with self._cond:
            if self._frame is not None and self._frame.id == frame_id:
                return self._frame
            return self._explained.get(frame_id)

    def newer(self, after_id: int | None) -> CapturedFrame | None:
        """The newest frame if its id is above `after_id` (None: any frame), else None."""
        with self._cond:
            frame = self._frame
            return frame if frame is not None and (after_id is None or frame.id > after_id) else None

    def wait_newer(self, after_id: int | None, timeout: float) -> CapturedFrame | None:
        """The newest frame once its id is above `after_id` (None: any frame), or None after `timeout` s."""
        with self._cond:
            self._cond.wait_for(lambda: self.newer(after_id) is not None, timeout)
            return self.newer(after_id)


class CameraReader:
    """Reads `source` on a daemon thread into `slot` until stop(); reopens it with exponential backoff.

    state: connecting -> live -> (reconnecting -> live)* ; ended (a video file without loop reached its end);
    stopped. `first` is an already opened capture (the CLI opens the camera once at start to fail fast)."""

    def __init__(self, source: CameraSource, slot: FrameSlot, config: CameraConfig | None = None,
                 first: Capture | None = None, on_state: Callable[[str, str], None] | None = None):
        self.source, self.slot, self.config = source, slot, config or CameraConfig()
        self.state = "connecting"
        self.reconnects = 0  # successful reopenings after a loss
        self.failures = 0  # losses (reads that stopped) and failed opens
        self.last_error = ""
        self.resized: dict | None = None  # {"from": [w, h], "to": [w, h]} once a frame was over max_frame_pixels
        self._first = first
        self._on_state = on_state
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="crome-camera", daemon=True)

    def start(self) -> "CameraReader":
        self._thread.start()
        return self

    def stop(self, timeout: float = 3.0) -> None:
        """Stops reading and releases the camera (a read blocked inside OpenCV ends at its read timeout)."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("camera %s: the reader is still inside a read; it stops at the read timeout",
                        self.source.spec)

    def health(self) -> dict:
        frame = self.slot.latest()
        age = None if frame is None else frame.age_ms() / 1e3
        delivering = self.state == "live" and age is not None and age <= self.config.stale_after_s
        return {**self.source.describe(), "state": self.state, "delivering": delivering,
                "last_frame_id": None if frame is None else frame.id,
                "last_frame_age_s": None if age is None else round(age, 3),
                "frames_captured": self.slot.captured, "frames_dropped": self.slot.dropped,
                "reconnects": self.reconnects, "last_error": self.last_error or None,
                "frames_resized": self.resized}

    # --- the thread ---------------------------------------------------------------------------------
    def _set_state(self, state: str, detail: str = "") -> None:
        if state != self.state:
            self.state = state
            log.info("camera %s: %s%s", self.source.spec, state, f" ({detail})" if detail else "")
            if self._on_state is not None:
                self._on_state(state, detail)

    def _run(self) -> None:
        capture, backoff, lost_once = self._first, self.config.backoff_initial_s, False
        self._first = None
        try:
            while not self._stop.is_set():
                if capture is None:
                    try:
                        capture = self.source.open()
                    except CameraError as error:
                        self.failures += 1
                        self.last_error = str(error)
                        self._set_state("reconnecting", f"retry in {backoff:.1f} s")
                        self._stop.wait(backoff)
                        backoff = min(2 * backoff, self.config.backoff_max_s)
                        continue
                    if lost_once:
                        self.reconnects += 1
                outcome, delivered = self._read(capture)
                capture.release()
                capture = None
                if delivered:  # it worked for a while: a new loss starts the backoff afresh
                    backoff = self.config.backoff_initial_s
                if outcome == "end" and not delivered:
                    outcome, self.last_error = "lost", "the video file gave no frames"
                if outcome == "end":
                    if not self.source.loop:
                        self._set_state("ended", "end of the video file")
                        return
                    continue  # reopen the file from its start, without backoff
                if outcome == "lost":
                    lost_once = True
                    self.failures += 1
                    self._set_state("reconnecting", self.last_error)
                    self._stop.wait(backoff)
                    backoff = min(2 * backoff, self.config.backoff_max_s)
        finally:
            if capture is not None:
                capture.release()
            if self.state != "ended":
                self._set_state("stopped")

    def _read(self, capture: Capture) -> tuple[str, int]:
        """Reads until stop ("stop"), the end of a file ("end") or a lost camera ("lost"); also returns how
        many frames it delivered."""
        import cv2

        declared = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0) * int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        if declared > MAX_CAMERA_DECLARED_PIXELS:
            self.last_error = (f"the camera's frames are {int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))}x"
                               f"{int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))}, over the "
                               f"{MAX_CAMERA_DECLARED_PIXELS:,}-pixel limit: lower its resolution")
            return "lost", 0
        failures, delivered = 0, 0
        interval = 0.0
        if self.source.paced:
            fps = capture.get(cv2.CAP_PROP_FPS)
            interval = 1.0 / (fps if fps and 0 < fps < 1000 else self.config.file_fps)
        next_due = time.monotonic()
        while not self._stop.is_set():
            try:
                ok, image = capture.read()
            except cv2.error as error:
                ok, image = False, None
                self.last_error = f"read failed: {error}"
            if not ok or image is None or not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
                if self.source.paced and ok is False:
                    return "end", delivered  # a file that stops giving frames is at its end
                failures += 1
                if failures >= self.config.read_failures:
                    self.last_error = self.last_error or "the camera stopped delivering frames"
                    return "lost", delivered
                self._stop.wait(0.05)
                continue
            failures = 0
            if interval:
                next_due += interval
                delay = next_due - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_due = time.monotonic()  # behind: do not try to catch up
            self.slot.put(self._fit(image))
            delivered += 1
            if delivered == 1:
                self.last_error = ""
                self._set_state("live")
        return "stop", delivered

    def _fit(self, image: np.ndarray) -> np.ndarray:
        """`image` itself, or resized to max_frame_pixels (the first time said in the log and /health)."""
        import cv2

        height, width = image.shape[:2]
        limit = self.config.max_frame_pixels
        if height * width <= limit:
            return image
        scale = (limit / (height * width)) ** 0.5
        size = (max(1, int(width * scale)), max(1, int(height * scale)))
        if self.resized is None or self.resized["from"] != [width, height]:
            self.resized = {"from": [width, height], "to": list(size)}
            log.warning("camera %s: frames of %dx%d are over the %s-pixel limit; resized to %dx%d",
                        self.source.spec, width, height, f"{limit:,}", *size)
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
