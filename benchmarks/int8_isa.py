"""INT8 vision fidelity on another CPU than this one: the shipped static-QDQ recipe (crome_export.quantize)
on smol + line3, run natively and under qemu-user's CPU models (default Haswell: AVX2 without AVX-512 or
VNNI), against the FP32 graph and PyTorch.

    python benchmarks/int8_isa.py [--n 200] [--calib 128] [--cpu Haswell] [--threads 1]

For each ISA: vision cosine (min / mean over the held-out frames) against FP32 ONNX, and line3 task accuracy
when that ISA's visual queries feed the same FP32 PyTorch adapter + decoder (the decoder is FP32, so only the
vision graph's int8 arithmetic depends on the CPU). Also the full-range-weights variant the recipe replaced,
to show what saturation costs. Needs the [train] extra and qemu-user (`apt-get install qemu-user`).
Not a speed benchmark: qemu emulates, so its timings mean nothing.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

EMULATED_RUN = """
import sys, numpy as np, onnxruntime as ort
o = ort.SessionOptions(); o.intra_op_num_threads = int(sys.argv[4])
session = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
pixels = np.load(sys.argv[2])
np.save(sys.argv[3], np.concatenate([session.run(None, {"pixel_values": pixels[i:i + 16]})[0]
                                     for i in range(0, len(pixels), 16)]))
"""


def run_vision(graph: Path, pixels_file: Path, out: Path, threads: int, qemu_cpu: str | None) -> np.ndarray:
    command = [sys.executable, "-c", EMULATED_RUN, str(graph), str(pixels_file), str(out), str(threads)]
    if qemu_cpu:
        qemu = shutil.which("qemu-x86_64")
        if qemu is None:
            raise SystemExit("qemu-x86_64 not found: apt-get install qemu-user")
        command = [qemu, "-cpu", qemu_cpu] + command
    subprocess.run(command, check=True, capture_output=True)
    return np.load(out)


def cosines(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    a = reference.reshape(len(reference), -1).astype(np.float64)
    b = candidate.reshape(len(candidate), -1).astype(np.float64)
    c = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return float(c.min()), float(c.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="held-out line3 test frames")
    parser.add_argument("--calib", type=int, default=128, help="calibration frames (line3 training split)")
    parser.add_argument("--cpu", default="Haswell", help="qemu CPU model to emulate")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import onnxruntime.quantization as ortq
    import torch

    from crome_edge.adapter_file import load_adapter
    from crome_edge.backbones.registry import load_backbone
    from crome_edge.data.dataset import load_dataset
    from crome_edge.data.pixels import PixelStore
    from crome_edge.model import CromeModel, GenerationConfig
    from crome_edge.recipes.line_report import WEIGHTS
    from crome_edge.synth.dataset_writer import SynthConfig, write_dataset
    from crome_export import quantize
    from crome_export.vision import export_vision
    from crome_runtime import formats
    from crome_runtime.machine import describe_cpu
    from crome_runtime.prompt import normalize_answer

    torch.set_num_threads(args.threads)
    backbone = load_backbone("smol")
    if backbone.info.instruction_aware:
        raise SystemExit("this benchmark feeds pixel_values only; smol's Q-Former does not read the question")
    adapter, _ = load_adapter(WEIGHTS / "line3.safetensors", backbone)
    model = CromeModel(backbone, adapter).eval()
    store = PixelStore.for_backbone(backbone.info)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        sets = {}
        for name, split, n in (("calib", "train", args.calib), ("test", "test", args.n)):
            write_dataset(SynthConfig(out=str(tmp / name), task="line3", split=split, n=n))
            sets[name] = load_dataset(tmp / name / "data.jsonl").samples
            store.prepare(sets[name])
        calib = np.stack([store.pixels(s.image).numpy() for s in sets["calib"]])
        test = np.stack([store.pixels(s.image).numpy() for s in sets["test"]])
        np.save(tmp / "test.npy", test)
        export_vision(backbone, tmp / "fp32.onnx", formats.DEFAULT_OPSET)
        feeds = [{formats.IN_PIXEL_VALUES: calib[i:i + 8]} for i in range(0, len(calib), 8)]
        quantize.quantize_vision_static(tmp / "fp32.onnx", tmp / "w7.onnx", feeds)
        full_range = ortq.quantize_static  # the recipe before 7-bit weights, for comparison

        def without_reduce_range(*a, **k):
            return full_range(*a, **{**k, "reduce_range": False})

        ortq.quantize_static = without_reduce_range
        try:
            quantize.quantize_vision_static(tmp / "fp32.onnx", tmp / "w8.onnx", feeds)
        finally:
            ortq.quantize_static = full_range

        fp32 = run_vision(tmp / "fp32.onnx", tmp / "test.npy", tmp / "fp32.npy", args.threads, None)
        questions = [s.question for s in sets["test"]]

        def accuracy(visual: np.ndarray) -> float:
            hits = 0
            with torch.no_grad():
                for i in range(0, len(visual), 32):
                    prefix = model.prefix_from_visual(torch.from_numpy(visual[i:i + 32]), questions[i:i + 32])
                    ids = model.generate_from_prefix(prefix, GenerationConfig(max_new_tokens=8))
                    hits += sum(normalize_answer(backbone.decode(x)) == normalize_answer(s.answer)
                                for x, s in zip(ids, sets["test"][i:i + 32]))
            return 100 * hits / len(visual)

        with torch.no_grad():
            pytorch_visual = np.concatenate([model.visual_embeds(torch.from_numpy(test[i:i + 32]), questions[i:i + 32]).numpy()
                                             for i in range(0, len(test), 32)])
        rows = [{"graph": "fp32", "cpu": "native", "cos_min": 1.0, "cos_mean": 1.0, "accuracy": accuracy(fp32)}]
        rows[0]["vs_pytorch_cos_min"] = cosines(pytorch_visual, fp32)[0]
        for graph in ("w7", "w8"):
            for cpu in (None, args.cpu):
                out = run_vision(tmp / f"{graph}.onnx", tmp / "test.npy", tmp / f"{graph}-{cpu}.npy", args.threads, cpu)
                low, mean = cosines(fp32, out)
                rows.append({"graph": graph, "cpu": cpu or "native", "cos_min": low, "cos_mean": mean,
                             "accuracy": accuracy(out)})
        pytorch_accuracy = accuracy(pytorch_visual)
    result = {"machine": describe_cpu(), "emulated_cpu": args.cpu, "frames": args.n, "calibration_frames": args.calib,
              "pytorch_accuracy": pytorch_accuracy, "rows": rows, "command": " ".join(sys.argv)}
    print(f"native CPU: {result['machine']['model']} ({result['machine']['int8_kernels']}); emulated: qemu -cpu {args.cpu}")
    print(f"PyTorch line3 accuracy on {args.n} held-out frames: {pytorch_accuracy:.1f}%")
    print(f"{'vision graph':<34}{'cpu':<10}{'cos min':>10}{'cos mean':>11}{'line3 %':>9}")
    names = {"fp32": "FP32", "w7": "INT8 static QDQ, 7-bit weights", "w8": "INT8 static QDQ, full-range (old)"}
    for row in rows:
        print(f"{names[row['graph']]:<34}{row['cpu']:<10}{row['cos_min']:>10.6f}{row['cos_mean']:>11.6f}{row['accuracy']:>9.1f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
