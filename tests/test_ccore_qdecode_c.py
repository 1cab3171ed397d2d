"""Builds tests/c/test_qdecode.c (block-quantised kernels, thread pool, decode step) with the C core under
AddressSanitizer + UndefinedBehaviorSanitizer and runs it, with the tuned flags (-march=native) and the
portable ones: the AVX2 / AVX-512 paths are chosen at run time, so the portable build runs them too."""

import subprocess
from pathlib import Path

import pytest
from test_ccore_c import ENV, SANITIZE, _compiler_with_sanitizers

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "runtime" / "csrc"


@pytest.mark.parametrize("target", [["-march=native"], []], ids=["native", "portable"])
def test_qdecode_under_sanitizers(tmp_path, target):
    cc = _compiler_with_sanitizers(tmp_path)
    if cc is None:
        pytest.skip("no C compiler with working -fsanitize=address,undefined (set CC to one that has it)")
    exe = tmp_path / "test_qdecode"
    sources = sorted(str(p) for p in CSRC.glob("*.c"))
    cmd = [cc, "-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", "-pthread", *target, *SANITIZE, f"-I{CSRC}",
           str(ROOT / "tests" / "c" / "test_qdecode.c"), *sources, "-lm", "-o", str(exe)]
    built = subprocess.run(cmd, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    ran = subprocess.run([str(exe)], capture_output=True, text=True, env=ENV, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "all qdecode checks passed" in ran.stdout
