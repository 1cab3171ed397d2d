"""What switching adapters costs an answer, on a bundle with two or more adapters (crome-edge export --adapter a
--adapter b, or bundle add).

Only the start of an answer depends on the adapter: routing the prompt, the adapted visual queries of the frame
and the adapted prompt embeddings (the vision graph's output is shared; prefill and decode run the same decoder
whatever the adapter). So this times, per answer, route + prefix build with the engine's caches as a deployment
has them, interleaved:
  same     every answer by adapter A (cached)
  switch   answers alternate A, B, A, B (each adapter's entries cached)
  new frame, second adapter   a frame A already answered, now asked through B: only B's visual branch runs
                              (the vision output is reused), vs the frame's first answer (vision + A's branch)
and whole answers (max_new_tokens 1: prefill + one token) same vs switch, which on a busy machine is mostly
noise around the prefill. Prints a table and writes JSON (--json). Torch-free.

    python benchmarks/bench_adapter_swap.py --bundle both.bundle --threads 1 --rounds 400
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


def _percentiles(values: list[float]) -> dict:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "mean": statistics.fmean(ordered), "n": len(ordered)}


def _frame(engine, seed: int):
    rng = np.random.default_rng(seed)
    return engine.frame(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))


def prefix_ms(engine, frame, question: str, adapter: str | None) -> float:
    """route + adapted visual queries + adapted prompt embeddings, as the answer path does them (ms)."""
    t = time.perf_counter()
    name = engine.route(question, adapter)
    visual, _ = engine._visual(frame, question, name)
    text, _ = engine._text(question, name)
    np.concatenate([visual, text])  # the prefix the decoder gets
    return (time.perf_counter() - t) * 1e3


def main(argv: list[str] | None = None) -> int:
    from crome_runtime.engine import Engine, EngineConfig, GenerationOptions
    from crome_runtime.machine import describe_cpu

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help="a bundle with at least two adapters")
    parser.add_argument("--question", help="the question asked (default: adapter A's first routed question)")
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--answers", type=int, default=40, help="whole answers per arm (max_new_tokens 1)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    engine = Engine.load(args.bundle, EngineConfig(threads=args.threads, spin=False))
    names = engine.adapter_names
    if len(names) < 2:
        parser.error(f"{args.bundle} has {len(names)} adapter(s); switching needs two")
    a, b = names[:2]
    entry = engine.manifest.adapters[0]
    question = args.question or (entry.route.questions[0] if entry.route.questions else "What is it?")
    frame = _frame(engine, 0)
    for name in (a, b):  # warm: each adapter's cache entries for this frame and question
        prefix_ms(engine, frame, question, name)

    same, switch = [], []
    for i in range(args.rounds):  # interleaved so that machine noise hits both arms alike
        same.append(prefix_ms(engine, frame, question, a))
        switch.append(prefix_ms(engine, frame, question, b if i % 2 == 0 else a))
    first, second = [], []
    for i in range(min(args.rounds, 200)):
        new = _frame(engine, 1000 + i)
        first.append(prefix_ms(engine, new, question, a))  # vision + A's visual branch + A's (cached) text
        second.append(prefix_ms(engine, new, question, b))  # B's visual branch on the shared vision output
    options = {name: GenerationOptions(max_new_tokens=1, adapter=name) for name in (a, b)}
    whole_same, whole_switch = [], []
    for i in range(args.answers):
        t = time.perf_counter()
        engine.answer(frame, question, options[a])
        whole_same.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        engine.answer(frame, question, options[b if i % 2 == 0 else a])
        whole_switch.append((time.perf_counter() - t) * 1e3)

    result = {
        "bundle": str(args.bundle), "backbone": engine.manifest.backbone.name, "adapters": [a, b],
        "question": question, "threads": args.threads, "cpu": describe_cpu(),
        "adapter_backend": engine.adapter_backend, "decoder_backend": engine.decoder_backend,
        "prefix_same_ms": _percentiles(same), "prefix_switch_ms": _percentiles(switch),
        "prefix_new_frame_first_ms": _percentiles(first), "prefix_new_frame_second_adapter_ms": _percentiles(second),
        "answer_same_ms": _percentiles(whole_same), "answer_switch_ms": _percentiles(whole_switch),
    }
    result["switch_cost_ms_p50"] = result["prefix_switch_ms"]["p50"] - result["prefix_same_ms"]["p50"]
    result["second_adapter_on_a_new_frame_ms_p50"] = result["prefix_new_frame_second_adapter_ms"]["p50"]
    cpu = describe_cpu()
    print(f"{engine.bundle.name}, adapters {a} / {b}, {args.threads} thread(s), {cpu.get('model')} ({cpu.get('arch')}), "
          f"{engine.adapter_backend} adapter kernel, {engine.decoder_backend} decoder")
    print(f"{'arm':44} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9}")
    for key in ("prefix_same_ms", "prefix_switch_ms", "prefix_new_frame_first_ms", "prefix_new_frame_second_adapter_ms",
                "answer_same_ms", "answer_switch_ms"):
        s = result[key]
        print(f"{key:44} {s['p50']:9.4f} {s['p90']:9.4f} {s['p99']:9.4f}")
    print(f"switching adds {result['switch_cost_ms_p50'] * 1e3:.1f} us (p50) to an answer's adapter-dependent part; "
          f"a second adapter on a new frame costs {result['second_adapter_on_a_new_frame_ms_p50']:.3f} ms (its visual "
          "branch; the vision output is reused)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
