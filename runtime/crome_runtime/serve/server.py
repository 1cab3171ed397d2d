"""The server's parts: camera reader, engine worker, watch loop, event hub and metrics, with one lifecycle.

    server = Server(ServeConfig(...), bundle_path, EngineConfig(threads=2), camera=parse_source("0"))
    sock = bind(config.host, config.port)       # fails at once, clearly, when the port is taken
    host.serve(server, sock)                    # blocks; SIGTERM / SIGINT stop it (exit status 0)

Start (`lifespan`, on the HTTP server's event loop): the HTTP server accepts at once; the worker loads the
engine meanwhile (/health: 503 "loading"). A bundle that fails to load stops the server (`fatal_error` says
why). Stop (a signal, or `stop()`): `begin_shutdown` refuses new work, ends the watch streams and the watch
task, and has the worker cancel every job (EngineWorker.close, the one place jobs end); then the parts stop,
the camera is released and the profile written.

Not here: HTTP (app.py: routes, guard.py: the checks before them, host.py: uvicorn), what each part does
(reader.py, worker.py, watch.py, events.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from crome_runtime.engine import Engine, EngineConfig, GenerationOptions
from crome_runtime.errors import CromeError
from crome_runtime.limits import LISTEN_BACKLOG
from crome_runtime.manifest import read_manifest
from crome_runtime.profiler import Profiler
from crome_runtime.serve.config import ServeConfig
from crome_runtime.serve.events import EventHub
from crome_runtime.serve.fairqueue import FairQueue
from crome_runtime.serve.metrics import Metrics
from crome_runtime.serve.reader import CameraReader, CapturedFrame, FrameSlot
from crome_runtime.serve.sources import Capture, CameraSource
from crome_runtime.serve.watch import WatchLoop
from crome_runtime.serve.worker import EngineWorker, Job

UNPROFILED_EVENTS, UNPROFILED_RUNS = 1024, 64  # the profiler's bounds when serve has no --profile
log = logging.getLogger("crome_runtime.serve")

JPEG_QUALITY = 85


class PortInUse(CromeError, OSError):
    pass


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free port), or PortInUse/OSError with a clear message."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
            raise PortInUse(f"port {port} on {host} is already in use: stop the other server or pass --port N "
                            "(--port 0 picks a free one)") from None
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.listen(LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


class Server:
    def __init__(self, config: ServeConfig, bundle: str | Path, engine_config: EngineConfig | None = None,
                 camera: CameraSource | None = None, first_capture: Capture | None = None):
        config.check()  # ValueError: settings out of range
        self.config = config
        self.bundle_path = Path(bundle)
        manifest = read_manifest(self.bundle_path, verify=False)  # cheap: BundleError now, not after binding
        self.model_id = ""
        self.model_ids: tuple[str, ...] = ()  # `model`: ID, ID/NAME, NAME or "none" (protocol.adapter_of)
        self.adapter_names: list[str] = []
        self.any_model = False  # a bundle of one adapter answers whatever `model` a client names (protocol.adapter_of)
        self._serve_adapters(manifest)
        self.engine_config = engine_config or EngineConfig()
        self.options = GenerationOptions(max_new_tokens=config.max_new_tokens)
        self.slot: FrameSlot | None = None
        self.reader: CameraReader | None = None
        if camera is not None:
            self.slot = FrameSlot()
            self.reader = CameraReader(camera, self.slot, config.camera, first_capture, self._camera_event)
        self.queue: FairQueue[Job] = FairQueue({"api": config.limits.queue_size, "watch": 1})
        self.hub = EventHub(config.events, config.recent_events, config.limits.max_subscribers)
        self.metrics = Metrics(live=self._live)
        self.worker = EngineWorker(self._load, self.queue, self.slot, on_result=self.metrics.observe,
                                   on_fatal=self._fatal)
        self.watch: WatchLoop | None = None
        if self.slot is not None:
            # watch answers score a closed set's candidates: the page and --events show them beside each answer
            watch_options = dataclasses.replace(self.options, candidates=True)
            self.watch = WatchLoop(self.worker, self.slot, self.hub, watch_options, config.limits.max_watch_prompts,
                                   config.min_margin, config.drop_below_margin, self.metrics.low_confidence)
            for prompt in config.watch:
                self.watch.add(prompt)
        elif config.watch:
            raise ValueError("--watch needs a camera (--camera)")
        self.stopping = False
        self.fatal_error: str | None = None
        self.on_stop: list[Callable[[], None]] = []  # called by begin_shutdown (host.py: stop the HTTP server)
        self._jpeg: tuple[int, bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.shutdown: asyncio.Event | None = None  # set by begin_shutdown: waits on clients (a body) end, guard.py
        self._watch_task: asyncio.Task | None = None
        self._stopped = threading.Event()

    # --- parts --------------------------------------------------------------------------------------
    def _load(self) -> Engine:
        # without --profile nothing reads the trace: keep a few answers' worth, not the profiler's ~20 MB of
        # newest events, so that a long-running server's memory is flat once warm (benchmarks/soak_serve.py)
        profiler = None if self.config.profile is not None else Profiler(UNPROFILED_EVENTS, UNPROFILED_RUNS)
        return Engine.load(self.bundle_path, self.engine_config, profiler)

    def _fatal(self, error: str) -> None:
        self.fatal_error = error
        self.begin_shutdown()

    def _camera_event(self, state: str, detail: str) -> None:
        self.hub.publish({"type": "camera", "state": state, "detail": detail, "time": time.time()})

    def _live(self) -> dict:
        camera = self.reader.health() if self.reader is not None else {}
        return {"frames_captured": self.slot.captured if self.slot else 0,
                "frames_answered": self.slot.answered if self.slot else 0,
                "frames_dropped": self.slot.dropped if self.slot else 0,
                "camera_reconnects": self.reader.reconnects if self.reader else 0,
                "queue_depth": self.queue.depth(), "engine_ready": int(self.worker.state == "ready"),
                "camera_delivering": int(bool(camera.get("delivering")))}

    def health(self) -> tuple[dict, bool]:
        engine = {"state": self.worker.state, "error": self.worker.error or None, "model": self.model_id}
        if self.worker.engine is not None:
            engine["providers"] = self.worker.engine.providers.summary()
        camera = self.reader.health() if self.reader is not None else None
        if self.stopping:
            status = "stopping"
        elif self.worker.state != "ready":
            status = self.worker.state  # loading | failed
        elif camera is not None and not camera["delivering"]:
            status = f"camera {camera['state']}" if camera["state"] != "live" else "camera stalled"
        else:
            status = "ok"
        body = {"status": status, "engine": engine, "camera": camera, "queue": self.queue.depth(),
                "watch": self.watch.prompts() if self.watch else [], "subscribers": self.hub.subscribers}
        if self.hub.log_path is not None:
            body["events_file"] = {"path": str(self.hub.log_path), "error": self.hub.log_error}
        return body, status == "ok"

    def model_card(self) -> dict:
        return {"id": self.model_id, "object": "model", "created": int(self.bundle_path.stat().st_mtime),
                "owned_by": "crome-edge", "bundle": str(self.bundle_path)}

    def _serve_adapters(self, manifest) -> None:
        """The model id and the names a request's `model` may use, for the adapters `manifest` lists: at start-up
        and after every reload. The ids served before stay accepted (a client that read /v1/models keeps working)."""
        adapters = "+".join(manifest.adapter_names) or "frozen"
        self.model_id = f"{manifest.backbone.name}-{adapters}-{manifest.precision}"
        self.model_ids = tuple(dict.fromkeys((self.model_id, self.bundle_path.name, *self.model_ids)))
        self.adapter_names = manifest.adapter_names
        self.any_model = len(manifest.adapters) == 1

    def reload_adapters(self):
        """Hot-swap (POST /v1/adapters/reload): the engine takes the bundle directory's adapters between two answers
        (Engine.reload_adapters); -> a Future of its report. A refused bundle leaves the old adapters serving."""
        def swap(engine) -> dict:
            report = engine.reload_adapters()  # raises before changing anything
            self._serve_adapters(engine.manifest)
            return report

        return self.worker.call(swap)

    def adapter_cards(self) -> list[dict]:
        """GET /v1/adapters: each adapter and the questions routed to it."""
        engine = self.worker.engine
        if engine is None:
            return [{"name": name} for name in self.adapter_names]
        return [{"name": e.name, "route": e.route.to_dict(), "rank": e.rank, "sha256": e.sha256}
                for e in engine.manifest.adapters]

    def model_cards(self) -> list[dict]:
        """The server's model (questions routed to the adapter trained for them), then ID/NAME for each adapter
        and ID/none for the frozen backbone alone."""
        card = self.model_card()
        cards = [{**card, "adapters": self.adapter_names}]
        cards += [{**card, "id": f"{self.model_id}/{name}", "adapter": name} for name in self.adapter_names]
        return cards + [{**card, "id": f"{self.model_id}/none", "adapter": None}]

    def jpeg(self, frame: CapturedFrame) -> bytes:
        """The frame as JPEG, encoded once however many viewers ask (thread-pool thread)."""
        import cv2

        cached = self._jpeg
        if cached is not None and cached[0] == frame.id:
            return cached[1]
        ok, data = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode frame {frame.id} as JPEG")
        self._jpeg = (frame.id, data.tobytes())
        return self._jpeg[1]

    # --- lifecycle ----------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """Runs the parts for as long as the HTTP server serves (FastAPI's lifespan)."""
        self._loop = asyncio.get_running_loop()
        self.shutdown = asyncio.Event()
        self.hub.attach(self._loop)
        if self.reader is not None:
            self.reader.start()
        self.worker.start()
        if self.watch is not None:
            self._watch_task = asyncio.create_task(self.watch.run(), name="crome-watch")
        try:
            yield
        finally:
            self.begin_shutdown()
            if self._watch_task is not None:
                await asyncio.gather(self._watch_task, return_exceptions=True)
            await asyncio.get_running_loop().run_in_executor(None, self._stop_parts)

    def begin_shutdown(self) -> None:
        """Non-blocking (safe in a signal handler, from any thread): refuse new work, end streams, cancel answers."""
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping: cancelling answers in flight, closing streams")
        self.hub.close()
        self.worker.close()
        if self._loop is not None and not self._loop.is_closed():
            if self.shutdown is not None:
                self._loop.call_soon_threadsafe(self.shutdown.set)
            if self._watch_task is not None:
                self._loop.call_soon_threadsafe(self._watch_task.cancel)
        for stop in self.on_stop:
            stop()

    def _stop_parts(self) -> None:
        self.worker.stop()
        if self.reader is not None:
            self.reader.stop()
        self._write_profile()
        self._stopped.set()

    def _write_profile(self) -> None:
        engine = self.worker.engine
        if self.config.profile is None or engine is None:
            return
        metadata = {"command": "crome-edge serve", "engine": engine.describe(), "watch": self.config.watch}
        try:
            summary, trace = engine.profiler.write(self.config.profile, metadata)
        except OSError as error:
            log.error("cannot write the profile %s: %s", self.config.profile, error.strerror or error)
            return
        log.info("profile: %s (Chrome trace: %s)", summary, trace)

    def stop(self, timeout: float = 10.0) -> bool:
        """Stops a server running on another thread (host.start_background); True when every part stopped within
        `timeout` s."""
        self.begin_shutdown()
        return self._stopped.wait(timeout)
