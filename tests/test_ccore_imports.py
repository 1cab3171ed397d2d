"""The C core's Python side imports without torch/transformers and says how to fix a missing or stale library."""

import shutil
import subprocess
import sys

import pytest

from crome_runtime import ccore


def test_build_info_names_the_simd_target():
    if not ccore.available():
        pytest.skip("C core not built (pip install -e .)")
    assert "floats per vector" in ccore.build_info()


def test_runtime_modules_import_without_torch():
    code = (
        "import sys\n"
        "import crome_runtime.ccore, crome_runtime.preprocess, crome_runtime.sampling\n"
        "heavy = {'torch', 'transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def fresh_library():
    ccore.library.cache_clear()
    yield
    ccore.library.cache_clear()


def test_missing_library_names_the_fix(monkeypatch, fresh_library):
    monkeypatch.setattr(ccore, "_library_path", lambda: None)
    with pytest.raises(ccore.CoreUnavailable, match=r"not built .*pip install -e \."):
        ccore.library()
    assert not ccore.available()
    assert issubclass(ccore.CoreUnavailable, ImportError)


def test_stale_library_is_refused(tmp_path, monkeypatch, fresh_library):
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build a stale stand-in library")
    src = tmp_path / "old.c"
    src.write_text("int crome_abi_version(void) { return 1; }\n")
    lib = tmp_path / "_crome_core_old.so"
    subprocess.run([cc, "-shared", "-fPIC", str(src), "-o", str(lib)], check=True)
    monkeypatch.setattr(ccore, "_library_path", lambda: lib)
    with pytest.raises(ccore.CoreUnavailable, match=rf"C ABI 1, this crome_runtime needs {ccore.ABI_VERSION}: the library is stale; rebuild it"):
        ccore.library()
