"""Camera sources: what `--camera SRC` names and how to open it (a cv2.VideoCapture-like object).

    0, 1, ...              a camera by index (V4L2 on Linux)
    /dev/video2            a camera by device path
    rtsp://…, http(s)://…  a network stream (FFmpeg, with open/read timeouts)
    "… ! appsink"          a GStreamer pipeline (Jetson CSI: nvarguscamerasrc), only where OpenCV has GStreamer
    file.avi / file.mp4    a video file, played at its frame rate (`loop` starts it again at the end)
    a name in `extra`      a source the caller provides (the CLI's `demo`: crome_edge's synthetic camera)

Not here: reading frames continuously (reader.py). A source that cannot be opened raises CameraError with
what was tried and which video devices exist.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from crome_runtime.errors import CromeError
from crome_runtime.serve.config import CameraConfig

NETWORK_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")


class CameraError(CromeError, ValueError):
    """A camera that cannot be opened or read; the message says what was tried and what exists."""


class Capture(Protocol):
    """What the reader needs of a capture: cv2.VideoCapture's read/release/isOpened/get."""

    def read(self) -> tuple[bool, object]: ...

    def release(self) -> None: ...

    def isOpened(self) -> bool: ...  # noqa: N802 (cv2's name)

    def get(self, prop: int) -> float: ...


@dataclass(frozen=True)
class CameraSource:
    spec: str  # what the user gave
    kind: str  # device | stream | gstreamer | file | custom
    opener: Callable[[], Capture]
    paced: bool = False  # a video file: the reader paces it to its frame rate (else it plays in a flash)
    loop: bool = False  # a video file: start again at the end instead of ending

    def open(self) -> Capture:
        """An opened capture, or CameraError."""
        try:
            capture = self.opener()
        except CameraError:
            raise
        except Exception as error:  # OpenCV raises cv2.error (and sometimes others) for unopenable sources
            raise CameraError(f"cannot open camera {self.spec!r} ({self.kind}): {error}") from None
        if not capture.isOpened():
            capture.release()
            raise CameraError(f"cannot open camera {self.spec!r} ({self.kind}){_hint(self.kind)}")
        return capture

    def describe(self) -> dict:
        return {"source": self.spec, "kind": self.kind, "loop": self.loop}


def video_devices() -> list[str]:
    """The video devices this machine has (/dev/video*), sorted by number."""
    def number(path: str) -> int:
        tail = path.removeprefix("/dev/video")
        return int(tail) if tail.isdigit() else 1 << 30

    return sorted(glob.glob("/dev/video*"), key=number)


def has_gstreamer() -> bool:
    import cv2

    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line.split(":", 1)[1]
    return False


def _devices_line() -> str:
    devices = video_devices()
    return f"video devices here: {', '.join(devices)}" if devices else "this machine has no video devices (/dev/video*)"


def _hint(kind: str) -> str:
    if kind == "device":
        return f"; {_devices_line()}. Try another index or path, a video file, or --camera demo"
    if kind == "stream":
        return "; check the URL and that the stream is reachable from here"
    if kind == "file":
        return "; the file is not a video OpenCV can read here (MJPG .avi and mp4v .mp4 work; H.264 may not)"
    return ""


def parse_source(spec: str, config: CameraConfig | None = None,
                 extra: dict[str, Callable[[], Capture]] | None = None) -> CameraSource:
    """`--camera SRC` -> a CameraSource (nothing is opened yet). CameraError for a spec that names nothing."""
    import cv2

    config = config or CameraConfig()
    spec = str(spec).strip()
    if not spec:
        raise CameraError("--camera is empty; give an index (0), a device (/dev/video0), a video file, a stream URL "
                          "or demo")
    if extra and spec in extra:
        return CameraSource(spec, "custom", extra[spec])
    if spec.isdigit():
        index = int(spec)
        return CameraSource(spec, "device", lambda: _open_device(index))
    if spec.startswith("/dev/"):
        if not os.path.exists(spec):
            raise CameraError(f"camera {spec} does not exist; {_devices_line()}")
        return CameraSource(spec, "device", lambda: _open_device(spec))
    if spec.lower().startswith(NETWORK_SCHEMES):
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, config.open_timeout_ms,
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, config.read_timeout_ms]
        return CameraSource(spec, "stream", lambda: cv2.VideoCapture(spec, cv2.CAP_FFMPEG, params))
    if "!" in spec:
        if not has_gstreamer():
            raise CameraError(
                f"{spec!r} is a GStreamer pipeline, but this OpenCV was built without GStreamer (pip's "
                "opencv-python-headless never has it). On a Jetson use the system OpenCV (python3-opencv from "
                "JetPack) in this environment, or stream the camera over RTSP and pass the rtsp:// URL")
        return CameraSource(spec, "gstreamer", lambda: cv2.VideoCapture(spec, cv2.CAP_GSTREAMER))
    path = Path(spec).expanduser()
    if path.is_file():
        return CameraSource(spec, "file", lambda: cv2.VideoCapture(str(path), cv2.CAP_FFMPEG), paced=True,
                            loop=config.loop)
    if path.is_dir():
        raise CameraError(f"--camera {spec} is a directory; give a video file, a camera index or device, or demo")
    names = f", {', '.join(sorted(extra))}" if extra else ""
    raise CameraError(f"--camera {spec!r} is not a camera index, a device path, a stream URL, a GStreamer pipeline, "
                      f"an existing video file{names and ' or one of' + names[1:]}; {_devices_line()}")


def _open_device(device: int | str):
    import cv2

    capture = cv2.VideoCapture(device, cv2.CAP_V4L2) if os.name == "posix" else cv2.VideoCapture(device)
    if capture.isOpened():
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # honoured by V4L2 only; the reader thread does the rest
    return capture
