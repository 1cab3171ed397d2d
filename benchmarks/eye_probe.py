"""Which EfficientNet-Lite0 map, at which input size, should feed smol's Q-Former: measured, not guessed.

For each input size and each candidate map (stage 5: 14×14×112 at 224 px; stage 6: 7×7×192; the classifier head:
7×7×1280), the frozen ImageNet eye's maps of conveyor frames (with a part) train a small attention-pooling probe
(4 learned queries, width 128, one head each for kind, colour and the 5-way defect); the held-out 20% give the
accuracies. Also the eye's latency up to each map (torch, one thread, batch 16). The decision and its numbers are in
docs/architecture.md §3.

With `--elpv-work DIR`, the same maps of real photographs too: qformer_probe.py's linear probe (stage_a_probe.py's ELPV split, 500
training / 1000 held-out images) on each map, mean and max pooled over the positions, so the choice can be weighed
against what a map keeps of a world the project does not draw.

    python benchmarks/eye_probe.py --frames 2500 --sizes 160 192 224 --json runs/eye_probe.json
    python benchmarks/eye_probe.py --frames 0 --sizes 224 300 --elpv-work runs/data_eff
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import crome_runtime.preprocess  # noqa: F401  (before cv2: its decoders then enforce the pixel limit)
from crome_edge.backbones.smol import SMOL_MEAN, SMOL_STD, load_eye
from crome_edge.recipes.smol_stage_a import pooled
from crome_edge.synth.world import COLOUR_NAMES, DEFECTS, KINDS, NO_DEFECT, render_scene
from crome_runtime.preprocess import preprocess_image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qformer_probe import linear_probe  # noqa: E402
from stage_a_probe import ELPV_TRAIN, elpv_frames  # noqa: E402

TAPS = {"stage5": 11, "stage6": 15, "head": None}  # blocks[:n], or the full network + head
PROBE_SEED_BASE = 5_000_000  # pretrain/train seeds: frames the shipped Q-Former never trained on (stage A uses 50M+)


class Probe(nn.Module):
    def __init__(self, channels: int, tokens: int):
        super().__init__()
        self.norm, self.proj = nn.LayerNorm(channels), nn.Linear(channels, 128)
        self.pos = nn.Parameter(torch.zeros(1, tokens, 128))
        self.queries = nn.Parameter(torch.randn(1, 4, 128) * 0.02)
        self.attention = nn.MultiheadAttention(128, 4, batch_first=True)
        self.heads = nn.ModuleList([nn.Linear(512, len(KINDS)), nn.Linear(512, len(COLOUR_NAMES)),
                                    nn.Linear(512, len(DEFECTS) + 1)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        keys = self.proj(self.norm(x)) + self.pos
        out, _ = self.attention(self.queries.expand(len(x), -1, -1), keys, keys)
        return [head(out.flatten(1)) for head in self.heads]


def maps(eye, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    out, x = {}, eye.stem(pixels)
    for index, block in enumerate(eye.blocks, start=1):
        x = block(x)
        for name, tap in TAPS.items():
            if tap == index:
                out[name] = x
    out["head"] = eye.head(x)
    return out


def probe(features: torch.Tensor, labels: torch.Tensor, steps: int) -> list[float]:
    tokens = features.float().flatten(2).transpose(1, 2)  # (N, T, C)
    n_train = int(len(tokens) * 0.8)
    torch.manual_seed(0)
    model = Probe(tokens.shape[2], tokens.shape[1])
    optimizer = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=steps)
    for _ in range(steps):
        index = torch.randint(0, n_train, (64,))
        loss = sum(nn.functional.cross_entropy(o, labels[index, k]) for k, o in enumerate(model(tokens[index])))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        out = model(tokens[n_train:])
    return [float((o.argmax(-1) == labels[n_train:, k]).float().mean()) for k, o in enumerate(out)]


def elpv_rows(eye, sizes: list[int], work: Path) -> list[dict]:
    """ELPV accuracy of a linear probe on each map, mean + max pooled, per input size (stage_a_probe.py's split)."""
    images, answers = elpv_frames(work)
    classes = sorted(set(answers))
    labels = np.array([classes.index(answer) for answer in answers])
    rows = []
    for size in sizes:
        per_map: dict[str, list[np.ndarray]] = {name: [] for name in TAPS}
        with torch.no_grad():
            for start in range(0, len(images), 32):
                pixels = torch.from_numpy(np.stack([preprocess_image(image, size, SMOL_MEAN, SMOL_STD)
                                                    for image in images[start : start + 32]]))
                for name, value in maps(eye, pixels).items():
                    per_map[name].append(pooled(value.flatten(2).transpose(1, 2)).numpy())
        for name in TAPS:
            features = np.concatenate(per_map[name])
            rows.append({"size": size, "map": name, "dims": features.shape[1],
                         "elpv": linear_probe(features, labels, ELPV_TRAIN), "elpv_test": len(labels) - ELPV_TRAIN})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2500)
    parser.add_argument("--sizes", type=int, nargs="+", default=[160, 192, 224])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--json")
    parser.add_argument("--elpv-work", type=Path, help="also probe each map on ELPV real photographs (wheel kept here)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from crome_edge.backbones.efficientnet_lite import EfficientNetLite0
    from crome_edge.store.efficientnet import ensure_efficientnet_lite0
    from safetensors.torch import load_file

    eye = EfficientNetLite0().eval()
    eye.load_state_dict(load_file(str(ensure_efficientnet_lite0())))
    frames, labels = [], []
    for seed in range(PROBE_SEED_BASE, PROBE_SEED_BASE + args.frames):
        image, scene = render_scene(seed)
        if scene.present:
            frames.append(image)
            labels.append((KINDS.index(scene.kind), COLOUR_NAMES.index(scene.colour),
                           (*DEFECTS, NO_DEFECT).index(scene.defect)))
    labels_t = torch.tensor(labels)
    results = []
    for size in args.sizes if frames else []:  # --frames 0: the real photographs only
        pixels = torch.from_numpy(np.stack([preprocess_image(f, size, SMOL_MEAN, SMOL_STD) for f in frames]))
        with torch.no_grad():
            collected: dict[str, list] = {name: [] for name in TAPS}
            for start in range(0, len(pixels), 32):
                for name, value in maps(eye, pixels[start : start + 32]).items():
                    collected[name].append(value.half())
            batch = pixels[:16]
            maps(eye, batch)
            t0 = time.perf_counter()
            maps(eye, batch)
            ms = (time.perf_counter() - t0) / 16 * 1000
        for name in TAPS:
            features = torch.cat(collected[name])
            kind, colour, defect = probe(features, labels_t, args.steps)
            results.append({"size": size, "map": name, "shape": list(features.shape[1:]), "kind": kind,
                            "colour": colour, "defect5": defect, "eye_ms_full_network": round(ms, 1)})
            print(json.dumps(results[-1]), flush=True)
    real = elpv_rows(eye, args.sizes, args.elpv_work) if args.elpv_work else []
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"frames": len(frames), "results": results, "elpv": real}, out, indent=2)


if __name__ == "__main__":
    main()
