"""The runtime profiler: stage statistics, run metrics (TTFT, tokens/s) and the Chrome-trace format."""
import json
from time import perf_counter_ns

import pytest

from crome_runtime.profiler import STAGES, Profiler, format_summary, now


def _fake_run(profiler: Profiler, decode_ms: list[float]) -> None:
    """A run whose decode steps last the given times (recorded with back-dated starts)."""
    profiler.begin_run("answer", perf_counter_ns() - int((sum(decode_ms) + 3) * 1e6))  # before the back-dated stages
    profiler.record("vision", perf_counter_ns() - 2_000_000)
    profiler.token()
    for ms in decode_ms:
        profiler.record("decode", perf_counter_ns() - int(ms * 1e6), {"step": 1})
        profiler.token()
    profiler.end_run({"prompt": "q"})


def test_summary_percentiles_and_run_metrics():
    profiler = Profiler()
    _fake_run(profiler, [float(i) for i in range(1, 101)])
    summary = profiler.summary()
    decode = summary["stages_ms"]["decode"]
    assert decode["count"] == 100
    assert decode["p50"] == pytest.approx(50.5, abs=0.05) and decode["p90"] == pytest.approx(90.1, abs=0.05)
    assert decode["p99"] == pytest.approx(99.01, abs=0.05)
    assert list(summary["stages_ms"]) == [s for s in STAGES if s in summary["stages_ms"]]  # pipeline order
    assert summary["runs"] == 1 and summary["tokens"] == 101
    assert summary["ttft_ms"]["count"] == 1 and summary["decode_tokens_per_s"]["count"] == 1
    assert summary["profiler"]["records"] == 101 and summary["profiler"]["self_ms"] > 0
    assert "decode" in format_summary(summary) and "self-cost" in format_summary(summary)


def test_chrome_trace_is_trace_event_format(tmp_path):
    profiler = Profiler()
    _fake_run(profiler, [1.0, 2.0])
    summary_path, trace_path = profiler.write(tmp_path / "out.json", {"command": "test"})
    assert trace_path.name == "out.trace.json"
    summary = json.loads(summary_path.read_text())
    assert summary["trace"] == "out.trace.json" and summary["command"] == "test"
    trace = json.loads(trace_path.read_text())
    complete = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert {e["name"] for e in complete} == {"vision", "decode", "answer"}
    for event in complete:
        assert {"name", "ph", "ts", "dur", "pid", "tid"} <= set(event)
        assert isinstance(event["pid"], int) and isinstance(event["tid"], int) and event["dur"] >= 0
    decode = [e for e in complete if e["name"] == "decode"]
    assert [round(e["dur"] / 1000) for e in decode] == [1, 2]  # µs
    answer = next(e for e in complete if e["name"] == "answer")
    for event in complete:  # every stage nests inside its run on the same thread (Perfetto draws it so)
        assert answer["ts"] <= event["ts"] and event["ts"] + event["dur"] <= answer["ts"] + answer["dur"] + 1e-3
    assert any(e["ph"] == "M" and e["name"] == "process_name" for e in trace["traceEvents"])


def test_events_are_bounded_and_reset_clears():
    profiler = Profiler(max_events=10)
    _fake_run(profiler, [0.1] * 50)
    assert len(profiler.events) == 10 and profiler.records == 51
    profiler.reset()
    assert not profiler.events and not profiler.runs and profiler.events.maxlen == 10


def test_a_failed_profile_write_leaves_the_old_files_and_no_partial_one(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    profiler = Profiler()
    profiler.begin_run("answer")
    profiler.record("vision", now())
    profiler.end_run()
    out = tmp_path / "prof.json"
    profiler.write(out)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_write_text = Path.write_text

    def disk_full(self, text, *args, **kwargs):  # the trace (the second file) hits a full disk half-way
        if self.name.startswith(".prof.trace.json"):
            real_write_text(self, text[: len(text) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError):
        profiler.write(out)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "prof.json"} == \
        {k: v for k, v in before.items() if k != "prof.json"}  # the old trace, whole; no temporary file
    json.loads((tmp_path / "prof.trace.json").read_text())
