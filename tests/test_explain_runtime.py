"""The heat map per answer on the tiny bundle (docs/explain.md): the per-query numbers against the PyTorch adapter,
`crome-edge run --explain OUT.png`, and what a bundle exported before the feature says."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from crome_runtime import formats
from tests.support.bundles import QUESTION, colour_image, rewrite_manifest, tiny_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def old_bundle(bundle, tmp_path_factory):
    """The tiny bundle as exported before --explain existed: vision.onnx without its optional output."""
    import shutil

    import onnx

    from crome_export.optional_outputs import split_optional
    from crome_runtime.manifest import sha256_file

    target = tmp_path_factory.mktemp("explain-old") / "old.bundle"
    shutil.copytree(bundle["bundle"], target)
    vision = target / formats.VISION_ONNX
    onnx.save(split_optional(onnx.load(str(vision)))[0], str(vision))
    entry = {"sha256": sha256_file(vision), "bytes": vision.stat().st_size}
    rewrite_manifest(target, lambda m: m["files"][formats.VISION_ONNX].update(entry))
    return target


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "red.png"
    cv2.imwrite(str(path), colour_image("red", 7))
    return path


def test_query_stats_are_the_pytorch_adapters_change_and_gate(bundle):
    from crome_edge.adapter_file import load_adapter
    from crome_edge.backbones.tiny import build_tiny
    from crome_runtime.engine import Engine, EngineConfig
    from crome_runtime.explain import query_stats

    engine = Engine.load(bundle["bundle"], EngineConfig(threads=1))
    frame = engine.frame(colour_image("green", 3))
    answer = engine.answer(frame, QUESTION)
    result = engine.explain(frame, QUESTION, answer.adapter)
    adapter, _ = load_adapter(bundle["adapter"], build_tiny(seed=0))
    x = torch.from_numpy(engine.vision(frame, QUESTION))  # (Nq, d)
    with torch.no_grad():
        change = (adapter(x[None], "visual")[0] - x).norm(dim=1) / x.norm(dim=1)
        gate = torch.sigmoid(x @ adapter.gate["visual"]).mean(dim=1)
    np.testing.assert_allclose(result.change, change.numpy(), rtol=1e-4)  # float32 torch vs float64 numpy
    np.testing.assert_allclose(result.gate, gate.numpy(), rtol=1e-5)
    assert result.change.min() > 0 and answer.adapter == "colour"
    assert query_stats(x.numpy(), engine._visual_weights("colour"))[0].shape == (4,)
    # the map: queries weighted by change x gate, a distribution over tiny's 4x4 patch grid
    np.testing.assert_allclose(result.weight, change.numpy() * gate.numpy() / (change * gate).sum().item(), rtol=1e-4)
    assert result.grid.shape == (4, 4) and abs(float(result.grid.sum()) - 1) < 1e-5 and result.grid.min() >= 0
    expected = np.tensordot(result.weight, result.attention, axes=1)
    np.testing.assert_allclose(result.grid, expected / expected.sum(), rtol=1e-5)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["grid_shape"] == [4, 4] and len(data["queries"]) == 4 and data["weighting"] == "change x gate"


def test_explain_leaves_the_answer_and_its_caches_as_they_were(bundle):
    from crome_runtime.engine import Engine, EngineConfig

    engine = Engine.load(bundle["bundle"], EngineConfig(threads=1))
    frame = engine.frame(colour_image("blue", 5))
    first = engine.answer(frame, QUESTION)
    visual = engine.vision(frame, QUESTION)
    engine.explain(frame, QUESTION, first.adapter)
    again = engine.answer(frame, QUESTION)
    assert again.token_ids == first.token_ids and again.cache["vision"]  # served from the cache explain did not touch
    assert np.array_equal(engine.vision(frame, QUESTION), visual)
    frozen = engine.explain(frame, QUESTION, None)  # no adapter: every query alike, and it says so
    assert np.allclose(frozen.weight, 0.25) and frozen.weighting.startswith("uniform")


def test_run_explain_writes_the_frame_with_the_map_and_the_answer(bundle, image, tmp_path, capsys):
    from crome_cli.main import main

    out = tmp_path / "explained.png"
    assert main(["run", "--bundle", str(bundle["bundle"]), "--image", str(image), "--prompt", QUESTION,
                 "--threads", "1", "--explain", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out.strip().splitlines()[-1])
    assert record["explain"]["grid_shape"] == [4, 4] and record["explain"]["adapter"] == "colour"
    assert f"-> {out}" in captured.err
    drawn = cv2.imread(str(out))
    source = cv2.imread(str(image))
    assert drawn.shape[1] == source.shape[1] and drawn.shape[0] > source.shape[0]  # the frame, a caption band below
    assert np.abs(drawn[: source.shape[0]].astype(int) - source).max() > 20  # the map is drawn over the frame
    assert drawn[source.shape[0]:].max() == 255  # white caption text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.parametrize("name, message", [
    ("map.gif", "ending in .png or .jpg"),
    ("missing/map.png", "does not exist"),
])
def test_run_explain_refuses_an_output_it_cannot_write_before_any_work(bundle, image, tmp_path, capsys, name, message):
    from crome_cli.main import main

    code = main(["run", "--bundle", str(bundle["bundle"]), "--image", str(image), "--prompt", QUESTION,
                 "--explain", str(tmp_path / name)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert "bundle" not in err.split("error:")[0]  # refused before the bundle was loaded


def test_a_bundle_exported_before_the_feature_answers_but_refuses_explain_with_the_reexport_command(
        old_bundle, image, tmp_path, capsys):
    from crome_cli.main import main
    from crome_runtime.engine import Engine, EngineConfig
    from crome_runtime.errors import EngineError

    engine = Engine.load(old_bundle, EngineConfig(threads=1))
    frame = engine.frame(str(image))
    answer = engine.answer(frame, QUESTION)
    assert answer.text  # the normal path is untouched
    with pytest.raises(EngineError, match="re-export it to get heat maps: crome-edge export"):
        engine.explain(frame, QUESTION, answer.adapter)
    out = tmp_path / "map.png"
    code = main(["run", "--bundle", str(old_bundle), "--image", str(image), "--prompt", QUESTION, "--explain", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and f"no {formats.OUT_QUERY_ATTENTION} output" in err and "crome-edge export" in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1 and not out.exists()
