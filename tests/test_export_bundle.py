"""`crome-edge export` end to end on the tiny backbone with an adapter trained in the test.

The adapter learns "What colour is it?" -> red/green/blue on 60 noisy frames (125 Adam steps, ~5 s).
Done-when checks: the FP32 bundle's greedy tokens equal PyTorch's on every eval prompt, the INT8 bundle's
accuracy is within 1 point of PyTorch's, and the report shows each stage's cosine (INT8 vision >= 0.99).
Then the bundle contract (manifest + sha256, atomic write, cache) and every bad-input path.
"""
import errno
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from crome_cli.main import main
from crome_runtime import formats
from crome_runtime.manifest import read_manifest
from tests.support.adapters import train_tiny_adapter
from tests.support.bundles import adapter_report

COLOURS = {"red": (0, 0, 220), "green": (0, 200, 0), "blue": (220, 0, 0)}
QUESTION = "What colour is it?"


def _dataset(directory: Path, count: int = 60) -> Path:
    (directory / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        name = list(COLOURS)[i % 3]
        image = np.clip(np.full((32, 32, 3), COLOURS[name], int) + rng.integers(-30, 30, (32, 32, 3)), 0, 255)
        cv2.imwrite(str(directory / "images" / f"{i:03d}.png"), image.astype(np.uint8))
        lines.append(json.dumps({"image": f"images/{i:03d}.png", "question": QUESTION, "answer": name}))
    (directory / "data.jsonl").write_text("\n".join(lines) + "\n")
    return directory / "data.jsonl"




@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_backbone):
    # One torch thread: tiny ops gain nothing from two, and on a shared 2-core machine torch's spinning
    # workers made the 125 training steps take 800 s instead of 3 s.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("export")
    data = _dataset(root / "line3-data")
    yield {"root": root, "data": data, "adapter": train_tiny_adapter(tiny_backbone, data, root / "line3.safetensors")}
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def export_cache(workspace, monkeypatch):
    monkeypatch.setenv("CROME_EDGE_CACHE", str(workspace["root"] / "cache"))


@pytest.fixture(scope="module")
def int8_bundle(workspace):
    """Default export: only --adapter; INT8; the bundle lands next to the adapter."""
    import os

    os.environ["CROME_EDGE_CACHE"] = str(workspace["root"] / "cache")
    assert main(["export", "--adapter", str(workspace["adapter"])]) == 0
    return workspace["root"] / "line3.bundle"


def _leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_int8_export_meets_the_done_criteria(int8_bundle):
    report = adapter_report(int8_bundle)
    assert report["format"] == formats.REPORT_FORMAT and report["precision"] == "int8"
    from crome_runtime.machine import describe_cpu

    assert report["measured_on"] == describe_cpu() and report["measured_on"]["onnxruntime"]  # where it was measured
    stages = {(s["stage"], s["precision"]): s for s in report["stages"]}
    for stage in ("vision", "adapter_visual", "adapter_text", "decoder_prefill", "decoder_step"):
        assert stages[(stage, "fp32")]["cosine_min"] >= 0.9999
        assert "cosine_min" in stages[(stage, "int8")] and "max_abs" in stages[(stage, "int8")]
    assert stages[("vision", "int8")]["cosine_min"] >= 0.99
    fp32 = report["greedy"]["fp32"]
    assert fp32["identical"] == fp32["prompts"] == report["inputs"]["eval_prompts"] == 15  # every eval prompt
    accuracy = report["accuracy"]
    assert accuracy["measured"] and accuracy["pytorch"] >= 90  # the adapter learned the task ...
    assert accuracy["int8"] >= accuracy["pytorch"] - 1.0  # ... and INT8 keeps it within 1 point
    assert report["gates"]["fp32_parity"]["ok"] and report["gates"]["int8_accuracy"]["ok"]
    assert report["quantization"]["vision"]["method"] == "static-qdq"
    assert report["quantization"]["decoder"]["method"] == "fp32"  # the measured default (crome_export.quantize)
    trt = report["tensorrt_compatibility"]
    assert trt[formats.VISION_ONNX]["ok"] and trt[formats.ADAPTER_VISUAL_ONNX]["ok"], trt[formats.VISION_ONNX]["problems"]
    assert trt[formats.DECODER_ONNX]["ok"]
    assert "com.microsoft.QuickGelu" in report["adapter_kernels"]["ort_optimized_ops_extended"]


