"""Re-export reuse (crome_export.reuse) on the tiny backbone: a second export of an adapter on the same frames takes
PyTorch's references, the engines' vision outputs and (its candidate bundle byte for byte the one measured before)
the engines' greedy answers from the first, says so in report.json and `crome-edge info`, and comes out with the
first's numbers. Whatever determines a reused result changes — the adapter's tensors, a frame — and it is measured
again, with the numbers of an export that reused nothing; a wrong cached result is caught (vision and answers: the
live spot checks) or fails the gate it feeds (references: FP32 parity), never passed on.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from crome_cli.main import main
from tests.support.adapters import train_tiny_adapter
from tests.support.bundles import _dataset, torch_threads

MEASURED = ("stages", "greedy", "accuracy", "gates")
NON_VISION = ["adapter_visual", "adapter_text", "decoder_prefill", "decoder_step"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_backbone):
    root = tmp_path_factory.mktemp("reuse")
    data = _dataset(root / "data")
    with torch_threads(1):
        adapter = train_tiny_adapter(tiny_backbone, data, root / "colour.safetensors")
        first = _export(adapter, root / "first.bundle", root / "cache")
        yield {"root": root, "data": data, "adapter": adapter, "cache": root / "cache", "first": first,
               "first_bundle": root / "first.bundle"}


def _export(adapter: Path, out: Path, cache: Path, precision: str = "int8", use_cache: bool = True,
            data: Path | None = None) -> dict:
    from crome_export.pipeline import ExportConfig, Progress, export_bundle

    config = ExportConfig(adapter=adapter, out=out, precision=precision, threads=1, cache_dir=cache,
                          use_cache=use_cache, data=data, force=True)
    return export_bundle(config, Progress(7, enabled=False)).report


def _perturbed(adapter: Path, out: Path) -> Path:
    """The adapter with one tensor changed (another adapter, same metadata)."""
    from crome_edge.adapter_file import load_adapter, read_metadata, save_adapter

    module, _ = load_adapter(adapter)
    with torch.no_grad():
        module.up.add_(0.05 * torch.randn_like(module.up, generator=torch.Generator().manual_seed(1)))
    save_adapter(out, module, read_metadata(adapter))
    return out


def test_a_second_export_reuses_what_the_first_measured_and_reports_the_same_numbers(ws, capsys):
    first, second = ws["first"], _export(ws["adapter"], ws["root"] / "second.bundle", ws["cache"])
    assert not first["reused"]["pytorch_references"]["reused"] and not first["reused"]["fp32_vision"]["reused"]
    reused = second["reused"]
    for name in ("pytorch_references", "acceptance_references", "fp32_vision", "int8_vision", "fp32_answers",
                 "int8_answers"):
        assert reused[name]["reused"] is True, (name, reused[name])
    assert reused["fp32_answers"]["checked_live"] == 4 and reused["fp32_answers"]["prompts"] == 15
    assert sorted(reused["tensorrt_checks"]["graphs"]) == sorted(second["tensorrt_compatibility"])  # same graph bytes
    assert reused["fp32_vision"]["frames"] == reused["int8_vision"]["frames"] > 0
    # the INT8 candidate runs the FP32 candidate's files but vision.onnx: its other stages are the FP32 ones
    assert first["reused"]["int8_stages"]["stages"] == NON_VISION and first["reused"]["int8_stages"]["from"] == "fp32"
    for key in MEASURED:
        assert second[key] == first[key], key
    names = ("colour.acceptance.json", "colour.acceptance.npz")
    assert [(ws["root"] / "second.bundle" / n).read_bytes() for n in names] == \
        [(ws["first_bundle"] / n).read_bytes() for n in names]
    assert main(["info", str(ws["root"] / "second.bundle")]) == 0
    out = capsys.readouterr().out
    assert "pytorch_references: yes (the same backbone fingerprint, adapter tensors" in out
    assert "int8_stages: adapter_visual, adapter_text, decoder_prefill, decoder_step from the fp32 candidate" in out


def test_another_adapter_is_measured_again_with_the_numbers_of_an_export_that_reused_nothing(ws):
    other = _perturbed(ws["adapter"], ws["root"] / "other.safetensors")
    warm = _export(other, ws["root"] / "other.bundle", ws["cache"])
    cold = _export(other, ws["root"] / "other-cold.bundle", ws["root"] / "no-cache", use_cache=False)
    assert warm["reused"]["pytorch_references"]["reused"] is False  # the adapter's tensors are part of the key
    assert warm["reused"]["acceptance_references"]["reused"] is False
    assert warm["reused"]["fp32_vision"]["reused"] is True  # the vision side has no adapter
    assert warm["reused"]["fp32_answers"]["reused"] is False  # the candidate's adapter files differ
    assert "adapter_visual.onnx" not in warm["reused"]["tensorrt_checks"]["graphs"]  # another adapter graph
    assert cold["reused"]["pytorch_references"]["why"] == "--no-cache"
    for key in MEASURED:
        assert warm[key] == cold[key], key
    assert warm["greedy"] != ws["first"]["greedy"] or warm["stages"] != ws["first"]["stages"]  # another adapter


def test_changed_frames_are_measured_again(ws, tmp_path):
    import cv2
    import shutil

    shutil.copytree(ws["data"].parent, tmp_path / "data")
    for image in sorted((tmp_path / "data" / "images").iterdir()):
        frame = cv2.imread(str(image))
        cv2.imwrite(str(image), np.clip(frame.astype(int) + 9, 0, 255).astype(np.uint8))  # brighter
    _export(ws["adapter"], tmp_path / "a.bundle", ws["cache"], precision="fp32")  # the unchanged frames, cached
    report = _export(ws["adapter"], tmp_path / "b.bundle", ws["cache"], precision="fp32",
                     data=tmp_path / "data" / "data.jsonl")
    assert report["reused"]["pytorch_references"]["reused"] is False
    assert report["reused"]["fp32_vision"]["reused"] is False
    assert report["reused"]["fp32_answers"]["reused"] is False


def test_a_wrong_cached_vision_output_is_caught_by_the_spot_check(ws):
    from crome_export.result_cache import ARRAYS

    entries = sorted((ws["cache"] / "export-vision").iterdir(), key=lambda p: p.stat().st_mtime)
    for entry in entries:  # every engine's outputs, made wrong under their own keys
        with np.load(entry / ARRAYS) as npz:
            arrays = {name: npz[name] for name in npz.files}
        arrays["v_0"] = arrays["v_0"] * 1.5
        np.savez(entry / ARRAYS, **arrays)
    report = _export(ws["adapter"], ws["root"] / "spot.bundle", ws["cache"])
    for name in ("fp32_vision", "int8_vision"):
        assert report["reused"][name] == {"reused": False, "frames": report["reused"][name]["frames"],
                                          "why": "cached outputs did not match the spot check (recomputed)"}
    for key in MEASURED:
        assert report[key] == ws["first"][key], key


def test_wrong_cached_answers_are_caught_by_the_live_spot_check(ws):
    import json

    from crome_export.result_cache import DOCUMENT

    for entry in (ws["cache"] / "export-answers").iterdir():
        document = json.loads((entry / DOCUMENT).read_text())
        document["answers"] = [[7] for _ in document["answers"]]  # answers no engine gave
        (entry / DOCUMENT).write_text(json.dumps(document))
    report = _export(ws["adapter"], ws["root"] / "answers.bundle", ws["cache"])
    for name in ("fp32_answers", "int8_answers"):
        assert report["reused"][name]["reused"] is False
        assert report["reused"][name]["why"] == "cached answers differed from 4 computed live (recomputed)"
    for key in MEASURED:
        assert report[key] == ws["first"][key], key


def test_a_wrong_cached_reference_fails_fp32_parity_and_writes_nothing(ws, tmp_path):
    import json

    from crome_edge.errors import CromeError
    from crome_export.result_cache import DOCUMENT

    cache = tmp_path / "cache"
    _export(ws["adapter"], tmp_path / "a.bundle", cache, precision="fp32")
    for entry in (cache / "export-references").iterdir():
        document = json.loads((entry / DOCUMENT).read_text())
        for prompt in document["prompts"]:
            prompt["token_ids"] = [t + 1 for t in prompt["token_ids"]] or [7]  # answers PyTorch never gave
        (entry / DOCUMENT).write_text(json.dumps(document))
    with pytest.raises(CromeError, match="FP32 parity with PyTorch is broken"):
        _export(ws["adapter"], tmp_path / "b.bundle", cache, precision="fp32")
    assert not (tmp_path / "b.bundle").exists()


def test_decoder_blocks_files_come_out_byte_for_byte_the_same_in_another_process(tiny_backbone, tmp_path):
    """safetensors writes its metadata in hash-map order (another order in every process): the same blocks must still
    be the same bytes, or every re-export's candidate bundle looks new (and `bundle add` sees other decoder weights)."""
    import subprocess
    import sys

    from crome_export.blocks import from_float
    from crome_runtime import decoder_blocks_file

    decoder_blocks_file.save(from_float(tiny_backbone.llm, "q8_0"), tmp_path / "a.safetensors")
    copies = []
    for name in ("b", "c"):  # each process re-saves what it read
        code = ("import sys; from pathlib import Path; from crome_runtime import decoder_blocks_file as d; "
                "d.save(d.load(Path(sys.argv[1])), Path(sys.argv[2]))")
        subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.safetensors"), str(tmp_path / f"{name}.safetensors")],
                       check=True)
        copies.append((tmp_path / f"{name}.safetensors").read_bytes())
    assert copies[0] == copies[1] == (tmp_path / "a.safetensors").read_bytes()


