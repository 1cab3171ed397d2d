"""Random-weight Hugging Face LLaVA and Idefics3 (SmolVLM) checkpoint directories, built in code (no hub): config,
weights (`save_pretrained`), a byte-level tokenizer with the family's special tokens, a chat template in the style of
the real checkpoints' (llava-hf/llava-1.5, HuggingFaceTB/SmolVLM), and the family's image processor config.

`VlmShape` sizes them: `SMALL_*` for the default tests (seconds); the real checkpoints' shapes (`SMOLVLM_256M`,
`LLAVA_15_7B`) for the slow one-layer export test; the issue's widths with two layers of each (`*_WIDE`) for the slow
train -> export -> run test.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

LLAVA_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for content in message['content'] %}{% if content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ ' ' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
LLAVA_SPECIALS = ("<image>",)
IDEFICS3_SPECIALS = ("<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>")


@dataclass(frozen=True)
class VlmShape:
    vision_width: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    vision_ffn: int = 64
    image_size: int = 32
    patch_size: int = 8
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_ffn: int = 128
    scale_factor: int = 2  # Idefics3's pixel shuffle
    init_range: float = 0.2  # larger than HF's default, so the tiny model's answers depend on the image
    vocab_size: int = 0  # the LLM's vocabulary (embedding rows); 0: the byte tokenizer's own size
    longest_edge: int = 0  # Idefics3's processor `size` (longest edge before the tile resize); 0: 2 S
    max_positions: int = 512


SMOLVLM_256M = VlmShape(  # HuggingFaceTB/SmolVLM-256M-Instruct: SigLIP-B/16 at 512 px, pixel shuffle 4, SmolLM2-135M
    vision_width=768, vision_layers=12, vision_heads=12, vision_ffn=3072, image_size=512, patch_size=16,
    text_width=576, text_layers=30, text_heads=9, text_kv_heads=3, text_ffn=1536, scale_factor=4, init_range=0.02,
    vocab_size=49280, longest_edge=2048, max_positions=8192,
)
LLAVA_15_7B = VlmShape(  # llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14 at 336 px, 2-layer MLP projector, Vicuna-7B
    vision_width=1024, vision_layers=24, vision_heads=16, vision_ffn=4096, image_size=336, patch_size=14,
    text_width=4096, text_layers=32, text_heads=32, text_kv_heads=32, text_ffn=11008, init_range=0.02,
    vocab_size=32064, max_positions=4096,
)

# The "real widths, few layers": a SigLIP-base-like tower (google/siglip-base-patch16-224: 768 wide, 12 heads,
# FFN 3072, patch 16) cut to 2 layers, the families' real connectors, a 2-layer LLM at the real width.
SMOLVLM_WIDE = VlmShape(  # SmolVLM-256M's tower, pixel shuffle 4 (768·16 -> 576 connector) and SmolLM2-135M's layers;
    # a 256 px tile (16×16 patches -> 16 visual tokens) instead of 512 px, and the processor's longest edge 4 S as
    # SmolVLM's (2048 for 512)
    vision_width=768, vision_layers=2, vision_heads=12, vision_ffn=3072, image_size=256, patch_size=16,
    text_width=576, text_layers=2, text_heads=9, text_kv_heads=3, text_ffn=1536, scale_factor=4, init_range=0.05,
    longest_edge=1024,
)
LLAVA_WIDE = VlmShape(  # a LLaVA with a SigLIP-B/16-224 tower (196 visual tokens, all kept) and SmolLM2-360M's layers
    # (960 wide, 15 heads of 64, 5 KV heads, FFN 2560) behind the MLP projector 768 -> 960 -> 960
    vision_width=768, vision_layers=2, vision_heads=12, vision_ffn=3072, image_size=224, patch_size=16,
    text_width=960, text_layers=2, text_heads=15, text_kv_heads=5, text_ffn=2560, init_range=0.05,
)

SMALL_LLAVA = VlmShape()
SMALL_IDEFICS3 = VlmShape(patch_size=4)  # 8×8 patches, pixel shuffle 2 -> 16 visual tokens


def byte_tokenizer(specials: tuple[str, ...], bos: bool):
    """The tiny backbone's byte-level BPE (ids 0-2 <s> </s> <pad>, then 256 bytes) plus `specials`; BOS added when
    `bos` (LLaMA-style tokenizers do)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    from crome_edge.backbones.tiny import byte_level_tokenizer

    raw = byte_level_tokenizer()
    raw.add_special_tokens(list(specials))
    if bos:
        raw.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)])
    eos = "<end_of_utterance>" if "<end_of_utterance>" in specials else "</s>"
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token=eos, pad_token="<pad>",
                                   extra_special_tokens={})


