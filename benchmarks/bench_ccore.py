"""Benchmark of the runtime's C core against its numpy / OpenCV / onnxruntime alternatives.

Each case times the C path and its alternative alternately in one loop (so both see the same machine
load), after a warm-up, and reports medians and the speedup alt / C. The C side is called through the
same Python API the runtime uses (crome_runtime.ccore, preprocess_frame, sample_next_token).

    python benchmarks/bench_ccore.py                 # print the table
    python benchmarks/bench_ccore.py --append        # ... and append it to benchmarks/RESULTS.md
    python benchmarks/bench_ccore.py --only gproj --runs 2000
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from crome_runtime import ccore
from crome_runtime.ccore import GatedProjection, gated_projection_reference
from crome_runtime.preprocess import (
    DEFAULT_MEAN,
    DEFAULT_STD,
    nv12_to_bgr,
    preprocess_frame,
    preprocess_image,
    yuyv_to_bgr,
)
from crome_runtime.sampling import SamplingParams, sample_next_token, sample_reference

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Runtime C core"  # this script's section heading in RESULTS.md
VOCAB = 49152  # SmolLM2-135M
D_MODEL, RANK = 576, 64  # SmolLM2-135M width, the smol recipe's adapter rank


def time_pair(c_fn, alt_fn, runs: int, warmup: int) -> tuple[float, float]:
    """Median seconds of c_fn and alt_fn, called alternately (warm-up calls first)."""
    for _ in range(warmup):
        c_fn(), alt_fn()
    tc, ta = np.empty(runs), np.empty(runs)
    clock = time.perf_counter
    for i in range(runs):
        t0 = clock()
        c_fn()
        t1 = clock()
        alt_fn()
        t2 = clock()
        tc[i], ta[i] = t1 - t0, t2 - t1
    return float(np.median(tc)), float(np.median(ta))


# --- cases: (stage, case, C call, alternative call, alternative's name, agreement) -------------------------


def _max_diff(c_fn, alt_fn) -> str:
    diff = float(np.abs(np.asarray(c_fn()) - np.asarray(alt_fn())).max())
    return "bit-exact" if diff == 0 else f"max diff {diff:.1e}"


def _preprocess_lut(image_bgr, size, mean, std):
    """The fastest bit-exact numpy/OpenCV alternative found: resize the BGR frame, then map each channel
    through a 256-entry float32 table computed with the reference's own operations."""
    small = cv2.resize(image_bgr, (size, size), interpolation=cv2.INTER_LINEAR)  # (size, size, 3) BGR
    lut = (np.arange(256, dtype=np.float32)[:, None] / np.float32(255) - np.float32(mean)) / np.float32(std)
    out = np.empty((3, size, size), np.float32)
    for c in range(3):
        np.take(lut[:, c], small[:, :, 2 - c], out=out[c])
    return out


def preprocess_cases():
    rng = np.random.default_rng(0)
    out = np.empty((3, 224, 224), np.float32)
    out128 = np.empty((3, 128, 128), np.float32)

    def bgr(h, w):
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)

    def via(convert, impl):
        return lambda f, s, m, sd: impl(convert(f), s, m, sd)

    frames = [
        ("BGR 640x480 -> 224", "bgr", bgr(480, 640), 224, out, None),
        ("BGR 1920x1080 -> 224", "bgr", bgr(1080, 1920), 224, out, None),
        ("BGR 640x480 -> 128", "bgr", bgr(480, 640), 128, out128, None),
        ("BGR 128x128 -> 128 (smol frames)", "bgr", bgr(128, 128), 128, out128, None),
        ("YUYV 640x480 -> 224", "yuyv", rng.integers(0, 256, (480, 640, 2), dtype=np.uint8), 224, out, yuyv_to_bgr),
        ("NV12 1280x720 -> 224", "nv12", rng.integers(0, 256, (1080, 1280), dtype=np.uint8), 224, out, nv12_to_bgr),
    ]
    threads = f"{cv2.getNumThreads()} cv2 threads"
    for name, fmt, frame, size, buf, convert in frames:
        c_fn = lambda f=frame, p=fmt, s=size, b=buf: preprocess_frame(f, p, s, DEFAULT_MEAN, DEFAULT_STD, out=b)
        prefix = "cvtColor, " if convert else ""
        for impl, alt_name in ((preprocess_image, f"{prefix}preprocess_image (reference; {threads})"),
                               (_preprocess_lut, f"{prefix}cv2.resize + numpy LUT ({threads})")):
            run = via(convert, impl) if convert else impl
            alt_fn = lambda f=frame, s=size, a=run: a(f, s, DEFAULT_MEAN, DEFAULT_STD)
            yield ("preprocess", name, c_fn, alt_fn, alt_name, _max_diff(c_fn, alt_fn))


