"""One job as an async stream: submit it to the engine worker, read its text as it is decoded, get its result.

    stream = submit(worker, Job(question, options, "api", image), until=request.is_disconnected)
    await stream.started()           # the first event is in: an error before any text raises here
    async for piece in stream:       # text pieces; a failed answer raises its CromeError
        ...
    stream.result                    # the JobResult, once the iteration ended

Chat completions (streamed or not) and the watch loop all run their jobs through this, so what happens when
nobody is listening any more is decided once, in `close()` (called by the iteration's `finally`): the job is
cancelled (the worker stops it between two tokens) and taken out of the queue if it has not started. A client
that disconnects (`until` returns True) ends the stream with ClientGone; a cancelled task (a closed SSE
response, a stopping server) ends it the same way.

Not here: the engine's thread (worker.py), HTTP (app.py).
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from crome_runtime.errors import CromeError
from crome_runtime.serve.worker import EngineWorker, Job, JobResult

DISCONNECT_POLL_S = 0.5  # how often a waiting stream asks whether its client is still there


class ClientGone(CromeError):
    """The client disconnected before its answer was complete (nobody reads this status)."""

    http_status = 499


class JobStream:
    def __init__(self, worker: EngineWorker, job: Job, until: Callable[[], Awaitable[bool]] | None):
        self.worker, self.job, self._until = worker, job, until
        self.result: JobResult | None = None
        self._events: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        self._first: tuple[str, object] | None = None
        loop = asyncio.get_running_loop()

        def sink(kind: str, value: object) -> None:  # the worker's thread
            if not loop.is_closed():
                loop.call_soon_threadsafe(self._events.put_nowait, (kind, value))

        job.sink = sink

    async def started(self) -> None:
        """Waits for the first event (the first piece, the result or an error); raises the error, or ClientGone."""
        try:
            self._first = await self._next()
        except BaseException:
            self.close()
            raise
        if self._first[0] == "error":
            self.close()
            raise _error(self._first[1])

    def __aiter__(self) -> "JobStream":
        return self

    async def __anext__(self) -> str:
        """The next text piece; StopAsyncIteration with `result` set; the job's error; ClientGone."""
        try:
            if self._first is not None:
                (kind, value), self._first = self._first, None
            else:
                kind, value = await self._next()
        except BaseException:  # the client left, or the task reading was cancelled (a closed response, a stop)
            self.close()
            raise
        if kind == "piece":
            return str(value)
        self.close()
        if kind == "done":
            assert isinstance(value, JobResult)
            self.result = value
            raise StopAsyncIteration
        raise _error(value)

    async def collect(self) -> JobResult:
        """The whole answer (the pieces are in its text)."""
        async for _ in self:
            pass
        assert self.result is not None
        return self.result

    def close(self) -> None:
        """Nobody reads on: stop the job and take it out of the queue (no-op once it finished)."""
        self.job.cancel()
        self.worker.queue.remove(self.job)

    async def _next(self) -> tuple[str, object]:
        if self._until is None:
            return await self._events.get()
        while True:
            try:
                return await asyncio.wait_for(self._events.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await self._until():
                    raise ClientGone("the client disconnected") from None


def _error(value: object) -> BaseException:
    return value if isinstance(value, BaseException) else CromeError(str(value))


def submit(worker: EngineWorker, job: Job, until: Callable[[], Awaitable[bool]] | None = None) -> JobStream:
    """Queues `job` -> its stream. QueueFull (429), EngineUnavailable or QueueClosed (503) when it cannot wait."""
    stream = JobStream(worker, job, until)
    worker.submit(job)
    return stream
