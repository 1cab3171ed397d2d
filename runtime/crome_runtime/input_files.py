"""Reading what a user hands over as a file: regular files only, never more than a stated size, and JSON with a
nesting limit — the one reader for every JSON file the project reads (manifests, reports, acceptance sets, adapter
and parts metadata, dataset lines and info files, configs, cache entries).

Why one reader: Python's json parser recurses, so `[[[[...` 100,000 deep raised RecursionError (a traceback) in
every command that read one; reading /dev/zero or a FIFO "as a file" grew memory without bound or hung. Here a
FIFO, socket or device is refused before a byte is read (opened non-blocking, checked with fstat), a file over
its limit is refused by size, and JSON nested deeper than MAX_JSON_DEPTH is refused with a message. Torch-free,
cv2-free. Not here: what the JSON means (each reader checks its own fields), request bodies (serve/app.py).
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from crome_runtime.errors import CromeError
from crome_runtime.limits import MAX_JSON_BYTES, MAX_JSON_DEPTH


class InputFileError(CromeError, OSError):
    """A file that cannot be read as given (not a regular file, too large); the message says which and why."""


class JsonInputError(CromeError, json.JSONDecodeError):
    """JSON that is malformed, nested too deeply or too large. A json.JSONDecodeError too, so a reader that already
    catches that (and adds its own fix, "re-export the bundle") catches this unchanged; str() is the message alone."""

    def __init__(self, message: str):
        json.JSONDecodeError.__init__(self, message, "", 0)
        self.hint = None

    def __str__(self) -> str:
        return self.msg


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words, for a message."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "not a regular file"


def read_bytes(path: str | Path, max_bytes: int, what: str = "the file") -> bytes:
    """The bytes of regular file `path`, at most `max_bytes` of them; InputFileError for a directory, device, FIFO
    or socket (refused before reading, so /dev/zero cannot fill memory and a FIFO cannot hang) and for a larger
    file. A symbolic link is followed only to a regular file. OSError (missing, unreadable) passes through."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))  # a FIFO opens without a writer
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise InputFileError(f"{what} {path} is {file_kind(mode)}, not a regular file; give the path of a file")
        os.set_blocking(fd, True)
        chunks, size = [], 0
        while size <= max_bytes and (chunk := os.read(fd, min(1 << 20, max_bytes + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > max_bytes:
        raise InputFileError(f"{what} {path} is over {max_bytes:,} bytes, the limit for it; this is not a file "
                             "crome-edge wrote (or it was damaged)")
    return b"".join(chunks)


def loads(text: str | bytes, what: str = "the JSON") -> Any:
    """json.loads with the project's limits: JsonInputError (a json.JSONDecodeError) for malformed JSON, for more
    than MAX_JSON_BYTES, and for objects/arrays nested deeper than MAX_JSON_DEPTH — never a RecursionError."""
    if len(text) > MAX_JSON_BYTES:
        raise JsonInputError(f"{what} is {len(text):,} bytes, over the {MAX_JSON_BYTES:,}-byte limit for JSON")
    try:
        value = json.loads(text)
    except RecursionError:
        raise JsonInputError(f"{what} nests objects/arrays deeper than {MAX_JSON_DEPTH} levels, the limit") from None
    except UnicodeDecodeError as error:
        raise JsonInputError(f"{what} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise JsonInputError(f"{what} is not valid JSON ({error})") from None
    if _depth_over(value, MAX_JSON_DEPTH):
        raise JsonInputError(f"{what} nests objects/arrays deeper than {MAX_JSON_DEPTH} levels, the limit")
    return value


def read_json(path: str | Path, what: str | None = None, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The JSON document in regular file `path` (read_bytes' checks, then loads'). `what` names it in messages
    (default: its path)."""
    return loads(read_bytes(path, max_bytes, "the file"), what or str(path))


def _depth_over(value: Any, limit: int) -> bool:
    """Whether `value` nests containers more than `limit` deep (iterative: no recursion to exhaust)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, (dict, list)):
            continue
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


__all__ = ["InputFileError", "JsonInputError", "file_kind", "loads", "read_bytes", "read_json"]
