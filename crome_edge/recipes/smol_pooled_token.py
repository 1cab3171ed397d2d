"""Recipe step 2c's start: a smol parts file from before the pooled token, with a fresh seeded pooled token added.

smol's visual side was 8 queries until the pooled token joined them (docs/architecture.md §3). Stage B continues
from the trained Q-Former and projection rather than from scratch; this writes the file it starts from: every tensor
of `--parts` as it is, plus the pooled token's seeded initial weights.

    python -m crome_edge.recipes.smol_pooled_token --parts crome_edge/weights/smol_vision.safetensors \
        --out runs/smol_vision_pooled0.safetensors
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors import safe_open

from crome_edge.backbones.parts_file import llm_fingerprint, parts_state, read_parts_metadata, save_backbone_parts
from crome_edge.backbones.smol import build_pooled_token, load_smol
from crome_edge.errors import CromeError


def add_pooled_token(parts: Path, out: Path, seed: int = 0) -> None:
    meta = read_parts_metadata(parts)
    backbone = load_smol(require_trained=False)
    backbone.pooled_token = build_pooled_token(seed)
    if meta["llm_fingerprint"] != llm_fingerprint(backbone):
        raise CromeError(f"{parts} was trained against another LLM than smol's ({meta['backbone_name']}); "
                         "add the pooled token to a smol parts file")
    expected = {name: t for name, t in parts_state(backbone).items() if not name.startswith("pooled_token.")}
    with safe_open(str(parts), framework="pt") as f:
        if set(f.keys()) != set(expected):
            raise CromeError(f"{parts} is not a smol parts file from before the pooled token "
                             f"(its tensors: {sorted(f.keys())[:4]}…)")
        with torch.no_grad():
            for name, target in expected.items():
                tensor = f.get_tensor(name)
                if tensor.shape != target.shape:
                    raise CromeError(f"{parts}: {name} has shape {tuple(tensor.shape)}, "
                                     f"smol needs {tuple(target.shape)}")
                target.copy_(tensor.to(target.dtype))
    training = {"started_from": parts.name, "its_training": meta["training"], "pooled_token": f"fresh, seed {seed}"}
    save_backbone_parts(out, backbone, torch.float32, training)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=Path, required=True, help="an 8-query smol parts file")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    add_pooled_token(args.parts, args.out, args.seed)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
