"""Public entry point for training: `train(TrainConfig) -> TrainResult` (the code is in crome_edge/training/)."""
from __future__ import annotations

from crome_edge.training.checkpoint import TrainingInterrupted
from crome_edge.training.config import STAGES, TrainConfig
from crome_edge.backbones.parts import load_backbone_parts, save_backbone_parts
from crome_edge.training.trainer import Trainer, TrainResult


def train(config: TrainConfig, **kwargs) -> TrainResult:
    """Runs one training run; kwargs go to `Trainer` (backbone=, dataset=, on_step=)."""
    return Trainer(config, **kwargs).run()


__all__ = [
    "STAGES", "TrainConfig", "Trainer", "TrainResult", "TrainingInterrupted", "load_backbone_parts",
    "save_backbone_parts", "train",
]
