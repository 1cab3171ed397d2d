"""C decode step (crome_llm on a bundle's GGUF blocks) with one kernel path forced, this checkout's C core against a
baseline build of it, interleaved in one process; plus each matrix kernel alone (crome_qmatvec) as a profile.

    python benchmarks/bench_decode_isa.py BUNDLE --isa avx2 [--baseline-lib BASE.so] [--ours-lib OURS.so]
                                          [--threads 1 2] [--runs 10] [--prefix 32] [--new-tokens 32] [--kernels]

Workbench, not the product benchmark (bench_decode.py times the Engine with the ISA it picks): here a kernel path
can be forced (--isa avx2 on an AVX-512 machine measures the AVX2 kernels on this core's AVX2 units) and a
baseline library (e.g. main's, built in another directory) is loaded beside ours (this checkout's, or --ours-lib:
e.g. both built with -march=x86-64-v3 to measure what an AVX2-only machine's -march=native build runs), so
before/after share the machine's load. Each run: the same prefix stepped through in C (untimed), then --new-tokens greedy steps timed one
by one; columns rotate who goes first. Reports the median step, its ratio to the baseline, the read bound (the
blocks' bytes over crome_memread's best GB/s with the same threads), whether the greedy tokens match the
baseline's, and the worst logit cosine between the two. --kernels adds each matrix shape's crome_qmatvec time
(median over repeats, same threads) and their sum per token, i.e. how much of a step the matrix kernels take.
Not here: prefill, llama.cpp, PyTorch (bench_decode.py).
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import numpy as np


def load_library(path: Path | None):
    """ccore.library() for this checkout (path None) or the C core at `path` (another build of the same ABI)."""
    from crome_runtime import ccore

    if path is None:
        return ccore.library()
    saved = ccore._library_path
    ccore.library.cache_clear()
    ccore._library_path = lambda: Path(path)
    try:
        return ccore.library()
    finally:
        ccore._library_path = saved
        ccore.library.cache_clear()


def make_decoder(blocks, threads: int, isa: str, lib):
    from crome_runtime import ccore
    from crome_runtime.cdecoder import CDecoder

    saved = ccore.library
    ccore.library = lambda: lib
    try:
        return CDecoder(blocks, threads=threads, isa=isa)
    finally:
        ccore.library = saved


def force_c_decoder(engine, isa: str, c_lib: Path | None) -> None:
    """Replaces a loaded Engine's C decoder by one with a kernel path forced (isa "avx2" on an AVX-512 machine runs
    the AVX2 kernels) and/or from another build of the C core (c_lib: e.g. built with -march=x86-64-v3, what an
    AVX2-only machine's native build runs): same blocks, same threads, same ONNX prefill."""
    old = engine.decoder
    engine.decoder = make_decoder(old.blocks, old.threads, isa, load_library(c_lib))
    engine.decoder.prefill_decoder = old.prefill_decoder
    old.close()


def run_once(decoder, table: np.ndarray, prefix_ids: list[int], new_tokens: int):
    """-> ([step ms], [step CPU ms], tokens, [logits]): the prefix stepped through untimed, then new_tokens greedy
    steps. CPU ms is the process's CPU time over the step: on a loaded machine it leaves out the time the step
    waited for a core (at 1 thread it is the step's own work; at 2 it adds what the pool spins at barriers)."""
    decoder.reserve(len(prefix_ids) + new_tokens + 1)
    decoder._lib.crome_llm_set_length(decoder._handle, 0)
    for t in prefix_ids:
        logits = decoder.step(table[t].ctypes.data)
    steps, cpu, tokens, all_logits = [], [], [], []
    for _ in range(new_tokens):
        token = int(np.argmax(logits))
        tokens.append(token)
        c0, t0 = time.process_time_ns(), time.perf_counter_ns()
        logits = decoder.step(table[token].ctypes.data)
        steps.append((time.perf_counter_ns() - t0) / 1e6)
        cpu.append((time.process_time_ns() - c0) / 1e6)
        all_logits.append(np.array(logits, np.float64))
    return steps, cpu, tokens, all_logits


def kernel_profile(blocks, threads: int, isa: str, repeats: int = 30) -> dict:
    """Median ms of crome_qmatvec per matrix shape (one layer's, and the head) and the per-token sum."""
    from crome_runtime import ccore, gguf_blocks

    pool = ccore.Pool(threads)
    out = {}
    try:
        names = ["q", "k", "v", "o", "gate", "up", "down"]
        for m in names + ["head"]:
            key = "head" if m == "head" else f"layers.0.{m}"
            w, qtype = blocks.tensors[key], blocks.qtypes[key]
            cols = gguf_blocks.cols_of(qtype, w.shape[1])
            x = np.random.default_rng(0).standard_normal(cols).astype(np.float32)
            ccore.qmatvec(w, qtype, x, isa, pool)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter_ns()
                ccore.qmatvec(w, qtype, x, isa, pool)
                times.append((time.perf_counter_ns() - t0) / 1e6)
            out[m] = float(np.median(times))
    finally:
        pool.close()
    n_layers = blocks.dims.n_layers
    out["per_token_ms"] = n_layers * sum(out[m] for m in names) + out["head"]
    return out


def _cos(a, b) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main(argv: list[str] | None = None) -> int:
    from bench_decode import read_bandwidth

    from crome_runtime import decoder_blocks_file, formats

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--isa", default="avx2")
    parser.add_argument("--baseline-lib", type=Path, help="a C core .so built from the baseline sources")
    parser.add_argument("--ours-lib", type=Path, help="this checkout's C core built elsewhere (default: the one "
                        "crome_runtime loads)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--prefix", type=int, default=32, help="prefix tokens stepped through before timing")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--kernels", action="store_true", help="also time each matrix kernel alone")
    parser.add_argument("--bandwidth-mb", type=int, default=512, help="buffer of the read-bandwidth probe")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    blocks = decoder_blocks_file.load(args.bundle / formats.DECODER_BLOCKS_FILE)
    table = np.load(args.bundle / formats.EMBEDDINGS_FILE, mmap_mode="r")
    table = np.ascontiguousarray(table, dtype=np.float32)  # (vocab, d)
    prefix_ids = [int(i) for i in np.random.default_rng(7).integers(0, blocks.dims.vocab, args.prefix)]
    libs = {"ours": load_library(args.ours_lib)}
    if args.baseline_lib:
        libs["baseline"] = load_library(args.baseline_lib)
    result = {"command": "python " + " ".join(sys.argv), "isa": args.isa, "load_average_start": list(__import__("os").getloadavg()),
              "blocks_bytes": blocks.nbytes, "threads": {}}
    for threads in args.threads:
        decoders = {name: make_decoder(blocks, threads, args.isa, lib) for name, lib in libs.items()}
        names = list(decoders)
        samples, cpu_samples = {n: [] for n in names}, {n: [] for n in names}
        first = {}
        for run in range(args.warmup + args.runs):
            order = names[run % len(names):] + names[:run % len(names)]
            for n in order:
                gc.collect()
                time.sleep(0.1)
                steps, cpu, tokens, logits = run_once(decoders[n], table, prefix_ids, args.new_tokens)
                if run >= args.warmup:
                    samples[n].extend(steps)
                    cpu_samples[n].extend(cpu)
                first.setdefault(n, (tokens, logits))
        bandwidth = read_bandwidth(threads, args.bandwidth_mb)["best_gbs"]
        bound_ms = blocks.nbytes / bandwidth / 1e6
        row = {"read_bandwidth_gbs": bandwidth, "bound_ms": bound_ms, "load_average": list(__import__("os").getloadavg())}
        for n in names:
            median = float(np.median(samples[n]))
            row[n] = {"ms_median": median, "ms_min": float(np.min(samples[n])),
                      "cpu_ms_median": float(np.median(cpu_samples[n])),
                      "ms_p90": float(np.percentile(samples[n], 90)),
                      "fraction_of_bound": bound_ms / median}
        if "baseline" in decoders:
            (ta, la), (tb, lb) = first["ours"], first["baseline"]
            row["speedup"] = row["baseline"]["ms_median"] / row["ours"]["ms_median"]
            row["speedup_cpu"] = row["baseline"]["cpu_ms_median"] / row["ours"]["cpu_ms_median"]
            row["tokens_equal_baseline"] = ta == tb
            row["logit_cos_min_vs_baseline"] = min(_cos(a, b) for a, b in zip(la, lb)) if ta == tb else None
        if args.kernels:
            row["kernels_ms"] = kernel_profile(blocks, threads, args.isa)
        for d in decoders.values():
            d.close()
        result["threads"][threads] = row
        print(f"threads={threads}: " + json.dumps(row, indent=1), file=sys.stderr)
    result["load_average_end"] = list(__import__("os").getloadavg())
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
