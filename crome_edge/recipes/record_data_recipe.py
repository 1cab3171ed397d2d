"""Record in an existing adapter how its synthetic training set is made (for adapters trained before
`crome-edge data synth` wrote recipes; new adapters get it from training). Rewrites the metadata only.

    python -m crome_edge.recipes.record_data_recipe --adapter crome_edge/weights/line3.safetensors \\
        --task line3 --split train --n 500 [--seed 0] [--size 128] [--questions all]

Renders the set (to a temporary directory), hashes it as export will, and refuses unless its train/validation
split has the sizes the adapter's training summary records (and, when the adapter's recorded `train_data` is
still on this machine, unless that set hashes the same). The five tensors are copied byte for byte (checked).
Not a way to label an adapter with data it was not trained on: the checks above are all it can do.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from crome_edge.adapter_file import read_metadata
from crome_runtime.atomic import atomic_path
from crome_edge.data import load_training_split
from crome_edge.errors import CromeError
from crome_edge.synth.dataset_writer import SynthConfig, write_dataset
from crome_edge.synth.recipe import SynthRecipe, content_sha256
from crome_runtime import formats


def _tensor_digests(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return {name: hashlib.sha256(f.get_tensor(name).numpy().tobytes()).hexdigest() for name in sorted(f.keys())}


def record_recipe(adapter: Path, recipe: SynthRecipe) -> dict:
    meta = read_metadata(adapter)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "data"
        write_dataset(SynthConfig(out=str(out), task=recipe.task, split=recipe.split, n=recipe.n, seed=recipe.seed,
                                  size=recipe.size, questions=recipe.questions))
        sha = content_sha256(out)
        _, train, val = load_training_split(str(out / "data.jsonl"), meta.training)
    expected = (meta.training.get("examples"), meta.training.get("val_examples"))
    if (len(train), len(val)) != expected:
        raise CromeError(f"{recipe.describe()} splits into {len(train)} training / {len(val)} validation samples; "
                         f"the adapter was trained on {expected[0]} / {expected[1]}: not its training set")
    original = Path(meta.train_data).parent if meta.train_data else None
    if original is not None and original.is_dir() and content_sha256(original) != sha:
        raise CromeError(f"{original} (the adapter's recorded train_data) differs from {recipe.describe()}")
    record = {"recipe": recipe.to_dict(), "sha256": sha}

    with safe_open(str(adapter), framework="pt") as f:
        strings = dict(f.metadata())
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    before = _tensor_digests(adapter)
    strings[formats.META_TRAIN_DATA_RECIPE] = json.dumps(record, sort_keys=True)
    with atomic_path(adapter) as tmp_path:
        save_file(tensors, str(tmp_path), metadata=strings)
        if _tensor_digests(tmp_path) != before:
            raise CromeError("the rewritten tensors differ from the original ones; nothing written")
    return {"adapter": str(adapter), "train_data_recipe": record, "split": [len(train), len(val)],
            "original_data_checked": bool(original is not None and original.is_dir()), "tensor_sha256": before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, required=True)
    parser.add_argument("--task", choices=("pretrain", "line3"), required=True)
    parser.add_argument("--split", choices=("train", "val", "test"), default="train")
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--questions", choices=("all", "one"), default="all")
    args = parser.parse_args()
    recipe = SynthRecipe(args.task, args.split, args.n, args.seed, args.size, args.questions)
    print(json.dumps(record_recipe(args.adapter, recipe), indent=2))


if __name__ == "__main__":
    main()
