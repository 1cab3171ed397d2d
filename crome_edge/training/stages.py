"""The two training stages: what each one trains, how it computes the loss, what it saves.

- finetune: the CROME adapter alone (docs/architecture.md §2). The whole backbone stays frozen, so the visual
  prefix V of every (image, instruction) is computed once up front and reused by every epoch.
- pretrain: query tokens, Q-Former and projection (and a pooled token where the backbone has one; + the vision
  tower with --train-vision), no adapter;
  one optimizer group per trained module; the LLM stays frozen. Saves backbone parts. With the tower frozen its
  features of every image are computed once up front, like finetune's V.

`--augment flips` mirrors training frames at random (never validation frames): finetune caches V for
all four mirror views of each image and draws one per sample per step; pretrain flips the pixels.

A stage exposes `trainable` (an nn.Module holding exactly the trained parameters: what DDP wraps and
checkpoints store), `param_groups()`, `loss(samples)`, `prefix(samples)` for generation, `save(...)`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from crome_edge.gated_adapter import AdapterConfig, CromeAdapter
from crome_edge.backbones.base import CromeBackbone
from crome_edge.data.dataset import Sample
from crome_edge.data.pixels import PixelStore
from crome_edge.errors import CromeError
from crome_edge.model import CromeModel, PrefixBatch
from crome_edge.training.config import TrainConfig

VISUAL_CACHE_BATCH = 32
MIRROR_VIEWS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))  # flipped dims of (B, 3, S, S): none, h, v, both


def mirror_views(augment: str) -> tuple[tuple[int, ...], ...]:
    return MIRROR_VIEWS if augment == "flips" else MIRROR_VIEWS[:1]


def mirrored(pixels: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return torch.flip(pixels, dims) if dims else pixels


def draw_views(n: int, n_views: int) -> list[int]:
    """A view per sample from the global RNG (which checkpoints save, so a resumed run draws the same)."""
    return torch.randint(n_views, (n,)).tolist() if n_views > 1 else [0] * n


class FinetuneStage:
    name = "finetune"

    def __init__(self, backbone: CromeBackbone, config: TrainConfig, pixels: PixelStore, device: torch.device):
        self.backbone, self.config, self.pixels, self.device = backbone, config, pixels, device
        backbone.freeze()
        self.pooled_linear: nn.Linear | None = None  # the pooled token's map to the LLM width, read by fit_pooled_map
        if config.pooled_map:
            linear = getattr(backbone.pooled_token, "linear", None)
            if not isinstance(linear, nn.Linear):
                raise CromeError(f"--pooled-map maps the backbone's pooled token; backbone {backbone.info.name} "
                                 f"({backbone.info.architecture}) has none (smol has one): train without --pooled-map")
            self.pooled_linear = linear
        pooled_features = self.pooled_linear.in_features if self.pooled_linear is not None else 0
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            self.adapter = CromeAdapter(AdapterConfig(d_model=backbone.info.d_model, rank=config.rank),
                                        pooled_features).to(device)
        self.model = CromeModel(backbone, self.adapter)
        self.trainable = nn.ModuleDict({"adapter": self.adapter})
        self.views = mirror_views(config.augment)
        self._visual: dict[tuple[Path, str], torch.Tensor] = {}  # (image, instruction) -> V per view (views, Nq, d)

    def param_groups(self) -> list[dict]:
        return [{"name": "adapter", "params": list(self.adapter.parameters()), "lr": self.config.learning_rate}]

    def _key(self, sample: Sample) -> tuple[Path, str]:
        return sample.image, sample.question if self.backbone.info.instruction_aware else ""

    @torch.no_grad()
    def prepare(self, samples: list[Sample]) -> None:
        """Caches the frozen visual prefix V of every view of every distinct (image, instruction), in fp32."""
        self.pixels.prepare(samples)
        todo = list({self._key(s): s for s in samples if self._key(s) not in self._visual}.values())
        for start in range(0, len(todo), VISUAL_CACHE_BATCH):
            chunk = todo[start : start + VISUAL_CACHE_BATCH]
            pixels = self.pixels.batch(chunk).to(self.device)  # (B, 3, S, S)
            questions = [s.question for s in chunk]
            views = [self.model.visual_embeds(mirrored(pixels, dims), questions) for dims in self.views]
            for sample, v in zip(chunk, torch.stack(views, 1)):  # (B, views, Nq, d)
                self._visual[self._key(sample)] = v

    def fit_pooled_map(self, samples: list[Sample]) -> None:
        """The PooledMap's fixed reading, from the pooled tokens of every cached view of `samples` (the training split)."""
        if self.pooled_linear is None or self.adapter.pooled is None:
            raise CromeError("fit_pooled_map needs a stage built with --pooled-map")
        tokens = torch.cat([self._visual[self._key(s)][:, -1] for s in {self._key(s): s for s in samples}.values()])
        self.adapter.pooled.fit(tokens, self.pooled_linear.weight, self.pooled_linear.bias)

    def visual(self, samples: list[Sample]) -> torch.Tensor:
        """(B, Nq, d): a random view of each sample while training, the frame as it is otherwise."""
        picks = draw_views(len(samples), len(self.views)) if self.adapter.training else [0] * len(samples)
        return torch.stack([self._visual[self._key(s)][view] for s, view in zip(samples, picks)])

    def loss(self, samples: list[Sample]) -> torch.Tensor:
        return self.model.loss_from_visual(self.visual(samples), [s.question for s in samples], [s.answer for s in samples])

    def prefix(self, samples: list[Sample]) -> PrefixBatch:
        return self.model.prefix_from_visual(self.visual(samples), [s.question for s in samples])

    def train(self) -> None:
        self.adapter.train()

    def eval(self) -> None:
        self.adapter.eval()

    def save(self, path: Path, summary: dict, train_data: str, train_data_recipe: dict | None = None) -> None:
        from crome_edge.adapter_file import AdapterMetadata, save_adapter

        metadata = AdapterMetadata(
            config=self.adapter.config,
            backbone_name=self.backbone.info.name,
            backbone_fingerprint=self.backbone.fingerprint(),
            prompt=self.backbone.info.prompt,
            training=summary,
            train_data=train_data,
            train_data_recipe=train_data_recipe,
        )
        save_adapter(path, self.adapter, metadata)


class PretrainStage:
    name = "pretrain"

    def __init__(self, backbone: CromeBackbone, config: TrainConfig, pixels: PixelStore, device: torch.device):
        self.backbone, self.config, self.pixels, self.device = backbone, config, pixels, device
        if backbone.qformer is None:
            raise CromeError(f"--stage pretrain trains a Q-Former and projection; backbone {backbone.info.name} "
                             f"({backbone.info.architecture}) has none, its connector comes trained with the "
                             "checkpoint: use --stage finetune")
        backbone.freeze()
        self.model = CromeModel(backbone)
        self.trainable = nn.Module()
        self.trainable.query_tokens, self.trainable.qformer = backbone.qformer_parts()
        self.trainable.projection = backbone.projection
        if backbone.pooled_token is not None:
            self.trainable.pooled_token = backbone.pooled_token
        if config.train_vision:
            self.trainable.vision = backbone.vision
        self.trainable.requires_grad_(True)
        self.views = mirror_views(config.augment)
        self._features: dict[Path, torch.Tensor] = {}  # image -> frozen tower output per view (views, Np, Dv)

    def param_groups(self) -> list[dict]:
        lr, encoder_lr = self.config.learning_rate, self.config.encoder_learning_rate
        query_tokens, qformer = self.backbone.qformer_parts()
        groups = [
            {"name": "query_tokens", "params": [query_tokens], "lr": encoder_lr},
            {"name": "qformer", "params": list(qformer.parameters()), "lr": encoder_lr},
            {"name": "projection", "params": list(self.backbone.projection.parameters()), "lr": lr},
        ]  # the very modules `trainable` holds
        if self.backbone.pooled_token is not None:  # a projection too: the projection's rate
            groups.append({"name": "pooled_token", "params": list(self.backbone.pooled_token.parameters()), "lr": lr})
        if self.config.train_vision:
            groups.append({"name": "vision", "params": list(self.backbone.vision.parameters()), "lr": encoder_lr})
        return groups

    @torch.no_grad()
    def prepare(self, samples: list[Sample]) -> None:
        """Decodes the images; with the vision tower frozen, also caches its features of every view of every
        distinct image (the tower is most of a step's vision cost and never changes)."""
        self.pixels.prepare(samples)
        if self.config.train_vision:
            return
        todo = list({s.image: s for s in samples if s.image not in self._features}.values())
        for start in range(0, len(todo), VISUAL_CACHE_BATCH):
            chunk = todo[start : start + VISUAL_CACHE_BATCH]
            pixels = self.pixels.batch(chunk).to(self.device)  # (B, 3, S, S)
            views = [self.backbone.image_features(mirrored(pixels, dims)) for dims in self.views]
            for sample, features in zip(chunk, torch.stack(views, 1)):  # (B, views, Np, Dv)
                self._features[sample.image] = features

    def _visual(self, samples: list[Sample]) -> torch.Tensor:
        """(B, Nq, d) through the trained Q-Former: a random view of each sample while training."""
        questions = [s.question for s in samples]
        picks = draw_views(len(samples), len(self.views)) if self.trainable.training else [0] * len(samples)
        if not self.config.train_vision:
            features = torch.stack([self._features[s.image][view] for s, view in zip(samples, picks)])
            return self.model.visual_from_features(features, questions)
        pixels = self.pixels.batch(samples).to(self.device)
        pixels = torch.cat([mirrored(p[None], self.views[view]) for p, view in zip(pixels, picks)])
        return self.model.visual_embeds(pixels, questions)

    def loss(self, samples: list[Sample]) -> torch.Tensor:
        return self.model.loss_from_visual(self._visual(samples), [s.question for s in samples],
                                           [s.answer for s in samples])

    def prefix(self, samples: list[Sample]) -> PrefixBatch:
        return self.model.prefix_from_visual(self._visual(samples), [s.question for s in samples])

    def train(self) -> None:
        self.trainable.train()

    def eval(self) -> None:
        self.backbone.eval()
        self.trainable.eval()  # the container's own flag, read by loss()

    def save(self, path: Path, summary: dict, train_data: str, train_data_recipe: dict | None = None) -> None:
        from crome_edge.backbones.parts_file import save_backbone_parts

        training = {**summary, "train_data": train_data, "train_data_recipe": train_data_recipe}
        save_backbone_parts(path, self.backbone, self.config.save_dtype, training=training)


Stage = FinetuneStage | PretrainStage
STAGE_CLASSES: dict[str, type[Stage]] = {"finetune": FinetuneStage, "pretrain": PretrainStage}
