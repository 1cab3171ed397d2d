"""Training: adapter fine-tuning and visual-side pretraining on a frozen backbone (docs/architecture.md §2, §7).

config.py (TrainConfig) -> trainer.py (Trainer: loop, validation, checkpoints) over stages.py (what a
stage trains and saves); checkpoint.py, distributed.py (torchrun). Backbone-parts files are
crome_edge.backbones.parts_file (the smol backbone loads them too).
The public entry point is trainer.train(TrainConfig). This file imports nothing, so the torch-free config.py can be
imported (by the CLI) without torch.
"""
