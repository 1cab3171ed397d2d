"""A small least-recently-used cache with hit/miss counts: the engine's vision and text-branch caches.

Vision: a frame's adapted visual queries (Nq, d), keyed by frame identity (and by the question too when the
Q-Former is instruction-aware, since its output then depends on it). Text: a prompt's adapted text
embeddings (Nt, d) and ids, keyed by the formatted prompt. Entries are a few KB; size bounds the count.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class LRUCache:
    def __init__(self, size: int):
        self.size = max(0, int(size))
        self.hits = self.misses = 0
        self._items: OrderedDict = OrderedDict()

    def get(self, key: Hashable):
        """The value, or None (a miss); a hit becomes the most recently used entry."""
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        self.misses += 1
        return None

    def put(self, key: Hashable, value) -> None:
        if self.size == 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def stats(self) -> dict:
        return {"entries": len(self._items), "size": self.size, "hits": self.hits, "misses": self.misses}
