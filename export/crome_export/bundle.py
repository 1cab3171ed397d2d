"""Writing a bundle directory atomically (docs/architecture.md §4).

Files are copied (and hashed on the way) into a temporary directory next to the target; `commit` writes
manifest.json last and moves the directory into place. An existing bundle is refused unless `force`, and
`force` replaces only a bundle: a directory whose manifest.json says it is one and that holds nothing but
the manifest's files (and engines/) — never a working directory, a dataset or anything else. The old bundle
stays intact until the new one is complete, and the replacement is one atomic exchange of the two
directories (Linux renameat2 RENAME_EXCHANGE), so at every instant the target is the old bundle or the new
one. Where the exchange is unavailable, two renames with a rollback are used. Any failure (disk full,
permission, a failed fidelity gate, SIGTERM — the CLI turns it into an exception) removes the temporary
directory and leaves the old bundle as it was.
One writer per bundle (`bundle_lock`): every command that changes a bundle — `bundle add`, `bundle remove`, `export`
replacing one, `build-engines` — holds an advisory lock (fcntl.flock on `.NAME.lock` beside the bundle: the bundle
directory itself is exchanged) from reading the bundle to committing it; a second writer waits up to
BUNDLE_LOCK_WAIT_S, then is refused with a message naming the first. Two `bundle add`s at once both said "added"
and one adapter was lost (issue 21); now the second adds to the first's bundle, or changes nothing and says so.
Files from the export cache are hard-linked into the bundle (add_cached: the cache replaces its files only whole,
and every linked file is hashed once on the way in); a file system without hard links gets copies.
Not here: what goes into the bundle (pipeline.py) or the manifest schema (crome_runtime.manifest).
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from crome_edge.errors import CromeError
from crome_runtime import formats
from crome_runtime.limits import BUNDLE_LOCK_WAIT_S
from crome_runtime.manifest import FileEntry, Manifest, sha256_file
from crome_runtime import input_files

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


def not_a_bundle(path: Path) -> str | None:
    """Why `path` is not a bundle directory that --force may replace, or None when it is one."""
    if path.is_symlink() or not path.is_dir():
        return "not a directory" if not path.is_symlink() else "a symbolic link"
    try:
        manifest = input_files.read_json(path / formats.MANIFEST_FILE)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"no readable {formats.MANIFEST_FILE}"
    if not isinstance(manifest, dict) or manifest.get("format") != formats.BUNDLE_FORMAT:
        return f"its {formats.MANIFEST_FILE} is not a crome-edge bundle manifest"
    files = manifest.get("files")
    listed = set(files) if isinstance(files, dict) else set()
    foreign = sorted(p.name for p in path.iterdir()
                     if p.name not in listed | {formats.MANIFEST_FILE, formats.ENGINES_DIR} or p.is_symlink())
    if foreign:
        return f"it holds files no bundle lists: {', '.join(foreign[:5])}" + (" ..." if len(foreign) > 5 else "")
    return None


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two directories (Linux renameat2 RENAME_EXCHANGE). False where the platform or the
    file system cannot; raises OSError for any other failure."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


_HELD: dict[Path, int] = {}  # bundles whose lock this process holds -> nesting depth (add_adapter -> commit)


@contextmanager
def bundle_lock(bundle: Path, command: str, wait_s: float = BUNDLE_LOCK_WAIT_S) -> Iterator[None]:
    """Holds the one-writer lock of `bundle` (an existing bundle or the path a new one will take) for the block;
    re-entrant within a process. CromeError when another process holds it for longer than `wait_s`."""
    target = Path(bundle).absolute()
    if target in _HELD:
        _HELD[target] += 1
        try:
            yield
        finally:
            _HELD[target] -= 1
        return
    if not target.parent.is_dir():  # nothing to lock beside; the writer says the directory is missing
        yield
        return
    lock = target.parent / f".{target.name}.lock"
    fd = _acquire(lock, target, command, wait_s)
    _HELD[target] = 1
    try:
        yield
    finally:
        del _HELD[target]
        lock.unlink(missing_ok=True)  # while still held: a waiter then finds its inode gone and opens the new file
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _acquire(lock: Path, target: Path, command: str, wait_s: float) -> int:
    deadline, said = time.monotonic() + wait_s, False
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another crome-edge command"
            os.close(fd)
            if time.monotonic() >= deadline:
                raise CromeError(f"bundle {target} is being changed by {holder}; nothing was changed. One command "
                                 f"changes a bundle at a time: run this again when it has finished") from None
            if not said:
                print(f"crome-edge: waiting for {holder} to finish changing {target} (up to {wait_s:g} s)",
                      file=sys.stderr)
                said = True
            time.sleep(0.1)
            continue
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino  # the holder before us may have removed it
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"`crome-edge {command}` (pid {os.getpid()})".encode(), 0)
            return fd
        os.close(fd)


class CachedFileAltered(CromeError):
    """A file of the export cache no longer holds the bytes its entry recorded (edited in place, e.g. through a
    bundle that hard-links it)."""

    def __init__(self, source: Path):
        super().__init__(f"{source} in the export cache was changed after it was cached (sha256 differs; a bundle file "
                         "linked to it edited in place?); its entry was removed: export again to rebuild it")
        self.source = source


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
        if self.target.exists() or self.target.is_symlink():
            why = not_a_bundle(self.target)
            if why:
                raise CromeError(f"--force replaces only a bundle, and {self.target} is not one ({why}); nothing was "
                                 "changed. Choose another --out (a new directory name such as line3.bundle)")
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

    def link_file(self, source: Path, name: str, entry: FileEntry) -> FileEntry:
        """A file another bundle already holds, whose sha256 was just checked against `entry`: hard-linked where the
        file system allows (bundle files are never written in place), else copied and hashed on the way."""
        assert self.staging is not None, "use BundleWriter as a context manager"
        try:
            os.link(source, self.staging / name)
        except OSError:
            return self.add_file(source, name, entry.precision, entry.sha256)
        self.files[name] = FileEntry(sha256=entry.sha256, bytes=entry.bytes, precision=entry.precision)
        return self.files[name]

    def add_cached(self, source: Path, name: str, precision: str, sha256: str) -> FileEntry:
        """A file of the export cache (crome_export.parts_cache: never written in place) whose entry recorded `sha256`:
        hard-linked where the file system allows (no copy of the backbone's hundreds of MB), else copied; hashed
        either way, so every byte the bundle ships is checked once. CachedFileAltered when the bytes are not the
        recorded ones (nothing is staged under `name` then)."""
        assert self.staging is not None, "use BundleWriter as a context manager"
        target = self.staging / name
        try:
            os.link(source, target)
        except OSError:  # another file system, or no hard links there: a copy, hashed as it is written
            entry = self._write(name, _read_chunks(source), precision)
        else:
            entry = FileEntry(sha256=sha256_file(target), bytes=target.stat().st_size, precision=precision)
        if entry.sha256 != sha256:
            target.unlink()
            self.files.pop(name, None)
            raise CachedFileAltered(source)
        self.files[name] = entry
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
    def candidate(self, manifest: Manifest) -> Path:
        """The staging directory as a loadable bundle of the files added so far (a provisional manifest.json
        listing them), so the exporter can measure the very files it ships; commit() rewrites the manifest."""
        assert self.staging is not None, "use BundleWriter as a context manager"
        manifest.files = dict(sorted(self.files.items()))
        try:
            _write_chunks(self.staging / formats.MANIFEST_FILE, [manifest.to_json().encode()])
        except OSError as error:
            raise self._error(error, f"writing the candidate {formats.MANIFEST_FILE}") from None
        return self.staging

    def commit(self, manifest: Manifest) -> Path:
        """Writes manifest.json and moves the bundle into place; returns the bundle path."""
        staging = self.staging
        assert staging is not None, "use BundleWriter as a context manager"
        manifest.files = dict(sorted(self.files.items()))
        try:
            _write_chunks(staging / formats.MANIFEST_FILE, [manifest.to_json().encode()])
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(staging, 0o777 & ~umask)  # mkdtemp made it 0700; a bundle is read by the server's user
            with bundle_lock(self.target, "export"):  # held already by bundle add/remove, for their whole change
                if self.target.exists() or self.target.is_symlink():
                    self.check_target()  # again, under the lock: another writer may have put a bundle there
                if not self.target.exists():
                    os.rename(staging, self.target)
                    self.staging = None
                elif exchange(staging, self.target):
                    pass  # self.staging now holds the old bundle; __exit__ removes it
                else:
                    self._replace_with_rollback()
        except OSError as error:
            raise self._error(error, "moving the bundle into place") from None
        return self.target

    def _replace_with_rollback(self) -> None:
        """Two renames where an atomic exchange is unavailable; the old bundle is put back if the second fails."""
        staging = self.staging
        assert staging is not None, "use BundleWriter as a context manager"
        old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old-", dir=self.target.parent))
        try:
            os.rename(self.target, old / "bundle")
            os.rename(staging, self.target)
            self.staging = None
        except BaseException:  # a signal may land between the renames: decide from the disk, not from flags
            if not self.target.exists() and (old / "bundle").exists():
                os.rename(old / "bundle", self.target)
            raise
        finally:
            if self.target.exists():  # never delete the only copy
                shutil.rmtree(old, ignore_errors=True)

    def _error(self, error: OSError, doing: str) -> CromeError:
        keep = f"; the existing bundle at {self.target} is unchanged" if self.target.exists() else ""
        if error.errno == errno.ENOSPC:
            return CromeError(f"disk full while {doing} for {self.target}: free some space and export again{keep}")
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return CromeError(f"permission denied while {doing} for {self.target} ({error.strerror}){keep}")
        return CromeError(f"cannot write the bundle {self.target}: {doing} failed ({error}){keep}")
