"""Decode tokens/s and prefill ms of the product's decode paths vs llama.cpp and PyTorch, same weights, same run.

    python benchmarks/bench_decode.py BUNDLE [--threads 1 2] [--runs 20] [--new-tokens 32] [--json out.json]
                                            [--results benchmarks/RESULTS.md] [--plot benchmarks/decode.png]
                                            [--isa avx2] [--c-lib ours-v3.so]

BUNDLE: a bundle of a GGUF-converted backbone (the embedded smol: `crome-edge export --adapter line3
--precision fp32`), so it carries decoder_blocks.safetensors. The prefix is the product's own: a frame and a
question through Engine.frame / vision / adapt / prompt_ids (8 visual queries + the prompt), built once. Columns,
each timed around the same calls the product makes, interleaved run by run (the order rotates), after a warm-up
of each, with the same thread count:
  - ours, C path: Engine(decoder="c") -> Engine.prefill (ONNX) and Engine.step (crome_llm on the GGUF blocks);
    --isa forces its kernel path (avx2 on an AVX-512 machine), --c-lib loads another build of the C core
  - ours, ONNX fp32: Engine(decoder="onnx") -> the fp32 decoder graph for both
  - llama.cpp: llama-cpp-python on the bundle backbone's GGUF, fed the same prefix as embeddings
    (llama_batch_init(n, d, 1)), then token ids; skipped with the reason when not installed
    (`pip install 'crome-edge[bench]'`: builds llama.cpp from source, ~18 min on 2 cores)
  - PyTorch eager: the backbone's LLM (HF LlamaForCausalLM, fp32), inputs_embeds then its KV cache
Every column decodes --new-tokens greedy tokens (stop tokens ignored). Reported: medians and p90/p99 of a decode
step and of prefill, tokens/s, whether each column's token sequence equals ours-ONNX's (the fp32 reference) and
the C path's worst logit cosine against it, and decode time against the memory-bandwidth bound: the bytes a step
must read (decoder blocks / fp32 weights) over this machine's read bandwidth, measured here with the same threads
by the C core's plain read loop (crome_memread over --bandwidth-mb, best and median of 7).
Writes JSON (--json), a Markdown section into RESULTS.md (--results) and a PNG (--plot, needs matplotlib).
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from bench_report import add_output_arguments, add_run_arguments, command_line, grouped_bars, publish, pyplot

QUESTION = "Which bin does this part go to?"
SECTION = "## Decode vs llama.cpp — `benchmarks/bench_decode.py`"


# --- the columns -------------------------------------------------------------------------------------------


class EngineColumn:
    def __init__(self, bundle: Path, threads: int, decoder: str, isa: str = "auto", c_lib: Path | None = None):
        from crome_runtime.engine import Engine, EngineConfig

        self.engine = Engine.load(bundle, EngineConfig(threads=threads, decoder=decoder))
        assert self.engine.decoder_backend == decoder, self.engine.decoder_backend
        self.name = {"c": "ours, C path", "onnx": "ours, ONNX fp32"}[decoder]
        if decoder == "c" and (isa != "auto" or c_lib is not None):
            from bench_decode_isa import force_c_decoder

            force_c_decoder(self.engine, isa, c_lib)

    def prefill(self, prefix: np.ndarray, room: int) -> np.ndarray:
        return self.engine.prefill(prefix, room)

    def step(self, token: int) -> np.ndarray:
        return self.engine.step(token)


class TorchColumn:
    name = "PyTorch eager"

    def __init__(self, llm, threads: int):
        import torch

        from crome_edge.model import cache_argument

        self.torch, self.llm, self.threads = torch, llm.eval(), threads
        self._cache_kw = lambda cache: cache_argument(llm, cache)  # noqa: E731
        self.table = llm.get_input_embeddings().weight

    def prefill(self, prefix: np.ndarray, room: int) -> np.ndarray:
        self.torch.set_num_threads(self.threads)
        with self.torch.no_grad():
            out = self.llm(inputs_embeds=self.torch.from_numpy(prefix), use_cache=True)
        self.cache = out.past_key_values
        return out.logits[0, -1].numpy()

    def step(self, token: int) -> np.ndarray:
        with self.torch.no_grad():
            out = self.llm(inputs_embeds=self.table[token][None, None], use_cache=True, **self._cache_kw(self.cache))
        self.cache = out.past_key_values
        return out.logits[0, -1].numpy()


class LlamaCppColumn:
    name = "llama.cpp"

    def __init__(self, gguf: Path, threads: int, d_model: int, context: int):
        import llama_cpp

        self.lib, self.d = llama_cpp, d_model
        self.llama = llama_cpp.Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=context,
                                     n_batch=context, verbose=False)
        self.ctx = self.llama._ctx.ctx
        self.vocab = self.llama.n_vocab()
        self.token_batch = llama_cpp.llama_batch_init(1, 0, 1)
        self.version = getattr(llama_cpp, "__version__", "?")

    def _logits(self, index: int) -> np.ndarray:
        pointer = self.lib.llama_get_logits_ith(self.ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.vocab,)).copy()

    def prefill(self, prefix: np.ndarray, room: int) -> np.ndarray:
        lib = self.lib
        lib.llama_memory_clear(lib.llama_get_memory(self.ctx), True)
        rows = np.ascontiguousarray(prefix[0], dtype=np.float32)  # (L, d)
        n = rows.shape[0]
        batch = lib.llama_batch_init(n, self.d, 1)
        try:
            batch.n_tokens = n
            np.ctypeslib.as_array(batch.embd, shape=(n * self.d,))[:] = rows.ravel()
            for i in range(n):
                batch.pos[i], batch.n_seq_id[i], batch.seq_id[i][0], batch.logits[i] = i, 1, 0, i == n - 1
            if lib.llama_decode(self.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed on the prefix")
        finally:
            lib.llama_batch_free(batch)
        self.position = n
        return self._logits(n - 1)

    def step(self, token: int) -> np.ndarray:
        b = self.token_batch
        b.n_tokens, b.token[0], b.pos[0], b.n_seq_id[0], b.seq_id[0][0], b.logits[0] = 1, token, self.position, 1, 0, True
        if self.lib.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed on a step")
        self.position += 1
        return self._logits(0)


# --- measuring ---------------------------------------------------------------------------------------------


def product_prefix(engine) -> np.ndarray:
    """(1, L, d): a synthetic conveyor frame and the line3 question through the product's own stages."""
    from crome_edge.synth.world import render_scene  # numpy + cv2 only

    frame, _ = render_scene(12345, 128)
    f = engine.frame(frame, "bgr")
    visual = engine.adapt(engine.vision(f, QUESTION), "visual")  # (Nq, d)
    text = engine.adapt(engine.embeddings[engine.prompt_ids(QUESTION)], "text")  # (Nt, d)
    return np.ascontiguousarray(np.concatenate([visual, text])[None], dtype=np.float32)


