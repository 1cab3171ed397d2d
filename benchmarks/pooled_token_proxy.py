"""Would a 9th visual token of the eye's pooled features let an ELPV adapter read more through the frozen LLM?

The measurement that chose smol's pooled token (docs/architecture.md §3), before any stage B trained one. An ELPV
adapter (500 train / 1000 held-out photographs, stage_a_probe.py's split and eye-token cache) is trained on the
8 queries' V alone (`base`) or with a 9th token appended, made from the eye's stage-5 map pooled:
  ninth            dataset-standardised mean + max pooling, its own linear map trained beside the adapter (an upper
                   bound: a real stage B trains it on the synthetic worlds, not on the task)
  ninth_ln_frozen  what smol's PooledToken computes (eye channels only, per-frame LayerNorm) with a random linear map
                   that is never trained (a lower bound for a stage B that learned nothing about photographs)
  own              every visual token of `--parts` as it is (the shipped smol's own pooled token), nothing appended
  own_remap        the same, and the pooled token (the last) re-mapped by a 576 x 576 linear map trained beside the
                   adapter (zero-initialised, residual): what an adapter that owned a map of the token would read
  own_whiten       the same tokens, the adapter's visual down and gate trained as whitening · V: V reads the training
                   tokens' centred, whitened coordinates (statistics per --whiten: the pooled token's, all tokens as
                   one set, or the covariance within each position); tried as `crome-edge train --whiten`, not kept
                   (benchmarks/RESULTS.md, "Whitened adapter training"; until 2026-12-06 13:00 UTC this mode also
                   appended `ninth`'s token with its map frozen at random, which that section's proxy rows include)
  own_tenth        every visual token of `--parts` and a token as `ninth` makes it, from the eye map `--tap` (stage 6
                   is computed from the photographs, `--work` holds the ELPV wheel), appended as a 10th or added to
                   the last (`--into`), optionally standardised after the per-frame LayerNorm the shipped token applies
                   (`--per-frame-ln`): the most a token that the adapter owned (its own statistics and map, trained
                   with it) could add to the shipped backbone
Adapter r=64, batch 16, lr 2e-3, warm-up then cosine to 10%, bf16 autocast, no mirrors; greedy exact match.
V is the first NUM_QUERIES tokens of `--parts` (the shipped smol by default), or all of them (the `own*` modes).

    python benchmarks/pooled_token_proxy.py --mode base --cache runs/probe_tokens --threads 1
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch.nn.utils import parametrize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crome_edge.backbones.smol import LLM_WIDTH, NUM_QUERIES, PooledToken, load_smol  # noqa: E402
from crome_edge.gated_adapter import AdapterConfig, CromeAdapter  # noqa: E402
from crome_edge.model import CromeModel  # noqa: E402
from crome_edge.recipes.smol_stage_a import pooled  # noqa: E402

QUESTION = "What kind of cell is this?"
TRAIN = 500
WARMUP = 10


def pooled_features(tokens: torch.Tensor, mode: str, per_frame_ln: bool = False) -> torch.Tensor:
    if mode == "ninth_ln_frozen":  # PooledToken's own pooling and LayerNorm
        return PooledToken().normalised(tokens.float())
    features = PooledToken().normalised(tokens.float()) if per_frame_ln else pooled(tokens)
    return (features - features[:TRAIN].mean(0)) / (features[:TRAIN].std(0) + 1e-3)


class Whitened(torch.nn.Module):
    """W = whitening · V for a (d, r) adapter matrix. The adapter has no bias, so the centring keeps only the whitened
    directions orthogonal to the mean's image (mean · W = 0, so x · W = (x - mean) · W)."""

    def __init__(self, x: torch.Tensor, floor: float = 1e-5):
        """x: (n, positions, d); the covariance within each position, pooled over positions."""
        super().__init__()
        x = x.double()
        within = (x - x.mean(0)).reshape(-1, x.shape[-1])
        values, vectors = torch.linalg.eigh(within.T @ within / (within.shape[0] - 1))
        kept = values > values.max() * floor
        whitening = vectors[:, kept] / values[kept].sqrt()  # (d, k)
        m = x.mean((0, 1)) @ whitening
        m = m / m.norm()
        complement = torch.linalg.qr(torch.eye(len(m), dtype=m.dtype) - m[:, None] * m[None])[0][:, :-1]
        self.register_buffer("whitening", (whitening @ complement).float())  # (d, k - 1)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.whitening @ v


def whiten_visual(adapter: CromeAdapter, x: torch.Tensor) -> None:
    whitened = Whitened(x)
    k = whitened.whitening.shape[1]
    for weights in (adapter.down, adapter.gate):
        weights["visual"] = torch.nn.Parameter(torch.randn(k, adapter.config.rank) * k**-0.5)
        parametrize.register_parametrization(weights, "visual", whitened, unsafe=True)


