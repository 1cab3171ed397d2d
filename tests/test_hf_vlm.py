"""Bring your own VLM: LLaVA and SmolVLM/Idefics3 directories (random weights, built in code by
tests/support/vlm_dirs.py) as backbones.

Held to Hugging Face's own pipeline: the runtime's numpy preprocessing equals the HF image processor bit for bit
(and Pillow's resampling on random shapes), the prompt ids with the visual run expanded equal the processor's
input_ids, and CromeModel with no adapter generates exactly what the HF model's `generate` does. Then train ->
export (FP32 and INT8 vision, the portable static recipe) -> run -> verify: the FP32 bundle's greedy answers equal
PyTorch's, INT8 passes the export's gates, and the backbone stays bit-identical through training.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.support.bundles import _dataset, cache_env, colour_image, torch_threads
from tests.support.vlm_dirs import write_idefics3_dir, write_llava_dir

FAMILIES = {"llava": (write_llava_dir, "LlavaForConditionalGeneration"),
            "idefics3": (write_idefics3_dir, "Idefics3ForConditionalGeneration")}
QUESTION = "What colour is it?"
FRAME_SHAPES = [(32, 32), (48, 64), (100, 37), (29, 31), (240, 320)]  # (H, W): square, wide, tall, odd, camera-like


@pytest.fixture(scope="module")
def vlm_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm")
    return {name: write(root / name) for name, (write, _) in FAMILIES.items()}


@pytest.fixture(scope="module")
def backbones(vlm_dirs):
    from crome_edge.backbones.registry import load_backbone

    return {name: load_backbone(str(path)) for name, path in vlm_dirs.items()}


def _hf(vlm_dirs, family):
    import transformers
    from transformers import AutoProcessor

    path = str(vlm_dirs[family])
    model = getattr(transformers, FAMILIES[family][1]).from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(path)


def _hf_inputs(processor, bgr: np.ndarray, question: str):
    from PIL import Image

    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    text = processor.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
    return processor(images=[Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]))], text=text, return_tensors="pt")


def test_pil_resampling_is_pillows_bit_for_bit():
    """Pillow 13's uint8 resize (both pass orders, up and down, all three filters) reproduced in numpy."""
    from PIL import Image

    from crome_runtime.hf_image import pil_resize

    rng = np.random.default_rng(0)
    codes = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
    for _ in range(40):
        h, w, out_h, out_w = (int(v) for v in rng.integers(3, 48, 4))
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for name, code in codes.items():
            expected = np.asarray(Image.fromarray(rgb).resize((out_w, out_h), resample=code))
            assert np.array_equal(pil_resize(rgb, out_h, out_w, name), expected), (h, w, out_h, out_w, name)


@pytest.mark.parametrize("family", FAMILIES)
def test_runtime_preprocessing_is_the_hf_processors_bit_for_bit(family, vlm_dirs, backbones):
    from crome_runtime.preprocess import preprocess_frame

    info = backbones[family].info
    _, processor = _hf(vlm_dirs, family)
    rng = np.random.default_rng(1)
    for h, w in FRAME_SHAPES:
        bgr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        expected = _hf_inputs(processor, bgr, QUESTION)["pixel_values"].numpy().reshape(3, info.image_size, info.image_size)
        for pixfmt, frame in (("bgr", bgr), ("rgb", np.ascontiguousarray(bgr[:, :, ::-1]))):
            got = preprocess_frame(frame, pixfmt, info.image_size, info.image_mean, info.image_std, resize=info.resize)
            assert got.dtype == np.float32 and np.array_equal(got, expected), (family, h, w, pixfmt)