def test_bundle_layout_manifest_and_runtime_loop(int8_bundle, tiny_backbone, workspace):
    manifest = read_manifest(int8_bundle, verify=True)  # every file present with its sha256
    adapter = {"line3." + name for name in (formats.ADAPTER_VISUAL_ONNX, formats.ADAPTER_TEXT_ONNX,
                                            formats.ADAPTER_WEIGHTS_FILE, formats.ACCEPTANCE_FILE, formats.ACCEPTANCE_ARRAYS)}
    expected = {formats.VISION_ONNX, formats.DECODER_ONNX, formats.EMBEDDINGS_FILE, formats.TOKENIZER_FILE,
                formats.QFORMER_TOKENIZER_FILE, formats.REPORT_FILE} | adapter
    assert set(manifest.files) == expected
    assert {p.name for p in int8_bundle.iterdir()} == expected | {formats.MANIFEST_FILE}
    assert manifest.precision == "int8" and manifest.files[formats.VISION_ONNX].precision == "int8"
    assert manifest.files["line3.adapter_visual.onnx"].precision == "fp32"
    assert manifest.adapter_names == ["line3"] and manifest.adapters[0].route.questions == [QUESTION]
    assert manifest.backbone.fingerprint == tiny_backbone.fingerprint()
    assert (manifest.llm.num_layers, manifest.llm.num_kv_heads, manifest.llm.head_dim) == (2, 2, 16)
    assert manifest.quantization["vision"]["method"] == "static-qdq"
    assert np.load(int8_bundle / formats.EMBEDDINGS_FILE).shape == (manifest.llm.vocab_size, manifest.backbone.d_model)
    assert not _leftovers(workspace["root"])
    assert int8_bundle.stat().st_mode & 0o055  # readable by others, not mkdtemp's 0700

    from crome_edge.data import load_dataset
    from crome_runtime.engine import Engine, EngineConfig, GenerationOptions

    engine = Engine.load(int8_bundle, EngineConfig(threads=1))
    samples = load_dataset(workspace["data"]).samples[:6]
    answers = [engine.answer(s.image, QUESTION, GenerationOptions(max_new_tokens=6)).text for s in samples]
    assert answers == [s.answer for s in samples]


def test_fp32_bundle_tokens_equal_pytorch_and_second_adapter_is_cached(workspace, tiny_backbone, capsys):
    other = train_tiny_adapter(tiny_backbone, workspace["data"], workspace["root"] / "other.safetensors", seed=5, steps=30)
    out = workspace["root"] / "fp32.bundle"
    assert main(["export", "--adapter", str(workspace["adapter"]), "--precision", "fp32", "--out", str(out)]) == 0
    report = adapter_report(out)
    assert report["greedy"]["fp32"]["identical"] == report["greedy"]["fp32"]["prompts"] == 15
    assert set(report["greedy"]) == {"fp32"} and read_manifest(out).precision == "fp32"
    err = capsys.readouterr().err
    assert "stage" in err and "measured on: " in err  # the table is printed, with the machine
    second = workspace["root"] / "other.bundle"
    assert main(["export", "--adapter", str(other), "--precision", "fp32", "--out", str(second)]) == 0
    report = adapter_report(second)
    assert report["backbone_parts_cached"] == {"fp32": True}
    a, b = read_manifest(out), read_manifest(second)
    assert a.files[formats.DECODER_ONNX].sha256 == b.files[formats.DECODER_ONNX].sha256  # shared backbone part
    assert a.files["line3.adapter_visual.onnx"].sha256 != b.files["other.adapter_visual.onnx"].sha256


