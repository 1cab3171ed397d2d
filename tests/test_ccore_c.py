"""Builds the C test programs in tests/c/ with the C core under AddressSanitizer + UndefinedBehaviorSanitizer and
runs them, once with the library's tuned flags (-march=native) and once with the portable ones; and cross-built
for aarch64 (the Jetson's NEON paths) under qemu-user."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "runtime" / "csrc"
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g"]
ENV = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1"}


def _compiler_with_sanitizers(tmp: Path) -> str | None:
    cc = shutil.which(os.environ.get("CC", "gcc"))
    if cc is None:
        return None
    probe = tmp / "probe.c"
    probe.write_text("#include <stdlib.h>\nint main(void) { free(malloc(1)); return 0; }\n")
    built = subprocess.run([cc, *SANITIZE, str(probe), "-o", str(tmp / "probe")], capture_output=True)
    if built.returncode != 0:
        return None
    ran = subprocess.run([str(tmp / "probe")], capture_output=True, env=ENV)
    return cc if ran.returncode == 0 else None


# The C test programs (tests/c/) and the line each prints when every check passed.
PROGRAMS = [("test_crome_core", "all C core checks passed"),  # preprocess, gated projection, sampler
            ("test_qdecode", "all qdecode checks passed")]  # block-quantised kernels, thread pool, decode step


@pytest.mark.parametrize("program, passed", PROGRAMS)
@pytest.mark.parametrize("target", [["-march=native"], []], ids=["native", "portable"])
def test_c_core_under_sanitizers(tmp_path, target, program, passed):
    """The AVX2 / AVX-512 paths are chosen at run time, so the portable build runs them too."""
    cc = _compiler_with_sanitizers(tmp_path)
    if cc is None:
        pytest.skip("no C compiler with working -fsanitize=address,undefined (set CC to one that has it)")
    exe = tmp_path / program
    sources = sorted(str(p) for p in CSRC.glob("*.c"))
    cmd = [cc, "-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", "-pthread", *target, *SANITIZE, f"-I{CSRC}",
           str(ROOT / "tests" / "c" / f"{program}.c"), *sources, "-lm", "-o", str(exe)]
    built = subprocess.run(cmd, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    ran = subprocess.run([str(exe)], capture_output=True, text=True, env=ENV, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert passed in ran.stdout


ARM_CC, ARM_QEMU = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")


@pytest.mark.skipif(ARM_CC is None or ARM_QEMU is None,
                    reason="needs gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user (CI installs them)")
@pytest.mark.parametrize("program, passed", PROGRAMS)
def test_c_core_on_aarch64_under_qemu(tmp_path, program, passed):
    """The Jetson's build: the C core cross-compiled for aarch64 (its NEON kernels included) and its C checks run
    under qemu-user, so an ARM-only path is compiled and tested on every CI run, not first on the device."""
    exe = tmp_path / program
    sources = sorted(str(p) for p in CSRC.glob("*.c"))
    cmd = [ARM_CC, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-static", f"-I{CSRC}",
           str(ROOT / "tests" / "c" / f"{program}.c"), *sources, "-lm", "-lpthread", "-o", str(exe)]
    built = subprocess.run(cmd, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    ran = subprocess.run([ARM_QEMU, str(exe)], capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert passed in ran.stdout
