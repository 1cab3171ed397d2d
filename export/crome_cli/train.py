"""`crome-edge train`: fine-tune a CROME adapter (or pretrain the backbone's visual side) on a dataset.

    crome-edge train --backbone tiny --stage finetune --data data.jsonl --out line3.safetensors
    torchrun --nproc_per_node 2 -m crome_cli train ...      # data-parallel, same options

Cheap to import (no torch here); the work is in crome_edge.training.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import MISSING, fields

from crome_cli.flags import SEED, THREADS, number, whole
# torch-free; TrainConfig holds every default, the flags below default to None and override only what is given
from crome_edge.training.config import AUGMENTS, DEFAULT_LR, ENCODER_LR_RATIO, SAVE_DTYPES, STAGES, TrainConfig

DEFAULTS = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    what = parser.add_argument_group("what to train")
    what.add_argument("--backbone", help=f"tiny, tiny:SEED, smol or a local HF BLIP-2/InstructBLIP, LLaVA or SmolVLM/Idefics3 directory (docs/bring-your-own-model.md; default: {d['backbone']})")
    what.add_argument("--backbone-parts", metavar="FILE", help="load pretrained visual parts (from --stage pretrain) into the backbone first")
    what.add_argument("--stage", choices=STAGES,
                      help=f"finetune: the adapter alone, backbone frozen; pretrain: query tokens + Q-Former + projection (default: {d['stage']})")
    what.add_argument("--data", required=True, help="dataset: JSONL of {image, question, answer}, a directory holding data.jsonl, or <answer>/ image folders")
    what.add_argument("--question", help="the question for class-folder datasets (and JSONL lines without one)")
    what.add_argument("--out", required=True, help="output .safetensors: the adapter (finetune) or backbone parts (pretrain)")
    what.add_argument("--rank", type=whole(1), help=f"adapter rank r (default: {d['rank']})")
    what.add_argument("--train-vision", action="store_true", default=None, help="pretrain: also train the vision tower")
    what.add_argument("--replay", type=whole(1), metavar="N",
                      help="finetune: mix N of the backbone's own pretraining Q&A (or --replay-data) into training, so "
                           "the adapter keeps answering them; they join its routes")
    what.add_argument("--replay-data", metavar="PATH", help="--replay's general Q&A set (any --data layout) instead of the "
                                                           "backbone's pretraining questions")
    what.add_argument("--augment", choices=AUGMENTS,
                      help=f"flips: also train on mirrored frames (only where mirroring keeps the answer true; default: {d['augment']})")

    what.add_argument("--pooled-map", action="store_true", default=None,
                      help="finetune: the adapter also learns its own map of the backbone's pooled token, standardised "
                           "on the training frames (smol; real photographs: ELPV 75.4%% -> 83.6%% at 500 examples; it costs the "
                           "synthetic line3 accuracy below 200 examples: try both)")

    how = parser.add_argument_group("optimisation")
    how.add_argument("--epochs", type=whole(1), help=f"passes over the training split (default: {d['epochs']})")
    how.add_argument("--steps", type=whole(1), help="total optimizer steps (overrides --epochs)")
    how.add_argument("--batch-size", type=whole(1), help=f"global batch, split across torchrun processes (default: {d['batch_size']})")
    how.add_argument("--lr", type=number(above=0), help=f"learning rate of the adapter / projection (default: {DEFAULT_LR['finetune']:g} "
                                              f"finetune, {DEFAULT_LR['pretrain']:g} pretrain)")
    how.add_argument("--encoder-lr", type=number(above=0), help=f"pretrain: learning rate of query tokens, Q-Former, vision (default: lr × {ENCODER_LR_RATIO:g})")
    how.add_argument("--warmup-steps", type=whole(0), help="linear warm-up steps (default: 5%% of the steps, at most 100)")
    how.add_argument("--val-fraction", type=number(minimum=0, below=1), help=f"share of images held out for validation (default: {d['val_fraction']})")
    how.add_argument("--seed", type=SEED, help=f"seeds the split, the adapter's init and the batch order (default: {d['seed']})")
    how.add_argument("--bf16", action="store_true", default=None,
                     help="bfloat16 autocast for the forward pass where the device computes bf16 natively (CUDA; "
                          "CPUs with AVX512_BF16, AMX or ARM bf16); elsewhere training says so and runs in fp32")
    how.add_argument("--max-new-tokens", type=whole(1), help=f"validation: generation cap (default: {d['max_new_tokens']})")

    run = parser.add_argument_group("running")
    run.add_argument("--threads", type=THREADS, help="torch threads per process")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), help=f"default: {d['device']} (cuda when available)")
    run.add_argument("--checkpoint", metavar="FILE", help="checkpoint file (default: OUT.ckpt)")
    run.add_argument("--checkpoint-every", type=whole(1), metavar="N", help="also checkpoint every N steps (default: each epoch)")
    run.add_argument("--resume", action="store_true", default=None, help="continue from the checkpoint")
    run.add_argument("--force", action="store_true", default=None, help="replace an existing --out")
    run.add_argument("--save-dtype", choices=SAVE_DTYPES, help=f"pretrain: dtype of the saved parts (default: {d['save_dtype']})")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--json", action="store_true", help="print the training summary as JSON")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig's defaults, overridden by the flags the user gave (a flag left out is None)."""
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    if args.no_progress:
        given["progress"] = False
    return TrainConfig(**given)


def run(args: argparse.Namespace) -> int:
    from crome_edge.training.trainer import train

    config = config_from_args(args)
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
