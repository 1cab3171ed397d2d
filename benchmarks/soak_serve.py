"""Load and soak of the real `crome-edge serve` process on loopback: `--camera demo` with a watch prompt, N
concurrent API clients, until the server has captured F frames (bounded by --max-seconds).

Measured: every API request's status (each one answered 200 or refused 429; anything else, a connection error
included, is counted as lost), the API latency percentiles, and the server process's VmRSS, thread count and
open file descriptors read from /proc/<pid>/status and /proc/<pid>/fd, at warm-up (after `--warmup` frames)
and at the end, both in a quiet moment (clients paused, no request in flight). The server is stopped with
SIGINT (or --signal TERM) and must exit 0.

    python benchmarks/soak_serve.py --bundle B --frames 10000 --demo-fps 60 --clients 4 --json soak.json

Not here: the assertions (tests/test_serve_soak.py runs `soak()` in short mode and checks the result), the
HTTP API itself (runtime/crome_runtime/serve/).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

QUESTION = "What colour is it?"


@dataclass
class SoakConfig:
    bundle: Path | None = None  # None: serve's default bundle
    frames: int = 10_000  # stop once the server has captured this many frames
    warmup: int = 0  # frames before the warm-up sample (0: a tenth of `frames`, at least 100)
    demo_fps: float = 60.0
    clients: int = 4  # concurrent API clients, each one request at a time
    queue_size: int = 2  # serve --queue-size: small so that 429s happen under load
    max_new_tokens: int = 4
    max_seconds: float = 1800.0  # the whole run is bounded by this
    stop_signal: str = "INT"
    extra_args: list[str] = field(default_factory=list)


class Proc:
    """The server process's resource figures from /proc (Linux)."""

    def __init__(self, pid: int):
        self.pid = pid

    def sample(self) -> dict:
        status = Path(f"/proc/{self.pid}/status").read_text().splitlines()
        values = dict(line.split(":", 1) for line in status if ":" in line)
        return {"rss_kib": int(values["VmRSS"].split()[0]), "threads": int(values["Threads"]),
                "fds": len(os.listdir(f"/proc/{self.pid}/fd"))}


def _http(method: str, url: str, body: bytes | None = None, timeout: float = 120.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    raise KeyError(name)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class Clients:
    """N threads, each posting chat completions (the camera's newest frame) one at a time; `pause()` waits
    until none is in flight."""

    def __init__(self, base: str, count: int, max_tokens: int):
        self.base, self.max_tokens = base, max_tokens
        self.statuses: dict[str, int] = {}
        self.latencies_ms: list[float] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop, self._run = threading.Event(), threading.Event()
        self._in_flight = 0
        self._run.set()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(count)]
        for thread in self.threads:
            thread.start()

    def _loop(self) -> None:
        body = json.dumps({"model": "m", "max_tokens": self.max_tokens,
                           "messages": [{"role": "user", "content": QUESTION}]}).encode()
        while not self._stop.is_set():
            if not self._run.wait(0.05):
                continue
            with self._lock:
                if not self._run.is_set():
                    continue
                self._in_flight += 1
            start = time.perf_counter()
            try:
                status, _ = _http("POST", f"{self.base}/v1/chat/completions", body)
                key = str(status)
            except OSError as error:  # refused, reset, timed out: lost
                key = "connection_error"
                with self._lock:
                    self.errors.append(repr(error))
            elapsed = (time.perf_counter() - start) * 1000
            with self._lock:
                self._in_flight -= 1
                self.statuses[key] = self.statuses.get(key, 0) + 1
                if key == "200":
                    self.latencies_ms.append(elapsed)
            if key == "429":
                time.sleep(0.05)  # Retry-After says 1 s; a short pause keeps the queue full without spinning

    def pause(self, timeout: float = 120.0) -> None:
        self._run.clear()
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._in_flight == 0:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError("API requests still in flight after pausing the clients")
            time.sleep(0.02)

    def resume(self) -> None:
        self._run.set()

    def stop(self) -> None:
        self._stop.set()
        self._run.set()
        for thread in self.threads:
            thread.join(180)


def _quiet_sample(proc: Proc, clients: Clients) -> dict:
    clients.pause()
    time.sleep(0.5)  # closed connections are released by the server's loop
    sample = proc.sample()
    clients.resume()
    return sample


