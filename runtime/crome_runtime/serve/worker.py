"""The engine's one owner: a worker thread loads the engine, then answers jobs from the fair queue.

An engine serves one thread at a time (it owns its sessions, KV buffers, caches and profiler), so nothing
else touches it: HTTP handlers and the watch loop submit Jobs through jobs.py, which reads the events the
worker hands to the job's `sink` on this thread: ("piece", str) as text is decoded, then ("done", JobResult)
or ("error", CromeError) — a bug is logged here whole and handed on as AnswerFailed. A job asks about an
uploaded image or, with `image=None`, the camera's newest frame, taken when the job starts (not when it was
queued) so the answer is about the freshest frame there is.
`cancel()` stops a job between two tokens (a client that went away), or before it starts; `close()` ends every
job when the server stops.

Not here: a job's stream (jobs.py), HTTP (app.py), the watch prompts (watch.py).
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from crome_runtime.engine import Answer, Engine, GenerationOptions
from crome_runtime.errors import CromeError
from crome_runtime.serve.fairqueue import FairQueue
from crome_runtime.serve.reader import FrameSlot

log = logging.getLogger("crome_runtime.serve")

LANES = ("api", "watch")


class NoFrame(CromeError):
    """The job asked about the camera, and there is no camera or no frame yet."""

    http_status = 503
    http_code = "no_frame"
    retry_after_s = 1


class Cancelled(CromeError):
    """The job was cancelled before it produced an answer (client gone, server stopping)."""

    http_status = 503
    http_code = "shutting_down"


class AnswerFailed(CromeError):
    """A bug while answering: logged whole by the worker; the client is told only that the log has it."""


class EngineUnavailable(CromeError):
    """The engine is not loaded (still loading, failed, or stopped)."""

    http_status = 503
    http_code = "unavailable"
    retry_after_s = 2


@dataclass(eq=False)  # identity: the queue finds a job to remove by identity
class Job:
    prompt: str
    options: GenerationOptions
    source: str  # "api" | "watch": the queue lane and the metrics label
    sink: Callable[[str, object], None] = lambda kind, value: None  # called on the worker thread (jobs.py sets it)
    image: np.ndarray | None = None  # (H, W, 3) uint8 BGR upload; None: the camera's newest frame
    explain: bool = False  # also the answer's heat map (JobResult.explain; crome_runtime.explain)
    submitted_ns: int = field(default_factory=time.monotonic_ns)
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


@dataclass
class JobResult:
    answer: Answer
    frame: dict | None  # camera frames: {"id", "captured_at" (unix s), "age_ms" at answer, "age_at_start_ms"}
    queue_ms: float  # submitted -> started
    latency_ms: float  # submitted -> answered
    preprocess_ms: float
    # the heat map when the job asked (Explanation.to_dict()), or {"unavailable": why} for a bundle that cannot
    explain: dict | None = None

    def stages_ms(self) -> dict[str, float]:
        return {"preprocess": self.preprocess_ms, **self.answer.timings_ms}


class EngineWorker:
    """state: loading -> ready | failed; stopped after stop()."""

    def __init__(self, load: Callable[[], Engine], queue: FairQueue[Job], slot: FrameSlot | None,
                 on_result: Callable[[Job, JobResult], None] | None = None,
                 on_fatal: Callable[[str], None] | None = None):
        self._load, self.queue, self.slot = load, queue, slot
        self._on_result, self._on_fatal = on_result, on_fatal
        self.engine: Engine | None = None
        self.state = "loading"
        self.error = ""
        self.current: Job | None = None
        self.answered = 0
        self._stop = threading.Event()
        self._calls: list[tuple[Callable[[Engine], object], Future]] = []  # call(): run between jobs
        self._calls_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="crome-engine", daemon=True)

    def start(self) -> "EngineWorker":
        self._thread.start()
        return self

    def submit(self, job: Job, block: bool = False, timeout: float | None = None) -> None:
        """Queues `job` (QueueFull when its lane is full and not blocking; EngineUnavailable unless ready)."""
        if self.state != "ready":
            raise EngineUnavailable(self._unavailable())
        self.queue.put(job.source, job, block=block, timeout=timeout)

    def close(self) -> None:
        """Refuses new jobs and cancels waiting and running ones; returns at once (safe in a signal handler).
        The one way jobs end when the server stops: each waiting job's stream gets Cancelled."""
        self._stop.set()
        for job in self.queue.close():
            job.cancel()
            job.sink("error", Cancelled("the server is shutting down"))
        current = self.current
        if current is not None:
            current.cancel()

    def stop(self, timeout: float = 5.0) -> None:
        """close(), then waits for the thread to finish."""
        self.close()
        self._thread.join(timeout)
        with self._calls_lock:
            calls, self._calls = self._calls, []
        for _, future in calls:  # nobody will run them now
            future.cancel()
        if self.state in ("ready", "loading"):
            self.state = "stopped"

    def _unavailable(self) -> str:
        if self.state == "loading":
            return "the engine is still loading; retry in a moment (GET /health says when it is ready)"
        if self.state == "failed":
            return f"the engine failed to load: {self.error}"
        return "the server is shutting down"

    # --- the thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.engine = self._load()
        except Exception as error:  # any load failure is reported through /health and on_fatal, not lost
            self.state, self.error = "failed", str(error) or type(error).__name__
            log.error("the engine failed to load: %s", self.error, exc_info=not isinstance(error, CromeError))
            if self._on_fatal is not None:
                self._on_fatal(self.error)
            return
        self.state = "ready"
        while not self._stop.is_set():
            self._run_calls()
            job = self.queue.get(timeout=0.5)
            if job is None:
                if self.queue.closed:
                    break
                continue
            self.current = job
            try:
                self._serve(job)
            except Exception:  # a failing sink or result hook must not stop the engine for everyone else
                log.exception("delivering the answer to %r failed", job.prompt)
            finally:
                self.current = None

    def call(self, fn: Callable[[Engine], object]) -> "Future":
        """fn(engine) on the worker thread between two jobs (an answer in progress finishes first); -> a Future of
        its result or exception. How the server hot-swaps adapters (Engine.reload_adapters)."""
        future: Future = Future()
        with self._calls_lock:
            self._calls.append((fn, future))
        return future

    def _run_calls(self) -> None:
        while True:
            with self._calls_lock:
                if not self._calls:
                    return
                fn, future = self._calls.pop(0)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                assert self.engine is not None
                future.set_result(fn(self.engine))
            except Exception as error:  # handed to the caller, who answers the admin request with it
                future.set_exception(error)

    def _serve(self, job: Job) -> None:
        engine = self.engine
        assert engine is not None
        if job.cancelled:
            job.sink("error", Cancelled("the request was cancelled before it started"))
            return
        started = time.monotonic_ns()
        try:
            frame, captured = self._frame(engine, job)
            preprocess_ms = (time.monotonic_ns() - started) / 1e6
            stream = engine.stream(frame, job.prompt, job.options)
            try:
                for piece in stream:
                    if job.cancelled:
                        break
                    job.sink("piece", piece)
            finally:
                stream.close()  # a cancelled stream records its answer as "cancelled"
        except CromeError as error:
            job.sink("error", error)
            return
        except Exception as error:  # a bug must not take the server down: log it whole, tell the client little
            log.exception("answering %r failed", job.prompt)
            job.sink("error", AnswerFailed(f"answering failed: {type(error).__name__}: {error}"))
            return
        done = time.monotonic_ns()
        answer = stream.answer
        assert answer is not None  # set when the stream is closed
        frame_info = None
        if captured is not None:
            frame_info = {"id": captured.id, "captured_at": captured.unix_s, "age_ms": captured.age_ms(done),
                          "age_at_start_ms": captured.age_ms(started)}
        explained = _explain(engine, frame, job, answer) if job.explain else None
        if captured is not None and explained is not None and self.slot is not None:
            self.slot.keep(captured)  # the page draws the map over this frame (GET /v1/frame.jpg?id=)
        result = JobResult(answer, frame_info, (started - job.submitted_ns) / 1e6, (done - job.submitted_ns) / 1e6,
                           preprocess_ms, explained)
        self.answered += 1
        if self._on_result is not None:
            self._on_result(job, result)
        job.sink("done", result)

    def _frame(self, engine: Engine, job: Job):
        if job.image is not None:
            return engine.frame(job.image, "bgr"), None  # keyed by its pixels: the same upload shares a vision run
        captured = self.slot.take() if self.slot is not None else None
        if captured is None:
            raise NoFrame("this server has no camera; send the image in the request (an image_url data URI)"
                          if self.slot is None else "the camera has not delivered a frame yet; retry in a moment")
        return engine.frame(captured.image, "bgr", key=f"camera:{captured.id}"), captured


def _explain(engine: Engine, frame, job: Job, answer: Answer) -> dict | None:
    """The answer's heat map for a job that asked; a bundle exported before maps existed answers on and says why it
    has none (one line with the re-export command) instead of failing the answer; a cancelled answer gets none."""
    if answer.finish_reason == "cancelled":
        return None
    why_not = engine.can_explain()
    if why_not:
        return {"unavailable": why_not}
    return engine.explain(frame, job.prompt, answer.adapter).to_dict()
