"""`crome-edge eval`: exact-match accuracy of a backbone (+ adapter) on a dataset, printed as JSON.

    crome-edge eval --backbone tiny --adapter line3.safetensors --data data.jsonl [--split val] [--limit N]

`--split val` scores only the validation images the adapter's training run held out (re-created from
its metadata). Cheap to import (no torch here).
"""
from __future__ import annotations

import argparse
import json

from crome_cli.flags import SEED, THREADS, number, whole


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="smol", help="tiny, tiny:SEED, smol or a local HF directory (default: smol)")
    parser.add_argument("--backbone-parts", metavar="FILE", help="pretrained visual parts to load into the backbone first")
    parser.add_argument("--adapter", metavar="FILE",
                        help="CROME adapter .safetensors, or 'line3' / 'line5' for a shipped demo adapter (default: the backbone alone)")
    parser.add_argument("--data", required=True, help="dataset: JSONL, a directory holding data.jsonl, or <answer>/ image folders")
    parser.add_argument("--question", help="the question for class-folder datasets")
    parser.add_argument("--split", choices=("all", "train", "val"), default="all",
                        help="all samples, or the adapter's training/validation split (default: all)")
    parser.add_argument("--val-fraction", type=number(minimum=0, below=1), help="with --split: override the adapter's recorded val fraction")
    parser.add_argument("--seed", type=SEED, help="with --split: override the adapter's recorded split seed")
    parser.add_argument("--limit", type=whole(1), help="score only the first N samples")
    parser.add_argument("--batch-size", type=whole(1), default=16, help="generation batch (default: 16)")
    parser.add_argument("--max-new-tokens", type=whole(1), help="generation cap (default: longest reference answer + 4)")
    parser.add_argument("--threads", type=THREADS, help="torch threads")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda when available")
    parser.add_argument("--progress", action="store_true", help="progress bar on stderr")


def run(args: argparse.Namespace) -> int:
    from crome_runtime.errors import CromeError

    if args.limit is not None and args.limit < 1:
        raise CromeError("--limit must be at least 1")
    if args.batch_size < 1:
        raise CromeError("--batch-size must be at least 1")
    import torch

    from crome_edge.backbones.registry import load_backbone
    from crome_edge.data import load_dataset, split_dataset
    from crome_edge.data.pixels import PixelStore
    from crome_edge.evaluate import evaluate
    from crome_edge.model import CromeModel

    if args.threads:
        torch.set_num_threads(args.threads)
    meta = adapter_path = None
    if args.adapter:
        from crome_edge.adapter_file import read_metadata
        from crome_edge.weights import resolve_adapter

        adapter_path = resolve_adapter(args.adapter)
        meta = read_metadata(adapter_path)  # cheap header check before loading anything big
    dataset = load_dataset(args.data, question=args.question)
    samples = dataset.samples
    if args.split != "all":
        training = meta.training if meta is not None else {}
        val_fraction = args.val_fraction if args.val_fraction is not None else training.get("val_fraction")
        seed = args.seed if args.seed is not None else training.get("split_seed")
        if val_fraction is None or seed is None:
            raise CromeError(f"--split {args.split} needs an --adapter that records its split, or --val-fraction and --seed")
        train, val = split_dataset(samples, float(val_fraction), int(seed))
        samples = val if args.split == "val" else train
        if not samples:
            raise CromeError(f"the {args.split} split of {dataset.source} is empty")
    if args.limit:
        samples = samples[: args.limit]

    backbone = load_backbone(args.backbone)
    if args.backbone_parts:
        from crome_edge.backbones.parts_file import load_backbone_parts

        load_backbone_parts(args.backbone_parts, backbone)
    model = CromeModel(backbone)
    if adapter_path is not None:
        from crome_edge.adapter_file import load_adapter

        adapter, _ = load_adapter(adapter_path, backbone)  # refuses an adapter made for another backbone
        model.attach_adapter(adapter)
    from crome_edge.training.distributed import pick_device

    model.to(pick_device(args.device))
    pixels = PixelStore.for_backbone(backbone.info)
    pixels.prepare(samples)
    result = evaluate(model, samples, pixels, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, progress=args.progress)
    report = {
        "backbone": backbone.info.name,
        "backbone_fingerprint": backbone.fingerprint(),
        "adapter": None if adapter_path is None else str(adapter_path),
        "data": str(dataset.source),
        "split": args.split,
        **result.to_dict(),
    }
    print(json.dumps(report, indent=2))
    return 0
