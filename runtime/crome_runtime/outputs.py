"""Where a command may write: the one check every writing command runs on its output paths, before any work.

A file output (`run --profile`, `serve --profile`, `verify --report`, `train --out`/`--checkpoint`, `data video
--out`) must be a regular file or a new name in an existing directory; a directory output (`export --out`, `data
synth --out`, `triton-repo OUT`, a bundle that `bundle add|remove` or `build-engines` changes) must be a directory
or a new name. Refused, with what the path is: a device (as root, replacing /dev/null with a regular file broke the
system, issue 21), a FIFO, a socket, a symbolic link (it could point at any of those, or anywhere: give the real
path), the command's own inputs (`train --data d/data.jsonl --out d/data.jsonl` overwrote the dataset) and a file
inside a bundle the command reads. `serve --events` is appended to, never replaced: a character device or a link
is written through. The atomic writer (atomic.py) checks its target again, so no later code path can replace a
device. Torch-free. Not here: whether an existing output may be replaced (each command's --force), the writing
itself (atomic.py, BundleWriter).
"""
from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from crome_runtime.errors import CromeError
from crome_runtime.input_files import file_kind


class OutputError(CromeError, ValueError):
    """An output path a command must not write (the message says what it is and what to give instead)."""


def check_output(path: str | Path, what: str, inputs: Iterable[str | Path | None] = (), directory: bool = False,
                 within: Iterable[str | Path | None] = (), append: bool = False) -> Path:
    """`path` when a command may write it: a new name in an existing directory, or an existing regular file
    (directory=False) / directory (directory=True) that is none of `inputs` and not inside any directory of
    `within` (a bundle the command reads: a report written over its manifest.json would break it). OutputError
    otherwise. append: a log opened for appending (`serve --events`), never replaced, so a character device
    (/dev/null, /dev/full), directly or through a link, is written to, not replaced, and is accepted; a FIFO or
    socket would block or fail the writer and is still refused."""
    path = Path(path).expanduser()
    expected = "a directory" if directory else "a regular file"
    try:
        mode: int | None = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # NotADirectory: a parent is a file (said below)
        mode = None
    except OSError as error:
        raise OutputError(f"{what} {path} cannot be examined ({error.strerror or error}); choose another path") from None
    if append and mode is not None:
        try:
            followed = os.stat(path).st_mode
        except OSError:
            followed = mode
        if stat.S_ISREG(followed) or stat.S_ISCHR(followed):
            mode = followed
    if mode is not None and stat.S_ISLNK(mode):
        try:
            target = f"to {file_kind(os.stat(path).st_mode)}" if not os.path.isfile(path) else "to a file"
        except OSError:
            target = "that leads nowhere"
        raise OutputError(f"{what} {path} is a symbolic link ({target}); crome-edge writes only {expected} or a new "
                          "name, not through a link: give the real path")
    writable = stat.S_ISDIR if directory else lambda m: stat.S_ISREG(m) or (append and stat.S_ISCHR(m))
    if mode is not None and not writable(mode):
        kind = "exists and is not a directory" if directory and stat.S_ISREG(mode) else f"is {file_kind(mode)}"
        raise OutputError(f"{what} {path} {kind}; crome-edge writes only {expected} or a new name (it would have "
                          "been replaced): choose another path")
    if mode is None and not path.parent.is_dir():
        raise OutputError(f"{what} {path}: its parent directory {path.parent} does not exist (create it first)")
    for given in inputs:
        if given is not None and _same(path, Path(given)):
            raise OutputError(f"{what} {path} is the command's own input {given}; writing it would destroy that "
                              "input: choose another path")
    for folder in within:
        if folder is not None and Path(folder).is_dir() and _inside(path, Path(folder)):
            raise OutputError(f"{what} {path} is inside {folder}, which the command reads; writing there would "
                              "change it: choose a path outside it")
    return path


def _inside(path: Path, folder: Path) -> bool:
    parent = path.absolute().parent.resolve()
    top = folder.absolute().resolve()
    return parent == top or top in parent.parents


def _same(output: Path, given: Path) -> bool:
    """Whether writing `output` would overwrite input `given` (one file or directory, by any name; what a directory
    output holds is its command's to judge: `export --force` replaces only a bundle)."""
    try:
        if output.exists() and given.exists():
            return os.path.samefile(output, given)
        return output.absolute().resolve() == given.absolute().resolve()
    except OSError:
        return False


__all__ = ["OutputError", "check_output"]