def test_a_siglip_tower_llava_is_preprocessed_and_prompted_as_its_processor_does(tmp_path):
    """LLaVA with a SigLIP tower (square resize, mean/std 0.5, every patch kept: no CLS to drop): pixels bit-equal to
    the SigLIP processor's, the visual run as long as the processor's, and HF `generate`'s tokens without an adapter."""
    from crome_edge.backbones.registry import load_backbone
    from crome_edge.model import CromeModel, GenerationConfig
    from crome_runtime.preprocess import preprocess_frame

    path = write_llava_dir(tmp_path / "llava-siglip", tower="siglip")
    backbone = load_backbone(str(path))
    info, prompt, tokenizer = backbone.info, backbone.info.prompt, backbone.llm_tokenizer
    assert info.num_query_tokens == (info.image_size // 8) ** 2 and info.image_mean == (0.5, 0.5, 0.5)
    hf, processor = _hf({"llava": path}, "llava")
    model, stops = CromeModel(backbone), backbone.stop_token_ids()
    rng = np.random.default_rng(3)
    for h, w in FRAME_SHAPES:
        bgr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        inputs = _hf_inputs(processor, bgr, QUESTION)
        pixels = preprocess_frame(bgr, "bgr", info.image_size, info.image_mean, info.image_std, resize=info.resize)
        assert np.array_equal(pixels, inputs["pixel_values"].numpy()[0]), (h, w)
        ids, at = prompt.prompt_parts(tokenizer, QUESTION)
        image_id = tokenizer.token_to_id(prompt.image_token)
        assert ids[:at] + [image_id] * info.num_query_tokens + ids[at:] == inputs["input_ids"][0].tolist()
        with torch.no_grad():
            out = hf.generate(**inputs, max_new_tokens=6, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
        expected = out[: next((i for i, t in enumerate(out) if t in stops), len(out))]
        assert model.generate(torch.from_numpy(pixels[None]), [QUESTION], GenerationConfig(max_new_tokens=6))[0] == expected

@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_ids_and_image_placement_are_the_processors(family, vlm_dirs, backbones):
    backbone = backbones[family]
    prompt, tokenizer = backbone.info.prompt, backbone.llm_tokenizer
    _, processor = _hf(vlm_dirs, family)
    for question in (QUESTION, "is the part defective?  "):
        ids, at = prompt.prompt_parts(tokenizer, question)
        image_id = tokenizer.token_to_id(prompt.image_token)
        expanded = ids[:at] + [image_id] * backbone.info.num_query_tokens + ids[at:]
        hf_ids = _hf_inputs(processor, colour_image("red", 0), question.strip())["input_ids"][0].tolist()
        assert expanded == hf_ids
    with pytest.raises(ValueError, match="image token"):
        prompt.prompt_parts(tokenizer, f"what is {prompt.image_token} this?")


@pytest.mark.parametrize("family", FAMILIES)
def test_without_an_adapter_crome_generates_what_hf_generate_does(family, vlm_dirs, backbones):
    from crome_edge.model import CromeModel, GenerationConfig
    from crome_runtime.preprocess import preprocess_image

    backbone = backbones[family]
    info, model = backbone.info, CromeModel(backbone)
    hf, processor = _hf(vlm_dirs, family)
    stops, answers = backbone.stop_token_ids(), set()
    rng = np.random.default_rng(2)
    for h, w in FRAME_SHAPES[:3]:
        bgr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        inputs = _hf_inputs(processor, bgr, QUESTION)
        with torch.no_grad():
            out = hf.generate(**inputs, max_new_tokens=6, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
        expected = out[: next((i for i, t in enumerate(out) if t in stops), len(out))]
        pixels = torch.from_numpy(preprocess_image(bgr, info.image_size, info.image_mean, info.image_std, info.resize))
        assert model.generate(pixels[None], [QUESTION], GenerationConfig(max_new_tokens=6))[0] == expected
        answers.add(tuple(expected))
    assert len(answers) > 1  # the answer depends on the image: the visual tokens reach the LLM


@pytest.mark.parametrize("family", FAMILIES)
def test_train_export_run_verify(family, vlm_dirs, backbones, tmp_path):
    """Adapter on the connector's tokens and the text: the backbone bit-identical through training; FP32 bundle
    greedy = PyTorch greedy on every held-out frame; INT8 vision (static QDQ) within the export's gates; verify ok."""
    from crome_cli.main import main
    from crome_edge.adapter_file import load_adapter
    from crome_edge.backbones.base import tensor_fingerprint
    from crome_edge.model import CromeModel, GenerationConfig
    from crome_edge.training.config import TrainConfig
    from crome_edge.training.trainer import Trainer
    from crome_export.pipeline import ExportConfig, Progress, export_bundle
    from crome_runtime.bundle import load_bundle
    from crome_runtime.engine import Engine, GenerationOptions
    from crome_runtime.preprocess import preprocess_image

    backbone, path = backbones[family], vlm_dirs[family]
    data = _dataset(tmp_path / "data", 30)
    adapter_path = tmp_path / "colour.safetensors"
    before = tensor_fingerprint(backbone.state_dict())
    config = TrainConfig(data=str(data), out=str(adapter_path), backbone=str(path), steps=40, rank=8, lr=2e-2,
                         batch_size=8, threads=1, progress=False)
    with torch_threads(1):
        Trainer(config, backbone=backbone).run()
    assert tensor_fingerprint(backbone.state_dict()) == before == backbone.fingerprint()
    assert not any(p.requires_grad for p in backbone.parameters())
    adapter, meta = load_adapter(adapter_path, backbone)
    assert meta.backbone_name == path.name and meta.prompt == backbone.info.prompt

    bundles = {}
    with cache_env(tmp_path / "cache"), torch_threads(1):
        for precision in ("fp32", "int8"):
            bundles[precision] = export_bundle(
                ExportConfig(adapter=adapter_path, backbone=str(path), precision=precision,
                             out=tmp_path / f"{precision}.bundle", threads=1, data=data),
                Progress(7, enabled=False)).bundle
    manifest = json.loads((bundles["int8"] / "manifest.json").read_text())
    assert manifest["backbone"]["architecture"] == family and manifest["backbone"]["resize"]["method"] == "pil"
    assert manifest["prompt"]["image_token"] == "<image>"
    assert manifest["quantization"]["vision"]["method"] == "static-qdq", manifest["quantization"]
    report = json.loads((bundles["int8"] / "report.json").read_text())
    assert json.dumps(report).count('"ok": false') == 0

    model = CromeModel(backbone, adapter).eval()
    engine = Engine(load_bundle(bundles["fp32"]))
    info = backbone.info
    for i in range(6):
        bgr = colour_image(["red", "green", "blue"][i % 3], 100 + i)
        pixels = preprocess_image(bgr, info.image_size, info.image_mean, info.image_std, info.resize)
        expected = model.generate(torch.from_numpy(pixels[None]), [QUESTION], GenerationConfig(max_new_tokens=8))[0]
        assert engine.answer(bgr, QUESTION, GenerationOptions(max_new_tokens=8)).token_ids == expected
    for bundle in bundles.values():
        assert main(["verify", str(bundle)]) == 0
    _serve_answers_as_the_engine(bundles["fp32"], engine)


@pytest.mark.parametrize("family", FAMILIES)
def test_multi_adapter_bundle_routes_each_question_to_its_adapter(family, vlm_dirs, backbones, tmp_path):
    """Two adapters trained on two questions on the LLaVA / SmolVLM directory, exported into one bundle with the CLI
    (`export --adapter A --adapter B`): each question is routed to its adapter and answered token for token as
    PyTorch answers with that adapter; another question gets the frozen backbone's answer; verify passes."""
    from crome_cli.main import main
    from crome_edge.adapter_file import load_adapter
    from crome_edge.model import CromeModel, GenerationConfig
    from crome_edge.training.config import TrainConfig
    from crome_edge.training.trainer import Trainer
    from crome_runtime.engine import Engine, EngineConfig, GenerationOptions
    from crome_runtime.preprocess import preprocess_image
    from tests.support.bundles import WARM_QUESTION, _warm_dataset

    backbone, path = backbones[family], vlm_dirs[family]
    datasets = {"colour": (_dataset(tmp_path / "colour-data", 12), QUESTION),
                "warm": (_warm_dataset(tmp_path / "warm-data", 12), WARM_QUESTION)}
    adapters = {}
    with torch_threads(1):
        for name, (data, _) in datasets.items():
            adapters[name] = tmp_path / f"{name}.safetensors"
            Trainer(TrainConfig(data=str(data), out=str(adapters[name]), backbone=str(path), steps=6, rank=4,
                                lr=2e-2, batch_size=4, threads=1, progress=False), backbone=backbone).run()
    bundle = tmp_path / "both.bundle"
    with cache_env(tmp_path / "cache"), torch_threads(1):
        assert main(["export", "--adapter", str(adapters["colour"]), "--adapter", str(adapters["warm"]),
                     "--backbone", str(path), "--precision", "fp32", "--threads", "1", "--out", str(bundle)]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["backbone"]["architecture"] == family
    assert [(a["name"], a["route"]["questions"]) for a in manifest["adapters"]] == [("colour", [QUESTION]),
                                                                                  ("warm", [WARM_QUESTION])]

    engine = Engine.load(bundle, EngineConfig(threads=1, spin=False))
    models = {name: CromeModel(backbone, load_adapter(file, backbone)[0]).eval() for name, file in adapters.items()}
    frozen, other = CromeModel(backbone).eval(), "How many parts are there?"
    info, options, config = backbone.info, GenerationOptions(max_new_tokens=8), GenerationConfig(max_new_tokens=8)
    changed = set()  # the adapters whose answer differs from the frozen backbone's on some frame: routing matters
    for i, colour in enumerate(["red", "green", "blue"]):
        bgr = colour_image(colour, 700 + i)
        pixels = torch.from_numpy(preprocess_image(bgr, info.image_size, info.image_mean, info.image_std,
                                                   info.resize)[None])
        for name, (_, question) in datasets.items():
            answer = engine.answer(bgr, question, options)
            assert answer.adapter == name
            assert answer.token_ids == models[name].generate(pixels, [question], config)[0], (name, colour)
            if answer.token_ids != frozen.generate(pixels, [question], config)[0]:
                changed.add(name)
        unrouted = engine.answer(bgr, other, options)
        assert unrouted.adapter is None and unrouted.token_ids == frozen.generate(pixels, [other], config)[0]
    assert changed == set(adapters)
    assert main(["verify", str(bundle)]) == 0


def _serve_answers_as_the_engine(bundle, engine) -> None:
    """`serve` on the bundle, unchanged: an uploaded frame gets the engine's answer over the OpenAI API."""
    import urllib.request

    from crome_runtime.engine import GenerationOptions
    from tests.support.serve import png_data_uri, serving

    bgr = colour_image("blue", 7)
    content = [{"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": png_data_uri(bgr)}}]
    body = json.dumps({"model": "x", "messages": [{"role": "user", "content": content}], "max_tokens": 8}).encode()
    with serving(bundle) as (_, base):
        request = urllib.request.Request(f"{base}/v1/chat/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            reply = json.loads(response.read())
    assert reply["choices"][0]["message"]["content"] == engine.answer(bgr, QUESTION, GenerationOptions(max_new_tokens=8)).text


# --- bad input: one clear line each -------------------------------------------------------------------------


def _refusal(backbone_dir, capsys, data) -> str:
    """`crome-edge train --backbone DIR` on a bad directory: exit 2 and one line on stderr; returns it."""
    from crome_cli.main import main

    capsys.readouterr()  # what building the directory printed
    assert main(["train", "--backbone", str(backbone_dir), "--data", str(data), "--out", str(backbone_dir / "a.st"),
                 "--steps", "1"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory):
    return _dataset(tmp_path_factory.mktemp("colours"), 6)


def _copy(source, target):
    import shutil

    return shutil.copytree(source, target)


def test_foreign_and_unsupported_directories_are_refused_in_one_line(tmp_path, capsys, colour_data):
    bad = tmp_path / "bad"
    bad.mkdir()
    assert "no config.json" in _refusal(bad, capsys, colour_data)
    (bad / "config.json").write_text(json.dumps({"_name_or_path": "x", "hidden_size": 4}))
    assert "names no model_type" in _refusal(bad, capsys, colour_data)
    for model_type, architecture in (("qwen2_vl", "Qwen2VLForConditionalGeneration"),
                                     ("florence2", "Florence2ForConditionalGeneration")):
        (bad / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": [architecture]}))
        line = _refusal(bad, capsys, colour_data)
        assert f"unsupported architecture '{model_type}' ({architecture})" in line
        assert "LLaVA (llava), SmolVLM/Idefics3" in line and "Qwen2-VL, Florence-2" in line
    (bad / "config.json").write_text(json.dumps({"model_type": "llava", "text_config": {"model_type": "t5"}}))
    assert "the LLM is 't5', an encoder-decoder" in _refusal(bad, capsys, colour_data)


def test_missing_shards_and_chat_template_are_refused_in_one_line(tmp_path, capsys, vlm_dirs, colour_data):
    sharded = _copy(vlm_dirs["llava"], tmp_path / "sharded")
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00002.safetensors")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert "1 weight shard(s) its index names are missing (model-00002-of-00002.safetensors)" in _refusal(sharded, capsys, colour_data)

    untemplated = _copy(vlm_dirs["idefics3"], tmp_path / "untemplated")
    (untemplated / "chat_template.jinja").unlink()
    assert "the tokenizer has no chat template" in _refusal(untemplated, capsys, colour_data)


def test_a_tower_and_processor_of_different_sizes_are_refused(tmp_path, capsys, colour_data):
    path = write_llava_dir(tmp_path / "mismatched", crop=48)
    line = _refusal(path, capsys, colour_data)
    assert "the vision tower takes 32×32 px, but the processor makes 48×48 px frames" in line


def test_an_adapter_for_one_checkpoint_is_refused_on_another(tmp_path, capsys, vlm_dirs):
    """Same architecture and shapes, other weights: the fingerprint tells them apart."""
    from crome_cli.main import main
    from crome_edge.adapter_file import AdapterMetadata, save_adapter
    from crome_edge.backbones.registry import load_backbone
    from crome_edge.gated_adapter import AdapterConfig, CromeAdapter

    backbone = load_backbone(str(vlm_dirs["llava"]))
    adapter = tmp_path / "a.safetensors"
    save_adapter(adapter, CromeAdapter(AdapterConfig(backbone.info.d_model, 4)),
                 AdapterMetadata(AdapterConfig(backbone.info.d_model, 4), backbone.info.name, backbone.fingerprint(),
                                 backbone.info.prompt))
    other = write_llava_dir(tmp_path / "llava", seed=1)  # same name and shapes, other weights
    capsys.readouterr()
    assert main(["export", "--adapter", str(adapter), "--backbone", str(other), "--out", str(tmp_path / "b")]) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # after export's stage lines
    assert len(errors) == 1 and "fingerprint" in errors[0] and "holds another checkpoint" in errors[0], errors


def test_a_smolvlm2_processor_that_cannot_be_built_here_is_named(tmp_path, capsys, vlm_dirs, colour_data):
    """SmolVLM2 (model_type smolvlm): its processor needs num2words and torchvision (video); without them, one line
    saying what to install."""
    import importlib.util

    if importlib.util.find_spec("num2words") and importlib.util.find_spec("torchvision"):
        pytest.skip("num2words and torchvision are installed: the SmolVLM2 processor builds")
    path = _copy(vlm_dirs["idefics3"], tmp_path / "smolvlm2")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "model_type": "smolvlm",
                                                  "architectures": ["SmolVLMForConditionalGeneration"]}))
    processor = json.loads((path / "processor_config.json").read_text())
    (path / "processor_config.json").write_text(json.dumps({**processor, "processor_class": "SmolVLMProcessor"}))
    (path / "video_preprocessor_config.json").write_text(json.dumps({"video_processor_type": "SmolVLMVideoProcessor"}))
    assert "its processor needs a package that is not installed here" in _refusal(path, capsys, colour_data)


def test_a_splitting_smolvlm_processor_runs_one_tile_and_says_so(tmp_path, capsys, vlm_dirs, backbones):
    """A processor with do_image_splitting on (SmolVLM's default): one tile, a one-line notice, and the same backbone
    as the one-tile directory (the weights are the same; only the notice differs)."""
    from crome_edge.backbones.registry import load_backbone

    path = write_idefics3_dir(tmp_path / "splitting", splitting=True)
    capsys.readouterr()
    backbone = load_backbone(str(path))
    notice = [line for line in capsys.readouterr().err.splitlines() if "one tile" in line]
    assert len(notice) == 1 and "multi-tile splitting is not supported yet" in notice[0]
    assert backbone.info.schema_fields() | {"name": "idefics3"} == backbones["idefics3"].info.schema_fields()
    assert backbone.fingerprint() == backbones["idefics3"].fingerprint()
