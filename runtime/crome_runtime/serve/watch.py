"""Standing "watch" prompts: asked in turn of every new camera frame; each answer becomes an event.

The loop is a task on the server's event loop (no thread of its own: the camera's reader wakes it through
FrameSlot.on_put). It takes the prompts round-robin; a prompt waits for a frame newer than the one it last
answered (no point answering the same frame twice), then runs one job on the worker's watch lane through
jobs.py (the stream chat completions use) and waits for it, so at most one watch job is ever waiting and API
requests (the other lane) are served in between. Events go to the EventHub (SSE
subscribers and the JSONL log):

    {"type": "watch", "watch_id", "prompt", "answer", "finish_reason", "frame_id", "frame_captured_at",
     "frame_age_ms" (capture -> answered), "latency_ms" (queued -> answered), "queue_ms", "engine_ms"
     (preprocess + the engine's answer: latency minus it is what serving added), "ttft_ms", "tokens",
     "timings_ms" {stage: ms}, "time", "adapter", "adapter_version" (sha256 of its .safetensors; null: the frozen
     backbone), "confidence" {first_token_margin, mean_logprob, and for a closed-set adapter candidates,
     candidate_mass: crome_runtime.confidence}, "low_confidence" (the margin is under serve --min-margin)}

With `drop_below` (serve --drop-below-margin) a low-confidence answer is counted (its prompt's `answers` and
`dropped`, the metrics) but not published.

Errors (no frame yet, a prompt over the context) become {"type": "watch_error", ...} events. Cancelling the
task stops it (the job in flight is cancelled by its stream). Not here: checking a prompt (protocol.py), the
engine (worker.py), delivery (events.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from crome_runtime.engine import GenerationOptions
from crome_runtime.errors import CromeError
from crome_runtime.serve import jobs
from crome_runtime.serve.events import EventHub
from crome_runtime.serve.fairqueue import QueueClosed
from crome_runtime.serve.reader import FrameSlot
from crome_runtime.serve.worker import Cancelled, EngineWorker, Job, JobResult

log = logging.getLogger("crome_runtime.serve")

POLL_S = 0.25  # how long one wait for a prompt, the engine or a new frame lasts before looking again
ERROR_PAUSE_S = 1.0


class WatchError(CromeError, ValueError):
    """A watch prompt that cannot be added or removed as asked."""


@dataclass
class WatchPrompt:
    id: str
    prompt: str
    max_tokens: int | None = None
    last_frame_id: int | None = field(default=None, repr=False)
    answers: int = 0
    low_confidence: int = 0  # answers under the margin threshold
    dropped: int = 0  # of those, not published (drop_below)

    def describe(self) -> dict:
        return {"id": self.id, "prompt": self.prompt, "max_tokens": self.max_tokens, "answers": self.answers,
                "low_confidence": self.low_confidence, "dropped": self.dropped}


class WatchLoop:
    def __init__(self, worker: EngineWorker, slot: FrameSlot, hub: EventHub, options: GenerationOptions,
                 max_prompts: int = 16, min_margin: float | None = None, drop_below: bool = False,
                 on_low: Callable[[str | None, bool], None] | None = None):
        """min_margin: flag answers whose first-token margin is under it; drop_below: and do not publish them;
        on_low(adapter, dropped): told of each flagged answer (the metrics count them)."""
        self.worker, self.slot, self.hub, self.options = worker, slot, hub, options
        self.max_prompts = max_prompts
        self.min_margin, self.drop_below, self.on_low = min_margin, drop_below, on_low
        self._prompts: dict[str, WatchPrompt] = {}
        self._ids = itertools.count(1)
        self._turn = 0

    # --- prompts (the loop's thread, or before it runs) -------------------------------------------------
    def add(self, prompt: str, max_tokens: int | None = None) -> WatchPrompt:
        if len(self._prompts) >= self.max_prompts:
            raise WatchError(f"{self.max_prompts} watch prompts are running; remove one first")
        watch = WatchPrompt(f"w{next(self._ids)}", prompt, max_tokens)
        self._prompts[watch.id] = watch
        return watch

    def remove(self, watch_id: str) -> WatchPrompt:
        watch = self._prompts.pop(watch_id, None)
        if watch is None:
            raise WatchError(f"no watch prompt {watch_id!r}; GET /v1/watch/prompts lists them")
        return watch

    def prompts(self) -> list[dict]:
        return [w.describe() for w in self._prompts.values()]

    # --- the task -------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Until cancelled, or the worker's queue closes."""
        loop, arrived = asyncio.get_running_loop(), asyncio.Event()

        def frame_put() -> None:  # the camera's thread
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
                loop.call_soon_threadsafe(arrived.set)

        self.slot.on_put = frame_put
        try:
            while True:
                prompts = list(self._prompts.values())
                if not prompts or self.worker.state != "ready":
                    await asyncio.sleep(POLL_S)
                    continue
                self._turn = (self._turn + 1) % len(prompts)
                watch = prompts[self._turn]
                arrived.clear()  # before looking: a frame put after the look sets it again
                if self.slot.newer(watch.last_frame_id) is None:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(arrived.wait(), POLL_S)
                    if self.slot.newer(watch.last_frame_id) is None:
                        continue
                if not await self._ask(watch):
                    return
        finally:
            self.slot.on_put = None

    async def _ask(self, watch: WatchPrompt) -> bool:
        """One answer to `watch`, published; False once the server is stopping."""
        options = self.options if watch.max_tokens is None else dataclasses.replace(
            self.options, max_new_tokens=watch.max_tokens)
        try:
            job = Job(watch.prompt, options, "watch", explain=self.hub.explain_wanted)  # maps only while a page asks
            result = await jobs.submit(self.worker, job).collect()
        except (QueueClosed, Cancelled):
            return False
        except CromeError as error:  # no frame yet, a prompt over the context, a full lane: said, then on
            self._error(watch, error)
            await asyncio.sleep(ERROR_PAUSE_S)  # a prompt that keeps failing: one event a second, not a flood
            return True
        if result.answer.finish_reason == "cancelled":  # the server is stopping
            return False
        if result.frame is not None:
            watch.last_frame_id = result.frame["id"]
        watch.answers += 1
        event = watch_event(watch, result, self.min_margin)
        if event["low_confidence"]:
            watch.low_confidence += 1
            watch.dropped += self.drop_below
            if self.on_low is not None:
                self.on_low(result.answer.adapter, self.drop_below)
            if self.drop_below:
                return True
        self.hub.publish(event)
        return True

    def _error(self, watch: WatchPrompt, error: Exception) -> None:
        log.warning("watch %s (%r): %s", watch.id, watch.prompt, error)
        self.hub.publish({"type": "watch_error", "watch_id": watch.id, "prompt": watch.prompt,
                          "error": str(error) or type(error).__name__, "time": time.time()})


def watch_event(watch: WatchPrompt, result: JobResult, min_margin: float | None = None) -> dict:
    answer, frame = result.answer, result.frame or {}
    margin = answer.confidence.first_token_margin
    return {
        "type": "watch", "watch_id": watch.id, "prompt": watch.prompt, "answer": answer.text, "adapter": answer.adapter,
        "finish_reason": answer.finish_reason, "frame_id": frame.get("id"),
        "frame_captured_at": frame.get("captured_at"), "frame_age_ms": _round(frame.get("age_ms")),
        "latency_ms": _round(result.latency_ms), "queue_ms": _round(result.queue_ms),
        "engine_ms": _round(result.preprocess_ms + (answer.total_ms or 0.0)), "ttft_ms": _round(answer.ttft_ms),
        "tokens": len(answer.token_ids), "timings_ms": {k: _round(v) for k, v in result.stages_ms().items()},
        "time": time.time(), "adapter_version": answer.adapter_version, "confidence": answer.confidence.to_dict(),
        # no margin (no token was drawn) is not judged
        "low_confidence": min_margin is not None and margin is not None and margin < min_margin,
        **({"explain": result.explain} if result.explain is not None else {}),  # a stream asked (?explain=true)
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
