"""`crome-edge export --decoder-blocks q8_0` on the tiny float backbone: weight-only Q8_0 decoder blocks for the C
decode path, their drift measured by the export's engine-measured report and gated like an INT8 stage.

The export's report holds the FP32 pipeline (ONNX decoder, parity) and the pipeline that decodes on the Q8_0
blocks (gated as "int8": decoder stages cosine >= 0.99, accuracy drop); the blocks are marked as having passed
only when those gates pass, so the engine's `auto` decodes on them; `crome-edge verify` measures them on the
device and fails, naming the decoder stage, when the blocks were altered (with the manifest's sha256 updated).
"""
import json
import shutil
import struct

import numpy as np
import pytest
from tests.support.bundles import adapter_report, cache_env, copy_bundle, rewrite_manifest, tiny_bundle, torch_threads

from crome_cli.main import main
from crome_edge.errors import CromeError
from crome_runtime import decoder_blocks_file, formats
from crome_runtime.engine import Engine, EngineConfig
from crome_runtime.fidelity import MIN_COSINE
from crome_runtime.manifest import sha256_file

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from crome_export.pipeline import ExportConfig, Progress, export_bundle

    with torch_threads(1):
        paths = tiny_bundle(tmp_path_factory)
        out = tmp_path_factory.mktemp("q8_0") / "colour-q8_0.bundle"
        with cache_env(paths["root"] / "cache"):  # the fixture's backbone parts
            export_bundle(ExportConfig(adapter=paths["adapter"], precision="fp32", out=out, threads=1,
                                       decoder_blocks="q8_0"), Progress(7, enabled=False))
    return out


def _report(bundle) -> dict:
    return adapter_report(bundle)


def test_export_measures_the_q8_0_blocks_on_the_c_path_with_the_int8_gates(bundle):
    report = _report(bundle)
    stages = {(s["precision"], s["stage"]): s for s in report["stages"]}
    for stage in ("decoder_prefill", "decoder_step"):
        q8 = stages[("int8", stage)]  # the pipeline that decodes on the blocks (ONNX still prefills)
        assert q8["decoder"] == "c q8_0" and q8["min_cosine"] == MIN_COSINE["int8"]
        assert q8["cosine_min"] >= MIN_COSINE["int8"]
        assert stages[("fp32", stage)]["decoder"] == "onnx"  # FP32 parity stays on the fp32 decoder graph
    assert stages[("int8", "decoder_prefill")]["cosine_min"] >= 0.9999  # prefill is the ONNX fp32 graph
    for gate in ("fp32_parity", "int8_stages", "int8_accuracy"):
        assert report["gates"][gate]["ok"], (gate, report["gates"][gate])
    assert report["greedy"]["int8"]["prompts"] == report["greedy"]["fp32"]["prompts"] > 0
    assert report["decoder_blocks"]["gate"] == "passed" and report["decoder_blocks"]["why"] == []
    manifest = json.loads((bundle / formats.MANIFEST_FILE).read_text())
    assert manifest["precision"] == "fp32" and manifest["files"][formats.DECODER_BLOCKS_FILE]["precision"] == "int8"
    blocks = decoder_blocks_file.load(bundle / formats.DECODER_BLOCKS_FILE)
    assert blocks.source == {"kind": "weight-only", "qtype": "q8_0", "gate": "passed"}
    assert set(blocks.qtypes.values()) == {"q8_0"}
    assert Engine.load(bundle, EngineConfig(threads=1)).decoder_backend == "c"  # auto takes gated blocks


def test_verify_passes_and_measures_the_blocks(bundle, tmp_path, capsys):
    out = tmp_path / "verify.json"
    assert main(["verify", str(bundle), "--threads", "1", "--report", str(out)]) == 0
    table, _ = capsys.readouterr()
    assert "gate int8_stages: ok" in table and "gate int8_accuracy: ok" in table
    (report,) = json.loads(out.read_text())["adapters"].values()  # the bundle's one adapter
    assert report["engine"]["decoder_backend"] == "c"
    decoder = [s for s in report["stages"] if s["stage"].startswith("decoder_")]
    assert {s["decoder"] for s in decoder} == {"c q8_0"} and all(s["min_cosine"] == 0.99 for s in decoder)


