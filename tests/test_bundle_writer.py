"""BundleWriter: `--force` replaces only a bundle, and the replacement is safe at every step.

A failure is injected at each step of the commit (the atomic exchange, each of the fallback's two renames,
a SIGTERM arriving between them); after each, the target is the complete old bundle or the complete new
one, and no temporary directory is left beside it.
"""
import json
import os
from pathlib import Path

import pytest

from crome_cli.main import Terminated, main
from crome_edge.errors import CromeError
from crome_export import bundle as bundle_module
from crome_export.bundle import BundleWriter, not_a_bundle
from crome_runtime import formats

SHIPPED_ADAPTER = Path(__file__).resolve().parent.parent / "crome_edge" / "weights" / "line3.safetensors"


class _Manifest:
    """What BundleWriter.commit needs of a manifest: `files` and `to_json` (the real schema is tested elsewhere)."""

    def __init__(self, version: str):
        self.version, self.files = version, {}

    def to_json(self) -> str:
        files = {name: vars(entry) for name, entry in self.files.items()}
        return json.dumps({"format": formats.BUNDLE_FORMAT, "version": self.version, "files": files})


def _write_bundle(target: Path, version: str, force: bool = False) -> Path:
    with BundleWriter(target, force) as writer:
        writer.add_bytes("weights.bin", version.encode() * 1000)
        writer.add_bytes("notes.txt", f"bundle {version}".encode())
        return writer.commit(_Manifest(version))


def _version(target: Path) -> str:
    manifest = json.loads((target / formats.MANIFEST_FILE).read_text())
    assert (target / "notes.txt").read_text() == f"bundle {manifest['version']}"  # complete, not mixed
    assert (target / "weights.bin").read_bytes() == manifest["version"].encode() * 1000
    return manifest["version"]


def _debris(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


def test_force_replaces_a_bundle_atomically(tmp_path):
    target = _write_bundle(tmp_path / "line3.bundle", "old")
    assert _write_bundle(target, "new", force=True) == target
    assert _version(target) == "new" and not _debris(tmp_path)


@pytest.mark.parametrize("layout", ["working directory", "bundle with a user's file", "manifest of something else",
                                    "plain file", "symlink to a bundle"])
def test_force_refuses_anything_that_is_not_a_bundle_and_changes_nothing(tmp_path, layout):
    target = tmp_path / "target"
    if layout == "working directory":
        target.mkdir()
        (target / "train.py").write_text("print('my code')")
        (target / "data").mkdir()
    elif layout == "bundle with a user's file":
        _write_bundle(target, "old")
        (target / "my_notes.md").write_text("mine")
    elif layout == "manifest of something else":
        target.mkdir()
        (target / formats.MANIFEST_FILE).write_text('{"name": "my web app"}')
    elif layout == "plain file":
        target.write_text("not a directory")
    else:
        real = _write_bundle(tmp_path / "real.bundle", "old")
        target.symlink_to(real)
    before = sorted((p.relative_to(tmp_path), p.is_dir() or p.read_bytes()) for p in tmp_path.rglob("*"))
    with pytest.raises(CromeError, match="replaces only a bundle"):
        BundleWriter(target, force=True).check_target()
    assert sorted((p.relative_to(tmp_path), p.is_dir() or p.read_bytes()) for p in tmp_path.rglob("*")) == before


def test_export_force_into_the_working_directory_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    work = tmp_path / "project"
    work.mkdir()
    (work / "line3.safetensors").write_bytes(SHIPPED_ADAPTER.read_bytes())
    (work / "notes.txt").write_text("keep me")
    monkeypatch.chdir(work)
    assert main(["export", "--adapter", "line3.safetensors", "--out", ".", "--force"]) == 2
    assert "replaces only a bundle" in capsys.readouterr().err
    assert sorted(p.name for p in work.iterdir()) == ["line3.safetensors", "notes.txt"]


def test_not_a_bundle_accepts_a_bundle_with_built_engines(tmp_path):
    target = _write_bundle(tmp_path / "b.bundle", "old")
    (target / formats.ENGINES_DIR).mkdir()
    assert not_a_bundle(target) is None


class _FailingRename:
    """os.rename that raises on call number `fail_at` (1-based); the others rename."""

    def __init__(self, fail_at: int, error: BaseException):
        self.calls, self.fail_at, self.error, self.rename = 0, fail_at, error, os.rename

    def __call__(self, a, b):
        self.calls += 1
        if self.calls == self.fail_at:
            raise self.error
        self.rename(a, b)


@pytest.mark.parametrize("step", ["exchange", "fallback rename 1", "fallback rename 2", "SIGTERM between renames"])
def test_a_failure_at_any_commit_step_keeps_the_old_bundle_whole(tmp_path, monkeypatch, step):
    target = _write_bundle(tmp_path / "line3.bundle", "old")
    if step == "exchange":
        def broken_exchange(a, b):
            raise OSError(5, "I/O error")
        monkeypatch.setattr(bundle_module, "exchange", broken_exchange)
        expected = CromeError
    else:
        monkeypatch.setattr(bundle_module, "exchange", lambda a, b: False)  # a platform without renameat2
        fail_at = 1 if step == "fallback rename 1" else 2
        error = Terminated() if step.startswith("SIGTERM") else OSError(28, "No space left on device")
        monkeypatch.setattr(bundle_module.os, "rename", _FailingRename(fail_at, error))
        expected = Terminated if step.startswith("SIGTERM") else CromeError
    with pytest.raises(expected):
        _write_bundle(target, "new", force=True)
    assert _version(target) == "old" and not _debris(tmp_path)


def test_without_the_atomic_exchange_the_fallback_still_replaces(tmp_path, monkeypatch):
    target = _write_bundle(tmp_path / "line3.bundle", "old")
    monkeypatch.setattr(bundle_module, "exchange", lambda a, b: False)
    _write_bundle(target, "new", force=True)
    assert _version(target) == "new" and not _debris(tmp_path)


def test_exchange_swaps_two_directories_on_this_platform(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    if not bundle_module.exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here; the two-rename fallback is used")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"
