"""Slow: train -> export -> run -> verify at the issue's widths, through the CLI, for both families.

The directories (random weights, built in code: tests/support/vlm_dirs.py) have a SigLIP-base-like tower at the real
width (768, 12 heads, FFN 3072) cut to 2 layers, the families' real connectors, and a 2-layer LLM at the real width:
- SmolVLM/Idefics3 (`SMOLVLM_WIDE`): SmolVLM-256M's tower and pixel shuffle 4 (the 12288 -> 576 connector), SmolLM2-
  135M's layer shape; a 256 px tile (16 visual tokens) instead of 512 px, one tile.
- LLaVA (`LLAVA_WIDE`): a SigLIP-B/16-224 tower (196 visual tokens), the MLP projector 768 -> 960 -> 960, SmolLM2-
  360M's layer shape (960 wide, 15 heads, 5 KV heads) as the LLaMA-family LLM.
The vocabulary is the test tokenizer's (~265 tokens), not the real 49k: the real-vocabulary head is what
tests/test_hf_vlm_real_shapes.py checks.

`crome-edge train` a few steps (the backbone object it trained with bit-identical afterwards), `export` FP32 and
INT8, `run` on held-out frames and `verify` both bundles. The FP32 bundle's greedy answers are compared token for
token with PyTorch: with the adapter (a question it is routed) against CromeModel.generate with that adapter, and
without it (a question no adapter is routed) against the HF model's own `generate` on the HF processor's inputs.
INT8 is held to the export's own gates (report.json: no gate failed) and `verify`.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.support.bundles import _dataset, cache_env, colour_image, torch_threads
from tests.support.vlm_dirs import LLAVA_WIDE, SMOLVLM_WIDE, write_idefics3_dir, write_llava_dir

pytestmark = pytest.mark.slow

QUESTION = "What colour is it?"  # the adapter's training question: routed to it
OTHER = "Describe the part."  # no adapter's: the frozen backbone answers
FAMILIES = {  # name: (build the directory, the transformers class, visual tokens, d)
    "llava": (lambda path: write_llava_dir(path, LLAVA_WIDE, tower="siglip"), "LlavaForConditionalGeneration", 196, 960),
    "idefics3": (lambda path: write_idefics3_dir(path, SMOLVLM_WIDE), "Idefics3ForConditionalGeneration", 16, 576),
}
FRAMES = 9  # 8 training frames, 1 held out (--val-fraction 0.1)
MAX_NEW_TOKENS = 6


def _hf(path, family: str):
    """The directory as Hugging Face loads it: (model, processor)."""
    import transformers
    from transformers import AutoProcessor

    model = getattr(transformers, FAMILIES[family][1]).from_pretrained(str(path), dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(str(path))


def _hf_generate(hf, bgr: np.ndarray, question: str, stops: frozenset[int]) -> list[int]:
    """The HF model's greedy answer (its own processor and `generate`), cut at the first stop token."""
    from PIL import Image

    model, processor = hf
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    text = processor.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]))], text=text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    answer = out[0, inputs["input_ids"].shape[1]:].tolist()
    return answer[: next((i for i, t in enumerate(answer) if t in stops), len(answer))]


def _run(capsys, bundle, image, prompts: list[str]) -> list[dict]:
    from crome_cli.main import main

    argv = ["run", "--bundle", str(bundle), "--image", str(image), "--json", "--threads", "1",
            "--max-new-tokens", str(MAX_NEW_TOKENS)]
    for prompt in prompts:
        argv += ["--prompt", prompt]
    capsys.readouterr()
    assert main(argv) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("family", FAMILIES)