def soak(config: SoakConfig) -> dict:
    """Runs the soak; returns its figures (asserts nothing)."""
    warmup = config.warmup or max(100, config.frames // 10)
    command = [sys.executable, "-m", "crome_cli", "serve", "--camera", "demo", "--demo-fps", str(config.demo_fps),
               "--port", "0", "--threads", "1", "--watch", QUESTION, "--max-new-tokens", str(config.max_new_tokens),
               "--queue-size", str(config.queue_size), *config.extra_args]
    if config.bundle is not None:
        command += ["--bundle", str(config.bundle)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    deadline = started + config.max_seconds
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stderr is not None
    pipe = process.stderr
    stderr: list[str] = []
    clients = None
    try:
        while not any("web view" in line for line in stderr):
            line = pipe.readline()
            if not line:
                raise RuntimeError(f"serve exited early ({process.wait(10)}): {''.join(stderr)}")
            stderr.append(line)
        threading.Thread(target=lambda: stderr.extend(iter(pipe.readline, "")), daemon=True).start()
        base = next(line for line in stderr if "web view" in line).split("web view ")[1].split("/ ")[0]
        proc = Proc(process.pid)

        def frames() -> int:
            return int(metric(_http("GET", f"{base}/metrics")[1].decode(), "crome_frames_captured_total"))

        def wait(predicate, what: str) -> None:
            while not predicate():
                if process.poll() is not None:
                    raise RuntimeError(f"serve exited with {process.returncode}: {''.join(stderr)}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not within {config.max_seconds:.0f} s: {what}")
                time.sleep(0.2)

        wait(lambda: _health(base) == 200, "/health -> 200")
        ready_s = time.monotonic() - started
        clients = Clients(base, config.clients, config.max_new_tokens)
        wait(lambda: frames() >= warmup, f"{warmup} warm-up frames")
        at_warmup = {**_quiet_sample(proc, clients), "frames": frames()}
        peak = dict(at_warmup)

        timeline: list[tuple[int, int]] = []  # (frames, rss_kib), about one a second

        def not_done() -> bool:
            sample, count = proc.sample(), frames()
            for key in ("rss_kib", "threads", "fds"):
                peak[key] = max(peak[key], sample[key])
            if not timeline or time.monotonic() - last[0] >= 1.0:
                timeline.append((count, sample["rss_kib"]))
                last[0] = time.monotonic()
            return count >= config.frames

        last = [0.0]

        wait(not_done, f"{config.frames} frames")
        at_end = {**_quiet_sample(proc, clients), "frames": frames()}
        clients.stop()
        text = _http("GET", f"{base}/metrics")[1].decode()
        watch_answers = sum(float(line.split()[-1]) for line in text.splitlines()
                            if line.startswith("crome_answers_total{") and 'source="watch"' in line)
        process.send_signal(getattr(signal, f"SIG{config.stop_signal}"))
        exit_code = process.wait(60)
    finally:
        if clients is not None:
            clients.stop()
        if process.poll() is None:
            process.kill()
            process.wait(10)
    time.sleep(0.1)
    requests = sum(clients.statuses.values())
    return {
        "config": {**asdict(config), "bundle": str(config.bundle) if config.bundle else None, "warmup": warmup},
        "command": " ".join(command), "machine": machine(), "ready_s": round(ready_s, 2),
        "seconds": round(time.monotonic() - started, 1), "exit_code": exit_code,
        "stderr_traceback": any("Traceback" in line for line in stderr), "stderr": "".join(stderr),
        "traceback": _first_traceback(stderr),
        "requests": requests, "statuses": clients.statuses, "lost": requests - clients.statuses.get("200", 0)
        - clients.statuses.get("429", 0), "connection_errors": clients.errors[:5],
        "latency_ms": {f"p{q}": _round(percentile(clients.latencies_ms, q)) for q in (50, 90, 99)},
        "watch_answers": watch_answers, "warmup": at_warmup, "end": at_end, "peak": peak,
        "rss_timeline": timeline,
        "rss_growth": round(at_end["rss_kib"] / at_warmup["rss_kib"] - 1, 4),
    }


def _first_traceback(lines: list[str]) -> str | None:
    start = next((i for i, line in enumerate(lines) if "Traceback" in line), None)
    return None if start is None else "".join(lines[max(0, start - 2):start + 40])


def _health(base: str) -> int:
    try:
        return _http("GET", f"{base}/health", timeout=10)[0]
    except OSError:
        return 0


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{platform.node()}: {cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    defaults = SoakConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--frames", type=int, default=defaults.frames)
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--demo-fps", type=float, default=defaults.demo_fps)
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--queue-size", type=int, default=defaults.queue_size)
    parser.add_argument("--max-seconds", type=float, default=defaults.max_seconds)
    parser.add_argument("--signal", choices=("INT", "TERM"), default=defaults.stop_signal)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    result = soak(SoakConfig(bundle=args.bundle, frames=args.frames, warmup=args.warmup, demo_fps=args.demo_fps,
                             clients=args.clients, queue_size=args.queue_size, max_seconds=args.max_seconds,
                             stop_signal=args.signal))
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    ok = result["lost"] == 0 and result["exit_code"] == 0 and result["rss_growth"] < 0.05 and \
        result["end"]["threads"] <= result["warmup"]["threads"] and result["end"]["fds"] <= result["warmup"]["fds"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
