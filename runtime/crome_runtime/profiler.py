"""The runtime's profiler: every stage timed with a monotonic clock, summarised and written as a Chrome trace.

Stages (docs/architecture.md §5): capture, preprocess, vision, adapter_visual, tokenize, adapter_text, prefill,
decode (one event per step), sample, detokenize. A *run* is one answer: time-to-first-token (run start
-> first token sampled), decode tokens/s ((tokens - 1) / (last token - first token)) and end-to-end
tokens/s. `summary()` gives per-stage count / mean / p50 / p90 / p99 in ms; `chrome_trace()` gives the
Trace Event Format ("X" complete events, ts/dur in µs, pid/tid) that Perfetto and chrome://tracing open.

Cheap by construction: a record is one perf_counter_ns() read, one tuple appended to a bounded deque and
one dict update; the profiler also times itself (`self_ns`), so its own cost is reported next to the run
time it measured. Not thread-safe: one profiler per engine, used from the engine's thread.
"""
from __future__ import annotations

import json
import os
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter_ns

import numpy as np

from crome_runtime.atomic import atomic_path

STAGES = ("capture", "preprocess", "vision", "adapter_visual", "tokenize", "adapter_text", "prefill", "decode",
          "sample", "confidence", "detokenize", "candidates")
MAX_EVENTS = 200_000  # ~20 MB: a long-running server keeps the newest events only
MAX_RUNS = 20_000  # and the newest runs


def now() -> int:
    return perf_counter_ns()


@dataclass
class Run:
    """One answer's timeline."""

    label: str
    start_ns: int
    first_token_ns: int | None = None
    last_token_ns: int | None = None
    end_ns: int | None = None
    tokens: int = 0
    stage_ns: dict[str, int] = field(default_factory=dict)  # stage -> total ns in this run

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_token_ns is None else (self.first_token_ns - self.start_ns) / 1e6

    @property
    def total_ms(self) -> float | None:
        return None if self.end_ns is None else (self.end_ns - self.start_ns) / 1e6

    @property
    def decode_tokens_per_s(self) -> float | None:
        if (self.tokens < 2 or self.first_token_ns is None or self.last_token_ns is None
                or self.last_token_ns <= self.first_token_ns):
            return None
        return (self.tokens - 1) / ((self.last_token_ns - self.first_token_ns) / 1e9)

    @property
    def tokens_per_s(self) -> float | None:
        if not self.tokens or self.end_ns is None or self.end_ns <= self.start_ns:
            return None
        return self.tokens / ((self.end_ns - self.start_ns) / 1e9)

    def timings_ms(self) -> dict[str, float]:
        return {stage: ns / 1e6 for stage, ns in self.stage_ns.items()}


