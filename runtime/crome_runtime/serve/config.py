"""The server's settings, each default once (the CLI passes only what the user gave).

Not here: parsing camera specs (sources.py) or the engine's own settings (crome_runtime.engine.EngineConfig).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from crome_runtime.limits import (KEEP_ALIVE_TIMEOUT_S, MAX_CAMERA_FRAME_PIXELS, MAX_CONNECTIONS, MAX_TEXT_CHARS,
                                  REQUEST_READ_TIMEOUT_S)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class Limits:
    """What one request may ask for; anything over a limit is a 4xx with the limit named."""

    max_body_bytes: int = 16 << 20  # a request body (base64 images included)
    max_image_pixels: int = 16_000_000  # an uploaded image, checked in its header before decoding
    max_prompt_chars: int = MAX_TEXT_CHARS  # the question text (the decoder's context is checked too)
    max_tokens: int = 1024  # the largest max_tokens a request may ask for
    queue_size: int = 16  # API requests waiting for the engine; one more gets 429
    max_watch_prompts: int = 16
    max_subscribers: int = 64  # open /v1/watch streams
    max_connections: int = MAX_CONNECTIONS  # open HTTP connections (the oldest idle one makes room for a new one)


@dataclass
class CameraConfig:
    backoff_initial_s: float = 0.5  # first wait before reopening a camera that failed
    backoff_max_s: float = 8.0  # the wait doubles up to this
    read_failures: int = 5  # consecutive failed reads that count as a lost camera
    stale_after_s: float = 3.0  # no new frame for this long: /health says the camera is not delivering
    open_timeout_ms: int = 5000  # network streams (FFmpeg): give up opening after this
    read_timeout_ms: int = 5000  # network streams (FFmpeg): a read that waits this long fails
    loop: bool = False  # video files: start again at the end
    file_fps: float = 15.0  # video files whose container does not say their frame rate
    max_frame_pixels: int = MAX_CAMERA_FRAME_PIXELS  # larger frames are resized to fit (said once: log, /health)


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    allowed_hosts: list[str] = field(default_factory=list)  # Host names answered besides loopback and `host` ("*": any)
    api_key: str | None = None  # checked on every endpoint but /health and the page's static files
    watch: list[str] = field(default_factory=list)  # standing prompts asked of every new frame
    max_new_tokens: int | None = None  # answers' default length (None: the bundle's)
    events: Path | None = None  # JSON lines of watch answers, appended and flushed
    # watch answers whose first-token margin (crome_runtime.confidence) is under this, 0..1, are flagged
    # "low_confidence"; None: none is
    min_margin: float | None = None
    drop_below_margin: bool = False  # flagged watch answers are counted but not published (page, SSE, --events)
    profile: Path | None = None  # the engine's per-stage summary + Chrome trace, written at exit
    limits: Limits = field(default_factory=Limits)
    camera: CameraConfig = field(default_factory=CameraConfig)
    recent_events: int = 32  # watch answers a new /v1/watch subscriber gets first
    keepalive_s: float = 15.0  # SSE comment lines keep idle streams open and notice closed tabs
    shutdown_timeout_s: float = 3.0  # SIGTERM: in-flight streams get this long before they are cut
    read_timeout_s: float = REQUEST_READ_TIMEOUT_S  # a request's head, and its body, must arrive within this
    keep_alive_s: int = KEEP_ALIVE_TIMEOUT_S  # an idle keep-alive connection is closed after this

    def check(self) -> None:
        """ValueError for settings that contradict each other or are out of range (the CLI says them first)."""
        if self.min_margin is not None and not 0.0 <= self.min_margin <= 1.0:
            raise ValueError(f"min_margin must be from 0 to 1 (a probability margin), got {self.min_margin}")
        if self.drop_below_margin and self.min_margin is None:
            raise ValueError("drop_below_margin needs min_margin: the margin under which watch answers are dropped")

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS
