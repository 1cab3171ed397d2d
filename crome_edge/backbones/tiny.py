"""`tiny`: a seeded random InstructBLIP (ViT + instruction-aware Q-Former + LLaMA) built in code for tests.

A few hundred KB, 32 px images, a byte-level tokenizer; every test runs it on a CPU in seconds.
It answers nothing meaningful until an adapter is trained on it.
"""
from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration

from crome_edge.backbones.base import CLIP_MEAN, CLIP_STD, BackboneInfo, BackboneParts, CromeBackbone
from crome_runtime.prompt import PromptTemplate

SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")
TINY_PROMPT = PromptTemplate(text="Question: {question} Answer:", answer_suffix="</s>", stop_tokens=("</s>",))


def byte_level_tokenizer() -> Tokenizer:
    """Every byte is one token (BPE without merges), after three special tokens: 259 ids."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({ch: len(SPECIAL_TOKENS) + i for i, ch in enumerate(alphabet)})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def tiny_config(vocab_size: int) -> InstructBlipConfig:
    return InstructBlipConfig(
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            image_size=32, patch_size=8, initializer_range=0.2,  # HF default 1e-10 makes the tower ignore the image
        ),
        qformer_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            vocab_size=vocab_size, encoder_hidden_size=32, max_position_embeddings=64,
            cross_attention_frequency=1, pad_token_id=2, initializer_range=0.2,
        ),
        text_config=dict(
            model_type="llama", vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=256, bos_token_id=0, eos_token_id=1, pad_token_id=2,
            tie_word_embeddings=False, initializer_range=0.2,
        ),
        num_query_tokens=4,
    )


def build_tiny(seed: int = 0) -> CromeBackbone:
    tokenizer = byte_level_tokenizer()
    config = tiny_config(tokenizer.get_vocab_size())
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = InstructBlipForConditionalGeneration(config)
        # HF zero-initialises the queries; random ones make every test more sensitive.
        model.query_tokens.data.normal_(std=1.0)
    name = "tiny" if seed == 0 else f"tiny:{seed}"  # the spec that rebuilds it
    return from_instructblip_model(model, tokenizer, tokenizer, name=name, prompt=TINY_PROMPT)


def from_instructblip_model(
    model, llm_tokenizer: Tokenizer, qformer_tokenizer: Tokenizer | None, name: str, prompt: PromptTemplate,
    image_mean=None, image_std=None,
) -> CromeBackbone:
    """Wraps a HF Blip2/InstructBlip ForConditionalGeneration (decoder-only LLM) as a CromeBackbone."""
    config = model.config
    instruction_aware = config.model_type == "instructblip"
    info = BackboneInfo(
        name=name,
        architecture=config.model_type.replace("-", ""),
        d_model=config.text_config.hidden_size,
        num_query_tokens=config.num_query_tokens,
        image_size=config.vision_config.image_size,
        instruction_aware=instruction_aware,
        image_mean=CLIP_MEAN if image_mean is None else image_mean,
        image_std=CLIP_STD if image_std is None else image_std,
        prompt=prompt,
    )
    parts = BackboneParts(
        vision=model.vision_model,
        query_tokens=model.query_tokens,
        qformer=model.qformer,
        projection=model.language_projection,
        llm=model.language_model,
    )
    return CromeBackbone(info, parts, llm_tokenizer, qformer_tokenizer if instruction_aware else None)
