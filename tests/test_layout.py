"""The package layout: every package's folder is its import name, nothing is importable under two names, and a
type checker resolves every project import with no path configuration (as IDEs and import-graph tools do)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"crome_edge": ROOT / "crome_edge", "crome_export": ROOT / "export" / "crome_export",
            "crome_runtime": ROOT / "runtime" / "crome_runtime"}


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_each_package_lives_in_a_folder_of_its_own_name(name):
    module = __import__(name)
    assert Path(module.__file__).parent == PACKAGES[name]
    assert (PACKAGES[name] / "py.typed").is_file()  # PEP 561: type checkers read the annotations


@pytest.mark.parametrize("alias", ["runtime.crome_runtime", "export.crome_export", "runtime.crome_runtime.formats"])
def test_no_module_is_importable_under_a_second_name(alias):
    """From the repository root the top-level folders are namespace packages; importing through them is refused."""
    result = subprocess.run([sys.executable, "-c", f"import {alias}"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "one module, one name" in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mypy") is None and subprocess.run([sys.executable, "-m", "mypy", "--version"],
                    capture_output=True).returncode != 0, reason="mypy is not installed (pip install mypy)")
def test_mypy_resolves_every_project_import_from_outside_the_repository(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mypy", "-p", "crome_edge", "-p", "crome_export", "-p", "crome_runtime",
                             "--cache-dir", str(tmp_path / "cache")], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    unresolved = [line for line in result.stdout.splitlines()
                  if "import-not-found" in line and "crome" in line.split("module named", 1)[-1]]
    assert "cannot be type checked" not in result.stdout + result.stderr
    assert not unresolved, "\n".join(unresolved)
    assert "Found" in result.stdout or "Success" in result.stdout  # mypy ran over the packages