def stage6_tokens(cache: Path, work: Path | None) -> torch.Tensor:
    """(N, 49, 192) stage-6 maps of stage_a_probe.py's ELPV photographs, in its cache's order (computed once)."""
    path = cache / "elpv_stage6.safetensors"
    if not path.is_file():
        if work is None:
            raise SystemExit("--tap stage6 computes the stage-6 maps once: give --work (data_efficiency.py's, with the wheel)")
        from eye_probe import maps
        from safetensors.torch import save_file
        from stage_a_probe import elpv_frames

        from crome_edge.backbones.efficientnet_lite import EfficientNetLite0
        from crome_edge.backbones.smol import SMOL_MEAN, SMOL_STD
        from crome_edge.store.efficientnet import ensure_efficientnet_lite0
        from crome_runtime.preprocess import preprocess_image

        eye = EfficientNetLite0().eval()
        eye.load_state_dict(load_file(str(ensure_efficientnet_lite0())))
        images, _ = elpv_frames(work)
        chunks = []
        with torch.no_grad():
            for start in range(0, len(images), 32):
                pixels = torch.from_numpy(np.stack([preprocess_image(image, 224, SMOL_MEAN, SMOL_STD)
                                                    for image in images[start : start + 32]]))
                chunks.append(maps(eye, pixels)["stage6"].flatten(2).transpose(1, 2).contiguous())
        save_file({"tokens": torch.cat(chunks)}, str(path))
    return load_file(str(path))["tokens"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["base", "ninth", "ninth_ln_frozen", "own", "own_remap", "own_whiten",
                                           "own_tenth"], required=True)
    parser.add_argument("--tap", choices=["stage5", "stage6"], default="stage5",
                        help="ninth/own_tenth: the eye map whose pooled features make the appended token")
    parser.add_argument("--into", choices=["append", "last"], default="append",
                        help="own_tenth: append the token as a 10th, or add it to the last (the shipped pooled) token")
    parser.add_argument("--per-frame-ln", action="store_true",
                        help="standardise the pooled features after PooledToken's per-frame LayerNorm (what the shipped "
                             "9th token carries, so a map of that token could compute it) instead of the raw ones")
    parser.add_argument("--work", type=Path, help="--tap stage6: data_efficiency.py's --work (holds the ELPV wheel)")
    parser.add_argument("--whiten", choices=["pooled", "all", "positions"], default="pooled",
                        help="own_whiten: the tokens whose statistics whiten the adapter's visual projections")
    parser.add_argument("--cache", type=Path, required=True, help="stage_a_probe.py's --cache (holds elpv.safetensors)")
    parser.add_argument("--parts", type=Path, help="smol parts file (default: the shipped one)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rank", type=int, default=64, help="the adapter's rank r")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.mode != "own_tenth" and (args.into != "append" or args.per_frame_ln):
        parser.error("--into and --per-frame-ln shape the token of --mode own_tenth only")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokens = load_file(str(args.cache / "elpv.safetensors"))["tokens"]
    answers = json.loads((args.cache / "elpv.json").read_text())
    backbone = load_smol(args.parts)
    model = CromeModel(backbone, CromeAdapter(AdapterConfig(LLM_WIDTH, args.rank)))
    with torch.no_grad():
        kept = None if args.mode.startswith("own") else NUM_QUERIES
        queries = torch.cat([backbone.encode_features(tokens[i : i + 100].float())[:, :kept]
                             for i in range(0, len(tokens), 100)])
        features = pooled_features(stage6_tokens(args.cache, args.work) if args.tap == "stage6" else tokens, args.mode,
                                   args.per_frame_ln)
    projection = torch.nn.Linear(features.shape[1], LLM_WIDTH)
    torch.nn.init.normal_(projection.weight, std=0.136 / features.shape[1] ** 0.5)
    torch.nn.init.zeros_(projection.bias)
    remap = torch.nn.Linear(LLM_WIDTH, LLM_WIDTH)
    torch.nn.init.zeros_(remap.weight)
    torch.nn.init.zeros_(remap.bias)
    if args.mode == "own_whiten":
        sample = {"all": queries[:TRAIN].reshape(-1, 1, LLM_WIDTH), "positions": queries[:TRAIN],
                  "pooled": queries[:TRAIN, -1:]}[args.whiten]
        whiten_visual(model.adapter, sample.float())
    projection.requires_grad_(args.mode in ("ninth", "own_tenth"))
    remap.requires_grad_(args.mode == "own_remap")
    params = list(model.adapter.parameters()) + [p for p in [*projection.parameters(), *remap.parameters()]
                                                 if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)

    def visual(index: torch.Tensor) -> torch.Tensor:
        v = queries[index]
        if args.mode == "own_remap":
            return torch.cat([v[:, :-1], v[:, -1:] + remap(v[:, -1:])], 1)
        if args.mode in ("base", "own", "own_whiten"):
            return v
        token = projection(features[index])[:, None]
        if args.into == "last":
            return torch.cat([v[:, :-1], v[:, -1:] + token], 1)
        return torch.cat([v, token], 1)

    start = time.time()
    order = torch.Generator().manual_seed(0)
    for step in range(args.steps):
        progress = (step - WARMUP) / (args.steps - WARMUP)
        scale = (step + 1) / WARMUP if step < WARMUP else 0.1 + 0.45 * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = 2e-3 * scale
        index = torch.randint(0, TRAIN, (16,), generator=order)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model.loss_from_visual(visual(index), [QUESTION] * 16, [answers[i] for i in index])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    seconds = time.time() - start
    right = 0
    with torch.no_grad():
        for first in range(TRAIN, len(answers), 50):
            index = torch.arange(first, min(first + 50, len(answers)))
            out = model.generate_from_prefix(model.prefix_from_visual(visual(index), [QUESTION] * len(index)))
            right += sum(backbone.decode(o).strip() == answers[i] for o, i in zip(out, index.tolist()))
    held_out = len(answers) - TRAIN
    print(json.dumps({"mode": args.mode, "tap": args.tap, "into": args.into, "per_frame_ln": args.per_frame_ln,
                      "steps": args.steps, "rank": args.rank, "elpv_held_out": right / held_out, "n": held_out,
                      "train_s": round(seconds)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
