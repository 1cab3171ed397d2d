"""Atomic file writes: build next to the target, rename into place, so a reader never sees half a file.

A write that fails because the disk is full — whatever library did the writing: safetensors' SafetensorError,
torch's zip writer's RuntimeError, an OSError — becomes one WriteError that says so (issue 21: `train` into a full
disk printed a SafetensorError traceback); the temporary file is removed and the old target, if any, is untouched.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from crome_runtime.errors import CromeError

# a failed write with less free space than this beside the target is reported as a full disk
FULL_DISK_BYTES = 1 << 20


class WriteError(CromeError, OSError):
    """A file could not be written (a full disk); nothing was left half-written."""



@contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yields a temporary path beside `path`; it replaces `path` when the block succeeds and is removed when
    the block fails (Ctrl-C included), so `path` is always the old file or the complete new one. A `path` that
    is not a regular file or a new name (a device, FIFO, socket, symbolic link, directory) is refused
    (outputs.check_output): the rename below would replace it."""
    from crome_runtime.outputs import check_output

    path = check_output(path, "the output")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    mode = 0o666 & ~_umask()  # mkstemp makes 0600; the result should read like any new file
    os.chmod(tmp, mode)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)  # again: writers that replace the file (safetensors 0.8's save_file) make it 0600
        os.replace(tmp, path)
    except Exception as error:
        Path(tmp).unlink(missing_ok=True)  # first: the space it held is what the check below measures
        if not isinstance(error, CromeError) and disk_full(error, path.parent):
            raise WriteError(f"cannot write {path}: the disk is full (no space left on the device holding "
                             f"{path.parent}); nothing was written there — free some space, or write elsewhere") from None
        raise
    finally:
        Path(tmp).unlink(missing_ok=True)


def disk_full(error: BaseException, directory: Path) -> bool:
    """Whether a write into `directory` failed for want of space: ENOSPC/EDQUOT, a library's message that wraps it
    (safetensors: "No space left on device (os error 28)"), or a failure with under FULL_DISK_BYTES free there."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error)
    if "No space left on device" in text or "os error 28" in text or "StorageFull" in text:
        return True
    try:
        return shutil.disk_usage(directory).free < FULL_DISK_BYTES
    except OSError:
        return False


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask
