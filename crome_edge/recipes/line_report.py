"""Held-out accuracy of a shipped line adapter: the frozen `smol` backbone without the adapter vs with it.

    python -m crome_edge.recipes.line_report --task line3 [--adapter FILE] [--n 1000] [--split test]

Renders the task's *test* split (or `--split val`; seeds disjoint from training), then runs the same greedy
evaluation as `crome-edge eval` twice. Also reports the backbone's pretraining questions (conveyor and general
curriculum, their test splits) with the adapter on and off: an adapter trained on one task can erase those answers
while attached, which is why bundles route each adapter to its own questions (docs/architecture.md §7).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from crome_edge.adapter_file import load_adapter
from crome_edge.backbones.registry import load_backbone
from crome_edge.data.dataset import load_dataset
from crome_edge.data.pixels import PixelStore
from crome_edge.evaluate import evaluate
from crome_edge.model import CromeModel
from crome_edge.synth.dataset_writer import SynthConfig, write_dataset

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


def accuracy_table(model: CromeModel, adapter, samples, pixels, batch_size: int) -> dict:
    model.detach_adapter()
    without = evaluate(model, samples, pixels, batch_size=batch_size, progress=True)
    model.attach_adapter(adapter)
    with_adapter = evaluate(model, samples, pixels, batch_size=batch_size, progress=True)
    return {"without_adapter": without.accuracy, "with_adapter": with_adapter.accuracy, "n": without.n,
            "per_question_with_adapter": {q: s.accuracy for q, s in with_adapter.per_question.items()},
            "per_question_without_adapter": {q: s.accuracy for q, s in without.per_question.items()},
            "wrong_examples_with_adapter": with_adapter.examples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("line3", "line5"), default="line3")
    parser.add_argument("--adapter", type=Path, help="default: the shipped adapter of --task")
    parser.add_argument("--n", type=int, default=1000, help="held-out frames of the task")
    parser.add_argument("--split", choices=("test", "val"), default="test", help="which held-out split (default: test)")
    parser.add_argument("--pretrain-n", type=int, default=200, help="frames for the pretraining questions")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    adapter_path = args.adapter or WEIGHTS / f"{args.task}.safetensors"
    backbone = load_backbone("smol")
    adapter, meta = load_adapter(adapter_path, backbone)
    model = CromeModel(backbone)
    pixels = PixelStore.for_backbone(backbone.info)
    report = {"adapter": adapter_path.name, "task": args.task, "split": args.split, "rank": meta.config.rank,
              "adapter_parameters": sum(p.numel() for p in adapter.parameters()), "training": meta.training}
    with tempfile.TemporaryDirectory() as tmp:
        for task, split, n in ((args.task, args.split, args.n), ("pretrain", "test", args.pretrain_n),
                               ("general", "test", args.pretrain_n)):
            out = Path(tmp) / task
            write_dataset(SynthConfig(out=str(out), task=task, split=split, n=n))
            samples = load_dataset(out / "data.jsonl").samples
            pixels.prepare(samples)
            report[task] = accuracy_table(model, adapter, samples, pixels, args.batch_size)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
