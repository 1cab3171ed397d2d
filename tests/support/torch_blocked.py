"""A child process in which torch and the export side cannot be imported: the proof that the runtime and the
torch-free commands need only the runtime's dependencies (test_runtime_cli, test_torch_free_commands, test_verify,
test_serve_camera)."""
from __future__ import annotations

import os

BLOCKED = ("torch", "transformers", "onnx", "onnxscript", "gguf", "crome_export")

BLOCKER = """
import sys

BLOCKED = {blocked!r}


class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked: the runtime must work without it")
        return None


sys.meta_path.insert(0, _Blocked())
"""


def torch_blocked_env(tmp_path, blocked: tuple[str, ...] = BLOCKED) -> dict:
    """The environment of a process in which importing torch, transformers, onnx or crome_export (`blocked`) fails: a
    sitecustomize ahead of the caller's PYTHONPATH (kept, so the child imports the same checkout as the test)."""
    blocker = tmp_path / "blocker"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(BLOCKER.format(blocked=blocked))
    path = os.pathsep.join(p for p in (str(blocker), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
