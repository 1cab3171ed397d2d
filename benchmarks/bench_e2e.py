"""End to end, frame file -> N-token answer: the default bundle through the product's Engine vs PyTorch eager fp32.

    python benchmarks/bench_e2e.py BUNDLE [--threads 1 2] [--runs 20] [--max-new-tokens 16] [--json out.json]
                                         [--results benchmarks/RESULTS.md] [--plot e2e.png]
                                         [--isa avx2] [--c-lib ours-v3.so]

Columns, in one process, interleaved run by run after a warm-up of each, the same threads:
  - ours, default: Engine.load(BUNDLE) as shipped (on CPU the C decode path where the bundle has gated decoder
    blocks), Engine.stream(image file, question): capture, preprocess, vision, adapter, prefill, N decode steps,
    sampling and detokenisation all inside the timing (caches cleared before each run);
  - ours, ONNX decoder: the same with EngineConfig(decoder="onnx") (the fp32 decoder graph for every step);
  - PyTorch eager fp32: CromeModel of the same backbone + the bundle's adapter, timed around the product's own
    functions (bench_runtime.TorchBench: load, preprocess, visual_embeds, prefix_from_visual,
    generate_from_prefix, decode); skipped with the reason when torch is not installed or with --no-torch.
All decode exactly N greedy tokens (stop tokens ignored). Reported: p50/p90/p99 of the whole answer and of
time to first token, the ratio PyTorch / ours, and whether each column's tokens equal PyTorch's. Writes JSON,
a Markdown section into RESULTS.md and a PNG (needs matplotlib).

--isa / --c-lib force the C decode path's kernels or load another build of the C core, as in bench_decode.py (an
AVX2-only machine's path on an AVX-512 one). PyTorch follows `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` in the
environment; ONNX Runtime (vision, prefill) always runs the best kernels of this CPU, so a forced run is not an
AVX2-only machine's prefill.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import sys
import tempfile
from pathlib import Path
from time import perf_counter_ns

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_decode as bd  # noqa: E402  (machine description, RESULTS.md writer, percentiles)
import bench_runtime as br  # noqa: E402  (the synthetic frame file and the PyTorch eager pipeline)
from bench_report import add_output_arguments, add_run_arguments, command_line, grouped_bars, publish, pyplot  # noqa: E402

SECTION = "## End to end, frame -> answer — `benchmarks/bench_e2e.py`"
QUESTION = bd.QUESTION


class EngineE2E:
    def __init__(self, bundle: Path, threads: int, max_new: int, decoder: str, isa: str = "auto",
                 c_lib: Path | None = None):
        from crome_runtime.engine import Engine, EngineConfig, GenerationOptions

        self.engine = Engine.load(bundle, EngineConfig(threads=threads, decoder=decoder))
        if self.engine.decoder_backend == "c" and (isa != "auto" or c_lib is not None):
            from bench_decode_isa import force_c_decoder

            force_c_decoder(self.engine, isa, c_lib)
        self.engine.bundle.stop_ids = frozenset()  # every run decodes exactly max_new tokens
        self.options = GenerationOptions(max_new_tokens=max_new, temperature=0.0, repetition_penalty=1.0,
                                         adapter=br.first_adapter(bundle)[0] or "none")
        self.name = {"auto": "ours, default", "onnx": "ours, ONNX decoder"}[decoder]
        self.name += f" ({self.engine.decoder_backend})"
        self.samples: dict[str, list[float]] = {"total": [], "ttft": []}

    def run(self, image: Path, prompt: str, keep: bool) -> list[int]:
        self.engine.clear_caches()
        start = perf_counter_ns()
        stream = self.engine.stream(image, prompt, self.options)
        for _ in stream:
            pass
        total = (perf_counter_ns() - start) / 1e6
        if keep:
            self.samples["total"].append(total)
            self.samples["ttft"].append(stream.answer.ttft_ms)
        return list(stream.answer.token_ids)


class TorchE2E(br.TorchBench):
    name = "PyTorch eager fp32"


def stats(values: list[float]) -> dict:
    return {"p50": float(np.median(values)), "p90": bd._pct(values, 90), "p99": bd._pct(values, 99)}


def bench_threads(bundle: Path, threads: int, args, image: Path) -> dict:
    columns: list = [EngineE2E(bundle, threads, args.max_new_tokens, "auto", args.isa, args.c_lib),
                     EngineE2E(bundle, threads, args.max_new_tokens, "onnx")]
    skipped = {}
    if args.no_torch:
        skipped["PyTorch eager fp32"] = "--no-torch"
    elif importlib.util.find_spec("torch") is None:
        skipped["PyTorch eager fp32"] = "torch is not installed (pip install crome-edge's training extra)"
    else:
        columns.append(TorchE2E(bundle, br.first_adapter(bundle)[1], threads, args.max_new_tokens))
    tokens = {}
    for run in range(args.warmup + args.runs):
        order = columns[run % len(columns):] + columns[:run % len(columns)]
        for column in order:
            gc.collect()  # outside the timing: PyTorch's garbage would otherwise be collected in someone's run
            ids = column.run(image, QUESTION, keep=run >= args.warmup)
            tokens.setdefault(column.name, [int(t) for t in ids])
    reference = tokens.get("PyTorch eager fp32")
    rows = {}
    for column in columns:
        s = column.samples
        rows[column.name] = {"total_ms": stats(s["total"]), "ttft_ms": stats(s["ttft"]),
                             "tokens": tokens[column.name],
                             "tokens_equal_pytorch": None if reference is None else tokens[column.name] == reference}
    if reference is not None:
        torch_total = rows["PyTorch eager fp32"]["total_ms"]["p50"]
        for name, row in rows.items():
            row["speedup_vs_pytorch"] = torch_total / row["total_ms"]["p50"]
    return {"threads": threads, "runs": args.runs, "max_new_tokens": args.max_new_tokens,
            "order": [c.name for c in columns], "columns": rows, "skipped": skipped}


def markdown(result: dict) -> str:
    m = result["machine"]
    features = ", ".join(k for k, v in m["cpu"]["features"].items() if v)
    lines = [SECTION, "", f"Command: `{result['command']}`  ", f"Machine: {m['cpu']['model']} ({m['cpu']['arch']}, "
             f"{m['cores']} cores; {features}); load average {m.get('load_average')}  ",
             f"Versions: Python {m['python']}, onnxruntime {m['onnxruntime']}, torch {m.get('torch', '-')}; C core "
             f"{m['c_core']}, decode path {bd.decode_path(m)}", ""]
    for run in result["runs"]:
        lines += [f"**{run['threads']} thread(s)**, frame file -> {run['max_new_tokens']}-token answer, "
                  f"{run['runs']} interleaved runs after warm-up", "",
                  "| column | answer ms (p50 / p90 / p99) | time to first token ms (p50 / p90) | tokens = PyTorch | "
                  "PyTorch / this (p50) |", "|---|---|---|---|---|"]
        for name, r in run["columns"].items():
            t, f = r["total_ms"], r["ttft_ms"]
            same = {None: "-", True: "yes", False: "no"}[r["tokens_equal_pytorch"]]
            speed = f"{r['speedup_vs_pytorch']:.2f}x" if "speedup_vs_pytorch" in r else "-"
            lines.append(f"| {name} | {t['p50']:.1f} / {t['p90']:.1f} / {t['p99']:.1f} | {f['p50']:.1f} / "
                         f"{f['p90']:.1f} | {same} | {speed} |")
        for name, why in run["skipped"].items():
            lines += ["", f"{name}: skipped ({why})"]
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    grouped_bars(ax, result["runs"], lambda run, n: run["columns"][n]["total_ms"]["p50"], rotation=15)
    ax.set_title(f"frame -> {result['runs'][0]['max_new_tokens']}-token answer, ms (p50, lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, runs=20, warmup=1)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch column")
    bd.add_isa_arguments(parser)
    add_output_arguments(parser, plot="the answer times")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.max_new_tokens < 1:
        parser.error("--runs and --max-new-tokens must be >= 1, --warmup >= 0")
    result = {"command": command_line(argv), "machine": bd.machine(), "runs": []}
    bd.record_isa(result["machine"], args)
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        image = br._frame_file(Path(tmp))
        for threads in args.threads:
            result["runs"].append(bench_threads(args.bundle, threads, args, image))
    publish(result, args, SECTION, markdown, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
