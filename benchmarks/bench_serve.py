"""`crome-edge serve` under its own watch loop: answers/s, latency, frame age at answer, and what serving adds
to the bare engine.

    python benchmarks/bench_serve.py [--bundle B] [--rounds 3] [--seconds 30] [--warmup 8] [--prompt Q] [--threads N]

Server: the real command, `crome-edge serve --camera demo --watch PROMPT --events FILE --bundle B` (a
subprocess; no --bundle here = the embedded default's cache entry, exported first if missing, which is what
`crome-edge serve` without --bundle serves), measured from its own JSONL events
after a warm-up: watch answers/s, latency (queued -> answered) p50/p99, frame age at answer (capture ->
answered) p50/p99 against the goal "at most one answer latency plus one frame interval", and the serving
overhead per answer: latency minus the engine's own time (preprocess + answer, both in each event).
Bare engine, in this process: the same bundle, prompt and thread count on SyntheticCamera frames
(realtime=False, so no camera thread), engine.frame + engine.answer per frame — the same work with no server,
no camera thread and no HTTP. Server and bare engine alternate for --rounds rounds (never at the same time),
so a machine whose load drifts (other jobs) weighs on both alike. Prints a markdown block for RESULTS.md.
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


def wait_ready(base: str, process: subprocess.Popen, timeout: float, poll_s: float = 0.2) -> None:
    """Polls /health until 200. Until the server listens, connections are refused (or 503 while loading): that
    is the wait itself; the last such answer is reported if the server never gets ready."""
    deadline, last = time.monotonic() + timeout, "no answer yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"serve exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                if response.status == 200:
                    return
                last = f"/health answered {response.status}"
        except OSError as error:  # refused while starting, HTTPError 503 while loading
            last = str(error)
        time.sleep(poll_s)
    raise SystemExit(f"serve was not ready within {timeout:.0f} s (last: {last})")


def run_server(args, bundle: Path, events: Path) -> tuple[list[dict], str]:
    """One server round: start, wait until ready, warm up, measure, SIGTERM; the watch events after the warm-up."""
    command = [sys.executable, "-m", "crome_cli", "serve", "--camera", "demo", "--watch", args.prompt,
               "--port", str(args.port), "--events", str(events), "--log-level", "warning", "--bundle", str(bundle)]
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    shown = "crome-edge serve --camera demo --watch " + json.dumps(args.prompt) + (
        f" --bundle {args.bundle}" if args.bundle else "") + (f" --threads {args.threads}" if args.threads else "")
    process = subprocess.Popen(command, stderr=sys.stderr)
    try:
        wait_ready(f"http://127.0.0.1:{args.port}", process, args.ready_timeout)
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


class BareEngine:
    def __init__(self, bundle: Path, prompt: str, threads: int):
        from crome_edge.synth.camera import SyntheticCamera
        from crome_runtime.engine import Engine, EngineConfig

        self.engine = Engine.load(bundle, EngineConfig(threads=threads))
        self.camera = SyntheticCamera(realtime=False)
        self.prompt, self.index = prompt, 0

    def run(self, answers: int, warmup: int = 3) -> list[float]:
        totals = []
        for i in range(answers + warmup):
            ok, image = self.camera.read()
            self.index += 1
            t = time.perf_counter_ns()
            frame = self.engine.frame(image, "bgr", key=f"bare:{self.index}")
            self.engine.answer(frame, self.prompt)
            if i >= warmup:
                totals.append((time.perf_counter_ns() - t) / 1e6)
        return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="default: the embedded default bundle")
    parser.add_argument("--rounds", type=int, default=3, help="server / bare-engine rounds, alternating")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per server round")
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds per server round before measuring")
    parser.add_argument("--bare-answers", type=int, default=40, help="bare-engine answers per round")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads (default: serve's default)")
    parser.add_argument("--port", type=int, default=18765)
    parser.add_argument("--ready-timeout", type=float, default=900.0, help="includes a first default-bundle export")
    args = parser.parse_args()

    load_start = os.getloadavg()[0]
    bundle = args.bundle
    if bundle is None:
        from crome_cli.default_bundle import ensure_default_bundle

        bundle = ensure_default_bundle(lambda message: print(message, file=sys.stderr))
    bare_engine = BareEngine(bundle, args.prompt, args.threads or 0)
    events, bare, spans = [], [], []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            round_events, shown = run_server(args, bundle, Path(tmp) / "events.jsonl")
        if len(round_events) < 3:
            raise SystemExit(f"only {len(round_events)} watch answers after the warm-up")
        events += round_events
        spans.append((len(round_events) - 1, round_events[-1]["time"] - round_events[0]["time"]))
        bare += bare_engine.run(args.bare_answers)
    latency = [e["latency_ms"] for e in events]
    age = [e["frame_age_ms"] for e in events]
    engine = [e["engine_ms"] for e in events]
    overhead = [e["latency_ms"] - e["engine_ms"] for e in events]
    rate = sum(n for n, _ in spans) / sum(t for _, t in spans)
    from crome_edge.synth.camera import SyntheticCamera
    from crome_runtime.machine import describe_cpu

    interval = 1000.0 / SyntheticCamera().fps
    within = sum(a <= lat + interval for a, lat in zip(age, latency)) / len(age)
    answers = [e["answer"] for e in events]
    print(f"""
command: `{shown}`, {args.rounds} rounds of {args.seconds:.0f} s measured after a {args.warmup:.0f} s warm-up, each
followed by {args.bare_answers} bare-engine answers (the same bundle, prompt and threads in one process, engine.frame +
engine.answer on SyntheticCamera frames; {len(bare)} in all)
cpu: {json.dumps(describe_cpu())}
load average (1 min; the machine is shared): {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end

| measure | p50 | p99 | mean |
|---|---|---|---|
| watch answer latency, queued -> answered (ms) | {_pct(latency, 50):.1f} | {_pct(latency, 99):.1f} | {statistics.mean(latency):.1f} |
| of it, the engine (preprocess + answer, ms) | {_pct(engine, 50):.1f} | {_pct(engine, 99):.1f} | {statistics.mean(engine):.1f} |
| of it, serving (queue, threads, events; ms) | {_pct(overhead, 50):.2f} | {_pct(overhead, 99):.2f} | {statistics.mean(overhead):.2f} |
| frame age at answer, capture -> answered (ms) | {_pct(age, 50):.1f} | {_pct(age, 99):.1f} | {statistics.mean(age):.1f} |
| bare engine, frame + answer (ms) | {_pct(bare, 50):.1f} | {_pct(bare, 99):.1f} | {statistics.mean(bare):.1f} |

watch answers/s: {rate:.2f} ({len(events)} answers in {sum(t for _, t in spans):.1f} s); camera frame interval
{interval:.1f} ms; answers whose frame age is within one latency + one frame interval: {100 * within:.1f}%;
server latency p50 vs bare engine p50: {_pct(latency, 50) - _pct(bare, 50):+.1f} ms
({100 * (_pct(latency, 50) / _pct(bare, 50) - 1):+.1f}%); distinct answers: {sorted(set(answers))[:8]}
""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