SETTLE_S = 0.25  # idle before each timed run: the previous column's spinning worker threads (OpenMP, ggml's and
# ONNX Runtime's pools, ours) go to sleep first; on 2 cores a spinner left over from another column halved the
# next 2-thread column's speed (C path 11.5 ms/token after PyTorch's run vs 3.7 ms alone)


def run_once(column, prefix: np.ndarray, new_tokens: int):
    """-> (prefill ms, [step ms], [step CPU ms], tokens, [logits]) for one greedy answer of exactly new_tokens.
    CPU ms: the process's CPU time over the step (all its threads: at 2 threads it includes what a pool spins while
    waiting); on a shared machine it leaves out the time the step waited for a core."""
    gc.collect()
    time.sleep(SETTLE_S)
    t = time.perf_counter_ns()
    logits = column.prefill(prefix, new_tokens + 1)
    prefill_ms = (time.perf_counter_ns() - t) / 1e6
    tokens, steps, cpu, all_logits = [], [], [], [np.array(logits, np.float32)]
    for _ in range(new_tokens):
        token = int(np.argmax(logits))
        tokens.append(token)
        c, t = time.process_time_ns(), time.perf_counter_ns()
        logits = column.step(token)
        steps.append((time.perf_counter_ns() - t) / 1e6)
        cpu.append((time.process_time_ns() - c) / 1e6)
        all_logits.append(np.array(logits, np.float32))
    return prefill_ms, steps, cpu, tokens, all_logits


def read_bandwidth(threads: int, megabytes: int = 512, repeats: int = 7) -> dict:
    """GB/s of reading memory with `threads` threads: the C core's plain read loop (crome_memread, split across a
    crome_pool like the decode kernels' rows) over a buffer far larger than the caches; best and median."""
    from crome_runtime import ccore

    data = np.ones(megabytes << 20, np.uint8)
    pool = ccore.Pool(threads)
    times = []
    try:
        for _ in range(repeats):
            t = time.perf_counter()
            ccore.memread(data, pool)
            times.append(time.perf_counter() - t)
    finally:
        pool.close()
    return {"best_gbs": data.nbytes / min(times) / 1e9, "median_gbs": data.nbytes / float(np.median(times)) / 1e9}


def _pct(values, q) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _cos(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def bench_threads(bundle: Path, threads: int, args, llm, gguf: Path | None) -> dict:
    columns = [EngineColumn(bundle, threads, "c", args.isa, args.c_lib), EngineColumn(bundle, threads, "onnx")]
    skipped = {}
    if gguf is None:
        skipped["llama.cpp"] = "no GGUF for this bundle's backbone"
    else:
        try:
            columns.append(LlamaCppColumn(gguf, threads, columns[0].engine.manifest.backbone.d_model, 512))
        except ImportError:
            skipped["llama.cpp"] = ("llama-cpp-python is not installed: pip install 'crome-edge[bench]' "
                                    "(builds llama.cpp from source, ~18 min on 2 cores)")
    if llm is not None:
        columns.append(TorchColumn(llm, threads))
    else:
        skipped["PyTorch eager"] = "torch / the backbone is not available (--no-torch)"
    prefix = product_prefix(columns[0].engine)
    samples = {c.name: {"prefill": [], "decode": [], "decode_cpu": [], "answer": []} for c in columns}
    reference = {}
    for run in range(args.warmup + args.runs):
        order = columns[run % len(columns):] + columns[:run % len(columns)]  # rotate who goes first
        for column in order:
            prefill_ms, steps, cpu, tokens, logits = run_once(column, prefix, args.new_tokens)
            if run >= args.warmup:
                samples[column.name]["prefill"].append(prefill_ms)
                samples[column.name]["decode"].extend(steps)
                samples[column.name]["decode_cpu"].extend(cpu)
                samples[column.name]["answer"].append(prefill_ms + sum(steps))  # a whole answer of new_tokens
            reference.setdefault(column.name, (tokens, logits))
    ref_tokens, ref_logits = reference["ours, ONNX fp32"]
    blocks_bytes = columns[0].engine.decoder.blocks.nbytes
    fp32_bytes = (bundle / "decoder.onnx").stat().st_size
    probe = read_bandwidth(threads, args.bandwidth_mb)
    bandwidth = probe["best_gbs"]  # the bound: the best this machine read while we measured
    rows = {}
    for column in columns:
        s = samples[column.name]
        tokens, logits = reference[column.name]
        median = float(np.median(s["decode"]))
        row = {"decode_ms_median": median, "decode_ms_p90": _pct(s["decode"], 90), "decode_ms_p99": _pct(s["decode"], 99),
               "decode_cpu_ms_median": float(np.median(s["decode_cpu"])),
               "decode_cpu_ms_p90": _pct(s["decode_cpu"], 90),
               "tokens_per_s": 1000.0 / median, "prefill_ms_median": float(np.median(s["prefill"])),
               "prefill_ms_p90": _pct(s["prefill"], 90), "prefill_ms_p99": _pct(s["prefill"], 99),
               "answer_ms_median": float(np.median(s["answer"])), "answer_ms_p90": _pct(s["answer"], 90),
               "answer_ms_p99": _pct(s["answer"], 99),
               "tokens_equal_onnx_fp32": tokens == ref_tokens,
               "first_divergence": next((i for i, (a, b) in enumerate(zip(tokens, ref_tokens)) if a != b), None),
               "logits_cos_min_vs_onnx_fp32": min(_cos(a, b) for a, b in zip(logits, ref_logits))
               if tokens == ref_tokens else None}
        if column.name == "ours, C path":
            row["bytes_per_token"] = blocks_bytes
        elif column.name == "ours, ONNX fp32":
            row["bytes_per_token"] = fp32_bytes
        if "bytes_per_token" in row:
            row["bandwidth_bound_ms"] = row["bytes_per_token"] / bandwidth / 1e6
            row["fraction_of_bound"] = row["bandwidth_bound_ms"] / median
        rows[column.name] = row
    names = [c.name for c in columns]
    return {"threads": threads, "prefix_tokens": int(prefix.shape[1]), "new_tokens": args.new_tokens,
            "runs": args.runs, "read_bandwidth_gbs": bandwidth,
            "read_bandwidth_median_gbs": probe["median_gbs"], "columns": rows, "skipped": skipped, "order": names,
            "llama_cpp_version": next((c.version for c in columns if isinstance(c, LlamaCppColumn)), None)}


# --- reporting ---------------------------------------------------------------------------------------------


def default_gguf(bundle: Path) -> Path | None:
    """The GGUF of the bundle's backbone when crome-edge knows it (the embedded smol: from the model store)."""
    from crome_runtime.manifest import read_manifest

    if read_manifest(bundle, verify=False).backbone.name != "smol":
        return None
    from crome_edge.store.smollm2 import ensure_smollm2_gguf

    return ensure_smollm2_gguf()


def machine() -> dict:
    import onnxruntime

    from crome_runtime import ccore
    from crome_runtime.machine import describe_cpu

    info = {"cpu": describe_cpu(), "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__, "c_core": ccore.build_info(), "c_decode_isa": ccore.isa_best(),
            "cores": len(__import__("os").sched_getaffinity(0))}
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None  # a torch-free device: the PyTorch column is skipped, and this says why
    try:
        info["load_average"] = [round(x, 2) for x in __import__("os").getloadavg()]
    except OSError:  # a platform without getloadavg: recorded as unknown
        info["load_average"] = None
    return info


def markdown(result: dict) -> str:
    m = result["machine"]
    features = ", ".join(k for k, v in m["cpu"]["features"].items() if v)
    lines = [SECTION, "", f"Command: `{result['command']}`  ", f"Machine: {m['cpu']['model']} ({m['cpu']['arch']}, "
             f"{m['cores']} cores; {features}); load average {m.get('load_average')}  ",
             f"Versions: Python {m['python']}, onnxruntime {m['onnxruntime']}, torch {m.get('torch', '-')}, "
             f"llama-cpp-python {result['runs'][0].get('llama_cpp_version') or '-'}; C core {m['c_core']}, "
             f"decode path {decode_path(m)}", ""]
    for run in result["runs"]:
        lines += [f"**{run['threads']} thread(s)**, prefix {run['prefix_tokens']} tokens, {run['new_tokens']} new "
                  f"tokens, {run['runs']} interleaved runs after warm-up; read bandwidth (crome_memread, {run['threads']} "
                  f"thread(s)) best {run['read_bandwidth_gbs']:.1f} GB/s, median {run['read_bandwidth_median_gbs']:.1f}",
                  "", "| column | decode ms/token (p50 / p90 / p99) | decode CPU ms/token (p50 / p90) | tokens/s | "
                  "prefill ms (p50 / p90) | answer ms, prefill + new tokens (p50 / p90 / p99) | tokens = ONNX fp32 | "
                  "logit cos min | vs bandwidth bound |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, r in run["columns"].items():
            same = "yes" if r["tokens_equal_onnx_fp32"] else f"no (from token {r['first_divergence']})"
            cos = f"{r['logits_cos_min_vs_onnx_fp32']:.8f}" if r["logits_cos_min_vs_onnx_fp32"] is not None else "-"
            bound = (f"{r['bandwidth_bound_ms']:.1f} ms bound ({r['bytes_per_token'] / 1e6:.0f} MB), "
                     f"{100 * r['fraction_of_bound']:.0f}%") if "bandwidth_bound_ms" in r else "-"
            lines.append(f"| {name} | {r['decode_ms_median']:.1f} / {r['decode_ms_p90']:.1f} / {r['decode_ms_p99']:.1f} | "
                         f"{r['decode_cpu_ms_median']:.2f} / {r['decode_cpu_ms_p90']:.2f} | {r['tokens_per_s']:.1f} | "
                         f"{r['prefill_ms_median']:.0f} / {r['prefill_ms_p90']:.0f} | "
                         f"{r['answer_ms_median']:.0f} / {r['answer_ms_p90']:.0f} / {r['answer_ms_p99']:.0f} | {same} | "
                         f"{cos} | {bound} |")
        cols = run["columns"]
        if "llama.cpp" in cols:
            c, l = cols["ours, C path"], cols["llama.cpp"]
            lines += ["", f"Ratios: decode tokens/s C path / llama.cpp = {c['tokens_per_s'] / l['tokens_per_s']:.2f}x "
                      f"(CPU ms per step: {l['decode_cpu_ms_median'] / c['decode_cpu_ms_median']:.2f}x); "
                      f"prefill llama.cpp / ours = {l['prefill_ms_median'] / c['prefill_ms_median']:.2f}x; "
                      f"whole answer ({run['new_tokens']} tokens) llama.cpp / ours = "
                      f"{l['answer_ms_median'] / c['answer_ms_median']:.2f}x"]
        for name, why in run["skipped"].items():
            lines += ["", f"{name}: skipped ({why})"]
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    grouped_bars(a, result["runs"], lambda run, n: run["columns"][n]["tokens_per_s"], rotation=20)
    grouped_bars(b, result["runs"], lambda run, n: run["columns"][n]["prefill_ms_median"], rotation=20)
    a.set_title("decode tokens/s (higher is better)")
    b.set_title("prefill ms (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def add_isa_arguments(parser) -> None:
    """--isa / --c-lib: the C path's kernels forced, or from another build of the C core (bench_e2e shares them)."""
    parser.add_argument("--isa", default="auto", help="the C path's kernels (auto: the best this CPU runs; avx2 on "
                        "an AVX-512 machine measures the AVX2 kernels)")
    parser.add_argument("--c-lib", type=Path, help="the C path from this build of the C core (default: the one "
                        "crome_runtime loads), e.g. one built with -march=x86-64-v3")


def record_isa(machine_info: dict, args) -> None:
    machine_info["c_decode_isa_forced"] = args.isa
    machine_info["c_lib"] = str(args.c_lib) if args.c_lib else None


def decode_path(m: dict) -> str:
    """The C decode path a result ran, as the Markdown says it: the CPU's best, or the forced one and its build."""
    forced = m.get("c_decode_isa_forced", "auto")
    path = m["c_decode_isa"] if forced == "auto" else f"{forced} (forced)"
    return path + (f", C core from {m['c_lib']}" if m.get("c_lib") else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, runs=20, warmup=2)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--gguf", type=Path, help="the backbone's GGUF for the llama.cpp column (default: the "
                        "embedded smol's, from the model store)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch column")
    add_isa_arguments(parser)
    parser.add_argument("--bandwidth-mb", type=int, default=512, help="buffer of the read-bandwidth probe (far "
                        "larger than the caches; default %(default)s)")
    add_output_arguments(parser, plot="tokens/s and prefill ms")
    args = parser.parse_args(argv)
    from crome_runtime.manifest import read_manifest

    manifest = read_manifest(args.bundle, verify=False)
    llm = None
    if not args.no_torch:
        from crome_edge.backbones.registry import load_backbone

        llm = load_backbone(manifest.backbone.name).llm
    gguf = args.gguf or default_gguf(args.bundle)
    result = {"command": command_line(argv), "machine": machine(), "runs": []}
    record_isa(result["machine"], args)
    result["load_average_start"] = list(__import__("os").getloadavg())
    for threads in args.threads:
        result["runs"].append(bench_threads(args.bundle, threads, args, llm, gguf))
        result["runs"][-1]["load_average"] = list(__import__("os").getloadavg())
        print(json.dumps(result["runs"][-1]["columns"], indent=1), file=sys.stderr)
    publish(result, args, SECTION, markdown, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
