"""Synthetic training sets travel as a recipe: `data synth` records it, training copies it into the adapter,
export regenerates the set bit for bit when the recorded path is gone (and reuses it the next time); an
adapter trained on a user's own data whose path moved gets the clear --data / --calib error. Every command
that takes an adapter accepts a shipped adapter's name."""
import json
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from crome_edge.adapter_file import AdapterFileError, read_metadata, save_adapter
from crome_cli.main import main
from crome_edge.errors import CromeError
from crome_edge.synth.recipe import GENERATOR_VERSION, SynthRecipe, content_sha256, regenerate, training_record
from crome_edge.training.config import TrainConfig
from crome_edge.training.trainer import Trainer
from crome_edge.weights import SHIPPED_ADAPTERS, resolve_adapter, shipped_adapter
from crome_export.frames import load_export_data
from crome_runtime import formats
from tests.support.bundles import adapter_report
from tests.support.datasets import synth_dataset

FAST = dict(batch_size=6, rank=8, lr=0.02, val_fraction=0.25, threads=1, progress=False, backbone="tiny", device="cpu")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CROME_EDGE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(data: Path, out: Path, backbone) -> Path:
    Trainer(TrainConfig(data=str(data), out=str(out), steps=2, **FAST), backbone=backbone).run()
    return out


