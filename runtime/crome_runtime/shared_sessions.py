"""ONNX Runtime sessions shared by engines that load the same graph bytes the same way.

An ORT session is stateless between runs (each engine's KVDecoder keeps its own KV buffers and IO binding), so two
engines over bundles holding one graph file (the same sha256) with the same providers, options, threads and
spinning can run on one session: `crome-edge export` loads an INT8 candidate next to its FP32 parity reference,
which ship the same decoder.onnx, and opening a 540 MB decoder costs more than a second of CPU. Engines share
nothing else. One thread at a time, as an engine. Torch-free.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable


class SharedSessions:
    def __init__(self):
        self._sessions: dict[tuple, object] = {}
        self.opened = self.shared = 0  # sessions created, and loads answered with one created before

    def open(self, path: Path, sha256: str | None, how: tuple, create: Callable[[Path], object]):
        """The session for `path` (whose bytes have `sha256`, None: unknown, never shared) opened `how` (everything
        that shapes a session: providers and their options, threads, spinning); create(path) makes a new one."""
        if sha256 is None:
            return create(path)
        key = (sha256, how)
        if key in self._sessions:
            self.shared += 1
        else:
            self._sessions[key] = create(path)
            self.opened += 1
        return self._sessions[key]
