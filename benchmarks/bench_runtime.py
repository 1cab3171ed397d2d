"""Per-stage latency of a bundle on this machine: the torch-free runtime vs the PyTorch eager pipeline.

    python benchmarks/bench_runtime.py BUNDLE [--runs 20] [--threads 1] [--max-new-tokens 16] [--no-torch]

Runtime: crome_runtime.engine.Engine, the product's pipeline; its profiler gives every stage. Each run
clears the engine's caches and captures the frame again, so every stage runs every time. Baseline, in
the same process and the same run (interleaved with the runtime, after a warm-up of each): CromeModel of
the same backbone + adapter (the bundle's own adapter.safetensors, or --adapter; its metadata names the
backbone), timed around the product's own functions: visual_embeds (vision), prefix_from_visual
(tokenise + embed + adapter), generate_from_prefix with one token (prefill + first sample) and with N
(decode per step = the difference / (N - 1)). Both decode exactly N tokens (stop tokens ignored), greedy.
Medians over --runs (>= 20), with a gc.collect() outside the timing before every run (without it, the
garbage of PyTorch's big heap was collected inside whichever run came next: 10-50 ms stalls). Also: the
bytes the decode loop allocates per step (tracemalloc), the engine's IO-bound KV cache against a plain
session.run() loop on the same decoder session. PyTorch is optional: without torch (or with --no-torch)
only the runtime columns are printed.
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import tempfile
import tracemalloc
from pathlib import Path
from time import perf_counter_ns

import numpy as np

ROWS = ("capture", "preprocess", "vision", "adapter_visual", "tokenize", "adapter_text", "prefill", "decode",
        "sample", "detokenize")


def _frame_file(directory: Path) -> Path:
    import cv2

    from crome_edge.synth.world import render_scene  # numpy + cv2 only

    frame, _ = render_scene(12345, 128)
    path = directory / "frame.png"
    cv2.imwrite(str(path), frame)
    return path


def _ms(ns: int) -> float:
    return ns / 1e6


# --- runtime -----------------------------------------------------------------------------------------------


def first_adapter(bundle: Path) -> tuple[str | None, Path | None]:
    """The bundle's first adapter: (its name, its weights file) — what the benchmarks time, whatever the prompt's
    route — or (None, None) for a bundle of the frozen backbone alone."""
    from crome_runtime.manifest import read_manifest

    adapters = read_manifest(bundle, verify=False).adapters
    if not adapters:
        return None, None
    weights = adapters[0].file("weights")
    return adapters[0].name, (Path(bundle) / weights if weights else None)


class RuntimeBench:
    def __init__(self, bundle: Path, threads: int, max_new: int):
        from crome_runtime.engine import Engine, EngineConfig, GenerationOptions

        self.engine = Engine.load(bundle, EngineConfig(threads=threads))
        self.engine.bundle.stop_ids = frozenset()  # every run decodes exactly max_new tokens
        self.options = GenerationOptions(max_new_tokens=max_new, temperature=0.0, repetition_penalty=1.0,
                                         adapter=first_adapter(bundle)[0] or "none")
        self.samples: dict[str, list[float]] = {}

    def run(self, image: Path, prompt: str, keep: bool) -> list[int]:
        engine = self.engine
        engine.clear_caches()
        engine.profiler.reset()
        start = perf_counter_ns()
        stream = engine.stream(image, prompt, self.options)  # the path: capture + preprocess inside the run
        for _ in stream:
            pass
        total = perf_counter_ns() - start
        answer = stream.answer
        if keep:
            per_stage = engine.profiler.stage_samples_ms()
            for stage in ROWS:
                values = per_stage.get(stage, [])
                if stage in ("decode", "sample", "detokenize"):
                    value = statistics.median(values) if values else float("nan")  # per step
                else:
                    value = sum(values)
                self.samples.setdefault(stage, []).append(value)
            self.samples.setdefault("ttft", []).append(answer.ttft_ms)
            self.samples.setdefault("total", []).append(_ms(total))
        return answer.token_ids


# --- PyTorch eager baseline ----------------------------------------------------------------------------------


class TorchBench:
    def __init__(self, bundle: Path, adapter: Path, threads: int, max_new: int):
        import torch

        from crome_edge.adapter_file import load_adapter, read_metadata
        from crome_edge.backbones.registry import load_backbone_named_by
        from crome_edge.model import CromeModel, GenerationConfig

        torch.set_num_threads(threads or torch.get_num_threads())
        backbone = load_backbone_named_by(f"adapter {adapter}", read_metadata(adapter).backbone_name)  # the export's
        adapter_module, _ = load_adapter(adapter, backbone)
        self.model = CromeModel(backbone, adapter_module.eval()).eval()
        self.model.backbone.stop_token_ids = lambda: set()  # decode exactly max_new tokens, like the runtime
        self.info = backbone.info
        self.config_n = GenerationConfig(max_new_tokens=max_new)
        self.config_1 = GenerationConfig(max_new_tokens=1)
        self.max_new = max_new
        self.samples: dict[str, list[float]] = {}
        self.torch = torch

    def run(self, image: Path, prompt: str, keep: bool) -> list[int]:
        from crome_runtime.preprocess import load_image, preprocess_image

        torch, model = self.torch, self.model
        times = {}
        with torch.no_grad():
            t = perf_counter_ns()
            bgr = load_image(image)
            times["capture"] = perf_counter_ns() - t
            t = perf_counter_ns()
            pixels = torch.from_numpy(preprocess_image(bgr, self.info.image_size, self.info.image_mean,
                                                       self.info.image_std))[None]  # (1, 3, S, S)
            times["preprocess"] = perf_counter_ns() - t
            t = perf_counter_ns()
            visual = model.visual_embeds(pixels, [prompt])  # (1, Nq, d)
            times["vision"] = perf_counter_ns() - t
            t = perf_counter_ns()
            prefix = model.prefix_from_visual(visual, [prompt])  # tokenise + embed + both adapter branches
            times["adapter"] = perf_counter_ns() - t
            t = perf_counter_ns()
            model.generate_from_prefix(prefix, self.config_1)
            times["prefill"] = perf_counter_ns() - t
            t = perf_counter_ns()
            ids = model.generate_from_prefix(prefix, self.config_n)[0]
            times["generate"] = perf_counter_ns() - t
            t = perf_counter_ns()
            model.backbone.decode(ids)
            times["detokenize"] = perf_counter_ns() - t
        if keep:
            decode_step = (times["generate"] - times["prefill"]) / max(self.max_new - 1, 1)
            row = {"capture": _ms(times["capture"]), "preprocess": _ms(times["preprocess"]),
                   "vision": _ms(times["vision"]), "adapter": _ms(times["adapter"]), "prefill": _ms(times["prefill"]),
                   "decode": _ms(decode_step), "detokenize": _ms(times["detokenize"]) / max(len(ids), 1),
                   "ttft": _ms(sum(times[k] for k in ("capture", "preprocess", "vision", "adapter", "prefill"))),
                   "total": _ms(sum(times[k] for k in ("capture", "preprocess", "vision", "adapter", "generate",
                                                       "detokenize")))}
            for key, value in row.items():
                self.samples.setdefault(key, []).append(value)
        return ids


# --- decode-loop memory ------------------------------------------------------------------------------------


def empty_kv(engine) -> list[np.ndarray]:
    """An empty past KV cache for the decoder graph: (1, kv_heads, 0, head_dim) per key and value of every layer."""
    llm = engine.manifest.llm
    return [np.zeros((1, llm.num_kv_heads, 0, llm.head_dim), np.float32)] * (2 * llm.num_layers)


def plain_decoder_step(engine, embeds: np.ndarray, past: int, cache: list[np.ndarray]) -> list[np.ndarray]:
    """The engine's decoder graph driven the plain way, one session.run() with numpy feeds (what the engine's IO
    binding avoids): embeds (1, L, d) after `past` cached tokens -> the present KV, 2 arrays per layer."""
    from crome_runtime import formats

    feeds = {formats.IN_INPUTS_EMBEDS: embeds, formats.IN_ATTENTION_MASK: np.ones((1, past + embeds.shape[1]), np.int64),
             formats.IN_POSITION_IDS: np.arange(past, past + embeds.shape[1])[None]}
    for layer in range(engine.manifest.llm.num_layers):
        feeds[formats.past_key_name(layer)], feeds[formats.past_value_name(layer)] = cache[2 * layer : 2 * layer + 2]
    return engine.sessions["decoder"].run(None, feeds)[1:]


def decode_allocations(engine, steps: int = 32) -> dict:
    """Decode-loop memory traffic: the peak bytes the engine's steps allocate (tracemalloc; IO binding into
    preallocated KV storages) vs the fresh KV arrays a plain session.run() loop on the same graph gets per step."""
    d = engine.manifest.backbone.d_model
    prefix = np.random.default_rng(0).standard_normal((1, 32, d)).astype(np.float32)
    decoder = engine.decoder
    decoder.reserve(32 + steps + 1)
    decoder.prefill(prefix)
    table, row = engine.embeddings.ctypes.data, d * 4
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(steps):
        decoder.step(table + (i + 7) * row)
    engine_peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    result = {"steps": steps, "engine_peak_bytes": engine_peak, "kv_cache_bytes": decoder.kv_bytes,
              "engine_allocations_of_kv_storage": decoder.allocations}
    cache = plain_decoder_step(engine, prefix, 0, empty_kv(engine))  # the same graph, driven by plain session.run()
    fresh = 0  # ONNX Runtime allocates session.run()'s outputs itself: tracemalloc cannot see them, so count them
    for i in range(steps):
        new = plain_decoder_step(engine, np.asarray(engine.embeddings[[i + 7]])[None], 32 + i, cache)
        fresh += sum(a.nbytes for a in new if not any(np.shares_memory(a, b) for b in cache))
        cache = new
    result["session_run_new_kv_bytes_per_step"] = fresh // steps
    return result


# --- report ---------------------------------------------------------------------------------------------------


def _median(values) -> float | None:
    values = [v for v in values if v is not None and v == v]
    return statistics.median(values) if values else None


def table(runtime: RuntimeBench, torch_bench: TorchBench | None) -> tuple[str, dict]:
    r = {k: _median(v) for k, v in runtime.samples.items()}
    t = {k: _median(v) for k, v in torch_bench.samples.items()} if torch_bench else {}
    r["adapter"] = sum(r[k] or 0.0 for k in ("adapter_visual", "tokenize", "adapter_text"))
    rows = [("capture", "capture (image file)"), ("preprocess", "preprocess"), ("vision", "vision"),
            ("adapter", "tokenise + embed + adapter"), ("prefill", "prefill"), ("decode", "decode (per step)"),
            ("sample", "sample (per step)"), ("detokenize", "detokenize (per token)"), ("ttft", "time to first token"),
            ("total", "total")]
    header = "| stage | runtime ms | PyTorch ms | PyTorch / runtime |" if t else "| stage | runtime ms |"
    lines = [header, "|---|---:|---:|---:|" if t else "|---|---:|"]
    for key, label in rows:
        if r.get(key) is None:
            continue
        if t:
            base = t.get(key)
            ratio = f"{base / r[key]:.2f}x" if base and r[key] else "-"
            lines.append(f"| {label} | {r[key]:.3f} | {base:.3f} | {ratio} |" if base is not None
                         else f"| {label} | {r[key]:.3f} | (in decode) | - |")
        else:
            lines.append(f"| {label} | {r[key]:.3f} |")
    return "\n".join(lines), {"runtime_ms": r, "pytorch_ms": t}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--runs", type=int, default=20, help="timed runs of each pipeline (>= 20; default %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="threads for ONNX Runtime and PyTorch (default %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--prompt", default="What part is this?")
    parser.add_argument("--image", type=Path, help="default: a synthetic conveyor frame (128x128)")
    parser.add_argument("--adapter", type=Path, help="adapter .safetensors for the PyTorch baseline "
                        "(default: the bundle's adapter.safetensors)")
    parser.add_argument("--no-torch", action="store_true", help="runtime only")
    parser.add_argument("--json", type=Path, help="also write the medians and raw samples here")
    args = parser.parse_args(argv)
    if args.runs < 20:
        parser.error("--runs must be >= 20 (medians of fewer runs are noise on a shared machine)")
    from crome_runtime import formats

    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp:
        image = args.image or _frame_file(Path(tmp))
        runtime = RuntimeBench(args.bundle, args.threads, args.max_new_tokens)
        torch_bench = None
        if not args.no_torch:
            import importlib.util

            if importlib.util.find_spec("torch") is None:
                print("torch is not installed: runtime only", file=sys.stderr)
            else:
                torch_bench = TorchBench(args.bundle, args.adapter or first_adapter(args.bundle)[1],
                                         args.threads, args.max_new_tokens)
        benches = [b for b in (runtime, torch_bench) if b is not None]
        outputs = [b.run(image, args.prompt, keep=False) for b in benches]  # warm-up
        if torch_bench is not None and outputs[0] != outputs[1]:
            print(f"note: tokens differ: runtime {outputs[0]} vs PyTorch {outputs[1]}", file=sys.stderr)
        for _ in range(args.runs):
            for bench in benches:  # interleaved, so background load hits both alike
                gc.collect()  # not inside a timed run: PyTorch's garbage would otherwise be collected in the runtime's
                bench.run(image, args.prompt, keep=True)
        memory = decode_allocations(runtime.engine)
    text, medians = table(runtime, torch_bench)
    engine = runtime.engine
    m = engine.manifest
    print(f"bundle {engine.bundle.name}: d={m.backbone.d_model}, {m.llm.num_layers} layers, vocab {m.llm.vocab_size}; "
          f"{engine.providers.summary()}, {args.threads} thread(s); {args.runs} runs, {args.max_new_tokens} tokens; "
          f"medians")
    print(text)
    for name, bench in (("runtime", runtime), ("PyTorch", torch_bench)):
        if bench is not None:
            print(f"{name} best run: time to first token {min(bench.samples['ttft']):.3f} ms, total "
                  f"{min(bench.samples['total']):.3f} ms (medians include scheduler stalls on a shared machine)")
    for name, row in (("runtime", medians["runtime_ms"]), ("PyTorch", medians["pytorch_ms"])):
        if row.get("decode"):
            print(f"{name}: {1000 / row['decode']:.1f} tokens/s decode, "
                  f"{args.max_new_tokens / (row['total'] / 1000):.1f} tokens/s end to end")
    print(f"decode-loop allocations over {memory['steps']} steps: engine peak {memory['engine_peak_bytes']} B "
          f"(KV storage allocated {memory['engine_allocations_of_kv_storage']}x, {memory['kv_cache_bytes']} B)"
          + (f"; session.run loop: {memory['session_run_new_kv_bytes_per_step']} B of new KV arrays per step"
             if "session_run_new_kv_bytes_per_step" in memory else ""))
    if args.json:
        args.json.write_text(json.dumps({
            "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": sys.version.split()[0]},
            "command": " ".join(sys.argv), "bundle": str(args.bundle), "engine": engine.describe(), **medians,
            "memory": memory, "samples": {"runtime": runtime.samples, "pytorch": torch_bench.samples if torch_bench else {}},
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
