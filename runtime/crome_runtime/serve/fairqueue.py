"""A bounded queue with lanes, served round-robin: API requests and watch prompts share one engine fairly.

Each lane is FIFO with its own capacity; `get` takes from the next non-empty lane after the one it took
from last, so a busy lane (the watch loop) can never starve another (an API request waits at most one
item of every other lane). A full lane refuses at once (QueueFull: the server answers 429) unless the
caller asks to block (the watch loop does: it has nothing better to do). Thread-safe.

Not here: what an item is (worker.py).
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

from crome_runtime.errors import CromeError

T = TypeVar("T")


class QueueFull(CromeError):
    """The lane is at capacity."""

    http_status = 429
    http_code = "queue_full"
    retry_after_s = 1


class QueueClosed(CromeError):
    """The queue was closed (the server is shutting down)."""

    http_status = 503
    http_code = "shutting_down"


class FairQueue(Generic[T]):
    def __init__(self, capacities: dict[str, int]):
        if not capacities or any(c < 1 for c in capacities.values()):
            raise ValueError(f"every lane needs a capacity >= 1, got {capacities}")
        self.capacities = dict(capacities)
        self._lanes: dict[str, deque[T]] = {lane: deque() for lane in capacities}
        self._order = list(capacities)
        self._next = 0
        self._cond = threading.Condition()
        self._closed = False

    def put(self, lane: str, item: T, block: bool = False, timeout: float | None = None) -> None:
        """Adds `item` to `lane`; QueueFull when the lane is full (after `timeout` s when blocking)."""
        with self._cond:
            queue = self._lanes[lane]
            if block:
                self._cond.wait_for(lambda: self._closed or len(queue) < self.capacities[lane], timeout)
            if self._closed:
                raise QueueClosed("the server is shutting down")
            if len(queue) >= self.capacities[lane]:
                raise QueueFull(f"the engine has {self.capacities[lane]} {lane} requests waiting; retry shortly")
            queue.append(item)
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> T | None:
        """The next item, lanes in turn; None after `timeout` s or once closed and empty."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or any(self._lanes.values()), timeout)
            for offset in range(len(self._order)):
                index = (self._next + offset) % len(self._order)
                queue = self._lanes[self._order[index]]
                if queue:
                    self._next = index + 1
                    item = queue.popleft()
                    self._cond.notify_all()  # a blocked put may go on
                    return item
            return None

    def remove(self, item: T) -> bool:
        """Takes a waiting item out (a client that left before its turn); False if it is not waiting."""
        with self._cond:
            for queue in self._lanes.values():
                try:
                    queue.remove(item)
                except ValueError:
                    continue
                self._cond.notify_all()
                return True
            return False

    @property
    def closed(self) -> bool:
        return self._closed

    def depth(self) -> dict[str, int]:
        with self._cond:
            return {lane: len(queue) for lane, queue in self._lanes.items()}

    def close(self) -> list[T]:
        """Refuses new items and returns the ones still waiting (the caller fails or cancels them)."""
        with self._cond:
            self._closed = True
            left = [item for queue in self._lanes.values() for item in queue]
            for queue in self._lanes.values():
                queue.clear()
            self._cond.notify_all()
            return left
