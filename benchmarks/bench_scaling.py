"""How prefill and decode scale with prompt length and with the number of new tokens, ours vs llama.cpp.

    python benchmarks/bench_scaling.py BUNDLE [--threads 1 2] [--runs 5] [--prefix-lengths 25 64 128 256]
                                             [--new-tokens 16 64 128] [--json out.json] [--results RESULTS.md]
                                             [--plot scaling.png]

Same columns and prefix as bench_decode.py (the product's frame + question through the engine's own stages):
ours on the C path (ONNX prefill, C decode steps on the GGUF blocks), ours on the ONNX fp32 decoder, and
llama.cpp on the same GGUF when llama-cpp-python is installed (else skipped, with the reason). PyTorch is left
out here (bench_decode.py and bench_e2e.py have it). Two sweeps, interleaved column by column and run by run
after a warm-up of each, same threads:
  - prompt length: the prefix is the product's (8 visual + the prompt's tokens) with its text rows repeated to
    each --prefix-lengths L; prefill ms and the median step of 16 new tokens after it;
  - new tokens: from the product's prefix, N = each --new-tokens greedy tokens (stop tokens ignored); the
    median step ms and the whole decode's tokens/s (a step attends over a growing cache).
Medians and p90 over --runs. Writes JSON, a Markdown section into RESULTS.md and a PNG (needs matplotlib).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_decode as bd  # noqa: E402  (the same columns, prefix and timing loop)
from bench_report import add_output_arguments, add_run_arguments, command_line, publish, pyplot  # noqa: E402

SECTION = "## Scaling with prompt length and new tokens — `benchmarks/bench_scaling.py`"
STEPS_AFTER_PREFIX = 16


def longer_prefix(prefix: np.ndarray, visual: int, length: int) -> np.ndarray:
    """(1, length, d): the product's prefix with its text rows repeated (then cut) to `length` rows."""
    if length <= prefix.shape[1]:
        return prefix[:, :length].copy()
    text = prefix[0, visual:]
    reps = -(-(length - visual) // len(text))
    return np.ascontiguousarray(np.concatenate([prefix[0, :visual], np.tile(text, (reps, 1))])[None, :length])


def columns_for(bundle: Path, threads: int, gguf: Path | None) -> tuple[list, dict]:
    columns = [bd.EngineColumn(bundle, threads, "c"), bd.EngineColumn(bundle, threads, "onnx")]
    skipped = {}
    if gguf is None:
        skipped["llama.cpp"] = "no GGUF for this bundle's backbone"
    else:
        try:
            columns.append(bd.LlamaCppColumn(gguf, threads, columns[0].engine.manifest.backbone.d_model, 1024))
        except ImportError:
            skipped["llama.cpp"] = ("llama-cpp-python is not installed: pip install 'crome-edge[bench]' "
                                    "(builds llama.cpp from source, ~18 min on 2 cores)")
    return columns, skipped


def sweep(columns, cases, runs: int, warmup: int) -> dict:
    """cases: [(key, prefix, new_tokens)] -> {column: {key: {prefill: [ms], steps: [[ms]]}}}, interleaved."""
    out = {c.name: {key: {"prefill": [], "steps": []} for key, _, _ in cases} for c in columns}
    for run in range(warmup + runs):
        for key, prefix, new_tokens in cases:
            order = columns[run % len(columns):] + columns[:run % len(columns)]
            for column in order:
                prefill_ms, steps, _, _, _ = bd.run_once(column, prefix, new_tokens)
                if run >= warmup:
                    out[column.name][key]["prefill"].append(prefill_ms)
                    out[column.name][key]["steps"].append(steps)
    return out


def summarise(samples: dict) -> dict:
    prefill, steps = samples["prefill"], [s for run in samples["steps"] for s in run]
    totals = [sum(run) for run in samples["steps"]]
    n = len(samples["steps"][0]) if samples["steps"] else 0
    return {"prefill_ms_median": float(np.median(prefill)), "prefill_ms_p90": bd._pct(prefill, 90),
            "step_ms_median": float(np.median(steps)), "step_ms_p90": bd._pct(steps, 90),
            "decode_tokens_per_s": n / (float(np.median(totals)) / 1000.0) if n else float("nan")}


def bench_threads(bundle: Path, threads: int, args, gguf: Path | None) -> dict:
    columns, skipped = columns_for(bundle, threads, gguf)
    engine = columns[0].engine
    prefix = bd.product_prefix(engine)
    visual = engine.manifest.backbone.num_query_tokens
    limit = engine.manifest.llm.max_position_embeddings
    lengths = [L for L in args.prefix_lengths if L + STEPS_AFTER_PREFIX <= limit]
    news = [N for N in args.new_tokens if prefix.shape[1] + N <= limit]
    by_length = sweep(columns, [(L, longer_prefix(prefix, visual, L), STEPS_AFTER_PREFIX) for L in lengths],
                      args.runs, args.warmup)
    by_new = sweep(columns, [(N, prefix, N) for N in news], args.runs, args.warmup)
    return {"threads": threads, "runs": args.runs, "product_prefix_tokens": int(prefix.shape[1]),
            "order": [c.name for c in columns], "skipped": skipped,
            "by_prefix_length": {c: {str(k): summarise(v) for k, v in d.items()} for c, d in by_length.items()},
            "by_new_tokens": {c: {str(k): summarise(v) for k, v in d.items()} for c, d in by_new.items()}}


def markdown(result: dict) -> str:
    m = result["machine"]
    features = ", ".join(k for k, v in m["cpu"]["features"].items() if v)
    lines = [SECTION, "", f"Command: `{result['command']}`  ", f"Machine: {m['cpu']['model']} ({m['cpu']['arch']}, "
             f"{m['cores']} cores; {features}); load average {m.get('load_average')}  ",
             f"Versions: Python {m['python']}, onnxruntime {m['onnxruntime']}; C core {m['c_core']}, decode path "
             f"{m['c_decode_isa']}", ""]
    for run in result["runs"]:
        names = run["order"]
        lines += [f"**{run['threads']} thread(s)**, {run['runs']} interleaved runs after warm-up; medians (p90)", "",
                  "Prompt length (prefill ms; median decode step ms of the next 16 tokens):", "",
                  "| prefix tokens | " + " | ".join(f"{n} prefill | {n} step" for n in names) + " |",
                  "|---|" + "---|---|" * len(names)]
        for key in run["by_prefix_length"][names[0]]:
            cells = []
            for n in names:
                r = run["by_prefix_length"][n][key]
                cells += [f"{r['prefill_ms_median']:.1f} ({r['prefill_ms_p90']:.1f})",
                          f"{r['step_ms_median']:.2f} ({r['step_ms_p90']:.2f})"]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        lines += ["", f"New tokens after the product's {run['product_prefix_tokens']}-token prefix (median step ms; "
                  "decode tokens/s):", "", "| new tokens | " + " | ".join(f"{n} step | {n} tok/s" for n in names)
                  + " |", "|---|" + "---|---|" * len(names)]
        for key in run["by_new_tokens"][names[0]]:
            cells = []
            for n in names:
                r = run["by_new_tokens"][n][key]
                cells += [f"{r['step_ms_median']:.2f} ({r['step_ms_p90']:.2f})", f"{r['decode_tokens_per_s']:.1f}"]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        for name, why in run["skipped"].items():
            lines += ["", f"{name}: skipped ({why})"]
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for run in result["runs"]:
        for name in run["order"]:
            rows = run["by_prefix_length"][name]
            a.plot([int(k) for k in rows], [r["prefill_ms_median"] for r in rows.values()], marker="o",
                   label=f"{name}, {run['threads']}t")
            rows = run["by_new_tokens"][name]
            b.plot([int(k) for k in rows], [r["decode_tokens_per_s"] for r in rows.values()], marker="o",
                   label=f"{name}, {run['threads']}t")
    a.set(title="prefill ms vs prefix tokens (lower is better)", xlabel="prefix tokens", ylabel="ms")
    b.set(title="decode tokens/s vs new tokens (higher is better)", xlabel="new tokens", ylabel="tokens/s")
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, runs=5, warmup=1)
    parser.add_argument("--prefix-lengths", type=int, nargs="+", default=[25, 64, 128, 256])
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--gguf", type=Path, help="the backbone's GGUF for the llama.cpp column (default: the "
                        "embedded smol's, from the model store)")
    parser.add_argument("--no-llama-cpp", action="store_true", help="skip the llama.cpp column")
    add_output_arguments(parser, plot="both sweeps")
    args = parser.parse_args(argv)
    if min(args.prefix_lengths + args.new_tokens) < 1 or args.runs < 1 or args.warmup < 0:
        parser.error("--prefix-lengths and --new-tokens must be >= 1, --runs >= 1, --warmup >= 0")
    gguf = args.gguf
    if gguf is None and not args.no_llama_cpp:
        gguf = bd.default_gguf(args.bundle)
    result = {"command": command_line(argv), "machine": bd.machine(), "runs": []}
    for threads in args.threads:
        result["runs"].append(bench_threads(args.bundle, threads, args, None if args.no_llama_cpp else gguf))
    if args.no_llama_cpp:
        for run in result["runs"]:
            run["skipped"]["llama.cpp"] = "--no-llama-cpp"
    publish(result, args, SECTION, markdown, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