def _tensor_span(path, name: str) -> tuple[int, int]:
    """(start, end) file offsets of one tensor's bytes in a safetensors file."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    start, end = json.loads(raw[8 : 8 + length])[name]["data_offsets"]
    return 8 + length + start, 8 + length + end


def test_verify_fails_naming_the_decoder_stage_when_the_blocks_were_altered(bundle, tmp_path, capsys):
    altered = copy_bundle(bundle, tmp_path / "altered.bundle")
    path = altered / formats.DECODER_BLOCKS_FILE
    start, end = _tensor_span(path, "head")
    data = bytearray(path.read_bytes())
    head = np.frombuffer(data, np.uint8, end - start, start).reshape(-1, 34)  # Q8_0 blocks: fp16 d + 32 int8
    head[:, 1] ^= 0x80  # every block's scale negated: the head's logits flip sign, the header stays "passed"
    path.write_bytes(bytes(data))
    digest, size = sha256_file(path), path.stat().st_size
    rewrite_manifest(altered, lambda m: m["files"][formats.DECODER_BLOCKS_FILE].update(sha256=digest, bytes=size))
    assert main(["verify", str(altered), "--threads", "1"]) == 1
    table, _ = capsys.readouterr()
    assert any(line.startswith("decoder_step") and line.endswith("FAILED") for line in table.splitlines()), table
    assert "gate int8_stages: FAILED" in table and "decoder_step cosine" in table


def test_blocks_marked_failed_are_not_decoded_on(bundle, tmp_path):
    from crome_export.blocks import mark_gate

    copy = copy_bundle(bundle, tmp_path / "failed.bundle")
    path = copy / formats.DECODER_BLOCKS_FILE
    mark_gate(path, False)
    digest, size = sha256_file(path), path.stat().st_size
    rewrite_manifest(copy, lambda m: m["files"][formats.DECODER_BLOCKS_FILE].update(sha256=digest, bytes=size))
    assert decoder_blocks_file.load(path).source["gate"] == "failed"
    assert Engine.load(copy, EngineConfig(threads=1)).decoder_backend == "onnx"
    shutil.rmtree(copy)


def test_bad_decoder_blocks_choice_is_refused():
    from crome_export.pipeline import ExportConfig, validate

    with pytest.raises(CromeError, match="--decoder-blocks 'q4_1' is not one of auto, q8_0"):
        validate(ExportConfig(adapter="a.safetensors", decoder_blocks="q4_1"))


def test_failed_gates_mark_the_blocks_failed_and_warn(tmp_path, tiny_backbone):
    from crome_export.blocks import write_bundle_blocks
    from crome_export.bundle import BundleWriter
    from crome_export.pipeline import _gate_blocks
    from crome_runtime.fidelity import Fidelity, StageResult

    path = write_bundle_blocks(tiny_backbone, tmp_path, lambda message: None, "q8_0")
    assert decoder_blocks_file.load(path).source["gate"] == "passed"  # provisional, before the measurement
    fidelity = Fidelity(stages=[StageResult("decoder_step", "int8", 2.0, 0.95, 0.97, 4, 0.99, "c q8_0")],
                        gates={"int8_accuracy": {"ok": True}})
    report = {"warnings": []}
    with BundleWriter(tmp_path / "out.bundle") as writer:
        section = _gate_blocks(path, writer, fidelity, "int8", report)
        assert writer.files[formats.DECODER_BLOCKS_FILE].precision == "int8"
        staged = decoder_blocks_file.load(writer.staging / formats.DECODER_BLOCKS_FILE)
    assert section["gate"] == "failed" and section["why"] == ["decoder_step cosine 0.950000 < 0.99"]
    assert staged.source["gate"] == "failed" and decoder_blocks_file.load(path).source["gate"] == "failed"
    assert "decoder blocks (weight-only Q8_0) failed their gates" in report["warnings"][0]


def test_int8_export_gates_the_blocks_with_the_int8_pipeline(tmp_path_factory):
    from crome_export.pipeline import ExportConfig, Progress, export_bundle

    with torch_threads(1):
        paths = tiny_bundle(tmp_path_factory)
        out = tmp_path_factory.mktemp("q8_0-int8") / "colour-int8.bundle"
        with cache_env(paths["root"] / "cache"):
            export_bundle(ExportConfig(adapter=paths["adapter"], precision="int8", out=out, threads=1,
                                       decoder_blocks="q8_0"), Progress(7, enabled=False))
    report = _report(out)
    step = {(s["precision"], s["stage"]): s for s in report["stages"]}
    assert step[("int8", "decoder_step")]["decoder"] == "c q8_0" and step[("fp32", "decoder_step")]["decoder"] == "onnx"
    assert step[("int8", "decoder_step")]["min_cosine"] == 0.99 and report["decoder_blocks"]["gate"] == "passed"
    assert Engine.load(out, EngineConfig(threads=1)).decoder_backend == "c"
    assert main(["verify", str(out), "--threads", "1"]) == 0