def test_broken_fp32_parity_fails_and_writes_nothing(workspace, monkeypatch):
    import crome_runtime.fidelity as fidelity

    monkeypatch.setattr(fidelity, "FP32_MIN_COSINE", 1.5)  # no real graph can meet it
    out = workspace["root"] / "broken.bundle"
    assert main(["export", "--adapter", str(workspace["adapter"]), "--precision", "fp32", "--out", str(out)]) == 2
    assert not out.exists() and not _leftovers(workspace["root"])


def test_disk_full_midway_keeps_the_old_bundle(int8_bundle, workspace, monkeypatch, capsys):
    import crome_export.bundle as bundle

    before = {p.name: p.read_bytes() for p in int8_bundle.iterdir()}
    real, calls = bundle._write_chunks, []

    def failing(path, chunks):
        calls.append(path.name)
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, chunks)

    monkeypatch.setattr(bundle, "_write_chunks", failing)
    assert main(["export", "--adapter", str(workspace["adapter"]), "--force"]) == 2
    assert "disk full" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in int8_bundle.iterdir()} == before
    assert not _leftovers(workspace["root"])


def test_force_replaces_atomically(int8_bundle, workspace, capsys):
    assert main(["export", "--adapter", str(workspace["adapter"])]) == 2  # exists, no --force
    assert "--force" in capsys.readouterr().err
    assert main(["export", "--adapter", str(workspace["adapter"]), "--force"]) == 0
    read_manifest(int8_bundle, verify=True)
    assert not _leftovers(workspace["root"])


@pytest.mark.parametrize("case", ["other_backbone", "unsupported_arch", "no_parent", "parent_is_file",
                                  "empty_calib", "unknown_precision", "bad_opset"])
def test_bad_input_is_a_clear_error_and_no_bundle(case, workspace, tmp_path, capsys):
    args = ["export", "--adapter", str(workspace["adapter"]), "--out", str(tmp_path / "b.bundle")]
    expect = {
        "other_backbone": ("--backbone", "tiny:1"), "unknown_precision": ("--precision", "int4"),
        "bad_opset": ("--opset", "13"),
    }
    if case in expect:
        args += list(expect[case])
        message = {"other_backbone": "Re-train the adapter", "unknown_precision": "int4", "bad_opset": "opset"}[case]
    elif case == "unsupported_arch":
        (tmp_path / "t5").mkdir()
        (tmp_path / "t5" / "config.json").write_text(json.dumps({"model_type": "t5"}))
        args += ["--backbone", str(tmp_path / "t5")]
        message = "unsupported architecture"
    elif case == "no_parent":
        args[-1] = str(tmp_path / "missing" / "b.bundle")
        message = "does not exist"
    elif case == "parent_is_file":
        (tmp_path / "file").write_text("x")
        args[-1] = str(tmp_path / "file" / "b.bundle")
        message = "does not exist"
    else:
        (tmp_path / "frames").mkdir()
        args += ["--calib", str(tmp_path / "frames")]
        message = "has no images"
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not any(p.suffix == ".bundle" or ".partial-" in p.name for p in tmp_path.iterdir())