def _parts_file(cache: Path, precision: str, name: str) -> Path:
    (found,) = [p / name for p in (cache / "export-parts").iterdir() if f"-{precision}-" in p.name and (p / name).is_file()]
    return found


@pytest.mark.slow  # four exports, two of them rebuilding backbone parts
def test_backbone_files_are_hard_links_into_the_cache_and_an_edited_bundle_file_is_never_reused(ws, tmp_path):
    """The bundle's backbone files are the export cache's (hard links: no copy), so an edit of one in place changes the
    cache entry too; the next export then rebuilds the entry (a file newer than its entry) instead of shipping or
    measuring the edited bytes, and an edit that kept the old mtime is caught by the writer's sha256 (the entry is
    removed, the export stops and says so, the one after rebuilds it). The edited bundle's own load refuses it."""
    import os

    from crome_edge.errors import CromeError
    from crome_runtime.manifest import BundleError, read_manifest

    import shutil

    cache, first = tmp_path / "cache", ws["first"]
    shutil.copytree(ws["cache"], cache)  # other inodes: the module's bundles stay as they are
    _export(ws["adapter"], tmp_path / "a.bundle", cache)
    bundle = tmp_path / "a.bundle"
    decoder = _parts_file(cache, "int8", "decoder.onnx")
    embeddings = _parts_file(cache, "fp32", "embed_tokens.npy")
    assert os.path.samefile(bundle / "decoder.onnx", decoder) and os.path.samefile(bundle / "embed_tokens.npy", embeddings)
    original = decoder.read_bytes()
    manifest = read_manifest(bundle, verify=True)  # the linked files hash to what the manifest says

    with open(bundle / "decoder.onnx", "r+b") as f:  # a user's tool rewriting the bundle's decoder in place
        f.seek(len(original) // 2)
        f.write(bytes(b ^ 0xFF for b in original[len(original) // 2 : len(original) // 2 + 64]))
    assert decoder.read_bytes() != original  # the cache's inode: the edit reached the entry
    with pytest.raises(BundleError, match="altered"):
        read_manifest(bundle, verify=True)
    again = _export(ws["adapter"], tmp_path / "b.bundle", cache)
    assert not again["backbone_parts_cached"]["int8"]  # the altered entry was rebuilt, not reused
    rebuilt = _parts_file(cache, "int8", "decoder.onnx")
    assert rebuilt.read_bytes() == original and not os.path.samefile(rebuilt, bundle / "decoder.onnx")
    assert read_manifest(tmp_path / "b.bundle", verify=True).files["decoder.onnx"] == manifest.files["decoder.onnx"]
    for key in MEASURED:
        assert again[key] == first[key], key

    stamp = embeddings.stat()  # now an edit that puts the old mtime back: only the bytes tell
    with open(tmp_path / "b.bundle" / "embed_tokens.npy", "r+b") as f:
        f.seek(stamp.st_size - 8)
        f.write(b"\x01" * 8)
    os.utime(embeddings, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    with pytest.raises(CromeError, match="changed after it was cached"):
        _export(ws["adapter"], tmp_path / "c.bundle", cache)
    assert not (tmp_path / "c.bundle").exists() and not embeddings.parent.exists()  # nothing written, entry removed
    healed = _export(ws["adapter"], tmp_path / "d.bundle", cache)
    assert not healed["backbone_parts_cached"]["fp32"]
    read_manifest(tmp_path / "d.bundle", verify=True)
    for key in MEASURED:
        assert healed[key] == first[key], key


def test_two_engines_on_the_same_graph_bytes_share_its_session_and_answer_as_alone(ws):
    """export's FP32 and INT8 candidates hold one decoder.onnx: SharedSessions opens it once (same sha256, providers,
    threads), and each engine still answers exactly as an engine with its own sessions."""
    from crome_runtime.engine import Engine, EngineConfig, GenerationOptions
    from crome_runtime.shared_sessions import SharedSessions
    from tests.support.bundles import QUESTION, colour_image

    config = EngineConfig(threads=1)
    sessions = SharedSessions()
    a = Engine.load(ws["first_bundle"], config, sessions=sessions)
    b = Engine.load(ws["first_bundle"], config, sessions=sessions)
    assert a.sessions["decoder"] is b.sessions["decoder"] and a.sessions["vision"] is b.sessions["vision"]
    assert sessions.opened == sessions.shared >= 2  # vision, decoder (and the adapter graphs when they run on ONNX)
    c = Engine.load(ws["first_bundle"], EngineConfig(threads=2), sessions=sessions)  # other threads: its own
    assert c.sessions["decoder"] is not a.sessions["decoder"]
    alone = Engine.load(ws["first_bundle"], config)
    options = GenerationOptions(temperature=0.0, max_new_tokens=4)
    for seed, colour in enumerate(("red", "green", "blue")):
        frame = alone.frame(colour_image(colour, seed))
        want = alone.answer(frame, QUESTION, options).token_ids
        assert a.answer(frame, QUESTION, options).token_ids == want
        assert b.answer(frame, QUESTION, options).token_ids == want


def test_pytorch_margins_are_kept_under_the_references_key(tmp_path):
    """Where a candidate's answer diverged, PyTorch's top-2 margins come from the cache the next time the same
    references (same key fields) are asked about, and a changed field (another adapter) computes them again."""
    from crome_export.reuse import Reuse

    calls = []

    def compute(values):
        def run():
            calls.append(values)
            return values
        return run

    fields = {"what": "pytorch references", "adapter": "a", "prompts": [[0, "q", "x"]]}
    first = Reuse(tmp_path)
    assert first.margins(fields, 3, compute([0.5, 0.25])) == [0.5, 0.25]
    assert first.report["pytorch_margins"] == {"reused": False, "prompts": 1, "from_cache": 0,
                                               "why": first.report["pytorch_margins"]["why"]}
    second = Reuse(tmp_path)
    assert second.margins(fields, 3, compute([9.0])) == [0.5, 0.25]  # not recomputed
    assert second.report["pytorch_margins"]["reused"] is True and second.report["pytorch_margins"]["from_cache"] == 1
    assert second.margins(fields, 4, compute([1.0])) == [1.0]  # another prompt
    assert second.report["pytorch_margins"]["reused"] is False  # one of the two was computed
    assert Reuse(tmp_path).margins({**fields, "adapter": "b"}, 3, compute([2.0])) == [2.0]
    assert Reuse(tmp_path, enabled=False).margins(fields, 3, compute([3.0])) == [3.0]
    assert calls == [[0.5, 0.25], [1.0], [2.0], [3.0]]
