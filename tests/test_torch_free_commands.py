"""The torch-free commands (run, serve, verify, client, triton-repo, tritonserver) with only the runtime's
dependencies: one subprocess in which importing torch, transformers, onnx, gguf or crome_export fails
(test_runtime_cli.torch_blocked_env) runs each through crome_cli.main, and no blocked module may load.
serve's start-up and shutdown without torch: tests/test_serve_camera.py (a looped video, SIGTERM; no --bundle)."""
import json
import subprocess
import sys
import textwrap

import cv2
import pytest
from tests.support.bundles import QUESTION, colour_image, tiny_bundle
from tests.support.torch_blocked import BLOCKED, torch_blocked_env

SCRIPT = """
import json, sys
import importlib
try:
    importlib.import_module("torch")
except ImportError:  # the blocker refused it: what this process must be like
    blocked = True
else:
    blocked = False
if not blocked:
    raise SystemExit("the blocker did not load")
from crome_cli.main import main

bundle, image, out = sys.argv[1:4]
codes = {{}}
for command in ("run", "serve", "verify", "client", "triton-repo", "tritonserver"):
    codes[command + " --help"] = main([command, "--help"])
codes["run"] = main(["run", "--bundle", bundle, "--image", image, "--prompt", {question!r}, "--threads", "1"])
codes["verify"] = main(["verify", bundle, "--threads", "1"])
codes["triton-repo"] = main(["triton-repo", bundle, out + "/repo"])
codes["tritonserver without Triton"] = main(["tritonserver", out + "/repo", "--triton-home", out, "--print-command"])
codes["client, bad camera"] = main(["client", "--triton", "http://127.0.0.1:9", "--camera", "demo:x"])

from crome_cli.client import ClientConfig, _sources  # the client's demo camera: the synthetic conveyor, torch-free
(source,), _ = _sources(["demo"], ClientConfig(demo_fps=1000), loop=False)
capture = source.open()
ok, frame = capture.read()
codes["client demo camera frame"] = list(frame.shape) if ok else None
capture.release()
leaked = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r})
print(json.dumps({{"codes": codes, "leaked": leaked}}))
"""


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)


def test_torch_free_commands_run_with_torch_blocked(paths, tmp_path):
    image = tmp_path / "red.png"
    cv2.imwrite(str(image), colour_image("red", 42))
    script = textwrap.dedent(SCRIPT.format(question=QUESTION, blocked=BLOCKED))
    done = subprocess.run([sys.executable, "-c", script, str(paths["bundle"]), str(image), str(tmp_path)],
                          env=torch_blocked_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    codes = result.pop("codes")
    assert result == {"leaked": []}
    assert all(codes[f"{c} --help"] == 0 for c in ("run", "serve", "verify", "client", "triton-repo", "tritonserver"))
    assert codes["run"] == 0 and "red" in done.stdout
    assert codes["verify"] == 0, done.stderr[-3000:]
    assert codes["triton-repo"] == 0 and (tmp_path / "repo" / "crome" / "config.pbtxt").is_file()
    assert codes["tritonserver without Triton"] == 2 and "has no bin/tritonserver" in done.stderr
    assert codes["client, bad camera"] == 2 and "demo cameras are demo or demo:SEED" in done.stderr
    assert codes["client demo camera frame"]
    assert "Traceback" not in done.stderr and "blocked" not in done.stderr
