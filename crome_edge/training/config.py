"""TrainConfig: everything one training run is told, as a dataclass that round-trips to JSON. Torch-free."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from crome_runtime import input_files

STAGES = ("finetune", "pretrain")
SAVE_DTYPES = ("float32", "bfloat16", "float16")
AUGMENTS = ("none", "flips")
DEFAULT_LR = {"finetune": 2e-3, "pretrain": 1e-3}  # docs/architecture.md §7
ENCODER_LR_RATIO = 0.2  # pretrain: Q-Former / query tokens / vision at lr × 0.2 unless --encoder-lr


@dataclass
class TrainConfig:
    data: str  # dataset path (see crome_edge.data.dataset)
    out: str  # adapter (finetune) or backbone-parts (pretrain) .safetensors
    backbone: str = "smol"  # the embedded default (README); tests pass "tiny"
    stage: str = "finetune"
    question: str | None = None  # default question (class-folder datasets)
    backbone_parts: str | None = None  # pretrained parts to load into the backbone first
    epochs: int = 3
    steps: int | None = None  # total optimizer steps; overrides epochs
    batch_size: int = 16  # global: split across torchrun processes
    lr: float | None = None  # adapter (finetune) / projection (pretrain); None = DEFAULT_LR[stage]
    encoder_lr: float | None = None  # pretrain: Q-Former, query tokens, vision
    rank: int = 64  # adapter rank r
    val_fraction: float = 0.1
    seed: int = 0
    bf16: bool = False  # autocast the forward to bfloat16 where the device has native bf16 (precision.py)
    threads: int | None = None  # torch intra-op threads per process
    train_vision: bool = False  # pretrain: also train the vision tower
    augment: str = "none"  # "flips": train on random horizontal/vertical mirror images too
    pooled_map: bool = False  # finetune: the adapter also learns its own map of the backbone's pooled token (PooledMap)
    replay: int = 0  # finetune: mix this many general Q&A samples into training (training/replay.py)
    replay_data: str | None = None  # their dataset; None = the backbone's own pretraining questions
    warmup_steps: int | None = None  # None = 5% of the steps (at most 100)
    grad_clip: float = 1.0
    checkpoint: str | None = None  # None = <out>.ckpt
    checkpoint_every: int = 0  # also checkpoint every N steps (0 = at the end of each epoch only)
    resume: bool = False
    force: bool = False  # replace an existing `out` (with `resume`, the run's own `out` is replaced anyway)
    max_new_tokens: int = 32  # validation generation cap (also capped by the longest answer + 2)
    save_dtype: str = "float32"  # pretrain: dtype of the saved backbone parts
    device: str = "auto"  # auto | cpu | cuda
    progress: bool = True  # tqdm bar on rank 0

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.stage]

    @property
    def encoder_learning_rate(self) -> float:
        return self.encoder_lr if self.encoder_lr is not None else self.learning_rate * ENCODER_LR_RATIO

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.checkpoint) if self.checkpoint else Path(self.out + ".ckpt")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        data = input_files.loads(text, "the training config")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
