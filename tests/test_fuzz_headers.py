"""A short coverage-guided fuzzing run (tests/fuzz_headers.py: atheris over the image-header and safetensors-header
readers) in CI; the longer command is in that file. Skipped where atheris is not installed (it ships wheels for
Linux x86-64 up to the Python versions pyproject's test extra names)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

RUNS = 3000  # about two seconds here


def test_short_fuzzing_run_finds_nothing(tmp_path):
    pytest.importorskip("atheris")
    harness = Path(__file__).with_name("fuzz_headers.py")
    # A clean environment: variables that other tests of the same pytest process set (caches, OpenCV, threads) must
    # not change what the fuzzer runs; libFuzzer's memory cap stated, not defaulted
    env = {name: os.environ[name] for name in ("PATH", "HOME", "PYTHONPATH", "TMPDIR", "LANG") if name in os.environ}
    proc = subprocess.run([sys.executable, str(harness), f"-runs={RUNS}", "-seed=1", "-max_len=4096", "-rss_limit_mb=2048",
                           str(tmp_path / "corpus")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600, env={**env, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"Done {RUNS} runs" in proc.stderr
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("timeout-*"))
