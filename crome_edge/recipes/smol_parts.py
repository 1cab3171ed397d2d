"""Turn the stage-A vision side into a backbone-parts file bound to the frozen SmolLM2 (the input of stage B).

    python -m crome_edge.recipes.smol_parts --stage-a runs/smol_stage_a.safetensors --out runs/smol_stage_a_parts.safetensors
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors import safe_open

from crome_edge.backbones.smol import load_smol
from crome_edge.backbones.parts import parts_state, save_backbone_parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage-a", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    backbone = load_smol(require_trained=False)
    targets = parts_state(backbone)
    with safe_open(str(args.stage_a), framework="pt") as f:
        summary = json.loads((f.metadata() or {}).get("stage_a", "{}"))
        with torch.no_grad():
            for name, target in targets.items():
                target.copy_(f.get_tensor(name))
    save_backbone_parts(args.out, backbone, torch.float32, training=summary)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