def _text_config(shape: VlmShape, vocab: int, eos: int) -> dict:
    return dict(model_type="llama", vocab_size=max(vocab, shape.vocab_size), hidden_size=shape.text_width,
                intermediate_size=shape.text_ffn, num_hidden_layers=shape.text_layers, num_attention_heads=shape.text_heads,
                num_key_value_heads=shape.text_kv_heads, max_position_embeddings=shape.max_positions, bos_token_id=0,
                eos_token_id=eos,
                pad_token_id=2, tie_word_embeddings=False, initializer_range=shape.init_range)


def _vision_config(shape: VlmShape, **extra) -> dict:
    return dict(hidden_size=shape.vision_width, intermediate_size=shape.vision_ffn, num_hidden_layers=shape.vision_layers,
                num_attention_heads=shape.vision_heads, image_size=shape.image_size, patch_size=shape.patch_size,
                initializer_range=shape.init_range, **extra)


def write_llava_dir(path: Path, shape: VlmShape = SMALL_LLAVA, seed: int = 0, crop: int | None = None,
                    tower: str = "clip") -> Path:
    """LLaVA with a `tower` of "clip" (LLaVA-1.5: feature layer -2 without CLS, shortest-edge resize + centre crop)
    or "siglip" (LLaVA-OneVision-style: last layer, every patch, square resize, mean/std 0.5), a 2-layer MLP
    projector and LLaMA. `crop`: a CLIP processor crop size other than the tower's (a bad checkpoint)."""
    import torch
    from transformers import (CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor,
                              SiglipImageProcessor)

    tokenizer = byte_tokenizer(LLAVA_SPECIALS, bos=True)
    vocab = len(tokenizer)
    clip = tower == "clip"
    strategy = "default" if clip else "full"  # SigLIP has no CLS token to drop
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model" if clip else "siglip_vision_model", **_vision_config(shape)),
        text_config=_text_config(shape, vocab, eos=1),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-2 if clip else -1,
        vision_feature_select_strategy=strategy, projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    _spread(model, shape.init_range)
    model.save_pretrained(path)
    size = crop or shape.image_size
    if clip:
        images = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                    resample=3, do_center_crop=True)
    else:
        images = SiglipImageProcessor(size={"height": size, "width": size}, resample=3)
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=shape.patch_size,
                               vision_feature_select_strategy=strategy, num_additional_image_tokens=int(clip),
                               chat_template=LLAVA_TEMPLATE, image_token="<image>")
    processor.save_pretrained(path)
    return path


def write_idefics3_dir(path: Path, shape: VlmShape = SMALL_IDEFICS3, seed: int = 0, splitting: bool = False) -> Path:
    """SmolVLM-style Idefics3: SigLIP tower, pixel shuffle + linear connector, LLaMA; processor: longest edge to 2 S
    then one S×S tile (LANCZOS), mean/std 0.5."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    tokenizer = byte_tokenizer(IDEFICS3_SPECIALS, bos=False)
    vocab = len(tokenizer)
    config = Idefics3Config(
        vision_config=_vision_config(shape), text_config=_text_config(shape, vocab, eos=tokenizer.eos_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=shape.scale_factor,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    _spread(model, shape.init_range)
    model.save_pretrained(path)
    images = Idefics3ImageProcessor(do_image_splitting=splitting, size={"longest_edge": shape.longest_edge or 2 * shape.image_size},
                                    max_image_size={"longest_edge": shape.image_size}, resample=1)
    tokens = (shape.image_size // shape.patch_size) ** 2 // shape.scale_factor**2
    processor = Idefics3Processor(image_processor=images, tokenizer=tokenizer, image_seq_len=tokens,
                                  chat_template=SMOLVLM_TEMPLATE)
    processor.save_pretrained(path)
    return path


def _spread(model, std: float) -> None:
    """Random weights wide enough that a 2-layer model's greedy answer changes with the image: HF initialises
    some vision parts near zero (position embeddings, projector) for stability at real depth."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2 and "norm" not in name:
                param.normal_(std=std)