def test_calibration_directory_and_count(workspace, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for image in sorted((workspace["data"].parent / "images").iterdir())[:10]:
        (frames / image.name).write_bytes(image.read_bytes())
    out = tmp_path / "dir.bundle"
    assert main(["export", "--adapter", str(workspace["adapter"]), "--calib", str(frames), "--out", str(out)]) == 0
    report = adapter_report(out)
    assert report["quantization"]["vision"]["calibration_frames"] == 10 and str(frames) in report["inputs"]["calibration"]


def test_verify_passes_on_the_fresh_int8_bundle_and_fails_on_a_worse_vision_graph(int8_bundle, tmp_path, capsys):
    """The acceptance set the export wrote, through the engine here: the INT8 gates hold; a vision graph from a
    differently seeded backbone (manifest updated so it loads) fails the INT8 stage gate on vision."""
    import shutil

    from crome_edge.backbones.tiny import build_tiny
    from crome_export.vision import export_vision
    from crome_runtime.manifest import sha256_file

    assert main(["verify", str(int8_bundle), "--threads", "1"]) == 0
    table = capsys.readouterr().out
    assert "gate int8_stages: ok" in table and "gate int8_accuracy: ok" in table and "greedy int8" in table
    swapped = shutil.copytree(int8_bundle, tmp_path / "swapped.bundle")
    export_vision(build_tiny(seed=1), swapped / formats.VISION_ONNX, formats.DEFAULT_OPSET)
    manifest = json.loads((swapped / formats.MANIFEST_FILE).read_text())
    manifest["files"][formats.VISION_ONNX].update(sha256=sha256_file(swapped / formats.VISION_ONNX),
                                                  bytes=(swapped / formats.VISION_ONNX).stat().st_size)
    (swapped / formats.MANIFEST_FILE).write_text(json.dumps(manifest))
    assert main(["verify", str(swapped), "--threads", "1"]) == 1
    table = capsys.readouterr().out
    assert "gate int8_stages: FAILED — vision cosine" in table
    assert [line for line in table.splitlines() if line.startswith("vision ")][0].endswith("FAILED")


def test_build_engines_without_tensorrt_says_how_to_get_it(int8_bundle, capsys, monkeypatch):
    import sys

    from crome_export.engines import EngineLimits, engine_profiles

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as if not installed, even where it is
    assert main(["build-engines", str(int8_bundle), "--int8"]) == 2
    assert "crome-edge[trt]" in capsys.readouterr().err
    assert not (int8_bundle / formats.ENGINES_DIR).exists()
    profiles = engine_profiles(read_manifest(int8_bundle), EngineLimits(max_batch=4, max_total_tokens=64))
    past = profiles[formats.DECODER_ONNX][formats.past_key_name(0)]
    assert past[0] == (1, 2, 0, 16) and past[2] == (4, 2, 63, 16)
    assert profiles[formats.VISION_ONNX][formats.IN_PIXEL_VALUES][2] == (4, 3, 32, 32)


def test_static_int8_below_the_cosine_floor_falls_back_to_dynamic_and_says_so(workspace, tmp_path, monkeypatch):
    import crome_export.backbone_parts as parts

    monkeypatch.setattr(parts, "VISION_STATIC_MIN_COSINE", 1.01)  # the measured condition, unreachable on purpose
    out = tmp_path / "dynamic.bundle"
    assert main(["export", "--adapter", str(workspace["adapter"]), "--out", str(out), "--no-cache"]) == 0
    report = adapter_report(out)
    vision = report["quantization"]["vision"]
    assert vision["method"] == "dynamic-qint8" and "static INT8 vision cosine" in vision["fallback_reason"]
    assert not report["tensorrt_compatibility"][formats.VISION_ONNX]["ok"]  # and the report says TRT can't take it
    assert report["gates"]["fp32_parity"]["ok"]


def test_fp16_bundle(workspace, tmp_path):
    out = tmp_path / "fp16.bundle"
    assert main(["export", "--adapter", str(workspace["adapter"]), "--precision", "fp16", "--out", str(out)]) == 0
    report = adapter_report(out)
    assert read_manifest(out).files[formats.DECODER_ONNX].precision == "fp16"
    assert report["greedy"]["fp16"]["identical"] == report["greedy"]["fp16"]["prompts"]
    assert all(s["cosine_min"] > 0.999 for s in report["stages"])


def test_an_adapter_file_cannot_choose_a_backbone_directory_to_load(workspace, tmp_path, capsys):
    """Metadata names only registered backbones; a path in it is refused unless the user passes --backbone."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(workspace["adapter"]), "np") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    (tmp_path / "some_dir").mkdir()
    meta[formats.META_BACKBONE_NAME] = str(tmp_path / "some_dir")
    hostile = tmp_path / "hostile.safetensors"
    save_file(tensors, str(hostile), metadata=meta)
    assert main(["export", "--adapter", str(hostile), "--out", str(tmp_path / "h.bundle")]) == 2
    err = capsys.readouterr().err
    assert "not a registered name" in err and "--backbone" in err
    assert not (tmp_path / "h.bundle").exists()
