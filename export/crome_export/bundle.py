"""Writing a bundle directory atomically (DESIGN.md §4).

Files are copied (and hashed on the way) into a temporary directory next to the target; `commit` writes
manifest.json last and renames the directory into place. An existing bundle is refused unless `force`,
and with `force` it stays intact until the new one is complete. Any failure (disk full, permission, a
failed fidelity gate) removes the temporary directory and leaves the old bundle as it was.
Not here: what goes into the bundle (pipeline.py) or the manifest schema (crome_runtime.manifest).
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from crome_edge.errors import CromeError
from crome_runtime import formats
from crome_runtime.manifest import FileEntry, Manifest

CHUNK = 1 << 20


def _write_chunks(path: Path, chunks) -> tuple[str, int]:
    """Writes an iterable of bytes to `path`; -> (sha256, size). The one place bundle bytes are written."""
    digest, size = hashlib.sha256(), 0
    with open(path, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
            digest.update(chunk)
            size += len(chunk)
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest(), size


def _read_chunks(path: Path):
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            yield block


class BundleWriter:
    def __init__(self, target: Path, force: bool = False):
        self.target = Path(target).absolute()
        self.force = force
        self.staging: Path | None = None
        self.files: dict[str, FileEntry] = {}

    def check_target(self) -> None:
        """Refuses early (before any export work) what would fail at the end."""
        if self.target.exists() and not self.force:
            raise CromeError(f"{self.target} already exists; pass --force to replace it (the old bundle stays "
                             "intact until the new one is complete) or choose another --out")
        if self.target.exists() and not self.target.is_dir():
            raise CromeError(f"{self.target} exists and is not a bundle directory; remove it or choose another --out")
        parent = self.target.parent
        if not parent.is_dir():
            raise CromeError(f"cannot write {self.target}: directory {parent} does not exist (create it first)")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise CromeError(f"cannot write {self.target}: directory {parent} is not writable")

    def __enter__(self) -> "BundleWriter":
        self.check_target()
        try:
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.partial-", dir=self.target.parent))
        except OSError as error:
            raise self._error(error, "creating the temporary bundle directory") from None
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.staging is not None and self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)

    # --- adding files ---------------------------------------------------------------------------
    def add_file(self, source: Path, name: str, precision: str, expected_sha256: str | None = None) -> FileEntry:
        entry = self._write(name, _read_chunks(source), precision)
        if expected_sha256 is not None and entry.sha256 != expected_sha256:
            raise CromeError(f"{source} changed since it was cached (sha256 differs); clear the export cache "
                             "(CROME_EDGE_CACHE) and export again")
        return entry

    def add_bytes(self, name: str, data: bytes, precision: str = "data") -> FileEntry:
        return self._write(name, (data[i : i + CHUNK] for i in range(0, len(data), CHUNK)), precision)

    def _write(self, name: str, chunks, precision: str) -> FileEntry:
        assert self.staging is not None, "use BundleWriter as a context manager"
        if precision not in formats.FILE_PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {formats.FILE_PRECISIONS}")
        try:
            sha256, size = _write_chunks(self.staging / name, chunks)
        except OSError as error:
            raise self._error(error, f"writing {name}") from None
        self.files[name] = FileEntry(sha256=sha256, bytes=size, precision=precision)
        return self.files[name]

    # --- finishing ------------------------------------------------------------------------------
    def commit(self, manifest: Manifest) -> Path:
        """Writes manifest.json and moves the bundle into place; returns the bundle path."""
        manifest.files = dict(sorted(self.files.items()))
        try:
            _write_chunks(self.staging / formats.MANIFEST_FILE, [manifest.to_json().encode()])
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.staging, 0o777 & ~umask)  # mkdtemp made it 0700; a bundle is read by the server's user
            old = None
            if self.target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old-", dir=self.target.parent))
                os.rename(self.target, old / "bundle")
            try:
                os.rename(self.staging, self.target)
            except OSError:
                if old is not None:
                    os.rename(old / "bundle", self.target)
                raise
        except OSError as error:
            raise self._error(error, "moving the bundle into place") from None
        self.staging = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.target

    def _error(self, error: OSError, doing: str) -> CromeError:
        keep = f"; the existing bundle at {self.target} is unchanged" if self.target.exists() else ""
        if error.errno == errno.ENOSPC:
            return CromeError(f"disk full while {doing} for {self.target}: free some space and export again{keep}")
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return CromeError(f"permission denied while {doing} for {self.target} ({error.strerror}){keep}")
        return CromeError(f"cannot write the bundle {self.target}: {doing} failed ({error}){keep}")
