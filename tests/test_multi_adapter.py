"""Several adapters on one backbone (crome_export.multi, crome_runtime.adapter_entries, the engine's routing): the tiny
backbone with two tiny adapters trained on different questions (colour; warm or not), exported into one bundle,
routed, verified adapter by adapter, added and removed atomically, and the refusals (same name, overlapping
routes, another backbone, a truncated file) that leave the bundle unchanged."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from tests.support.adapters import train_tiny_adapter
from tests.support.bundles import (COLOURS, QUESTION, WARM_QUESTION, as_version1, cache_env, colour_image, copy_bundle,
                                   multi_bundle, torch_threads)

from crome_edge.errors import CromeError

OTHER_QUESTION = "How many parts are there?"  # neither adapter was trained for it: the frozen backbone answers


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    paths = multi_bundle(tmp_path_factory)
    with cache_env(paths["root"] / "cache"):
        yield {**paths, "tmp": tmp_path_factory.mktemp("multi")}


def _engine(bundle):
    from crome_runtime.engine import Engine, EngineConfig

    return Engine.load(bundle, EngineConfig(threads=1, spin=False))


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def test_bundle_lists_adapters_with_prefixed_plain_files(setup):
    manifest = _manifest(setup["both"])
    assert manifest["format_version"] == 2 and "adapter" not in manifest
    assert [a["name"] for a in manifest["adapters"]] == ["colour", "warm"]
    assert manifest["adapters"][0]["route"]["questions"] == [QUESTION]
    assert manifest["adapters"][1]["route"]["questions"] == [WARM_QUESTION]
    files = set(manifest["files"])
    assert all("/" not in name for name in files)
    for name in ("colour", "warm"):
        assert {f"{name}.adapter_visual.onnx", f"{name}.adapter_text.onnx", f"{name}.adapter.safetensors",
                f"{name}.acceptance.json", f"{name}.acceptance.npz"} <= files
    assert "vision.onnx" in files and "adapter_visual.onnx" not in files  # the backbone once, no unnamed adapter
    report = json.loads((setup["both"] / "report.json").read_text())
    assert set(report["adapters"]) == {"colour", "warm"}
    assert all(section["gates"]["fp32_parity"]["ok"] for section in report["adapters"].values())


def test_routing_matches_the_single_adapter_bundles_and_the_frozen_backbone(setup):
    """A routed answer is exactly the single-adapter bundle's (token ids equal); an unrouted prompt gets the frozen
    backbone's answer, checked against PyTorch's CromeModel without an adapter."""
    import torch

    from crome_edge.backbones.tiny import build_tiny
    from crome_edge.model import CromeModel, GenerationConfig

    both, single = _engine(setup["both"]), _engine(setup["bundle"])
    images = [colour_image(name, 900 + i) for i, name in enumerate(COLOURS)]
    for image in images:
        routed, alone = both.answer(image, QUESTION), single.answer(image, QUESTION)
        assert routed.adapter == "colour" and alone.adapter == "colour"
        assert routed.token_ids == alone.token_ids
        assert both.answer(image, WARM_QUESTION).adapter == "warm"
        assert both.answer(image, f"  {QUESTION} ").adapter == "colour"  # outer whitespace does not matter
    frozen = CromeModel(build_tiny(seed=0), None).eval()
    for image in images:
        answer = both.answer(image, OTHER_QUESTION)
        assert answer.adapter is None
        pixels = torch.from_numpy(both.frame(image).pixels)[None]
        reference = frozen.generate(pixels, [OTHER_QUESTION],
                                    GenerationConfig(max_new_tokens=both.manifest.generation.max_new_tokens))[0]
        assert answer.token_ids == reference
        # naming the adapter overrides the routes; "none" is the frozen backbone on a routed prompt too
        from crome_runtime.engine import GenerationOptions

        assert both.answer(image, OTHER_QUESTION, GenerationOptions(adapter="colour")).adapter == "colour"
        named_none = both.answer(image, QUESTION, GenerationOptions(adapter="none"))
        assert named_none.adapter is None
        ref_none = frozen.generate(pixels, [QUESTION], GenerationConfig(
            max_new_tokens=both.manifest.generation.max_new_tokens))[0]
        assert named_none.token_ids == ref_none


def test_a_single_adapter_export_is_routed_by_its_training_questions(setup):
    """`crome-edge export` of one adapter writes the one bundle format (version 2, files under NAME.) and routes the
    adapter like one of several: its training questions, other questions to the frozen backbone."""
    manifest = _manifest(setup["bundle"])
    assert manifest["format_version"] == 2 and "adapter" not in manifest
    assert [(a["name"], a["route"]) for a in manifest["adapters"]] == [("colour", {"questions": [QUESTION],
                                                                                   "patterns": []})]
    assert {"colour.adapter_visual.onnx", "colour.acceptance.json"} <= set(manifest["files"])
    assert "adapter_visual.onnx" not in manifest["files"]
    report = json.loads((setup["bundle"] / "report.json").read_text())
    assert list(report["adapters"]) == ["colour"] and report["adapters"]["colour"]["gates"]["fp32_parity"]["ok"]
    engine = _engine(setup["bundle"])
    image = colour_image("red", 5)
    assert engine.answer(image, QUESTION).adapter == "colour"
    assert engine.answer(image, OTHER_QUESTION).adapter is None


def test_a_version1_bundle_reads_into_one_adapter_that_answers_every_question(setup, tmp_path, capsys):
    """A bundle written before bundles held several adapters loads as it always did: its one adapter, under the
    plain file names, answers every question (the catch-all route), token for token as the same adapter pinned
    in the new format; verify, info and bundle list read it through the same model."""
    from crome_cli.main import main
    from crome_runtime.engine import GenerationOptions
    from crome_runtime.manifest import read_manifest
    from crome_runtime.verify import verify_bundle

    old = as_version1(setup["bundle"], tmp_path / "old.bundle")
    assert "adapter" in _manifest(old) and (old / "adapter_visual.onnx").is_file()
    manifest = read_manifest(old)
    assert manifest.read_version == 1 and manifest.adapter_names == ["colour"]
    (entry,) = manifest.adapters
    assert entry.route.catch_all and entry.file("adapter_text") == "adapter_text.onnx"
    assert entry.max_new_tokens == manifest.generation.max_new_tokens
    engine, new = _engine(old), _engine(setup["bundle"])
    image = colour_image("green", 6)
    for question in (QUESTION, OTHER_QUESTION, WARM_QUESTION):
        answer = engine.answer(image, question)
        assert answer.adapter == "colour"
        assert answer.token_ids == new.answer(image, question, GenerationOptions(adapter="colour")).token_ids
    assert engine.answer(image, QUESTION, GenerationOptions(adapter="none")).adapter is None
    report = verify_bundle(old)
    assert list(report["adapters"]) == ["colour"] and all(g["ok"] for g in report["gates"].values())
    assert report["adapters"]["colour"]["exported_on"] is not None  # read from its version-1 report.json
    assert main(["info", str(old), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format_version"] == 1 and info["adapters"][0]["route"] == {"questions": [], "patterns": ["(?s).*"]}
    assert main(["bundle", "list", str(old)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "colour"
    # older still: no adapter.safetensors (before the C kernel existed): the adapter graphs run it
    from tests.support.bundles import rewrite_manifest

    (old / "adapter.safetensors").unlink()
    rewrite_manifest(old, lambda m: m["files"].pop("adapter.safetensors"))
    graphs = _engine(old)
    assert graphs.adapter_backend == "onnx" and graphs.manifest.adapters[0].file("weights") is None
    assert graphs.answer(image, OTHER_QUESTION).token_ids == engine.answer(image, OTHER_QUESTION).token_ids


def test_one_vision_run_per_frame_shared_by_every_adapter(setup):
    """The vision graph's output of a frame is computed once and every adapter's visual branch reuses it. (The tiny
    backbone's Q-Former is instruction-aware, so its vision output is per frame and question: the three answers ask
    one question of one frame, through each adapter and through none.)"""
    from crome_runtime.engine import GenerationOptions

    engine = _engine(setup["both"])
    assert engine.manifest.backbone.instruction_aware
    frame = engine.frame(colour_image("red", 1))
    first = engine.answer(frame, QUESTION)
    other = engine.answer(frame, QUESTION, GenerationOptions(adapter="warm"))
    none = engine.answer(frame, QUESTION, GenerationOptions(adapter="none"))
    again = engine.answer(frame, QUESTION, GenerationOptions(adapter="warm"))
    assert (first.adapter, other.adapter, none.adapter) == ("colour", "warm", None)
    assert first.cache["vision"] is False and other.cache["vision"] is True and none.cache["vision"] is True
    assert "vision" in first.timings_ms and "vision" not in other.timings_ms
    assert "adapter_visual" in other.timings_ms  # the visual adapter is per adapter
    assert "adapter_visual" not in none.timings_ms and "adapter_text" not in none.timings_ms  # skipped entirely
    assert again.cache == {"vision": True, "text": True} and "adapter_visual" not in again.timings_ms
    assert engine.raw_vision_cache.stats()["misses"] == 1  # one vision run for three adapters' answers
    assert first.token_ids != none.token_ids or first.token_ids != other.token_ids  # they are different models


def test_unknown_adapter_name_is_refused(setup):
    from crome_runtime.engine import GenerationOptions
    from crome_runtime.errors import EngineError

    engine = _engine(setup["both"])
    with pytest.raises(EngineError, match="no adapter 'nope'.*colour, warm"):
        engine.stream(colour_image("red", 1), QUESTION, GenerationOptions(adapter="nope"))


def test_verify_checks_every_adapter(setup):
    from crome_runtime.verify import verify_bundle

    report = verify_bundle(setup["both"])
    assert set(report["adapters"]) == {"colour", "warm"}
    assert report["gates"] and all(gate["ok"] for gate in report["gates"].values())
    assert any(name.startswith("warm: ") for name in report["gates"])


def test_add_and_remove_are_atomic_and_refusals_leave_the_bundle_unchanged(setup):
    from crome_edge.backbones.tiny import build_tiny
    from crome_export.multi import add_adapter, remove_adapter
    from crome_export.pipeline import ExportConfig
    from crome_runtime.verify import verify_bundle

    work = setup["tmp"] / "edit"
    work.mkdir()
    bundle = as_version1(setup["bundle"], work / "colour.bundle")  # a version-1 bundle: converted on add
    config = ExportConfig(adapter=setup["warm"], threads=1)
    with cache_env(setup["root"] / "cache"):
        with torch_threads(1):
            path, seconds = add_adapter(bundle, setup["warm"], config, quiet=True)
            assert path == bundle.absolute() and seconds > 0
            manifest = _manifest(bundle)
            assert manifest["format_version"] == 2 and "adapter" not in manifest
            assert [a["name"] for a in manifest["adapters"]] == ["colour", "warm"]
            assert manifest["adapters"][0]["route"]["questions"] == [QUESTION]  # the v1 adapter's training questions
            assert "colour.adapter_visual.onnx" in manifest["files"] and "adapter_visual.onnx" not in manifest["files"]
            assert not (bundle / "adapter_visual.onnx").exists()
            before = (bundle / "manifest.json").read_bytes()

            with pytest.raises(CromeError, match="already has an adapter named warm"):
                add_adapter(bundle, setup["warm"], config, quiet=True)
            clash = setup["warm"].with_name("clash.safetensors")  # beside it: its data path is relative to itself
            shutil.copyfile(setup["warm"], clash)
            with pytest.raises(CromeError, match=re.escape(f"{QUESTION!r} is routed to colour and to clash")):
                add_adapter(bundle, clash, config, questions=[QUESTION], quiet=True)
            truncated = work / "cut.safetensors"
            truncated.write_bytes(setup["warm"].read_bytes()[: setup["warm"].stat().st_size // 2])
            with pytest.raises(CromeError):
                add_adapter(bundle, truncated, config, questions=["Is it cut?"], quiet=True)
            foreign = train_tiny_adapter(build_tiny(seed=1), setup["data"], work / "foreign.safetensors", steps=1)
            with pytest.raises(CromeError, match="trained for backbone tiny .*fingerprint"):
                add_adapter(bundle, foreign, config, quiet=True)
            assert (bundle / "manifest.json").read_bytes() == before
            assert sorted(p.name for p in work.iterdir()) == ["colour.bundle", "cut.safetensors",
                                                              "foreign.safetensors"]  # nothing left behind
            clash.unlink()
    remove_adapter(bundle, "colour")
    assert [a["name"] for a in _manifest(bundle)["adapters"]] == ["warm"]
    assert not (bundle / "colour.adapter_visual.onnx").exists()
    with pytest.raises(CromeError, match="no adapter 'colour'"):
        remove_adapter(bundle, "colour")
    remove_adapter(bundle, "warm")  # the last one: the frozen backbone alone, still a valid bundle
    manifest = _manifest(bundle)
    assert manifest["adapters"] == []
    engine = _engine(bundle)
    answer = engine.answer(colour_image("red", 3), QUESTION)
    assert answer.adapter is None and engine.adapter_names == []
    assert verify_bundle(bundle)["adapters"] == {}


def test_cli_run_names_the_adapter(setup, capsys, tmp_path):
    from crome_cli.main import main

    import cv2

    image = tmp_path / "red.png"
    cv2.imwrite(str(image), colour_image("red", 7))
    base = ["run", "--bundle", str(setup["both"]), "--image", str(image), "--threads", "1", "--json"]
    assert main(base + ["--prompt", QUESTION, "--prompt", OTHER_QUESTION]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["adapter"] for line in lines] == ["colour", None]
    assert main(base + ["--prompt", QUESTION, "--adapter", "none"]) == 0
    assert json.loads(capsys.readouterr().out)["adapter"] is None
    assert main(base + ["--prompt", QUESTION, "--adapter", "nope"]) == 2
    assert "no adapter 'nope'" in capsys.readouterr().err


def test_serve_routes_by_model_field_and_lists_the_adapters(setup):
    import httpx
    from tests.support.serve import png_data_uri, serving

    def ask(base, model, question=QUESTION):
        body = {"messages": [{"role": "user", "content": [
            {"type": "text", "text": question},
            {"type": "image_url", "image_url": {"url": png_data_uri(colour_image("red", 11))}}]}]}
        if model is not None:
            body["model"] = model
        return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)

    with serving(setup["both"]) as (server, base):
        models = httpx.get(f"{base}/v1/models", timeout=30).json()["data"]
        ids = [m["id"] for m in models]
        assert ids == [server.model_id, f"{server.model_id}/colour", f"{server.model_id}/warm",
                       f"{server.model_id}/none"]
        assert ask(base, None).json()["timings"]["adapter"] == "colour"  # routed: the colour question
        assert ask(base, None, OTHER_QUESTION).json()["timings"]["adapter"] is None
        assert ask(base, "warm").json()["timings"]["adapter"] == "warm"
        assert ask(base, f"{server.model_id}/none").json()["timings"]["adapter"] is None
        assert ask(base, f"{setup['both'].name}/warm").json()["timings"]["adapter"] == "warm"
        for model in ("nope", f"{server.model_id}/nope", "other-bundle/colour"):
            response = ask(base, model)
            assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
        metrics = httpx.get(f"{base}/metrics", timeout=30).text
        assert 'crome_adapter_answer_seconds_count{adapter="warm",source="api"} 2.0' in metrics


def test_cli_export_several_then_bundle_add_list_remove(setup, tmp_path, capsys, monkeypatch):
    from crome_cli.main import main

    monkeypatch.setenv("CROME_EDGE_CACHE", str(setup["root"] / "cache"))
    out = tmp_path / "routes.bundle"
    with torch_threads(1):
        same = tmp_path / "x" / "colour.safetensors"
        same.parent.mkdir()
        shutil.copyfile(setup["warm"], same)
        assert main(["export", "--adapter", str(setup["adapter"]), "--adapter", str(same), "--precision", "fp32",
                     "--out", str(out), "--threads", "1"]) == 2
        assert "two adapters are named colour" in capsys.readouterr().err and not out.exists()
        assert main(["export", "--adapter", str(setup["adapter"]), "--precision", "fp32", "--out", str(out),
                     "--threads", "1", "--route", "colour=What (colour|color) is (it|the part)\\?"]) == 0
        capsys.readouterr()
        manifest = _manifest(out)
        assert manifest["adapters"][0]["route"] == {"questions": [], "patterns": ["What (colour|color) is (it|the part)\\?"]}
        engine = _engine(out)
        assert engine.answer(colour_image("red", 2), "What color is the part?").adapter == "colour"
        assert engine.answer(colour_image("red", 2), QUESTION).adapter == "colour"
        assert engine.answer(colour_image("red", 2), WARM_QUESTION).adapter is None
        before = (out / "manifest.json").read_bytes()
        same = "What (colour|color) is (it|the part)\\?"  # colour's own route: warm could never be reached
        assert main(["bundle", "add", str(out), "--adapter", str(setup["warm"]), "--threads", "1", "--route", same]) == 2
        assert "is the route of colour and of warm" in capsys.readouterr().err
        assert (out / "manifest.json").read_bytes() == before
        assert main(["bundle", "add", str(out), "--adapter", str(setup["warm"]), "--threads", "1"]) == 0
        captured = capsys.readouterr()
        assert re.search(r"added warm to .* in \d+\.\d s", captured.err)
    assert main(["bundle", "list", str(out)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [a["name"] for a in listed] == ["colour", "warm"]
    assert listed[1]["route"]["questions"] == [WARM_QUESTION]
    assert main(["bundle", "remove", str(out), "colour"]) == 0
    assert main(["bundle", "remove", str(out), "colour"]) == 2
    assert "no adapter 'colour'" in capsys.readouterr().err
    assert main(["verify", str(out)]) == 0


def test_serve_hot_swaps_adapters_between_answers(setup, tmp_path, monkeypatch):
    """bundle add/remove on the served bundle, then POST /v1/adapters/reload: the new adapters answer, a rejected
    bundle (another backbone's files) leaves the old adapters serving, nothing is lost while a watch prompt runs."""
    import httpx
    from tests.support.serve import colour_source, png_data_uri, serving, wait_for

    from crome_export.multi import add_adapter, remove_adapter
    from crome_export.pipeline import ExportConfig

    monkeypatch.setenv("CROME_EDGE_CACHE", str(setup["root"] / "cache"))
    bundle = copy_bundle(setup["both"], tmp_path / "served.bundle")
    remove_adapter(bundle, "warm")
    headers = {"Authorization": "Bearer k3y-for-the-admin"}

    def ask(base, question):
        body = {"messages": [{"role": "user", "content": [
            {"type": "text", "text": question},
            {"type": "image_url", "image_url": {"url": png_data_uri(colour_image("red", 11))}}]}]}
        response = httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()["timings"]["adapter"]

    with serving(bundle, colour_source(), watch=[WARM_QUESTION], api_key=headers["Authorization"][7:]) as (server, base):
        assert ask(base, WARM_QUESTION) is None  # no warm adapter yet: the frozen backbone
        with torch_threads(1):
            add_adapter(bundle, setup["warm"], ExportConfig(adapter=setup["warm"], threads=1), quiet=True)
        assert ask(base, WARM_QUESTION) is None  # not swapped until asked to
        assert httpx.post(f"{base}/v1/adapters/reload", timeout=60).status_code == 401  # admin needs the key
        vision_size = server.worker.engine.describe()["caches"]["vision"]["size"]
        response = httpx.post(f"{base}/v1/adapters/reload", headers=headers, timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["added"] == ["warm"] and response.json()["kept"] == ["colour"]
        # /v1/models names the adapters now served; the id served before still answers
        models = [m["id"] for m in httpx.get(f"{base}/v1/models", headers=headers, timeout=30).json()["data"]]
        assert models[0] == server.model_id == "tiny-colour+warm-fp32" and "tiny-colour+warm-fp32/warm" in models
        # each adapter has its own caches at the configured size: the added one too
        caches = server.worker.engine.describe()["caches"]
        assert caches["vision"]["size"] == vision_size // 2 * 3 and caches["text"]["size"] % 3 == 0
        assert ask(base, WARM_QUESTION) == "warm" and ask(base, QUESTION) == "colour"
        listed = httpx.get(f"{base}/v1/adapters", headers=headers, timeout=30).json()["data"]
        assert [a["name"] for a in listed] == ["colour", "warm"]
        # the watch prompt is re-routed to the new adapter
        wait_for(lambda: any(e.get("adapter") == "warm" for e in list(server.hub.recent)), "a watch answer by warm")
        # a bundle whose backbone files changed is refused; the old adapters serve on
        vision = bundle / "vision.onnx"
        manifest = json.loads((bundle / "manifest.json").read_text())
        original = vision.read_bytes()
        vision.unlink()
        vision.write_bytes(original + b"\0")
        import hashlib

        manifest["files"]["vision.onnx"]["sha256"] = hashlib.sha256(original + b"\0").hexdigest()
        manifest["files"]["vision.onnx"]["bytes"] = len(original) + 1
        (bundle / "manifest.json").write_text(json.dumps(manifest))
        response = httpx.post(f"{base}/v1/adapters/reload", headers=headers, timeout=60)
        assert response.status_code == 409 and "other backbone files" in response.json()["error"]["message"]
        assert ask(base, WARM_QUESTION) == "warm"
        vision.unlink()
        vision.write_bytes(original)
        manifest["files"]["vision.onnx"]["sha256"] = hashlib.sha256(original).hexdigest()
        manifest["files"]["vision.onnx"]["bytes"] = len(original)
        (bundle / "manifest.json").write_text(json.dumps(manifest))
        remove_adapter(bundle, "colour")
        response = httpx.post(f"{base}/v1/adapters/reload", headers=headers, timeout=60)
        assert response.status_code == 200 and response.json()["removed"] == ["colour"]
        assert ask(base, QUESTION) is None and ask(base, WARM_QUESTION) == "warm"
        remove_adapter(bundle, "warm")  # the last one, while a watch prompt runs: the frozen backbone serves on
        response = httpx.post(f"{base}/v1/adapters/reload", headers=headers, timeout=60)
        assert response.status_code == 200 and response.json()["adapters"] == []
        assert ask(base, WARM_QUESTION) is None
        models = httpx.get(f"{base}/v1/models", headers=headers, timeout=30).json()["data"]
        assert [m["id"] for m in models] == [server.model_id, f"{server.model_id}/none"]
        assert server.worker.state == "ready"


def test_add_checks_an_adapter_exported_on_other_backbone_bytes_on_the_bundles(setup, tmp_path, monkeypatch):
    """The bundle's tokenizer.json rewritten (same tokenizer, other bytes): the added adapter's own export has the
    original bytes, so it joins only after its acceptance set passes on the bundle's files, and report.json says so."""
    from crome_export.multi import add_adapter
    from crome_export.pipeline import ExportConfig
    from crome_runtime.manifest import sha256_file

    monkeypatch.setenv("CROME_EDGE_CACHE", str(setup["root"] / "cache"))
    bundle = copy_bundle(setup["bundle"], tmp_path / "colour.bundle")
    tokenizer = bundle / "tokenizer.json"
    text = json.dumps(json.loads(tokenizer.read_text()), indent=1)
    tokenizer.unlink()
    tokenizer.write_text(text)
    manifest = _manifest(bundle)
    manifest["files"]["tokenizer.json"].update(sha256=sha256_file(tokenizer), bytes=tokenizer.stat().st_size)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with torch_threads(1):
        add_adapter(bundle, setup["warm"], ExportConfig(adapter=setup["warm"], threads=1), quiet=True)
    report = json.loads((bundle / "report.json").read_text())
    check = report["adapters"]["warm"]["checked_on_bundle_backbone"]
    assert check["files_that_differed"] == ["tokenizer.json"] and all(g["ok"] for g in check["gates"].values())
    assert (bundle / "tokenizer.json").read_text() == text  # the bundle's own files stay


def test_reload_under_load_loses_no_request(setup, tmp_path):
    """Requests (streamed and not) in flight while the adapters are reloaded: every one is answered, each by the
    adapter its prompt routes to."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from tests.support.serve import png_data_uri, serving

    bundle = copy_bundle(setup["both"], tmp_path / "load.bundle")
    headers = {"Authorization": "Bearer k3y-for-the-admin"}
    image = png_data_uri(colour_image("blue", 5))

    def ask(i: int):
        question = QUESTION if i % 2 else WARM_QUESTION
        body = {"stream": i % 3 == 0, "messages": [{"role": "user", "content": [
            {"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": image}}]}]}
        response = httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=120)
        if body["stream"]:
            return response.status_code, "data: [DONE]" in response.text
        return response.status_code, response.json()["timings"]["adapter"] == ("colour" if i % 2 else "warm")

    with serving(bundle, api_key=headers["Authorization"][7:]) as (server, base):
        with ThreadPoolExecutor(6) as pool:
            answers = [pool.submit(ask, i) for i in range(18)]
            reloads = [httpx.post(f"{base}/v1/adapters/reload", headers=headers, timeout=120) for _ in range(3)]
            results = [a.result() for a in answers]
    assert all(r.status_code == 200 and r.json()["kept"] == ["colour", "warm"] for r in reloads)
    assert results == [(200, True)] * 18


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.__setitem__("adapters", {"colour": {}}), "must list its `adapters`"),
    (lambda m: m["adapters"].append(dict(m["adapters"][0])), "two adapters are named 'colour'"),
    (lambda m: m["adapters"][1]["route"].__setitem__("patterns", ["What .*"]), "routes overlap: 'What colour is it\\?' is "
                                                                            "routed to colour and to warm"),
    # one regular expression routed to two adapters: the second could never be reached (issue 21, row 12)
    (lambda m: [a["route"].update(questions=[], patterns=["Is (it|the part) red\\?"]) for a in m["adapters"]],
     "regular expression 'Is \\(it\\|the part\\) red.*' is the route of colour and of warm"),
    (lambda m: m["adapters"][0]["route"].update(questions=[], patterns=["(?s).*"]),
     "colour answers every question, so warm would never be reached"),
    (lambda m: m["adapters"][1].__setitem__("name", "../warm"), "name '../warm' is not usable"),
    (lambda m: m["adapters"][1].__setitem__("name", "None"), "not 'none'"),
    (lambda m: m["adapters"][1]["route"].__setitem__("patterns", ["(unclosed"]), "not a regular expression"),
    (lambda m: m["adapters"][1].__setitem__("route", ["Is it?"]), "route must be"),
    (lambda m: m["adapters"][1].pop("sha256"), "lacks 'sha256'"),
    (lambda m: m["adapters"][1].__setitem__("rank", "16"), "malformed fields"),
    (lambda m: m["files"].pop("warm.adapter_text.onnx"), "lists no warm.adapter_text.onnx"),
])
def test_malformed_adapter_lists_are_refused(setup, tmp_path, edit, message):
    from tests.support.bundles import rewrite_manifest

    from crome_runtime.bundle import load_bundle
    from crome_runtime.manifest import BundleError

    bundle = copy_bundle(setup["both"], tmp_path / "bad.bundle")
    rewrite_manifest(bundle, edit)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle)


def test_a_single_adapter_bundle_whose_training_data_is_gone_is_routed_its_acceptance_questions(setup, tmp_path,
                                                                                                   monkeypatch):
    from crome_export.multi import read_contents

    bundle = as_version1(setup["bundle"], tmp_path / "moved.bundle")  # its adapter answers every question
    data = setup["data"]
    moved = data.with_name("data.moved.jsonl")
    data.rename(moved)
    try:
        contents = read_contents(bundle)
    finally:
        moved.rename(data)
    assert contents.members[0].entry.route.questions == [QUESTION]  # the acceptance set asks the training question
