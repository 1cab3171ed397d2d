"""`crome-edge verify` on the tiny FP32 bundle: the bundle's acceptance set through the torch-free engine.

It passes on the freshly exported bundle with the export's table, fails (exit 1, the table naming the stage)
when vision.onnx is swapped for a worse graph, runs with torch blocked, refuses bad input with exit 2, and the
acceptance set's size follows from its contents (under 2 MB for a smol-size bundle).
"""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from tests.support.bundles import adapter_path, adapter_report, copy_bundle, rewrite_manifest, tiny_bundle, torch_threads
from tests.support.torch_blocked import BLOCKED, torch_blocked_env

from crome_cli.main import main
from crome_runtime import acceptance, formats
from crome_runtime.fidelity import Reference, apply_gates, Fidelity, StageResult, greedy_agreement, stored_margin
from crome_runtime.manifest import read_manifest, sha256_file


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    with torch_threads(1):
        return tiny_bundle(tmp_path_factory)


def _verify(bundle, *extra):
    return main(["verify", str(bundle), "--threads", "1", *extra])


def _replace_file(bundle, name: str, data: bytes) -> None:
    """Puts new bytes in a bundle file and updates its manifest entry, so loading accepts it as listed."""
    (bundle / name).write_bytes(data)
    digest, size = sha256_file(bundle / name), len(data)
    rewrite_manifest(bundle, lambda m: m["files"][name].update(sha256=digest, bytes=size))


def test_verify_passes_on_the_exported_bundle_with_the_export_table(paths, tmp_path, capsys):
    out = tmp_path / "verify.json"
    assert _verify(paths["bundle"], "--report", str(out)) == 0
    table, err = capsys.readouterr()
    assert table.startswith("adapter colour:\nmeasured on: ") and "exported on: " in table
    for stage in ("vision", "adapter_visual", "adapter_text", "decoder_prefill", "decoder_step"):
        assert any(line.startswith(stage) and line.endswith("ok") for line in table.splitlines()), stage
    assert "gate fp32_parity: ok" in table and "verify: ok" in err
    bundle_report = json.loads(out.read_text())  # one shape: each adapter's report, every gate as "NAME: gate"
    assert list(bundle_report["adapters"]) == ["colour"] and list(bundle_report["gates"]) == ["colour: fp32_parity"]
    report = bundle_report["adapters"]["colour"]
    export_report = adapter_report(paths["bundle"])
    assert set(report["measured_on"]) >= {"model", "arch", "features", "int8_kernels", "onnxruntime"}
    assert report["measured_on"] == export_report["measured_on"]  # the same machine here
    assert "avx2" in report["measured_on"]["features"] or "neon" in report["measured_on"]["features"]
    greedy = report["greedy"]["fp32"]
    assert greedy["identical"] == greedy["prompts"] == export_report["acceptance"]["prompts"] == 15
    assert report["accuracy"]["measured"] and report["accuracy"]["fp32"] == report["accuracy"]["pytorch"] >= 90
    stages = {s["stage"]: s for s in report["stages"]}
    assert stages["vision"]["samples"] == acceptance.STAGE_PROMPTS
    assert stages["decoder_prefill"]["samples"] == acceptance.LOGIT_PROMPTS
    assert all(s["cosine_min"] >= 0.9999 for s in report["stages"])


def test_a_worse_vision_graph_fails_verify_and_the_table_names_vision(paths, tmp_path, capsys, tiny_backbone):
    """vision.onnx swapped for the vision side of a differently seeded tiny backbone (same shapes, so the bundle
    loads once its manifest lists the new sha256): only the vision stage fails, and with it the answers."""
    from crome_edge.backbones.tiny import build_tiny
    from crome_export.vision import export_vision

    bundle = copy_bundle(paths["bundle"], tmp_path / "swapped.bundle")
    with torch_threads(1):
        export_vision(build_tiny(seed=1), tmp_path / "other_vision.onnx", formats.DEFAULT_OPSET)
    _replace_file(bundle, formats.VISION_ONNX, (tmp_path / "other_vision.onnx").read_bytes())
    assert _verify(bundle) == 1
    table, err = capsys.readouterr()
    rows = {line.split()[0]: line for line in table.splitlines() if line.split() and line.split()[0] in
            ("vision", "adapter_visual", "adapter_text", "decoder_prefill", "decoder_step")}
    assert rows["vision"].endswith("FAILED")
    assert all(rows[s].endswith("ok") for s in ("adapter_visual", "adapter_text", "decoder_prefill", "decoder_step"))
    assert "gate fp32_parity: FAILED" in table and "vision cosine" in table
    assert "verify: FAILED (colour: fp32_parity)" in err


