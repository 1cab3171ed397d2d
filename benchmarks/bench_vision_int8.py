"""INT8 against FP32 vision on this CPU: the product's own vision graph and static-QDQ recipe, side by side.

The vision graph (eye + Q-Former + projection -> V) of a backbone is exported with `crome_export.vision` (FP32) and
quantised with `crome_export.quantize.quantize_vision_static` (the shipped portable recipe: int8 activations,
7-bit weights, MatMul/Conv/Gemm only) on N calibration frames; both run in ONNX Runtime (CPUExecutionProvider,
--threads), interleaved run by run after a warm-up, on held-out frames. Reports median / p90 / p99 latency per
frame at batch 1, the speed-up, and the cosine of INT8 against FP32 V (min and mean). Task accuracy after INT8
is the export's own gate (report.json of a bundle); this script measures speed and drift.

    python benchmarks/bench_vision_int8.py --backbone smol --calib 64 --frames 64 --runs 50 --threads 1 \\
        --results benchmarks/RESULTS.md --json runs/vision_int8.json
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import crome_runtime.preprocess  # noqa: E402,F401  (before cv2)
from bench_report import add_output_arguments, command_line, publish  # noqa: E402

HEADING = "## INT8 against FP32 vision — `benchmarks/bench_vision_int8.py`"


def frames(n: int, seed_offset: int, info) -> list[np.ndarray]:
    """Conveyor frames (line3 test split) as the runtime preprocesses them: (1, 3, S, S) each."""
    from crome_edge.synth.samples import iter_split
    from crome_runtime.preprocess import preprocess_image

    return [preprocess_image(s.image, info.image_size, info.image_mean, info.image_std)[None]
            for s in iter_split("line3", "test", n, start=seed_offset)]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="smol")
    parser.add_argument("--calib", type=int, default=64, help="calibration frames (line3 test split, its own range)")
    parser.add_argument("--frames", type=int, default=64, help="held-out frames timed and compared")
    parser.add_argument("--runs", type=int, default=50, help="timed frames per graph")
    parser.add_argument("--threads", type=int, default=1)
    add_output_arguments(parser, plot=None)
    args = parser.parse_args(argv)
    import onnxruntime as ort
    import torch

    from crome_edge.backbones.registry import load_backbone
    from crome_export.quantize import quantize_vision_static
    from crome_export.vision import export_vision
    from crome_runtime import formats
    from crome_runtime.machine import describe_cpu

    torch.set_num_threads(args.threads)
    backbone = load_backbone(args.backbone)
    info = backbone.info
    calibration = frames(args.calib, 500_000, info)
    held_out = frames(args.frames, 0, info)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "vision_fp32.onnx", Path(tmp) / "vision_int8.onnx"
        export_vision(backbone, fp32, formats.DEFAULT_OPSET)
        quantize_vision_static(fp32, int8, [{formats.IN_PIXEL_VALUES: f} for f in calibration])
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        sessions = {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                    for name, path in (("fp32", fp32), ("int8", int8))}
        outputs = {name: [s.run(None, {formats.IN_PIXEL_VALUES: f})[0] for f in held_out] for name, s in sessions.items()}
        times: dict[str, list[float]] = {"fp32": [], "int8": []}
        for i in range(args.runs):  # interleaved, so other load on the machine hits both alike
            for name, session in sessions.items():
                feed = {formats.IN_PIXEL_VALUES: held_out[i % len(held_out)]}
                start = time.perf_counter()
                session.run(None, feed)
                times[name].append((time.perf_counter() - start) * 1000)
        sizes = {"fp32": fp32.stat().st_size, "int8": int8.stat().st_size}
    cosines = []
    for a, b in zip(outputs["fp32"], outputs["int8"]):
        a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
        cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    result = {"command": command_line(argv), "machine": f"{platform.node() or 'host'}: {describe_cpu()}",
              "date": time.strftime("%Y-%m-%d"), "backbone": info.name, "image_size": info.image_size,
              "threads": args.threads, "runs": args.runs, "frames": args.frames, "calib": args.calib,
              "mb": {k: round(v / 1e6, 1) for k, v in sizes.items()},
              "ms": {name: {"p50": statistics.median(t), "p90": percentile(t, 90), "p99": percentile(t, 99)}
                     for name, t in times.items()},
              "cosine_min": min(cosines), "cosine_mean": statistics.fmean(cosines)}
    result["speedup_p50"] = result["ms"]["fp32"]["p50"] / result["ms"]["int8"]["p50"]
    publish(result, args, HEADING, markdown, None)


def markdown(r: dict) -> str:
    rows = [f"| {name.upper()} | {r['mb'][name]} | {m['p50']:.2f} | {m['p90']:.2f} | {m['p99']:.2f} |"
            for name, m in r["ms"].items()]
    return "\n".join([
        HEADING, "",
        f"`{r['command']}` on {r['machine']} ({r['date']}): the {r['backbone']} vision graph ({r['image_size']} px -> V), "
        f"batch 1, {r['threads']} thread(s), {r['runs']} interleaved runs each, ONNX Runtime CPU.", "",
        "| vision graph | MB | p50 ms | p90 ms | p99 ms |", "|---|---:|---:|---:|---:|", *rows, "",
        f"INT8 is **{r['speedup_p50']:.2f}×** faster at the median; V cosine INT8 vs FP32 over {r['frames']} held-out "
        f"frames: min {r['cosine_min']:.4f}, mean {r['cosine_mean']:.4f}.", "",
    ])


if __name__ == "__main__":
    main()
