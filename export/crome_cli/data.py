"""`crome-edge data`: make synthetic conveyor datasets and camera videos (no torch needed).

    crome-edge data synth --out DIR --n N [--seed S] --task pretrain|line3|line5 [--split train|val|test]
                          [--size 128] [--questions all|one] [--force]
    crome-edge data video --out FILE.avi|.mp4 --frames N [--fps 15] [--size 320x240] [--seed S]

`synth` writes DIR/images/*.png, DIR/data.jsonl, DIR/scenes.jsonl and DIR/dataset.json (layout in
crome_edge/synth/dataset_writer.py). --seed is the first frame's offset inside the split's own seed
range, so train/val/test and the tasks never share a frame.
"""
from __future__ import annotations

import argparse

from crome_cli.flags import SEED, number, whole
from crome_runtime.errors import CromeError
from crome_edge.synth.splits import TASKS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="{synth,video}")

    synth = sub.add_parser("synth", help="write a synthetic dataset (PNG + data.jsonl + scenes.jsonl)")
    synth.add_argument("--out", required=True, help="dataset directory to create")
    synth.add_argument("--n", type=int, default=1000, help="number of frames (default 1000)")
    synth.add_argument("--seed", type=SEED, default=0, help="offset of the first frame in the split's seed range")
    synth.add_argument("--task", choices=TASKS, default="pretrain")
    synth.add_argument("--split", choices=("train", "val", "test"), default="train")
    synth.add_argument("--size", type=int, default=128, help="frame side in pixels (default 128)")
    synth.add_argument("--questions", choices=("all", "one"), default="all",
                       help="pretrain: ask every frame all 5 questions, or one (rotating) question")
    synth.add_argument("--force", action="store_true", help="replace an existing non-empty --out")

    video = sub.add_parser("video", help="record the synthetic conveyor camera to a video file")
    video.add_argument("--out", required=True, help="file ending in .avi (MJPG) or .mp4 (mp4v)")
    video.add_argument("--frames", type=whole(1), default=150)
    video.add_argument("--fps", type=number(above=0), default=15.0)
    video.add_argument("--size", default="320x240", help="WIDTHxHEIGHT (default 320x240)")
    video.add_argument("--seed", type=SEED, default=0)


def run(args: argparse.Namespace) -> int:
    if args.data_command == "synth":
        return _synth(args)
    return _video(args)


def _synth(args: argparse.Namespace) -> int:
    from crome_edge.synth.dataset_writer import SynthConfig, write_dataset
    from crome_runtime.outputs import check_output

    check_output(args.out, "--out", directory=True)
    config = SynthConfig(out=args.out, task=args.task, split=args.split, n=args.n, seed=args.seed,
                         size=args.size, questions=args.questions, force=args.force)
    summary = write_dataset(config)
    answers = ", ".join(f"{a}: {c}" for a, c in summary.answers.items())
    print(f"wrote {summary.frames} frames, {summary.samples} Q&A lines ({args.task}/{args.split}, "
          f"seeds {summary.first_seed}..{summary.first_seed + summary.frames - 1}) to {summary.out}")
    print(f"answers: {answers}")
    return 0


def _video(args: argparse.Namespace) -> int:
    from crome_edge.synth.camera import write_video
    from crome_runtime.outputs import check_output

    check_output(args.out, "--out")
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise CromeError(f"--size must look like 320x240, got {args.size!r}") from None
    scenes = write_video(args.out, args.frames, fps=args.fps, size=(width, height), seed=args.seed)
    parts = sum(1 for i, s in enumerate(scenes) if s is not None and (i == 0 or scenes[i - 1] is None))
    print(f"wrote {len(scenes)} frames ({width}x{height} at {args.fps:g} fps, {parts} part(s) entering) to {args.out}")
    return 0