VERIFY_SCRIPT = """
import sys
try:
    import torch
    raise SystemExit("the blocker did not load")
except ImportError as error:
    assert "blocked" in str(error), error
from crome_cli.main import main

status = main(["verify", sys.argv[1], "--threads", "1"])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r})
print("status", status, "leaked", leaked)
"""


def test_verify_runs_with_torch_blocked(paths, tmp_path):
    script = textwrap.dedent(VERIFY_SCRIPT.format(blocked=BLOCKED))
    done = subprocess.run([sys.executable, "-c", script, str(paths["bundle"])], capture_output=True, text=True,
                          env=torch_blocked_env(tmp_path), timeout=300)
    assert done.returncode == 0, done.stderr
    assert "gate fp32_parity: ok" in done.stdout and done.stdout.strip().endswith("status 0 leaked []")


@pytest.mark.parametrize("case", ["missing_bundle", "no_acceptance_set", "garbage_arrays", "wrong_shapes",
                                  "newer_format", "altered_without_manifest"])
def test_bad_input_exits_2_with_a_clear_message(case, paths, tmp_path, capsys):
    bundle = tmp_path / "missing.bundle"
    if case != "missing_bundle":
        bundle = copy_bundle(paths["bundle"], tmp_path / "b.bundle")
    names = {"json": "acceptance.json", "npz": "acceptance.npz"}
    if case != "missing_bundle":
        names = {"json": adapter_path(bundle, "acceptance").name, "npz": adapter_path(bundle, "acceptance_arrays").name}
    if case == "no_acceptance_set":  # a bundle exported before verify existed
        for name in names.values():
            (bundle / name).unlink()
        rewrite_manifest(bundle, lambda m: [m["files"].pop(n) for n in names.values()])
    elif case == "garbage_arrays":
        _replace_file(bundle, names["npz"], b"not a zip file at all")
    elif case == "wrong_shapes":  # an acceptance set from another backbone: its visual references are too narrow
        import io

        with np.load(bundle / names["npz"], allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        arrays["visual_0"] = arrays["visual_0"][:, :8].copy()
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        _replace_file(bundle, names["npz"], buffer.getvalue())
    elif case == "newer_format":
        document = json.loads((bundle / names["json"]).read_text())
        document["format_version"] = 99
        _replace_file(bundle, names["json"], json.dumps(document).encode())
    elif case == "altered_without_manifest":
        (bundle / names["json"]).write_text("{}")
    assert _verify(bundle) == 2
    err = capsys.readouterr().err
    expected = {"missing_bundle": "not a crome-edge bundle", "no_acceptance_set": "has no acceptance set",
                "garbage_arrays": "acceptance.npz", "wrong_shapes": "visual_0", "newer_format": "format version 99",
                "altered_without_manifest": "acceptance.json was altered"}[case]
    last = err.strip().splitlines()[-1]
    assert last.startswith("crome-edge verify: error: ") and expected in last and "Traceback" not in err
    if case in ("no_acceptance_set", "garbage_arrays", "wrong_shapes"):
        assert "re-export" in last


def test_acceptance_set_size_follows_from_its_contents(paths):
    """On the tiny bundle the files are their arrays plus small headers; for a smol-size bundle (d=576, Nq=8,
    vocab 49152, 128 px frames, prompts of up to 24 tokens) the plan keeps every frame whole under 2 MB."""
    manifest = read_manifest(paths["bundle"])
    json_name, npz_name = adapter_path(paths["bundle"], "acceptance").name, adapter_path(paths["bundle"],
                                                                                      "acceptance_arrays").name
    chosen = acceptance.read_acceptance(paths["bundle"], manifest, (json_name, npz_name))
    b, llm = manifest.backbone, manifest.llm
    frame_bytes = sum(f.nbytes for f in chosen.frames)
    assert frame_bytes == len(chosen.frames) * 32 * 32 * 3  # tiny's 32 px frames, stored as they were
    staged = [r.stages for r in chosen.references if r.stages is not None]
    stage_bytes = sum(acceptance.stage_bytes(b.num_query_tokens, b.d_model, len(s.prompt_ids), llm.vocab_size,
                                             s.prefill_logits is not None) for s in staged)
    arrays = frame_bytes + stage_bytes
    npz = manifest.files[npz_name].bytes
    arrays_count = len(chosen.frames) + sum(3 + 2 * (s.prefill_logits is not None) for s in staged)
    assert arrays <= npz <= arrays + 400 * arrays_count  # .npy headers and zip entries only
    assert npz + manifest.files[json_name].bytes < acceptance.MAX_BYTES

    smol_frame = 128 * 128 * 3
    plan = acceptance.plan(acceptance.PROMPTS, 8, 576, 49152, [24] * acceptance.STAGE_PROMPTS)
    assert (plan.stage_prompts, plan.logit_prompts) == (acceptance.STAGE_PROMPTS, acceptance.LOGIT_PROMPTS)
    assert plan.frame_bytes >= smol_frame  # no frame is downscaled
    smol = acceptance.PROMPTS * smol_frame + acceptance.STAGE_PROMPTS * acceptance.stage_bytes(8, 576, 24, 49152, False) \
        + acceptance.LOGIT_PROMPTS * 2 * 49152 * 4
    assert smol + acceptance.JSON_RESERVE < 2_000_000  # = 1.99 MB at most; the writer refuses more
    big = np.zeros((480, 640, 3), np.uint8)  # a camera frame is downscaled to fit
    assert acceptance.fit_frame(big, plan.frame_bytes).nbytes <= plan.frame_bytes
    for nq, d, vocab in ((32, 4096, 32000), (32, 2560, 152000)):  # 7B-size widths, a large vocabulary
        plan = acceptance.plan(acceptance.PROMPTS, nq, d, vocab, [40] * acceptance.STAGE_PROMPTS)
        fixed = sum(acceptance.stage_bytes(nq, d, 40, vocab, i < plan.logit_prompts) for i in range(plan.stage_prompts))
        assert fixed + acceptance.PROMPTS * plan.frame_bytes + acceptance.JSON_RESERVE <= acceptance.MAX_BYTES


def test_gate_rules_near_ties_and_the_one_sample_floor():
    refs = [Reference(0, "q", "red", [5, 6], margins=[2.0, 1e-4, 3.0]), Reference(0, "q", "blue", [7], margins=[4.0, 4.0])]
    tie = greedy_agreement(refs, [[5, 9], [7]], stored_margin(refs))  # diverges where PyTorch had a near-tie
    assert tie["identical"] == 1 and tie["near_ties"] == 1 and tie["divergences"][0]["step"] == 1
    broken = greedy_agreement(refs, [[5, 6], [8]], stored_margin(refs))
    assert broken["near_ties"] == 0
    for greedy, ok in ((tie, True), (broken, False)):
        result = Fidelity(stages=[StageResult("vision", "fp32", 0.0, 1.0, 1.0, 1)], greedy={"fp32": greedy})
        apply_gates(result, 1.0)
        assert result.gates["fp32_parity"]["ok"] is ok
    # INT8 on 15 samples: one sample (6.67 points) is the finest loss the set resolves; two are too many
    for drop, ok in ((100 / 15, True), (200 / 15, False)):
        result = Fidelity(stages=[StageResult("vision", "int8", 0.1, 0.995, 0.997, 4, min_cosine=0.99)],
                          greedy={"int8": broken}, accuracy={"samples": 15, "int8_drop_points": round(drop, 2)})
        apply_gates(result, 1.0)
        assert result.gates["int8_accuracy"]["ok"] is ok and result.gates["int8_stages"]["ok"]
