"""`crome-edge serve` under its own watch loop: answers/s, latency, frame age at answer, and what serving adds
to the bare engine.

    python benchmarks/bench_serve.py [--bundle B] [--seconds 60] [--warmup 10] [--prompt Q] [--threads N]

Server: the real command, `crome-edge serve --camera demo --watch PROMPT --events FILE` (a subprocess; no
--bundle = the embedded default, exported into the cache on first use), measured from its own JSONL events
after a warm-up: watch answers/s, latency (queued -> answered) p50/p99, frame age at answer (capture ->
answered) p50/p99 against the goal "at most one answer latency plus one frame interval", and the serving
overhead per answer: latency minus the engine's own time (preprocess + answer, both in each event).
Bare engine, in this process afterwards: the same bundle, prompt and thread count on SyntheticCamera frames
(realtime=False, so no camera thread), engine.frame + engine.answer per frame — the same work with no server,
no camera thread and no HTTP. Prints a markdown block for benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

PROMPT = "Which bin does this part go to?"


def _pct(values, q):
    return float(np.percentile(np.asarray(values, np.float64), q)) if values else float("nan")


def _wait_ready(base: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"serve exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"serve was not ready within {timeout:.0f} s")


def run_server(args, events: Path) -> tuple[list[dict], str]:
    command = [sys.executable, "-m", "crome_edge.cli", "serve", "--camera", "demo", "--watch", args.prompt,
               "--port", str(args.port), "--events", str(events), "--log-level", "warning"]
    if args.bundle:
        command += ["--bundle", str(args.bundle)]
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    shown = "crome-edge serve --camera demo --watch " + json.dumps(args.prompt) + (
        f" --bundle {args.bundle}" if args.bundle else "") + (f" --threads {args.threads}" if args.threads else "")
    process = subprocess.Popen(command, stderr=sys.stderr)
    try:
        _wait_ready(f"http://127.0.0.1:{args.port}", process, args.ready_timeout)
        time.sleep(args.warmup + args.seconds)
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)
        if code != 0:
            raise SystemExit(f"serve exited with {code} after SIGTERM")
    finally:
        if process.poll() is None:
            process.kill()
    watch = [json.loads(line) for line in events.read_text().splitlines() if '"type": "watch"' in line]
    start = watch[0]["time"] + args.warmup if watch else 0
    return [e for e in watch if e["time"] >= start], shown


def bare_engine(bundle: Path, prompt: str, threads: int, frames: int) -> list[float]:
    from crome_edge.synth.camera import SyntheticCamera
    from crome_runtime.engine import Engine, EngineConfig

    engine = Engine.load(bundle, EngineConfig(threads=threads))
    camera = SyntheticCamera(realtime=False)
    totals = []
    for i in range(frames + 5):
        ok, image = camera.read()
        t = time.perf_counter_ns()
        frame = engine.frame(image, "bgr", key=f"bare:{i}")
        engine.answer(frame, prompt)
        if i >= 5:  # warm-up
            totals.append((time.perf_counter_ns() - t) / 1e6)
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="default: the embedded default bundle")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads (default: serve's default)")
    parser.add_argument("--port", type=int, default=18765)
    parser.add_argument("--ready-timeout", type=float, default=900.0, help="includes a first default-bundle export")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        events, shown = run_server(args, Path(tmp) / "events.jsonl")
    if len(events) < 3:
        raise SystemExit(f"only {len(events)} watch answers after the warm-up")
    bundle = args.bundle
    if bundle is None:
        from crome_edge.default_bundle import default_bundle_path

        bundle = default_bundle_path()
    latency = [e["latency_ms"] for e in events]
    age = [e["frame_age_ms"] for e in events]
    engine = [e["engine_ms"] for e in events]
    overhead = [e["latency_ms"] - e["engine_ms"] for e in events]
    span = events[-1]["time"] - events[0]["time"]
    bare = bare_engine(bundle, args.prompt, args.threads or 0, max(20, min(len(events), 100)))
    from crome_edge.synth.camera import SyntheticCamera
    from crome_runtime.machine import describe_cpu

    interval = 1000.0 / SyntheticCamera().fps
    within = sum(a <= lat + interval for a, lat in zip(age, latency)) / len(age)
    answers = [e["answer"] for e in events]
    print(f"""
command: `{shown}` ({args.seconds:.0f} s measured after a {args.warmup:.0f} s warm-up); bare engine: the same bundle,
prompt and threads in one process, engine.frame + engine.answer on {len(bare)} SyntheticCamera frames
cpu: {json.dumps(describe_cpu())}
load average at the end: {os.getloadavg()[0]:.1f}

| measure | p50 | p99 | mean |
|---|---|---|---|
| watch answer latency, queued -> answered (ms) | {_pct(latency, 50):.1f} | {_pct(latency, 99):.1f} | {statistics.mean(latency):.1f} |
| of it, the engine (preprocess + answer, ms) | {_pct(engine, 50):.1f} | {_pct(engine, 99):.1f} | {statistics.mean(engine):.1f} |
| of it, serving (queue, threads, events; ms) | {_pct(overhead, 50):.2f} | {_pct(overhead, 99):.2f} | {statistics.mean(overhead):.2f} |
| frame age at answer, capture -> answered (ms) | {_pct(age, 50):.1f} | {_pct(age, 99):.1f} | {statistics.mean(age):.1f} |
| bare engine, frame + answer (ms) | {_pct(bare, 50):.1f} | {_pct(bare, 99):.1f} | {statistics.mean(bare):.1f} |

watch answers/s: {(len(events) - 1) / span:.2f} ({len(events)} answers in {span:.1f} s); camera frame interval
{interval:.1f} ms; answers whose frame age is within one latency + one frame interval: {100 * within:.1f}%;
server latency p50 vs bare engine p50: {_pct(latency, 50) - _pct(bare, 50):+.1f} ms
({100 * (_pct(latency, 50) / _pct(bare, 50) - 1):+.1f}%); distinct answers: {sorted(set(answers))[:8]}
""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
