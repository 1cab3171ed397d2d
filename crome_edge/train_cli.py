"""`crome-edge train`: fine-tune a CROME adapter (or pretrain the backbone's visual side) on a dataset.

    crome-edge train --backbone tiny --stage finetune --data data.jsonl --out line3.safetensors
    torchrun --nproc_per_node 2 -m crome_edge.cli train ...      # data-parallel, same options

Cheap to import (no torch here); the work is in crome_edge.training.
"""
from __future__ import annotations

import argparse
import json
import os

from crome_edge.training.config import AUGMENTS, SAVE_DTYPES, STAGES  # torch-free


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to train")
    what.add_argument("--backbone", default="smol", help="tiny, tiny:SEED, smol or a local HF BLIP-2/InstructBLIP directory (default: smol)")
    what.add_argument("--backbone-parts", metavar="FILE", help="load pretrained visual parts (from --stage pretrain) into the backbone first")
    what.add_argument("--stage", choices=STAGES, default="finetune",
                      help="finetune: the adapter alone, backbone frozen; pretrain: query tokens + Q-Former + projection (default: finetune)")
    what.add_argument("--data", required=True, help="dataset: JSONL of {image, question, answer}, a directory holding data.jsonl, or <answer>/ image folders")
    what.add_argument("--question", help="the question for class-folder datasets (and JSONL lines without one)")
    what.add_argument("--out", required=True, help="output .safetensors: the adapter (finetune) or backbone parts (pretrain)")
    what.add_argument("--rank", type=int, default=64, help="adapter rank r (default: 64)")
    what.add_argument("--train-vision", action="store_true", help="pretrain: also train the vision tower")
    what.add_argument("--augment", choices=AUGMENTS, default="none",
                      help="flips: also train on mirrored frames (only where mirroring keeps the answer true; default: none)")

    how = parser.add_argument_group("optimisation")
    how.add_argument("--epochs", type=int, default=3, help="passes over the training split (default: 3)")
    how.add_argument("--steps", type=int, help="total optimizer steps (overrides --epochs)")
    how.add_argument("--batch-size", type=int, default=16, help="global batch, split across torchrun processes (default: 16)")
    how.add_argument("--lr", type=float, help="learning rate of the adapter / projection (default: 2e-3 finetune, 1e-3 pretrain)")
    how.add_argument("--encoder-lr", type=float, help="pretrain: learning rate of query tokens, Q-Former, vision (default: lr × 0.2)")
    how.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default: 5%% of the steps, at most 100)")
    how.add_argument("--val-fraction", type=float, default=0.1, help="share of images held out for validation (default: 0.1)")
    how.add_argument("--seed", type=int, default=0, help="seeds the split, the adapter's init and the batch order (default: 0)")
    how.add_argument("--bf16", action="store_true",
                     help="bfloat16 autocast for the forward pass where the device computes bf16 natively (CUDA; "
                          "CPUs with AVX512_BF16, AMX or ARM bf16); elsewhere training says so and runs in fp32")
    how.add_argument("--max-new-tokens", type=int, default=32, help="validation: generation cap (default: 32)")

    run = parser.add_argument_group("running")
    run.add_argument("--threads", type=int, help="torch threads per process")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda when available")
    run.add_argument("--checkpoint", metavar="FILE", help="checkpoint file (default: OUT.ckpt)")
    run.add_argument("--checkpoint-every", type=int, default=0, metavar="N", help="also checkpoint every N steps (default: each epoch)")
    run.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    run.add_argument("--save-dtype", choices=SAVE_DTYPES, default="float32", help="pretrain: dtype of the saved parts")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--json", action="store_true", help="print the training summary as JSON")


def run(args: argparse.Namespace) -> int:
    from crome_edge.train import TrainConfig, train

    config = TrainConfig(
        data=args.data, out=args.out, backbone=args.backbone, stage=args.stage, question=args.question,
        backbone_parts=args.backbone_parts, epochs=args.epochs, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, encoder_lr=args.encoder_lr, rank=args.rank, val_fraction=args.val_fraction, seed=args.seed,
        bf16=args.bf16, threads=args.threads, train_vision=args.train_vision, augment=args.augment, warmup_steps=args.warmup_steps,
        checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every, resume=args.resume,
        max_new_tokens=args.max_new_tokens, save_dtype=args.save_dtype, device=args.device,
        progress=not args.no_progress,
    )
    result = train(config)
    if os.environ.get("RANK", "0") != "0":
        return 0
    summary = result.summary
    if args.json:
        print(json.dumps({"out": str(result.out), **summary}, indent=2, sort_keys=True))
        return 0
    line = f"wrote {result.out}: {summary['stage']}, {summary['steps']} steps on {summary['examples']} examples in {summary['seconds']:.1f} s"
    if summary["val_loss"] is not None:
        line += (
            f"; val loss {_fmt(summary['initial_val_loss'])} -> {_fmt(summary['val_loss'])}, "
            f"val accuracy {_pct(summary['initial_val_accuracy'])} -> {_pct(summary['val_accuracy'])} (n={summary['val_examples']})"
        )
    print(line)
    return 0


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"
