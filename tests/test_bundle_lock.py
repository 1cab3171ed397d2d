"""One writer per bundle (issue 21 row 3): two `bundle add`s at once both said "added" and one adapter was gone.

Every command that changes a bundle holds crome_export.bundle.bundle_lock (flock beside the bundle) from reading it
to committing it; a second writer waits up to BUNDLE_LOCK_WAIT_S, then is refused, saying who holds the bundle —
never a lost update. Real processes throughout: two mutating commands at once (the end state must agree with what
each said), and each mutating command against a process that holds the lock (refused, the bundle unchanged).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.bundles import cache_env, multi_bundle

from crome_runtime.limits import BUNDLE_LOCK_WAIT_S

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "export"), str(ROOT / "runtime")]),
       "OMP_NUM_THREADS": "1"}
HOLD = ("import sys, time\nfrom crome_export.bundle import bundle_lock\n"
        "with bundle_lock(sys.argv[1], 'bundle add'):\n    print('held', flush=True)\n    time.sleep(float(sys.argv[2]))\n")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return multi_bundle(tmp_path_factory)


def _start(argv: list[str], cache: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "crome_cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**ENV, "CROME_EDGE_CACHE": str(cache)}, stdin=subprocess.DEVNULL)


def _adapters(bundle: Path) -> list[str]:
    return [a["name"] for a in json.loads((bundle / "manifest.json").read_text())["adapters"]]


def _files(bundle: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(bundle.iterdir()) if p.is_file()}


def _hold(bundle: Path, seconds: float) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(bundle), str(seconds)], stdout=subprocess.PIPE, text=True,
                              env=ENV)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_two_removes_at_once_never_lose_one(setup, tmp_path):
    bundle = shutil.copytree(setup["both"], tmp_path / "b.bundle")
    runs = [_start(["bundle", "remove", str(bundle), name], setup["root"] / "cache") for name in ("colour", "warm")]
    results = [(run.wait(timeout=300), run.stderr.read() if run.stderr else "") for run in runs]
    removed = {name for name, (code, _) in zip(("colour", "warm"), results) if code == 0}
    for code, err in results:
        assert code == 0 or (code == 2 and "is being changed by `crome-edge bundle remove`" in err), err
    assert set(_adapters(bundle)) == {"colour", "warm"} - removed  # what each said is what happened


def test_an_add_and_a_remove_at_once_never_lose_one(setup, tmp_path):
    bundle = shutil.copytree(setup["both"], tmp_path / "b.bundle")
    subprocess.run([sys.executable, "-m", "crome_cli", "bundle", "remove", str(bundle), "warm"], check=True, env=ENV,
                   capture_output=True)
    with cache_env(setup["root"] / "cache"):
        add = _start(["bundle", "add", str(bundle), "--adapter", str(setup["warm"]), "--threads", "1"],
                     setup["root"] / "cache")
        time.sleep(0.5)
        remove = _start(["bundle", "remove", str(bundle), "colour"], setup["root"] / "cache")
        (add_code, add_err), (remove_code, remove_err) = [(p.wait(timeout=600), p.stderr.read() if p.stderr else "")
                                                          for p in (add, remove)]
    for code, err in ((add_code, add_err), (remove_code, remove_err)):
        assert code == 0 or (code == 2 and "is being changed by `crome-edge bundle" in err), err
    expected = ({"colour"} - ({"colour"} if remove_code == 0 else set())) | ({"warm"} if add_code == 0 else set())
    assert set(_adapters(bundle)) == expected


@pytest.mark.parametrize("command", ["bundle remove", "bundle add", "build-engines", "export --force"])
def test_every_mutating_command_is_refused_while_another_holds_the_bundle(command, setup, tmp_path):
    bundle = shutil.copytree(setup["both"], tmp_path / "b.bundle")
    before = _files(bundle)
    argv = {"bundle remove": ["bundle", "remove", str(bundle), "warm"],
            "bundle add": ["bundle", "add", str(bundle), "--adapter", str(setup["warm"]), "--replace", "--threads", "1"],
            "build-engines": ["build-engines", str(bundle)],
            "export --force": ["export", "--adapter", str(setup["adapter"]), "--out", str(bundle), "--force",
                               "--precision", "fp32", "--threads", "1"]}[command]
    holder = _hold(bundle, 900)
    try:
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "crome_cli", *argv], capture_output=True, text=True, timeout=900,
                                env={**ENV, "CROME_EDGE_CACHE": str(setup["root"] / "cache")}, stdin=subprocess.DEVNULL)
    finally:
        holder.kill()
        holder.wait()
    error = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert result.returncode == 2 and len(error) == 1, result.stderr
    assert "is being changed by `crome-edge bundle add` (pid" in error[0] and "nothing was changed" in error[0]
    assert time.monotonic() - started >= BUNDLE_LOCK_WAIT_S  # it waited for the holder first
    assert _files(bundle) == before


def test_a_waiting_writer_goes_on_when_the_holder_finishes(setup, tmp_path):
    bundle = shutil.copytree(setup["both"], tmp_path / "b.bundle")
    holder = _hold(bundle, 2)
    result = subprocess.run([sys.executable, "-m", "crome_cli", "bundle", "remove", str(bundle), "warm"],
                            capture_output=True, text=True, timeout=300, env=ENV)
    holder.wait()
    assert result.returncode == 0 and "waiting for `crome-edge bundle add`" in result.stderr, result.stderr
    assert _adapters(bundle) == ["colour"]
    assert not list(tmp_path.glob(".*.lock"))  # the lock file goes with its last holder
