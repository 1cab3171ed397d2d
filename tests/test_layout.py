"""The package layout: every package's folder is its import name, nothing is importable under two names, and a
type checker resolves every project import with no path configuration (as IDEs and import-graph tools do)."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"crome_edge": ROOT / "crome_edge", "crome_export": ROOT / "export" / "crome_export",
            "crome_runtime": ROOT / "runtime" / "crome_runtime", "crome_cli": ROOT / "export" / "crome_cli"}
# Dependencies point one way (docs/architecture.md §1): a package imports only the packages before it.
LAYERS = ["crome_runtime", "crome_edge", "crome_export", "crome_cli"]


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_each_package_lives_in_a_folder_of_its_own_name(name):
    module = __import__(name)
    assert Path(module.__file__).parent == PACKAGES[name]
    assert (PACKAGES[name] / "py.typed").is_file()  # PEP 561: type checkers read the annotations


@pytest.mark.parametrize("alias", ["runtime.crome_runtime", "export.crome_export", "runtime.crome_runtime.formats",
                                   "export.crome_cli"])
def test_no_module_is_importable_under_a_second_name(alias):
    """From the repository root the top-level folders are namespace packages; importing through them is refused."""
    result = subprocess.run([sys.executable, "-c", f"import {alias}"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "one module, one name" in result.stderr


@pytest.mark.skipif(shutil.which("mypy") is None and subprocess.run([sys.executable, "-m", "mypy", "--version"],
                    capture_output=True).returncode != 0, reason="mypy is not installed (pip install mypy)")
def test_mypy_resolves_every_project_import_from_outside_the_repository_and_finds_no_errors(tmp_path):
    """Types as a habit: mypy over all four packages, run from outside the repository (no path configuration)
    with the repository's [tool.mypy] settings, reports 0 errors. Its incremental cache lives in the repository's
    .mypy_cache/ (gitignored), so a run after a small change re-checks only what changed."""
    result = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                             "--cache-dir", str(ROOT / ".mypy_cache"),
                             "-p", "crome_edge", "-p", "crome_export", "-p", "crome_runtime", "-p", "crome_cli"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=900)
    unresolved = [line for line in result.stdout.splitlines()
                  if "import-not-found" in line and "crome" in line.split("module named", 1)[-1]]
    assert "cannot be type checked" not in result.stdout + result.stderr
    assert not unresolved, "\n".join(unresolved)
    assert result.returncode == 0 and "Success: no issues found" in result.stdout, result.stdout[-6000:] + result.stderr


def _imported_packages(path: Path) -> dict[str, int]:
    """The project packages a module imports anywhere in it (function-level imports too), each with a line."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            if name.split(".")[0] in LAYERS:
                found.setdefault(name.split(".")[0], node.lineno)
    return found


def test_dependencies_point_one_way():
    """runtime <- edge <- export <- cli, read from every module's imports: no package imports one after it, so
    there is no package-level cycle and the torch-free runtime never pulls in the PyTorch side or the commands."""
    wrong = []
    for rank, package in enumerate(LAYERS):
        for path in sorted(PACKAGES[package].rglob("*.py")):
            for imported, line in _imported_packages(path).items():
                if LAYERS.index(imported) > rank:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} ({package}) imports {imported}")
    assert not wrong, "imports against the layering " + " <- ".join(LAYERS) + ":\n" + "\n".join(wrong)


def test_the_libraries_hold_no_commands():
    """The commands live in crome_cli; the crome_edge root shows the model (no `cli.py` or `*_cli.py` in a library)."""
    stray = [str(path.relative_to(ROOT)) for package in LAYERS[:-1] for path in PACKAGES[package].rglob("*.py")
             if path.stem in ("cli", "cli_types") or path.stem.endswith("_cli")]
    assert not stray, stray


def test_test_modules_share_helpers_through_tests_support_only():
    """A test module imports no other test module (tests/test_*.py): what several need lives in tests/support/,
    fixtures in tests/conftest.py. Helper modules stay inside tests/support/ (tests/ holds test_*.py, conftest.py
    and the fuzz harness)."""
    tests = ROOT / "tests"
    local = {path.stem for path in tests.glob("*.py")} | {"support"}
    wrong = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            else:
                continue
            for name in names:
                parts = name.split(".")
                bare = parts[0] in local  # `from test_x import` / `from serve_support import`: sys.path-dependent
                other_test = parts[0] == "tests" and len(parts) > 1 and parts[1].startswith("test_")
                if bare or other_test or any(part.startswith("test_") for part in parts[1:]):
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not wrong, "import shared helpers from tests.support:\n" + "\n".join(wrong)
    helpers = sorted(path.name for path in tests.glob("*.py")
                     if not path.stem.startswith("test_") and path.name not in ("__init__.py", "conftest.py", "fuzz_headers.py"))
    assert not helpers, f"helper modules belong in tests/support/: {helpers}"