class Profiler:
    def __init__(self, max_events: int = MAX_EVENTS, max_runs: int = MAX_RUNS):
        self.origin_ns = perf_counter_ns()
        self.events: deque = deque(maxlen=max_events)  # (name, start_ns, dur_ns, tid, args)
        self.runs: deque[Run] = deque(maxlen=max_runs)
        self.current: Run | None = None
        self.records = 0
        self.self_ns = 0  # time spent inside record() itself
        self.pid = os.getpid()
        self._tid = threading.get_native_id()

    # --- recording ----------------------------------------------------------------------------------
    def record(self, name: str, start_ns: int, args: dict | None = None) -> int:
        """Closes the stage `name` that began at `start_ns` (a now() value); returns the end time."""
        end = perf_counter_ns()
        duration = end - start_ns
        self.events.append((name, start_ns, duration, self._tid, args))
        run = self.current
        if run is not None:
            run.stage_ns[name] = run.stage_ns.get(name, 0) + duration
        self.records += 1
        self.self_ns += perf_counter_ns() - end
        return end

    def begin_run(self, label: str = "answer", start_ns: int | None = None) -> Run:
        self._tid = threading.get_native_id()
        self.current = Run(label, perf_counter_ns() if start_ns is None else start_ns)
        return self.current

    def token(self) -> None:
        """A token was sampled (the first one sets time-to-first-token)."""
        run = self.current
        if run is not None:
            t = perf_counter_ns()
            if run.first_token_ns is None:
                run.first_token_ns = t
            run.last_token_ns = t
            run.tokens += 1

    def end_run(self, args: dict | None = None) -> Run | None:
        run, self.current = self.current, None
        if run is not None:
            run.end_ns = perf_counter_ns()
            self.events.append((run.label, run.start_ns, run.end_ns - run.start_ns, self._tid, args))
            self.runs.append(run)
        return run

    def reset(self) -> None:
        max_events, max_runs = self.events.maxlen, self.runs.maxlen
        assert max_events is not None and max_runs is not None  # __init__ bounds both
        Profiler.__init__(self, max_events, max_runs)

    # --- results ------------------------------------------------------------------------------------
    def stage_samples_ms(self) -> dict[str, list[float]]:
        samples: dict[str, list[float]] = {}
        labels = {run.label for run in self.runs}
        for name, _, duration, _, _ in self.events:
            if name not in labels:
                samples.setdefault(name, []).append(duration / 1e6)
        return samples

    def summary(self) -> dict:
        runs = [r for r in self.runs if r.end_ns is not None]
        stages = {name: _stats(values) for name, values in self.stage_samples_ms().items()}
        ordered = {name: stages[name] for name in STAGES if name in stages}
        ordered.update({name: value for name, value in stages.items() if name not in ordered})
        run_ns = sum(r.end_ns - r.start_ns for r in runs if r.end_ns is not None)
        return {
            "runs": len(runs),
            "tokens": sum(r.tokens for r in runs),
            "stages_ms": ordered,
            "ttft_ms": _stats([r.ttft_ms for r in runs if r.ttft_ms is not None]),
            "total_ms": _stats([ms for r in runs if (ms := r.total_ms) is not None]),
            "decode_tokens_per_s": _stats([r.decode_tokens_per_s for r in runs if r.decode_tokens_per_s]),
            "tokens_per_s": _stats([r.tokens_per_s for r in runs if r.tokens_per_s]),
            "profiler": {"records": self.records, "self_ms": self.self_ns / 1e6,
                         "fraction_of_runs": (self.self_ns / run_ns) if run_ns else None},
        }

    def chrome_trace(self, process_name: str = "crome-edge run", metadata: dict | None = None) -> dict:
        events = [
            {"name": "process_name", "ph": "M", "pid": self.pid, "tid": 0, "args": {"name": process_name}},
        ]
        for tid in sorted({e[3] for e in self.events}):
            events.append({"name": "thread_name", "ph": "M", "pid": self.pid, "tid": tid, "args": {"name": "engine"}})
        labels = {run.label for run in self.runs}
        for name, start, duration, tid, args in self.events:
            event = {"name": name, "cat": "run" if name in labels else "stage", "ph": "X", "pid": self.pid, "tid": tid,
                     "ts": (start - self.origin_ns) / 1e3, "dur": duration / 1e3}
            if args:
                event["args"] = args
            events.append(event)
        return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": metadata or {}}

    def write(self, path: str | Path, metadata: dict | None = None) -> tuple[Path, Path]:
        """Writes the summary JSON to `path` and the Chrome trace next to it (`<stem>.trace.json`)."""
        path = Path(path)
        trace_path = trace_path_of(path)
        summary = {**(metadata or {}), **self.summary(), "trace": trace_path.name}
        for target, text in ((path, json.dumps(summary, indent=2) + "\n"),
                             (trace_path, json.dumps(self.chrome_trace(metadata=metadata)))):
            with atomic_path(target) as tmp:  # a full disk leaves the old file (or none), never a truncated one
                tmp.write_text(text)
        return path, trace_path


def trace_path_of(path: Path) -> Path:
    """Where write() puts the Chrome trace of a summary written to `path`: <stem>.trace.json beside it."""
    return path.with_name(path.name.removesuffix(".json") + ".trace.json")


def check_profile_output(path: Path, what: str = "--profile", inputs=(), within=()) -> None:
    """OutputError (before any work) when the summary or its trace could not be written as files
    (crome_runtime.outputs.check_output's rules)."""
    from crome_runtime.outputs import check_output

    check_output(path, what, inputs, within=within)
    check_output(trace_path_of(Path(path)), f"{what}'s Chrome trace", inputs, within=within)


def _stats(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    a = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"count": int(a.size), "mean": float(a.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "min": float(a.min()), "max": float(a.max()), "total": float(a.sum())}


def format_summary(summary: dict) -> str:
    """The per-stage table `crome-edge run --profile` prints."""
    lines = [f"{'stage':<16}{'count':>7}{'mean ms':>10}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}"]
    for name, s in summary["stages_ms"].items():
        lines.append(f"{name:<16}{s['count']:>7}{s['mean']:>10.3f}{s['p50']:>10.3f}{s['p90']:>10.3f}{s['p99']:>10.3f}")
    for key, label, unit in (("ttft_ms", "time to first token", "ms"), ("decode_tokens_per_s", "decode", "tokens/s"),
                             ("tokens_per_s", "end to end", "tokens/s")):
        s = summary[key]
        if s.get("count"):
            lines.append(f"{label}: p50 {s['p50']:.2f} {unit}, p90 {s['p90']:.2f}, p99 {s['p99']:.2f} "
                         f"({s['count']} runs)")
    p = summary["profiler"]
    if p["fraction_of_runs"] is not None:
        lines.append(f"profiler self-cost: {p['self_ms']:.3f} ms over {p['records']} records "
                     f"= {100 * p['fraction_of_runs']:.3f}% of run time")
    return "\n".join(lines)
