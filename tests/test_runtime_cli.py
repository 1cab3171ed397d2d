"""`crome-edge run` on the tiny bundle, the torch-free proof, and every bad input as a clear CLI error."""
import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import requires

import cv2
import pytest
from tests.support.bundles import QUESTION, colour_image, copy_bundle, rewrite_manifest, tiny_bundle
from tests.support.images import png_header
from tests.support.torch_blocked import BLOCKED, torch_blocked_env

from crome_cli.main import main
from crome_runtime import formats


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def red_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "red.png"
    cv2.imwrite(str(path), colour_image("red", 42))
    return path


def _run(paths, image, *extra):
    return main(["run", "--bundle", str(paths["bundle"]), "--image", str(image), "--threads", "1", *extra])


def test_run_streams_the_answer_and_says_what_ran(paths, red_png, capsys):
    assert _run(paths, red_png, "--prompt", QUESTION) == 0
    out, err = capsys.readouterr()
    assert out == "red\n"
    assert "on CPU" in err and "tokens, stop; first token" in err


def test_profile_writes_summary_and_chrome_trace(paths, red_png, tmp_path, capsys):
    profile = tmp_path / "out.json"
    assert _run(paths, red_png, "--prompt", QUESTION, "--prompt", "Which colour?", "--repeat", "3",
                "--profile", str(profile)) == 0
    out, err = capsys.readouterr()
    assert out.split("\n")[0] == "red" and out.count("\n") == 6  # 2 prompts x 3 rounds, one answer per line
    summary = json.loads(profile.read_text())
    assert summary["runs"] == 6 and summary["repeat"] == 3
    stages = summary["stages_ms"]
    for stage in ("capture", "preprocess", "vision", "adapter_visual", "tokenize", "adapter_text", "prefill",
                  "decode", "sample", "detokenize"):
        assert stages[stage]["count"] >= 3 and {"p50", "p90", "p99"} <= set(stages[stage])
    assert stages["capture"]["count"] == 3  # one frame per round, shared by both prompts
    assert summary["ttft_ms"]["count"] == 6 and summary["profiler"]["fraction_of_runs"] is not None
    assert summary["engine"]["providers"]["actual"]["decoder"] == ["CPUExecutionProvider"]
    trace = json.loads((tmp_path / summary["trace"]).read_text())
    assert sum(e["ph"] == "X" and e["name"] == "decode" for e in trace["traceEvents"]) == stages["decode"]["count"]
    assert "time to first token" in err and "out.trace.json" in err


def test_json_output(paths, red_png, capsys):
    assert _run(paths, red_png, "--prompt", QUESTION, "--json", "--max-new-tokens", "2") == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["answer"] == "re" and answer["finish_reason"] == "length" and len(answer["tokens"]) == 2


@pytest.mark.parametrize("case", ["missing_file", "altered_file", "newer_format", "not_a_bundle", "unreadable_image",
                                  "empty_image", "huge_image", "prompt_too_long", "cuda_unavailable", "bad_temperature",
                                  "bad_repeat"])
def test_bad_input_is_a_clear_error(case, paths, red_png, tmp_path, capsys):
    bundle, image, extra = paths["bundle"], red_png, ["--prompt", QUESTION]
    if case in ("missing_file", "altered_file", "newer_format"):
        bundle = copy_bundle(paths["bundle"], tmp_path / "b.bundle")
        if case == "missing_file":
            (bundle / formats.TOKENIZER_FILE).unlink()
        elif case == "altered_file":
            (bundle / formats.VISION_ONNX).write_bytes((bundle / formats.VISION_ONNX).read_bytes()[:-1] + b"x")
        else:
            rewrite_manifest(bundle, lambda m: m.update(format_version=99))
    elif case == "not_a_bundle":
        bundle = tmp_path
    elif case in ("unreadable_image", "empty_image", "huge_image"):
        image = tmp_path / "image.png"
        image.write_bytes({"unreadable_image": b"hello", "empty_image": png_header(0, 0),
                           "huge_image": png_header(20000, 20000)}[case])
    elif case == "prompt_too_long":
        extra = ["--prompt", "why " * 80]
    elif case == "cuda_unavailable":
        extra += ["--provider", "cuda"]
    elif case == "bad_temperature":
        extra += ["--temperature", "-1"]
    else:
        extra += ["--repeat", "0"]
    assert main(["run", "--bundle", str(bundle), "--image", str(image), *extra]) == 2
    err = capsys.readouterr().err
    expected = {
        "missing_file": "missing tokenizer.json", "altered_file": "vision.onnx was altered",
        "newer_format": "format version 99", "not_a_bundle": "not a crome-edge bundle",
        "unreadable_image": "not an image", "empty_image": "zero size", "huge_image": "pixel limit",
        "prompt_too_long": "Shorten the question", "cuda_unavailable": "available: ",
        "bad_temperature": "temperature", "bad_repeat": "--repeat",
    }[case]
    last = err.strip().splitlines()[-1]
    assert last.startswith("crome-edge run: error: ") and expected in last and "Traceback" not in err


# --- torch-free -----------------------------------------------------------------------------------------

ENGINE_SCRIPT = """
import sys
try:
    import torch
    raise SystemExit("the blocker did not load")
except ImportError as error:
    assert "blocked" in str(error), error
from crome_runtime import adapter_kernel, bundle, lru_cache, ccore, decoder, detokenize, engine, errors, formats, manifest, preprocess
from crome_runtime import profiler, prompt, providers, sampling
from crome_runtime.engine import Engine, EngineConfig

e = Engine.load(sys.argv[1], EngineConfig(threads=1))
answer = e.answer(sys.argv[2], sys.argv[3])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r})
print(answer.text, answer.finish_reason, e.adapter_backend, leaked)
"""


def test_runtime_runs_with_torch_and_transformers_blocked(paths, red_png, tmp_path):
    env = torch_blocked_env(tmp_path)
    script = textwrap.dedent(ENGINE_SCRIPT.format(blocked=BLOCKED))
    done = subprocess.run([sys.executable, "-c", script, str(paths["bundle"]), str(red_png), QUESTION],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "red stop c []"
    cli = subprocess.run([sys.executable, "-m", "crome_cli", "run", "--bundle", str(paths["bundle"]), "--image",
                          str(red_png), "--prompt", QUESTION, "--threads", "1", "--profile", str(tmp_path / "p.json")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout == "red\n" and (tmp_path / "p.trace.json").is_file()


def test_base_install_needs_no_torch():
    """The distribution's base requirements (no extra) are the runtime's: torch/transformers only in extras."""
    base = [r for r in requires("crome-edge") if "extra ==" not in r]
    names = {r.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower() for r in base}
    assert {"numpy", "onnxruntime", "tokenizers", "opencv-python-headless"} <= names
    assert not names & {"torch", "transformers", "onnx", "gguf"}