def _ort_gated_projection(w1, wu):
    """An onnxruntime session computing the same fused gated projection."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    r, d = w1.shape[1] // 2, w1.shape[0]
    inits = [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(wu, "Wu"),
             numpy_helper.from_array(np.array([r, r], np.int64), "split")]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"]),  # (N, 2r)
        helper.make_node("Split", ["h", "split"], ["h_down", "h_gate"], axis=-1),
        helper.make_node("Sigmoid", ["h_gate"], ["sig"]),
        helper.make_node("Mul", ["h_gate", "sig"], ["silu"]),
        helper.make_node("Mul", ["silu", "h_down"], ["z"]),  # (N, r)
        helper.make_node("MatMul", ["z", "Wu"], ["o"]),
        helper.make_node("Add", ["x", "o"], ["y"]),  # (N, d)
    ]
    graph = helper.make_graph(
        nodes, "gated_projection",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", d])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def gproj_cases():
    rng = np.random.default_rng(1)
    w1 = (rng.standard_normal((D_MODEL, 2 * RANK)) * 0.05).astype(np.float32)
    wu = (rng.standard_normal((RANK, D_MODEL)) * 0.05).astype(np.float32)
    c_gproj, ort_session = GatedProjection(w1, wu), _ort_gated_projection(w1, wu)
    for n in (8, 32):
        x = rng.standard_normal((n, D_MODEL)).astype(np.float32)  # (Nq, d) visual query embeddings
        y = np.empty_like(x)
        c_fn = lambda x=x, y=y: c_gproj.apply(x, y)
        for alt_fn, alt_name in ((lambda x=x: gated_projection_reference(x, w1, wu), "numpy (OpenBLAS)"),
                                 (lambda x=x: ort_session.run(None, {"x": x})[0], "onnxruntime CPU session")):
            yield ("gproj", f"fp32 d={D_MODEL} r={RANK} N={n}", c_fn, alt_fn, alt_name, _max_diff(c_fn, alt_fn))


def sampler_cases():
    rng = np.random.default_rng(2)
    peaked = (rng.standard_normal(VOCAB) * 2.0).astype(np.float32)  # N(0, 2) bulk + 30 strong candidates
    peaked[rng.choice(VOCAB, 30, replace=False)] = 10 + 4 * rng.standard_normal(30)
    flat = (rng.standard_normal(VOCAB) * 2.5).astype(np.float32)  # worst case for top-p: huge nucleus
    recent = rng.integers(0, VOCAB, 64).tolist()
    cases = [
        ("greedy", SamplingParams(), peaked),
        ("temperature 0.7", SamplingParams(temperature=0.7), peaked),
        ("top-k 50", SamplingParams(temperature=0.7, top_k=50), peaked),
        ("top-p 0.9 (peaked logits)", SamplingParams(temperature=0.7, top_p=0.9), peaked),
        ("top-p 0.9 (flat logits)", SamplingParams(temperature=0.7, top_p=0.9), flat),
        ("top-k 50 + top-p 0.9 + penalty 1.2", SamplingParams(0.7, 50, 0.9, 1.2), peaked),
    ]
    for name, params, logits in cases:
        c_rng, ref_rng = np.random.default_rng(0), np.random.default_rng(0)
        c_fn = lambda lg=logits, p=params, g=c_rng: sample_next_token(lg, p, recent, g)
        alt_fn = lambda lg=logits, p=params, g=ref_rng: sample_reference(lg, p, recent, 0.0 if p.greedy else g.random())
        same = all(c_fn() == alt_fn() for _ in range(200))  # both generators advance in step
        yield ("sampler", f"{name}, vocab {VOCAB}, 64 recent", c_fn, alt_fn, "numpy reference (runtime/sampling.py)",
               "same 200 tokens" if same else "TOKENS DIFFER")


def histogram_floor(runs: int) -> list[str]:
    """Why there is no C latency histogram: the cheapest possible ctypes call vs list.append."""
    abi = ccore.library().crome_abi_version
    samples: list[float] = []
    t_c, t_py = time_pair(abi, lambda: samples.append(1e-3), runs, 100)
    data = list(np.random.default_rng(3).exponential(1e-3, 10_000))
    t0 = time.perf_counter()
    for _ in range(20):
        np.percentile(data, [50, 90, 99])
    t_pct = (time.perf_counter() - t0) / 20
    threads = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    return [
        f"- OPENBLAS_NUM_THREADS={threads} (numpy's BLAS threads; oversubscribed 2-core runs can stall it).",
        f"- latency histogram (candidate d): not built. Recording a sample costs {t_py * 1e9:.0f} ns with "
        f"list.append; the cheapest ctypes call (crome_abi_version, no arguments) costs {t_c * 1e9:.0f} ns, "
        f"so a C recorder loses before doing any work. Reporting p50/p90/p99 of 10,000 samples with "
        f"np.percentile takes {t_pct * 1e6:.0f} us, once per report.",
    ]


# --- report ---------------------------------------------------------------------------------------------


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    try:
        load = ", load average %.1f" % os.getloadavg()[0]
    except OSError:
        load = ""
    return f"{model}, {os.cpu_count()} cores, {platform.machine()}{load}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=300, help="timed calls per case and side (default 300)")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--only", choices=["preprocess", "gproj", "sampler"], action="append")
    ap.add_argument("--append", action="store_true", help=f"append the table to {RESULTS}")
    args = ap.parse_args()

    groups = {"preprocess": preprocess_cases, "gproj": gproj_cases, "sampler": sampler_cases}
    rows = []
    for group in args.only or list(groups):
        for kind, name, c_fn, alt_fn, alt_name, agree in groups[group]():
            runs = args.runs if kind != "preprocess" else max(30, args.runs // 3)
            t_c, t_alt = time_pair(c_fn, alt_fn, runs, args.warmup)
            rows.append(f"| {kind} | {name} | {t_c * 1e6:.1f} | {t_alt * 1e6:.1f} | {alt_name} | {agree} "
                        f"| {t_alt / t_c:.2f}x |")
            print(rows[-1], flush=True)

    import onnxruntime

    blas = f"OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']} " if "OPENBLAS_NUM_THREADS" in os.environ else ""
    header = [
        f"Machine: {machine()}. Date: {datetime.datetime.now().isoformat(timespec='seconds')}.",
        f"Command: `{blas}{' '.join([Path(sys.executable).name] + sys.argv)}`. numpy {np.__version__}, "
        f"OpenCV {cv2.__version__}, onnxruntime {onnxruntime.__version__}; C core: {ccore.build_info()}.",
        "Medians of alternating calls; speedup = alternative / C (above 1: C wins).",
        "",
        "| stage | case | C (us) | alternative (us) | alternative | agreement | speedup |",
        "|---|---|---:|---:|---|---|---:|",
    ]
    notes = histogram_floor(args.runs * 10)
    text = "\n".join(header + rows + [""] + notes) + "\n"
    print("\n" + text)
    if args.append:
        append_run(f"### bench_ccore.py run, {datetime.date.today().isoformat()}\n\n{text}")
        print(f"appended to {RESULTS}")


def append_run(block: str) -> None:
    """Add a run at the end of this script's section of RESULTS.md (before the next "## " section)."""
    lines = RESULTS.read_text().splitlines(keepends=True) if RESULTS.exists() else []
    start = next((i for i, line in enumerate(lines) if line.startswith(SECTION)), None)
    if start is None:
        lines += ["\n" if lines else "", SECTION + "\n"]
        start = len(lines) - 1
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    lines[end:end] = ["\n" + block.rstrip("\n") + "\n\n" if end < len(lines) else "\n" + block]
    RESULTS.write_text("".join(lines))


if __name__ == "__main__":
    main()
