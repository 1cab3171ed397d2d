"""Helpers for the server tests (no tests here): a running server on a free loopback port, a colour camera
the tiny bundle can name, an MJPEG-over-HTTP camera the test stops and restarts, and bounded waits.

Every wait is a bounded loop that fails with what it waited for; none of them is a speed threshold.
"""
from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from tests.support.bundles import COLOURS, colour_image

import crome_runtime  # noqa: F401  (before cv2: OpenCV's decoder pixel limit)
import cv2
from crome_runtime.engine import EngineConfig
from crome_runtime.serve.config import CameraConfig, Limits, ServeConfig
from crome_runtime.serve.host import start_background
from crome_runtime.serve.server import Server, bind
from crome_runtime.serve.sources import CameraSource

QUESTION = "What colour is it?"
WAIT_S = 60.0  # a bound on every wait: generous for a loaded 2-core machine, never a speed assertion


def wait_for(predicate, what: str, timeout: float = WAIT_S, interval: float = 0.05):
    """predicate() until it returns something truthy (returned), else AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(interval)


def get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """(status, headers with lower-case names, body)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def health(base: str) -> tuple[int, dict]:
    """(status, body) of GET /health; (0, {"error": ...}) while nothing answers on the port."""
    try:
        status, _, body = get(f"{base}/health")
    except urllib.error.URLError as error:
        return 0, {"error": str(error.reason)}
    return status, json.loads(body)


def served_base(process) -> tuple[str, list[str]]:
    """A `crome-edge serve` subprocess (stderr piped, text): reads its stderr until the "web view" banner -> (the
    base URL it listens on, the stderr lines read so far). AssertionError when it exits first."""
    lines: list[str] = []
    while not any("web view" in line for line in lines):
        line = process.stderr.readline()
        assert line, f"serve exited early ({process.poll()}): {''.join(lines)}"
        lines.append(line)
    return next(line for line in lines if "web view" in line).split("web view ")[1].split("/ ")[0], lines


def png_data_uri(image: np.ndarray) -> str:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return "data:image/png;base64," + base64.b64encode(data.tobytes()).decode()


def colour_question(colour: str = "red") -> list[dict]:
    """Chat messages asking QUESTION about one of the tiny bundle's colour frames, sent as a PNG data URI."""
    return [{"role": "user", "content": [{"type": "text", "text": QUESTION},
                                         {"type": "image_url", "image_url": {"url": png_data_uri(colour_image(colour, 42))}}]}]


class ColourCamera:
    """A cv2.VideoCapture-like camera showing the tiny bundle's colour frames (red, green, blue in turn, `hold`
    frames each) at `fps`."""

    def __init__(self, fps: float = 20.0, hold: int = 10):
        self.fps, self.hold, self.index, self.open = fps, hold, 0, True

    def isOpened(self) -> bool:  # noqa: N802
        return self.open

    def read(self):
        if not self.open:
            return False, None
        time.sleep(1.0 / self.fps)
        name = list(COLOURS)[(self.index // self.hold) % len(COLOURS)]
        self.index += 1
        return True, colour_image(name, self.index, size=64)

    def get(self, prop: int) -> float:
        return self.fps if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self) -> None:
        self.open = False


def colour_source(fps: float = 20.0) -> CameraSource:
    return CameraSource("colours", "custom", lambda: ColourCamera(fps))


@contextmanager
def serving(bundle, camera: CameraSource | None = None, watch=(), limits: Limits | None = None,
            camera_config: CameraConfig | None = None, ready: bool = True, server_class=Server, **overrides):
    """A Server (or `server_class`) on a free loopback port, started on a thread; yields (server, base_url).
    Waits until /health is ok when `ready` (engine loaded and, with a camera, frames arriving)."""
    config = ServeConfig(host="127.0.0.1", port=0, watch=list(watch), limits=limits or Limits(),
                         camera=camera_config or CameraConfig(), **overrides)
    server = server_class(config, bundle, EngineConfig(threads=1, spin=False), camera)
    sock = bind(config.host, 0)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    thread = start_background(server, sock)
    try:
        if ready:
            wait_for(lambda: health(base)[0] == 200, f"GET {base}/health -> 200")
        yield server, base
    finally:
        assert server.stop(30), "the server's parts did not stop"
        thread.join(30)
        assert not thread.is_alive(), "the HTTP server thread did not stop"


class MjpegCamera:
    """An MJPEG-over-HTTP camera on a loopback port (multipart/x-mixed-replace, like IP cameras): `stop()` cuts
    every stream and closes the port, `start()` serves again on the same port."""

    def __init__(self, fps: float = 20.0):
        self.fps = fps
        self.port = 0
        self.frames_sent = 0
        self._server: ThreadingHTTPServer | None = None
        self._stop = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> "MjpegCamera":
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                index = 0
                while not camera._stop.is_set():
                    name = list(COLOURS)[(index // 10) % len(COLOURS)]
                    ok, jpeg = cv2.imencode(".jpg", colour_image(name, index, size=64))
                    data = jpeg.tobytes()
                    try:
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                         % len(data) + data + b"\r\n")
                        self.wfile.flush()
                    except OSError:  # the reader went away
                        return
                    camera.frames_sent += 1
                    index += 1
                    camera._stop.wait(1.0 / camera.fps)

        class Server_(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._stop.clear()
        self._server = Server_(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
