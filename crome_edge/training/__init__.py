"""Training: adapter fine-tuning and visual-side pretraining on a frozen backbone (DESIGN.md §2, §7).

config.py (TrainConfig) -> trainer.py (Trainer: loop, validation, checkpoints) over stages.py (what a
stage trains and saves); parts.py (backbone-parts files), checkpoint.py, distributed.py (torchrun).
"""
from crome_edge.training.checkpoint import TrainingInterrupted
from crome_edge.training.config import STAGES, TrainConfig
from crome_edge.training.parts import load_backbone_parts, read_parts_metadata, save_backbone_parts
from crome_edge.training.trainer import Trainer, TrainResult

__all__ = [
    "STAGES", "TrainConfig", "Trainer", "TrainResult", "TrainingInterrupted",
    "load_backbone_parts", "read_parts_metadata", "save_backbone_parts",
]
