"""Stage A of the smol default: train the vision tower + Q-Former on conveyor frames, without the LLM.

Heads on the mean-pooled Q-Former output predict kind, colour and defect (docs/architecture.md §7); the heads are
thrown away afterwards. Output: a safetensors of the vision side named like CromeBackbone's state dict
("vision.*", "query_tokens", "qformer.*", "projection.*"), the input of stage B (`crome-edge train
--stage pretrain`). Reproduce with the command in crome_edge/recipes/README.md.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from crome_edge.backbones.smol import SMOL_MEAN, SMOL_STD, build_vision_parts
from crome_edge.synth.world import COLOUR_NAMES, DEFECTS, KINDS, NO_DEFECT, render_scene

TRAIN_SEED_BASE = 50_000_000  # far from the line3 and pretrain-dataset seed ranges
EVAL_SEED_BASE = 59_000_000
DEFECT_CLASSES = (NO_DEFECT, *DEFECTS)


def render_pool(seed_base: int, count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(count, size, size, 3) BGR uint8 frames and (count, 3) int64 labels: kind, colour, defect."""
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    labels = np.empty((count, 3), dtype=np.int64)
    for i in range(count):
        images[i], info = render_scene(seed_base + i, size)
        labels[i] = (KINDS.index(info.kind), COLOUR_NAMES.index(info.colour), DEFECT_CLASSES.index(info.defect))
    return images, labels


def to_pixels(images_bgr: np.ndarray) -> torch.Tensor:
    """Batch version of crome_runtime.preprocess.preprocess_image at the native size (no resize)."""
    rgb = torch.from_numpy(np.ascontiguousarray(images_bgr[..., ::-1])).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(SMOL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(SMOL_STD).view(1, 3, 1, 1)
    return (rgb - mean) / std  # (B, 3, H, W)


class StageAModel(nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        self.vision, self.query_tokens, self.qformer, self.projection = build_vision_parts(seed)
        width = self.query_tokens.shape[-1]
        self.heads = nn.ModuleList([nn.Linear(width, len(KINDS)), nn.Linear(width, len(COLOUR_NAMES)),
                                    nn.Linear(width, len(DEFECT_CLASSES))])

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        features = self.vision(pixels)  # (B, 64, Dv)
        queries = self.query_tokens.expand(features.shape[0], -1, -1)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=features, return_dict=True)
        pooled = out.last_hidden_state.mean(1)  # (B, Dq)
        return [head(pooled) for head in self.heads]


@torch.no_grad()
def accuracy(model: StageAModel, images: np.ndarray, labels: np.ndarray, batch: int = 250) -> list[float]:
    model.eval()
    correct = np.zeros(3)
    for start in range(0, len(images), batch):
        logits = model(to_pixels(images[start : start + batch]))
        target = torch.from_numpy(labels[start : start + batch])
        correct += [(l.argmax(-1) == target[:, k]).sum().item() for k, l in enumerate(logits)]
    model.train()
    return list(correct / len(images))


def load_vision_side(model: StageAModel, path: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(path))
    for part in ("vision", "qformer", "projection"):
        getattr(model, part).load_state_dict({k[len(part) + 1 :]: v for k, v in state.items() if k.startswith(part + ".")})
    with torch.no_grad():
        model.query_tokens.copy_(state["query_tokens"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--pool", type=int, default=16000, help="distinct training frames (flips augment them)")
    parser.add_argument("--eval-frames", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--init", type=Path, help="continue from an earlier stage-A file (heads start fresh)")
    parser.add_argument("--pool-offset", type=int, default=0, help="first training seed, after TRAIN_SEED_BASE")
    parser.add_argument("--defect-weight", type=float, default=1.0, help="weight of the defect head's loss (kind, colour: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    start = time.time()
    images, labels = render_pool(TRAIN_SEED_BASE + args.pool_offset, args.pool, 128)
    eval_images, eval_labels = render_pool(EVAL_SEED_BASE, args.eval_frames, 128)
    print(f"rendered {args.pool}+{args.eval_frames} frames in {time.time() - start:.0f}s", flush=True)

    model = StageAModel(args.seed)
    if args.init:
        load_vision_side(model, args.init)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    warmup = 100
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))
    )
    history = []
    weights = (1.0, 1.0, args.defect_weight)  # kind, colour, defect
    for step in range(1, args.steps + 1):
        index = rng.integers(0, len(images), args.batch_size)
        batch = images[index]
        if rng.random() < 0.5:
            batch = batch[:, :, ::-1]
        if rng.random() < 0.5:
            batch = batch[:, ::-1]
        logits = model(to_pixels(batch))
        target = torch.from_numpy(labels[index])
        loss = sum(w * F.cross_entropy(l, target[:, k]) for k, (w, l) in enumerate(zip(weights, logits)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.3f} {time.time() - start:.0f}s", flush=True)
        if step % 500 == 0 or step == args.steps:
            acc = accuracy(model, eval_images, eval_labels)
            history.append({"step": step, "kind": acc[0], "colour": acc[1], "defect": acc[2]})
            print(f"eval step {step}: kind {acc[0]:.3f} colour {acc[1]:.3f} defect {acc[2]:.3f}", flush=True)
    state = {f"vision.{k}": v for k, v in model.vision.state_dict().items()}
    state |= {f"qformer.{k}": v for k, v in model.qformer.state_dict().items()}
    state |= {f"projection.{k}": v for k, v in model.projection.state_dict().items()}
    state["query_tokens"] = model.query_tokens.detach()
    summary = {"stage": "A", "steps": args.steps, "seconds": round(time.time() - start), "eval": history,
               "batch_size": args.batch_size, "lr": args.lr, "pool": args.pool, "seed": args.seed,
               "init": str(args.init) if args.init else None, "pool_offset": args.pool_offset,
               "defect_weight": args.defect_weight}
    save_file({k: v.contiguous() for k, v in state.items()}, str(args.out), metadata={"stage_a": json.dumps(summary)})
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
