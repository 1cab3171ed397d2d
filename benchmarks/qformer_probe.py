"""How much smol's Q-Former loses: a linear probe on its visual queries against one on the raw eye features.

The task is held out from all of smol's pretraining: real photographs, the ELPV solar-cell set (see
data_efficiency.py for the source, licence and labels), 4 classes (mono/poly × ok/defective). Features, each from
the product's own backbone (`load_backbone("smol")`) and the runtime's preprocessing:
  eye      the frozen EfficientNet-Lite0 tokens the Q-Former reads, mean- and max-pooled over the 196 positions
  queries  the visual query embeddings V (8 × 576) the LLM receives, flattened
  both: a multinomial logistic regression (L-BFGS, L2 1e-2 on standardised features), trained on N images, tested
on the held-out ones. Also the majority class.

    python benchmarks/qformer_probe.py --work runs/data_eff --train 500 --test 1000 --json runs/qformer_probe.json
"""
from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import crome_runtime.preprocess  # noqa: E402,F401  (before cv2: its decoders then enforce the pixel limit)
from data_efficiency import elpv_labels, elpv_wheel  # noqa: E402


def features(items: list[tuple[str, str]], wheel: Path) -> tuple[np.ndarray, np.ndarray]:
    from crome_edge.backbones.registry import load_backbone
    from crome_edge.recipes.smol_stage_a import pooled
    from crome_runtime.preprocess import decode_image, preprocess_image

    backbone = load_backbone("smol")
    info = backbone.info
    eye, queries = [], []
    with zipfile.ZipFile(wheel) as archive, torch.no_grad():
        for start in range(0, len(items), 32):
            chunk = items[start : start + 32]
            pixels = torch.from_numpy(np.stack([
                preprocess_image(decode_image(archive.read(member), member), info.image_size, info.image_mean,
                                 info.image_std) for member, _ in chunk]))
            tokens = backbone.image_features(pixels)  # (B, 196, 118)
            eye.append(pooled(tokens).numpy())
            queries.append(backbone.encode_features(tokens).flatten(1).numpy())
    return np.concatenate(eye), np.concatenate(queries)


def linear_probe(x: np.ndarray, y: np.ndarray, n_train: int) -> float:
    mean, std = x[:n_train].mean(0), x[:n_train].std(0) + 1e-6
    xt = torch.tensor((x - mean) / std, dtype=torch.float32)
    yt = torch.tensor(y)
    classes = int(y.max()) + 1
    weight = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=500)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt[:n_train] @ weight + bias, yt[:n_train]) + 1e-2 * (weight**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float(((xt[n_train:] @ weight + bias).argmax(1) == yt[n_train:]).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="where the ELPV wheel is (or goes)")
    parser.add_argument("--train", type=int, default=500)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    wheel = elpv_wheel(args.work)
    items = elpv_labels(wheel)
    order = np.random.default_rng(args.seed).permutation(len(items))[: args.train + args.test]
    chosen = [items[i] for i in order]
    classes = sorted({answer for _, answer in chosen})
    y = np.array([classes.index(answer) for _, answer in chosen])
    eye, queries = features(chosen, wheel)
    held_out = y[args.train:]
    result = {"task": "ELPV 4-class (mono/poly x ok/defective)", "train": args.train, "test": len(held_out),
              "majority": float(np.bincount(held_out).max() / len(held_out)),
              "eye_features": linear_probe(eye, y, args.train), "eye_dims": eye.shape[1],
              "visual_queries": linear_probe(queries, y, args.train), "query_dims": queries.shape[1]}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
