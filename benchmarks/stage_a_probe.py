"""Which Q-Former keeps more: a linear probe on the Q-Former output of backbone-parts files, side by side.

For each parts file given (a stage A output, or the shipped smol_vision.safetensors), the flattened Q-Former output
(Nq × 256, before the projection; Nq read from the file) of the same frames is probed with benchmarks/qformer_probe.py's
linear probe (multinomial logistic regression, L-BFGS, L2 1e-2, standardised features) on three tasks the Q-Former
was never trained on:
  elpv   real photographs (ELPV solar cells, 4 classes; data_efficiency.py says where they come from): 500 train /
         1000 held-out, the split qformer_probe.py uses
  line3  the line-3 rule's answer on line-3 frames: 1500 train-split / 1000 test-split frames
  line5  the same for line 5
The eye's tokens of every frame are computed once (the runtime's preprocessing) and kept in `--cache`.

    python benchmarks/stage_a_probe.py runs/smol_stage_a.safetensors runs/smol_stage_a_keep.safetensors \
        --work runs/data_eff --cache runs/probe_tokens --json runs/stage_a_probe.json
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
from qformer_probe import linear_probe  # noqa: E402
from crome_edge.recipes.smol_stage_a import pooled  # noqa: E402

LINE_TRAIN, LINE_TEST = 1500, 1000
ELPV_TRAIN, ELPV_TEST = 500, 1000
FRAME_SIZE = 128  # the line datasets' frame size


def _cached(cache: Path, name: str, make) -> tuple[torch.Tensor, list[str]]:
    """(tokens, answers) of a frame set, from cache/<name>.safetensors (+ .json) when a previous run left them."""
    from safetensors.torch import load_file, save_file

    tokens_path, answers_path = cache / f"{name}.safetensors", cache / f"{name}.json"
    if tokens_path.is_file() and answers_path.is_file():
        return load_file(str(tokens_path))["tokens"], json.loads(answers_path.read_text())
    from crome_edge.backbones.smol import load_eye
    from crome_edge.recipes.smol_stage_a import eye_tokens

    images, answers = make()
    tokens = eye_tokens(load_eye().eval(), images)  # what stage A trains on: the same eye, preprocessing, dtype
    cache.mkdir(parents=True, exist_ok=True)
    save_file({"tokens": tokens}, str(tokens_path))
    answers_path.write_text(json.dumps(answers))
    return tokens, answers


def line_frames(task: str, split: str, n: int):
    from crome_edge.synth.samples import iter_split

    samples = list(iter_split(task, split, n, 0, FRAME_SIZE))
    return [s.image for s in samples], [s.answer for s in samples]


def elpv_frames(work: Path):
    from crome_runtime.preprocess import decode_image

    wheel = elpv_wheel(work)
    items = elpv_labels(wheel)
    order = np.random.default_rng(0).permutation(len(items))[: ELPV_TRAIN + ELPV_TEST]  # qformer_probe.py's split
    chosen = [items[i] for i in order]
    with zipfile.ZipFile(wheel) as archive:
        return [decode_image(archive.read(member), member) for member, _ in chosen], [a for _, a in chosen]


def qformer_output(parts: Path, tokens: torch.Tensor) -> np.ndarray:
    """(N, Nq·256) flattened Q-Former output of the parts file's query tokens and Q-Former."""
    from safetensors.torch import load_file

    import crome_edge.backbones.smol as smol

    state = load_file(str(parts))
    saved, smol.NUM_QUERIES = smol.NUM_QUERIES, state["query_tokens"].shape[1]  # the file's query count
    try:  # only the Q-Former is probed, on cached eye tokens: no eye is built
        _, query_tokens, qformer, _ = smol.build_vision_parts(0, eye=torch.nn.Identity())  # type: ignore[arg-type]
    finally:
        smol.NUM_QUERIES = saved
    with torch.no_grad():
        query_tokens.copy_(state["query_tokens"])
        qformer.load_state_dict({k.split(".", 1)[1]: v.float() for k, v in state.items() if k.startswith("qformer.")})
        qformer.eval()
        out = []
        for start in range(0, len(tokens), 250):
            x = tokens[start : start + 250].float()
            hidden = qformer(query_embeds=query_tokens.expand(x.shape[0], -1, -1), encoder_hidden_states=x,
                             return_dict=True).last_hidden_state
            out.append(hidden.flatten(1))
    return torch.cat(out).numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", type=Path, nargs="+", help="backbone-parts files (stage A outputs, smol_vision)")
    parser.add_argument("--work", type=Path, required=True, help="where the ELPV wheel is (or goes)")
    parser.add_argument("--cache", type=Path, required=True, help="where the eye's tokens of the frames are kept")
    parser.add_argument("--tasks", nargs="+", default=["elpv", "line3", "line5"], choices=["elpv", "line3", "line5"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for task in args.tasks:
        if task == "elpv":
            tokens, answers = _cached(args.cache, "elpv", lambda: elpv_frames(args.work))
            n_train = ELPV_TRAIN
        else:
            train, train_answers = _cached(args.cache, f"{task}-train", lambda t=task: line_frames(t, "train", LINE_TRAIN))
            test, test_answers = _cached(args.cache, f"{task}-test", lambda t=task: line_frames(t, "test", LINE_TEST))
            tokens, answers, n_train = torch.cat([train, test]), train_answers + test_answers, len(train_answers)
        classes = sorted(set(answers))
        y = np.array([classes.index(a) for a in answers])
        eye_pooled = pooled(tokens).numpy()
        row = {"task": task, "train": n_train, "test": len(answers) - n_train,
               "majority": float(np.bincount(y[n_train:]).max() / (len(y) - n_train)),
               "eye_pooled": linear_probe(eye_pooled, y, n_train)}
        for parts in args.parts:
            row[str(parts)] = linear_probe(qformer_output(parts, tokens), y, n_train)
        results.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