def _own_dataset(directory: Path, count: int = 12) -> Path:
    """A user's own JSONL set (no dataset.json): noisy colour frames."""
    (directory / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        cv2.imwrite(str(directory / "images" / f"{i:03d}.png"), image)
        lines.append(json.dumps({"image": f"images/{i:03d}.png", "question": "What is it?", "answer": "noise"}))
    (directory / "data.jsonl").write_text("\n".join(lines) + "\n")
    return directory / "data.jsonl"


def test_synth_records_its_recipe_and_the_content_hashes(tmp_path):
    data = synth_dataset(tmp_path / "set", n=6)
    info = json.loads((data.parent / "dataset.json").read_text())
    assert SynthRecipe.from_dict(info["recipe"]) == SynthRecipe("line3", "train", 6, 0, 32, "all", GENERATOR_VERSION)
    assert info["sha256"] == content_sha256(data.parent)  # what the writer rendered is what a reader decodes
    record, note = training_record(data)
    assert record == {"recipe": info["recipe"], "sha256": info["sha256"]} and note is None


def test_a_set_edited_after_synth_and_a_users_own_set_record_no_recipe(tmp_path):
    data = synth_dataset(tmp_path / "set", n=6)
    first, second = sorted((data.parent / "images").iterdir())[:2]
    shutil.copy(second, first)  # same file names and lines, other pixels
    record, note = training_record(data)
    assert record is None and "changed after" in note
    assert training_record(_own_dataset(tmp_path / "own")) == (None, None)


def test_regeneration_is_bit_identical_checked_and_reused(tmp_path, cache):
    data = synth_dataset(tmp_path / "set", n=8)
    record, _ = training_record(data)
    notes = []
    again = regenerate(record, notes.append)
    assert again.parent.parent == cache / "datasets" and "regenerating" in notes[-1]
    assert content_sha256(again.parent) == record["sha256"]
    assert again.read_bytes() == data.read_bytes()
    for name in sorted(p.name for p in (data.parent / "images").iterdir()):
        original = cv2.imread(str(data.parent / "images" / name), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(original, cv2.imread(str(again.parent / "images" / name), cv2.IMREAD_UNCHANGED))
    assert regenerate(record, notes.append) == again and "reusing" in notes[-1]
    assert [p.name for p in again.parent.parent.iterdir()] == [again.parent.name]  # no temp dirs left

    damaged = again.parent / "images" / "000000.png"
    cv2.imwrite(str(damaged), np.zeros((32, 32, 3), np.uint8))  # a damaged cache entry is rebuilt, not used
    assert regenerate(record, notes.append) == again and "regenerating" in notes[-1]
    assert content_sha256(again.parent) == record["sha256"]

    wrong = {**record, "sha256": {**record["sha256"], "frames": "0" * 64}}
    with pytest.raises(CromeError, match="differ from what the adapter was trained on.*--data"):
        regenerate(wrong)
    with pytest.raises(CromeError, match="generator version 99"):
        regenerate({**record, "recipe": {**record["recipe"], "generator_version": 99}})


def test_adapter_records_the_recipe_and_exports_after_its_data_is_deleted(tmp_path, tiny_backbone, capsys):
    data = synth_dataset(tmp_path / "set", n=16)
    adapter = _train(data, tmp_path / "line3.safetensors", tiny_backbone)
    meta = read_metadata(adapter)
    assert meta.train_data == str(data) and meta.train_data_recipe == training_record(data)[0]
    before = load_export_data(meta, tiny_backbone.info, None, True, 200)
    shutil.rmtree(data.parent)

    notes = []
    after = load_export_data(meta, tiny_backbone.info, None, True, 200, notes.append)
    assert any("regenerating" in n for n in notes) and "regenerated" in after.evaluation_source
    assert after.calibration_id() == before.calibration_id()  # same frames, same questions -> same hash
    assert [(s.question, s.answer) for s in after.evaluation] == [(s.question, s.answer) for s in before.evaluation]
    for a, b in zip(before.evaluation, after.evaluation):
        assert a.image.name == b.image.name and np.array_equal(before.pixels[a.image], after.pixels[b.image])

    capsys.readouterr()
    out = tmp_path / "line3.bundle"
    assert main(["export", "--adapter", str(adapter), "--precision", "fp32", "--out", str(out), "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "reusing the regenerated" in err and (out / formats.MANIFEST_FILE).is_file()
    report = adapter_report(out)
    assert "regenerated" in report["inputs"]["evaluation"]


def test_a_users_own_data_that_moved_keeps_the_clear_error(tmp_path, tiny_backbone, capsys):
    data = _own_dataset(tmp_path / "own")
    adapter = _train(data, tmp_path / "own.safetensors", tiny_backbone)
    assert read_metadata(adapter).train_data_recipe is None
    data.parent.rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(["export", "--adapter", str(adapter), "--precision", "fp32", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "not there any more" in err and "--data" in err and "--calib" in err
    assert not (tmp_path / "b").exists() and not (tmp_path / "cache" / "datasets").exists()


def test_adapters_without_a_recipe_still_load_and_a_malformed_one_is_refused(tmp_path, tiny_backbone):
    from crome_edge.gated_adapter import AdapterConfig, CromeAdapter
    from crome_edge.adapter_file import AdapterMetadata, adapter_tensors
    from safetensors.torch import save_file

    adapter = CromeAdapter(AdapterConfig(tiny_backbone.info.d_model, 4))
    meta = AdapterMetadata(adapter.config, "tiny", tiny_backbone.fingerprint(), tiny_backbone.info.prompt)
    old = tmp_path / "old.safetensors"
    save_adapter(old, adapter, meta)  # no recipe: the key is left out, as in files written before it existed
    from safetensors import safe_open

    with safe_open(str(old), framework="pt") as f:
        assert formats.META_TRAIN_DATA_RECIPE not in f.metadata()
    assert read_metadata(old).train_data_recipe is None
    bad = tmp_path / "bad.safetensors"
    tensors = {k: v.detach().contiguous() for k, v in adapter_tensors(adapter).items()}
    save_file(tensors, str(bad), metadata={**meta.to_strings(), formats.META_TRAIN_DATA_RECIPE: "[1, 2]"})
    with pytest.raises(AdapterFileError, match="malformed"):
        read_metadata(bad)


@pytest.mark.parametrize("name, frames", [("line3", 1500), ("line5", 1500)])
def test_each_shipped_adapter_regenerates_its_training_set(cache, name, frames):
    meta = read_metadata(shipped_adapter(name))
    recipe = SynthRecipe.from_dict(meta.train_data_recipe["recipe"])
    assert (recipe.task, recipe.split, recipe.n, recipe.seed, recipe.size) == (name, "train", frames, 0, 128)
    jsonl = regenerate(meta.train_data_recipe)  # raises unless the frames hash to what training read
    from crome_edge.data import load_training_split

    _, train, val = load_training_split(str(jsonl), meta.training)
    held_out = round(frames * meta.training["val_fraction"])
    assert (len(train), len(val)) == (meta.training["examples"], meta.training["val_examples"]) == (frames - held_out, held_out)


def test_every_adapter_argument_takes_a_shipped_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert set(SHIPPED_ADAPTERS) == {"line3", "line5"}
    assert resolve_adapter("line3") == shipped_adapter("line3")
    assert resolve_adapter("missing.safetensors") == Path("missing.safetensors")
    assert main(["info", "line3", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "adapter" and info["backbone"]["name"] == "smol" and info["train_data_recipe"]["recipe"]
    synth_dataset(tmp_path / "set", n=4)
    # the name resolves (the tiny backbone then refuses an adapter made for smol, before loading smol)
    assert main(["eval", "--backbone", "tiny", "--adapter", "line3", "--data", str(tmp_path / "set")]) == 2
    assert main(["export", "--adapter", "line3", "--backbone", "tiny", "--precision", "fp32"]) == 2
    err = capsys.readouterr().err
    assert err.count("was trained for backbone smol") == 2 and "does not exist" not in err
    assert main(["eval", "--backbone", "tiny", "--adapter", "nope", "--data", str(tmp_path / "set")]) == 2
    assert "adapter file nope does not exist (shipped adapters, by name: line3, line5)" in capsys.readouterr().err
    local = tmp_path / "line3"  # a file of that name here wins over the shipped adapter
    local.write_bytes(b"not an adapter")
    assert resolve_adapter("line3") == Path("line3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["line3", "set"]  # export wrote nothing here


def test_export_of_a_shipped_adapter_writes_its_bundle_here_not_into_the_package(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "line3.bundle").mkdir()  # the default target is refused up front, which shows where it is
    assert main(["export", "--adapter", "line3"]) == 2
    assert f"{tmp_path / 'line3.bundle'} already exists" in capsys.readouterr().err
