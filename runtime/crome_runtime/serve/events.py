"""Where events go: the JSONL event log (one line each, flushed) and every `/v1/watch` subscriber.

Events: watch answers and watch errors (watch.py), camera state changes (server.py: connecting, live,
reconnecting, ended, stopped), each a JSON object with a "type".

`publish` is called from the watch task and the camera thread; subscribers live on the server's asyncio loop, so
each event is handed to them with `call_soon_threadsafe`. A subscriber that does not keep up loses its oldest events
(counted in its `lost`), never the server's memory. New subscribers first get the most recent events.

Not here: producing events (watch.py) or writing SSE (app.py).
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import deque
from pathlib import Path

from crome_runtime.errors import CromeError

log = logging.getLogger("crome_runtime.serve")

SUBSCRIBER_BUFFER = 256  # events a slow subscriber may fall behind by


class Subscription:
    def __init__(self, backlog: list[dict], explain: bool = False):
        self.queue: asyncio.Queue[dict | None] = asyncio.Queue()
        self.lost = 0
        self.explain = explain  # this subscriber asked for watch answers' heat maps (`/v1/watch?explain=true`)
        for event in backlog:
            self.queue.put_nowait(event)

    def _offer(self, event: dict | None) -> None:  # on the loop's thread
        if event is not None and self.queue.qsize() >= SUBSCRIBER_BUFFER:
            self.queue.get_nowait()
            self.lost += 1
        self.queue.put_nowait(event)


class TooManySubscribers(CromeError):
    http_status = 429
    http_code = "too_many_streams"
    retry_after_s = 5


class EventHub:
    def __init__(self, log_path: Path | None = None, recent: int = 32, max_subscribers: int = 64):
        self.recent: deque[dict] = deque(maxlen=recent)
        self.max_subscribers = max_subscribers
        self._subscribers: set[Subscription] = set()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._log = None
        self.log_path = log_path
        self.log_error: str | None = None  # set once when a write to the events file failed
        if log_path is not None:
            try:
                self._log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
            except OSError as error:
                raise OSError(f"cannot open the events file {log_path}: {error.strerror or error}") from None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop subscribers live on (the server's, set at startup)."""
        self._loop = loop

    def publish(self, event: dict) -> None:
        line = json.dumps(event, ensure_ascii=False)
        with self._lock:
            self.recent.append(event)
            if self._log is not None:
                self._write(line)
            subscribers = list(self._subscribers)
        self._fan_out(subscribers, event)

    def _write(self, line: str) -> None:
        """One line, flushed (under the lock). A write that fails (disk full, EIO) is said once, in the log and in
        `log_error` (/health shows it); the file is then closed and no longer written: the server serves on."""
        assert self._log is not None
        try:
            self._log.write(line + "\n")
            self._log.flush()
        except OSError as error:
            self.log_error = (f"cannot write the events file {self.log_path}: {error.strerror or error}; "
                              "events are no longer written there (still sent to /v1/watch)")
            log.error("%s", self.log_error)
            try:
                self._log.close()  # flushes what is buffered once more: that may fail the same way
            except OSError as again:
                log.debug("closing the events file after a failed write: %s", again)
            self._log = None

    def subscribe(self, explain: bool = False) -> Subscription:
        """On the loop's thread. explain: this subscriber wants the watch answers' heat maps (explain_wanted)."""
        with self._lock:
            if len(self._subscribers) >= self.max_subscribers:
                raise TooManySubscribers(f"{self.max_subscribers} watch streams are open; close one first")
            subscription = Subscription(list(self.recent), explain)
            self._subscribers.add(subscription)
            return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscribers.discard(subscription)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @property
    def explain_wanted(self) -> bool:
        """Whether an open stream asked for heat maps: the watch loop computes them only then (docs/explain.md)."""
        with self._lock:
            return any(s.explain for s in self._subscribers)

    def close(self) -> None:
        """Ends every subscriber's stream (None) and closes the log."""
        with self._lock:
            subscribers = list(self._subscribers)
            self._subscribers.clear()
            if self._log is not None:
                self._log.close()
                self._log = None
        self._fan_out(subscribers, None)

    def _fan_out(self, subscribers: list[Subscription], event: dict | None) -> None:
        loop = self._loop
        if loop is None or loop.is_closed() or not subscribers:
            return
        for subscription in subscribers:
            try:
                loop.call_soon_threadsafe(subscription._offer, event)
            except RuntimeError:  # the loop closed between the check and the call: nobody is listening any more
                log.debug("event loop closed; %d subscriber(s) not notified", len(subscribers))
                return
