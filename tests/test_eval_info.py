"""`crome-edge eval` (JSON accuracy; refuses another backbone's adapter) and `crome-edge info` (adapter,
backbone parts, checkpoint, bundle — the bundle torch-free — or 'not a crome-edge file')."""
import json
import subprocess
import sys

import pytest

from crome_cli.main import main
from crome_edge.evaluate import exact_match, score
from crome_edge.training.config import TrainConfig
from crome_edge.training.trainer import Trainer
from tests.support.datasets import synth_dataset

FAST = dict(batch_size=6, rank=8, lr=0.02, val_fraction=0.25, threads=1, progress=False, backbone="tiny", device="cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    data = synth_dataset(root / "data", n=24)
    Trainer(TrainConfig(data=str(data), out=str(root / "line3.safetensors"), steps=3, **FAST)).run()
    Trainer(TrainConfig(data=str(data), out=str(root / "parts.safetensors"), stage="pretrain", steps=2, **FAST)).run()
    return root, data


def test_exact_match_normalises_case_punctuation_and_spaces():
    assert exact_match("  Red.", "red") and exact_match("missing  hole!", "Missing hole")
    assert not exact_match("red gear", "red")


def test_eval_prints_accuracy_json(trained, capsys):
    root, data = trained
    assert main(["eval", "--backbone", "tiny", "--adapter", str(root / "line3.safetensors"), "--data", str(data), "--limit", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 5 and 0.0 <= report["accuracy"] <= 1.0 and report["seconds"] > 0
    assert report["per_question"]["Which bin does this part go to?"]["n"] == 5
    assert report["backbone"] == "tiny" and report["adapter"].endswith("line3.safetensors")
    assert main(["eval", "--backbone", "tiny", "--data", str(data), "--limit", "3"]) == 0  # the backbone alone
    assert json.loads(capsys.readouterr().out)["adapter"] is None


def test_eval_refuses_an_adapter_for_another_backbone(trained, capsys):
    root, data = trained
    assert main(["eval", "--backbone", "tiny:1", "--adapter", str(root / "line3.safetensors"), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "was trained for backbone tiny" in err and "Re-train the adapter on this backbone or pass --backbone" in err


def test_eval_bad_inputs(trained, tmp_path, capsys):
    root, data = trained
    assert main(["eval", "--backbone", "tiny", "--data", str(data), "--split", "val"]) == 2
    assert "needs an --adapter that records its split" in capsys.readouterr().err
    assert main(["eval", "--backbone", "tiny", "--data", str(data), "--limit", "0"]) == 2
    assert "argument --limit: must be a whole number >= 1, got '0'" in capsys.readouterr().err
    assert main(["eval", "--backbone", "tiny", "--data", str(tmp_path / "none.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", "--backbone", "tiny", "--adapter", str(data), "--data", str(data)]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err


def test_score_keeps_per_question_counts():
    from pathlib import Path

    from crome_edge.data import Sample

    samples = [Sample(Path("a.png"), "q1", "red"), Sample(Path("b.png"), "q1", "blue"), Sample(Path("a.png"), "q2", "yes")]
    result = score(samples, ["Red", "green", "yes."])
    assert (result.n, result.correct) == (3, 2)
    assert result.per_question["q1"].accuracy == 0.5 and result.per_question["q2"].accuracy == 1.0
    assert result.examples == [{"image": "b.png", "question": "q1", "answer": "blue", "predicted": "green"}]


def test_info_describes_adapter_parts_and_checkpoint(trained, capsys):
    root, _ = trained
    assert main(["info", str(root / "parts.safetensors"), "--json"]) == 0
    parts = json.loads(capsys.readouterr().out)
    assert parts["kind"] == "backbone parts" and set(parts["parameters"]) == {"vision", "query_tokens", "qformer", "projection"}
    assert parts["training"]["stage"] == "pretrain" and parts["backbone"]["name"] == "tiny"
    assert main(["info", str(root / "line3.safetensors.ckpt"), "--json"]) == 0
    checkpoint = json.loads(capsys.readouterr().out)
    assert checkpoint["kind"] == "training checkpoint" and checkpoint["step"] == 3 and checkpoint["stage"] == "finetune"
    assert main(["info", str(root / "line3.safetensors")]) == 0
    text = capsys.readouterr().out
    assert "crome-edge adapter" in text and "rank: 8" in text and "fingerprint:" in text and "val_fraction: 0.25" in text


def test_info_refuses_other_files(tmp_path, capsys):
    from safetensors.numpy import save_file
    import numpy as np

    (tmp_path / "notes.txt").write_text("hello")
    save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "empty").write_bytes(b"")
    for name in ("notes.txt", "model.safetensors", "empty"):
        assert main(["info", str(tmp_path / name)]) == 2
        assert "not a crome-edge file" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["info", str(tmp_path)]) == 2
    assert "not a usable crome-edge bundle" in capsys.readouterr().err


def _write_bundle(path):
    from crome_runtime.adapter_entries import AdapterEntry, Route
    from crome_runtime.manifest import BackboneSpec, LlmSpec, Manifest, file_entry
    from crome_runtime.prompt import PromptTemplate

    path.mkdir()
    (path / "adapter.onnx").write_bytes(b"onnx bytes")
    manifest = Manifest(
        backbone=BackboneSpec(
            name="tiny", fingerprint="ab" * 32, architecture="instructblip", d_model=64, num_query_tokens=4,
            instruction_aware=True, image_size=32, image_mean=[0.5] * 3, image_std=[0.25] * 3,
        ),
        llm=LlmSpec(num_layers=2, num_kv_heads=2, head_dim=16, vocab_size=259, max_position_embeddings=256),
        adapters=[AdapterEntry(name="line3", sha256="cd" * 32, rank=8, route=Route(["Is it defective?"]),
                               training={"stage": "finetune"})],
        prompt=PromptTemplate(text="Question: {question} Answer:"),
        precision="fp32",
        files={"adapter.onnx": file_entry(path / "adapter.onnx", "fp32")},
    )
    (path / "manifest.json").write_text(manifest.to_json())


def test_info_reads_a_bundle_without_torch(tmp_path):
    bundle = tmp_path / "bundle"
    _write_bundle(bundle)
    code = (
        "import sys, json; from crome_cli.main import main; rc = main(['info', sys.argv[1], '--json', '--verify']); "
        "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(bundle)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["kind"] == "bundle" and info["adapters"][0]["rank"] == 8 and info["verified"] is True
    assert info["adapters"][0]["route"] == {"questions": ["Is it defective?"], "patterns": []}
    assert info["files"] == {"adapter.onnx": {"bytes": 10, "precision": "fp32"}} and info["missing_files"] == []
    (bundle / "adapter.onnx").write_bytes(b"tampered!!")
    done = subprocess.run([sys.executable, "-c", code, str(bundle)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "was altered" in done.stderr
