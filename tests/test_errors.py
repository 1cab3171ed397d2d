"""One error root: every crome-edge exception is a CromeError, defined in a leaf module, carrying what the CLI's
exit status and the server's HTTP answer need; the CLI and the HTTP layer read it from the error."""
import ast
import builtins
import subprocess
import sys
import types
from pathlib import Path

import pytest

from crome_cli import main as cli
from crome_runtime.errors import CromeError, PromptTooLong
from crome_runtime.manifest import BundleError
from crome_runtime.serve.protocol import ApiError
from crome_runtime.serve.worker import NoFrame

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = [ROOT / "crome_edge", ROOT / "export" / "crome_export", ROOT / "export" / "crome_cli",
            ROOT / "runtime" / "crome_runtime"]
# Not errors: SIGTERM raised as Ctrl-C is, so that every `finally` runs (crome_cli.main.Terminated).
NOT_ERRORS = {"Terminated"}


def _classes() -> dict[str, list[str]]:
    """Every class the packages define -> the names of its bases (a name defined twice keeps both lists)."""
    classes: dict[str, list[str]] = {}
    for package in PACKAGES:
        for path in package.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef):
                    bases = [b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else ""
                             for b in node.bases]
                    classes.setdefault(node.name, []).extend(bases)
    return classes


def test_every_project_exception_derives_from_crome_error():
    classes = _classes()
    builtin = {name for name, value in vars(builtins).items() if isinstance(value, type) and issubclass(value, BaseException)}

    def chain(name: str, seen=()) -> set[str]:
        found = set()
        for base in classes.get(name, []):
            if base not in seen:
                found |= {base} | chain(base, seen + (name,))
        return found

    exceptions = [name for name in classes if chain(name) & builtin]
    assert len(exceptions) > 25  # the walk found them
    strays = [name for name in exceptions if "CromeError" not in chain(name) and name != "CromeError"
              and name not in NOT_ERRORS]
    assert not strays, f"exceptions that do not derive from CromeError: {strays}"


def test_the_root_is_a_leaf_module():
    """crome_runtime/errors.py imports nothing, so catching a crome-edge error loads no cv2, numpy or torch."""
    tree = ast.parse((ROOT / "runtime" / "crome_runtime" / "errors.py").read_text(encoding="utf-8"))
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert all(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in imports)
    code = ("import sys; from crome_runtime.errors import CromeError; "
            "heavy = sorted(m for m in ('numpy', 'cv2', 'onnxruntime', 'torch') if m in sys.modules); print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_the_runtimes_errors_are_crome_errors_and_keep_their_second_base():
    from crome_edge.errors import CromeError as edge_name
    from crome_runtime.ccore import CoreUnavailable
    from crome_runtime.preprocess import ImageError
    from crome_runtime.serve.server import PortInUse

    assert edge_name is CromeError
    assert issubclass(BundleError, (CromeError, ValueError)) and issubclass(BundleError, ValueError)
    assert issubclass(ImageError, ValueError) and issubclass(CoreUnavailable, ImportError)
    assert issubclass(PortInUse, OSError) and issubclass(PortInUse, CromeError)


def test_cli_main_catches_every_crome_error_once_with_its_exit_status_and_hint(monkeypatch, capsys):
    class Odd(BundleError):
        exit_code = 3

    def run(args):
        raise Odd("the bundle is odd", hint="re-export it")

    fake = types.ModuleType("fake_command")
    fake.add_arguments = lambda parser: None
    fake.run = run
    monkeypatch.setitem(sys.modules, "fake_command", fake)
    monkeypatch.setitem(cli.COMMANDS, "fake", ("fake_command", "a command that fails"))
    assert cli.main(["fake"]) == 3
    err = capsys.readouterr().err
    assert err == "crome-edge fake: error: the bundle is odd; re-export it\n"


@pytest.mark.parametrize("error, status, code, param, retry", [
    (PromptTooLong("the question is 300 tokens"), 400, "context_length_exceeded", "messages", None),
    (NoFrame("the camera has not delivered a frame yet"), 503, "no_frame", None, "1"),
    (ApiError(409, "taken", code="adapter_rejected"), 409, "adapter_rejected", None, None),
])
def test_the_http_answer_is_read_from_the_error(error, status, code, param, retry):
    api = ApiError.of(error)
    assert api.http_status == status
    assert api.body()["error"] == {"message": str(error), "type": ApiError.TYPES.get(status, "invalid_request_error"),
                                   "param": param, "code": code}
    assert api.headers.get("Retry-After") == retry


@pytest.mark.parametrize("error", [BundleError("vision.onnx was altered"), ValueError("a bug")])
def test_a_server_side_failure_tells_the_client_only_that_the_log_has_it(error):
    api = ApiError.of(error)
    assert api.http_status == 500 and str(error) not in api.message and "log" in api.message