def test_train_export_run_verify_at_the_issues_widths(family, tmp_path, capsys, monkeypatch):
    import cv2

    from crome_cli.main import main
    from crome_edge.adapter_file import load_adapter
    from crome_edge.backbones import registry
    from crome_edge.backbones.base import tensor_fingerprint
    from crome_edge.model import CromeModel, GenerationConfig
    from crome_runtime.preprocess import preprocess_image

    build, _, tokens, d = FAMILIES[family]
    path = build(tmp_path / family)
    data = _dataset(tmp_path / "data", FRAMES)
    adapter_path = tmp_path / "colour.safetensors"

    loaded = []  # the backbone object `train` loads and trains with (a spy: the same function, its result kept)
    load = registry.load_backbone
    monkeypatch.setattr(registry, "load_backbone", lambda spec: loaded.append(load(spec)) or loaded[-1])
    with torch_threads(1):
        assert main(["train", "--backbone", str(path), "--data", str(data), "--out", str(adapter_path), "--steps", "3",
                     "--batch-size", "4", "--rank", "8", "--lr", "2e-2", "--val-fraction", "0.1", "--max-new-tokens",
                     "2", "--threads", "1", "--no-progress"]) == 0
    monkeypatch.undo()
    (backbone,) = loaded
    adapter, meta = load_adapter(adapter_path, backbone)
    info = backbone.info
    assert (info.architecture, info.num_query_tokens, info.d_model) == (family, tokens, d)
    # bit-identical through training: the fingerprint `train` took before its first step, the trained-with object's
    # tensors after its last, and a fresh load of the directory
    fresh = registry.load_backbone(str(path)).fingerprint()
    assert meta.backbone_fingerprint == tensor_fingerprint(backbone.state_dict()) == fresh
    assert not any(p.requires_grad for p in backbone.parameters())

    bundles = {precision: tmp_path / f"{precision}.bundle" for precision in ("fp32", "int8")}
    with cache_env(tmp_path / "cache"), torch_threads(1):
        for precision, bundle in bundles.items():
            assert main(["export", "--adapter", str(adapter_path), "--backbone", str(path), "--precision", precision,
                         "--calib", "4", "--eval-limit", "4", "--threads", "1", "--out", str(bundle)]) == 0
    manifest = json.loads((bundles["int8"] / "manifest.json").read_text())
    assert manifest["backbone"]["architecture"] == family
    assert (manifest["backbone"]["num_query_tokens"], manifest["backbone"]["d_model"]) == (tokens, d)
    report = json.loads((bundles["int8"] / "report.json").read_text())
    assert manifest["quantization"]["vision"]["method"] == "static-qdq", manifest["quantization"]
    assert '"ok": false' not in json.dumps(report), report  # every gate of the INT8 export passed

    model, frozen = CromeModel(backbone, adapter).eval(), CromeModel(backbone).eval()
    stops, config = backbone.stop_token_ids(), GenerationConfig(max_new_tokens=MAX_NEW_TOKENS)
    hf, answers = _hf(path, family), set()
    for i, colour in enumerate(["red", "green", "blue"]):
        bgr = colour_image(colour, 900 + i, size=48)  # held out: not among the training frames (seeds 0..FRAMES)
        image = tmp_path / f"{colour}.png"
        assert cv2.imwrite(str(image), bgr)
        routed, unrouted = _run(capsys, bundles["fp32"], image, [QUESTION, OTHER])
        assert (routed["adapter"], unrouted["adapter"]) == ("colour", None)
        pixels = preprocess_image(bgr, info.image_size, info.image_mean, info.image_std, info.resize)
        pixels = torch.from_numpy(pixels[None])  # (1, 3, S, S): what `run` fed the vision graph
        with torch.no_grad():
            assert routed["tokens"] == model.generate(pixels, [QUESTION], config)[0], (family, colour)
            assert unrouted["tokens"] == frozen.generate(pixels, [OTHER], config)[0], (family, colour)
        assert unrouted["tokens"] == _hf_generate(hf, bgr, OTHER, stops), (family, colour)
        answers.add(tuple(unrouted["tokens"]))
    assert len(answers) > 1  # the answers depend on the frame: the visual tokens reach the LLM
    for bundle in bundles.values():
        assert main(["verify", str(bundle)]) == 0
