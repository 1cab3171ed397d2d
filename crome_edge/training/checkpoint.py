"""Training checkpoints (written atomically) and the Ctrl-C guard that stops a run between steps.

A checkpoint is one `torch.save` file: the trainable weights, the optimizer state, the step, the history
and a `compat` record (stage, backbone/data fingerprints, rank, batch size, seed, split) that `--resume`
checks. It is written to a temp file in the same directory, fsynced and renamed, so an interrupted
write leaves the previous checkpoint intact. Not the adapter file (crome_edge.adapter_file).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import torch

from crome_runtime.atomic import atomic_path
from crome_edge.errors import CromeError

CHECKPOINT_FORMAT = "crome-train-checkpoint"
CHECKPOINT_VERSION = 1


class TrainingInterrupted(CromeError):
    """Ctrl-C / SIGTERM stopped training; the message says where the checkpoint is and how to resume."""


def save_checkpoint(path: Path, state: dict) -> None:
    path = Path(path)
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CromeError(f"--resume: no checkpoint at {path} (pass --checkpoint PATH, or drop --resume to start over)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises a variety of types for a damaged file
        raise CromeError(f"checkpoint {path} cannot be read ({_one_line(error)})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CromeError(f"{path} is not a crome-edge training checkpoint")
    if state.get("version", 0) > CHECKPOINT_VERSION:
        raise CromeError(f"checkpoint {path} was written by a newer crome-edge (version {state['version']})")
    return state


def _one_line(error: Exception) -> str:
    """torch.load's reason in one line; for a pickle that names code to run, which global it named."""
    import re

    text = str(error)
    found = re.search(r"GLOBAL (\S+)", text)
    if found:
        return (f"it names the Python global {found.group(1)}, which a checkpoint never holds; refused, because "
                "loading it could run code")
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{error.__class__.__name__}: {first[:300]}"


# Identity keys added after checkpoints were first written, with the value an older checkpoint implies.
LEGACY_IDENTITY = {"augment": "none", "pooled_map": False}


def check_compatible(saved: dict, current: dict, path: Path) -> None:
    """Refuses to resume when the run's identity (stage, backbone, data, rank, batch, seed, split) differs."""
    saved = {**LEGACY_IDENTITY, **saved}
    differences = [
        f"{key}: checkpoint {saved.get(key)!r}, now {value!r}" for key, value in current.items() if saved.get(key) != value
    ]
    if differences:
        raise CromeError(
            f"cannot resume from {path}: it belongs to a different run ({'; '.join(differences)}). "
            "Use the same options, or drop --resume to start over"
        )


class StopRequest:
    """While active, SIGINT/SIGTERM set a flag the loop checks between steps; a second Ctrl-C aborts."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: bool = True):
        self.requested = False
        self.announce = announce
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:
            print("\nstopping after this step and saving a checkpoint (Ctrl-C again to abort at once)", file=sys.stderr)
