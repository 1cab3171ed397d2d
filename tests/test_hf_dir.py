"""Hugging Face directories: tiny saved with save_hf_dir loads back with identical outputs; a tiny
BLIP-2 + OPT directory loads and generates; Flan-T5 (encoder-decoder) and unsupported families are refused
(LLaVA and SmolVLM directories: tests/test_hf_vlm.py)."""
import json

import pytest
import torch

from crome_edge.backbones.hf_dir import load_hf_dir, save_hf_dir
from crome_edge.backbones.registry import load_backbone
from crome_edge.backbones.tiny import byte_level_tokenizer
from crome_edge.errors import CromeError
from crome_edge.model import CromeModel, GenerationConfig

QUESTIONS = ["what part is this?", "is it defective?"]
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
QFORMER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, encoder_hidden_size=32, vocab_size=259)


def _pixels(n=2, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_tiny_round_trips_through_a_hf_directory(tmp_path, tiny_backbone):
    save_hf_dir(tiny_backbone, tmp_path / "tiny-hf")
    loaded = load_backbone(str(tmp_path / "tiny-hf"))
    assert loaded.info.instruction_aware and loaded.info.d_model == 64 and loaded.info.name == "tiny-hf"
    assert loaded.fingerprint() == tiny_backbone.fingerprint()
    pixels = _pixels()
    a, b = CromeModel(tiny_backbone), CromeModel(loaded)
    assert torch.equal(a.visual_embeds(pixels, QUESTIONS), b.visual_embeds(pixels, QUESTIONS))
    assert torch.equal(a.build_prefix(pixels, QUESTIONS).embeds, b.build_prefix(pixels, QUESTIONS).embeds)
    assert a.generate(pixels, QUESTIONS, GenerationConfig(max_new_tokens=6)) == b.generate(pixels, QUESTIONS, GenerationConfig(max_new_tokens=6))
    with pytest.raises(CromeError, match="exists and is not empty"):
        save_hf_dir(tiny_backbone, tmp_path / "tiny-hf")


def _write_blip2_dir(path, text_config: dict):
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    config = Blip2Config(vision_config=VISION, qformer_config=QFORMER, text_config=text_config, num_query_tokens=4)
    torch.manual_seed(0)
    Blip2ForConditionalGeneration(config).save_pretrained(path)
    byte_level_tokenizer().save(str(path / "tokenizer.json"))


@torch.no_grad()
def test_blip2_opt_directory_loads_and_generates(tmp_path):
    opt = dict(
        model_type="opt", vocab_size=259, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, word_embed_proj_dim=64, bos_token_id=0, eos_token_id=1, pad_token_id=2,
    )
    _write_blip2_dir(tmp_path / "blip2-opt", opt)
    backbone = load_hf_dir(tmp_path / "blip2-opt")
    assert backbone.info.architecture == "blip2" and not backbone.info.instruction_aware
    assert backbone.info.prompt.stop_tokens == ("</s>",)
    model = CromeModel(backbone)
    pixels = _pixels()
    assert model.visual_embeds(pixels, QUESTIONS).shape == (2, 4, 64)
    out = model.generate(pixels, QUESTIONS, GenerationConfig(max_new_tokens=5))
    assert len(out) == 2 and all(0 < len(row) <= 5 for row in out)
    loss = model.loss(pixels, QUESTIONS, ["a gear", "no"])
    assert torch.isfinite(loss)


def test_flan_t5_directory_is_refused(tmp_path):
    path = tmp_path / "blip2-flan-t5"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "blip-2", "text_config": {"model_type": "t5"}}))
    with pytest.raises(CromeError, match=r"the LLM is 't5', an encoder-decoder.*instead of a Flan-T5 one"):
        load_hf_dir(path)


def test_non_blip_and_incomplete_directories_are_refused(tmp_path):
    with pytest.raises(CromeError, match="no config.json"):
        load_backbone(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    with pytest.raises(CromeError, match="unsupported architecture 'qwen2_vl'.*loads BLIP-2.*LLaVA.*SmolVLM"):
        load_backbone(str(tmp_path))
    with pytest.raises(CromeError, match="unknown backbone"):
        load_backbone(str(tmp_path / "nope"))


def test_missing_tokenizer_is_named(tmp_path, tiny_backbone):
    save_hf_dir(tiny_backbone, tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").unlink()
    with pytest.raises(CromeError, match="missing .*tokenizer.json: crome-edge needs the fast tokenizer file"):
        load_hf_dir(tmp_path / "hf")
