"""A short coverage-guided fuzzing run (tests/fuzz_headers.py: atheris over the image-header and safetensors-header
readers) in CI; the longer command is in that file. Skipped where atheris is not installed (it ships wheels for
Linux x86-64 up to the Python versions pyproject's test extra names)."""
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

RUNS = 3000  # about two seconds here


def test_short_fuzzing_run_finds_nothing(tmp_path):
    pytest.importorskip("atheris")
    harness = Path(__file__).with_name("fuzz_headers.py")
    # A clean environment: variables that other tests of the same pytest process set must not change what the fuzzer
    # runs. libFuzzer's rss check reads the peak RSS, and Linux carries the forking process's peak across exec: inside
    # the whole suite this pytest process holds GBs of models, which libFuzzer took for its own (out-of-memory at
    # 3.4 GB on the first input). So the cap is the harness's 2 GB on top of this process's peak.
    env = {name: os.environ[name] for name in ("PATH", "HOME", "PYTHONPATH", "TMPDIR", "LANG") if name in os.environ}
    rss_limit_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024 + 2048
    proc = subprocess.run([sys.executable, str(harness), f"-runs={RUNS}", "-seed=1", "-max_len=4096",
                           f"-rss_limit_mb={rss_limit_mb}",
                           str(tmp_path / "corpus")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600, env={**env, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"Done {RUNS} runs" in proc.stderr
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("timeout-*"))
