"""Prometheus metrics (`GET /metrics`), in the server's own registry (two servers in one process never mix).

    crome_stage_seconds{stage}                   per-answer time in each engine stage (decode: all steps)
    crome_answer_seconds{source}                 queued -> answered (source: api | watch)
    crome_queue_wait_seconds{source}             queued -> started
    crome_time_to_first_token_seconds{source}
    crome_frame_age_seconds{source}              capture -> answered, camera frames only
    crome_tokens_generated_total{source}
    crome_answers_total{source, finish_reason}
    crome_requests_total{endpoint, status}       HTTP responses
    crome_first_token_margin_ratio{adapter, source}   the first answer token's top-2 probability margin
                                                 (crome_runtime.confidence; adapter "none": the frozen backbone)
    crome_watch_low_confidence_total{adapter, dropped}   watch answers under serve --min-margin (dropped: not
                                                 published, --drop-below-margin)
    crome_frames_captured_total / _answered_total / _dropped_total, crome_camera_reconnects_total,
    crome_queue_depth{lane}, crome_engine_ready, crome_camera_delivering   (read when scraped)

Not here: what produces the numbers (worker.py, reader.py, app.py).
"""
from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from crome_runtime.serve.worker import Job, JobResult

# seconds: 1 ms .. 60 s, roughly x2.5 per bucket
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# a probability margin, 0..1: finer near both ends, where "unsure" and "certain" are told apart
MARGIN_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
ENDPOINTS = ("/", "/health", "/metrics", "/v1/models", "/v1/frame.jpg", "/v1/chat/completions", "/v1/watch",
             "/v1/watch/prompts", "/v1/adapters", "/v1/adapters/reload")


class Metrics:
    def __init__(self, live: Callable[[], dict] | None = None):
        """live() -> the counters and gauges other parts keep (read at scrape time): frames_captured,
        frames_answered, frames_dropped, camera_reconnects, queue_depth {lane: n}, engine_ready, camera_delivering."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.stage = Histogram("crome_stage_seconds", "Time in each engine stage per answer", ["stage"],
                               buckets=LATENCY_BUCKETS, registry=r)
        self.answer = Histogram("crome_answer_seconds", "Queued to answered", ["source"], buckets=LATENCY_BUCKETS,
                                registry=r)
        self.queue_wait = Histogram("crome_queue_wait_seconds", "Queued to started", ["source"],
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("crome_time_to_first_token_seconds", "Answer start to first token", ["source"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.frame_age = Histogram("crome_frame_age_seconds", "Camera frame age when its answer was complete",
                                   ["source"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("crome_tokens_generated", "Tokens generated", ["source"], registry=r)
        self.answers = Counter("crome_answers", "Answers by how they ended", ["source", "finish_reason"], registry=r)
        self.requests = Counter("crome_requests", "HTTP responses", ["endpoint", "status"], registry=r)
        self.adapter_answer = Histogram("crome_adapter_answer_seconds", "Queued to answered, by the adapter that "
                                        "answered ('none': the frozen backbone alone)", ["adapter", "source"],
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.margin = Histogram("crome_first_token_margin_ratio", "Top-1 minus top-2 probability of the first answer "
                                "token, by the adapter that answered", ["adapter", "source"], buckets=MARGIN_BUCKETS,
                                registry=r)
        self.low = Counter("crome_watch_low_confidence", "Watch answers under the --min-margin threshold",
                           ["adapter", "dropped"], registry=r)
        if live is not None:
            r.register(_Live(live))

    def observe(self, job: Job, result: JobResult) -> None:
        source, answer = job.source, result.answer
        for stage, ms in result.stages_ms().items():
            self.stage.labels(stage).observe(ms / 1e3)
        self.answer.labels(source).observe(result.latency_ms / 1e3)
        self.queue_wait.labels(source).observe(result.queue_ms / 1e3)
        if answer.ttft_ms is not None:
            self.ttft.labels(source).observe(answer.ttft_ms / 1e3)
        if result.frame is not None:
            self.frame_age.labels(source).observe(result.frame["age_ms"] / 1e3)
        self.tokens.labels(source).inc(len(answer.token_ids))
        self.answers.labels(source, answer.finish_reason).inc()
        self.adapter_answer.labels(answer.adapter or "none", source).observe(result.latency_ms / 1e3)
        if answer.confidence.first_token_margin is not None:
            self.margin.labels(answer.adapter or "none", source).observe(answer.confidence.first_token_margin)

    def low_confidence(self, adapter: str | None, dropped: bool) -> None:
        self.low.labels(adapter or "none", "true" if dropped else "false").inc()

    def request(self, path: str, status: int) -> None:
        endpoint = path if path in ENDPOINTS else ("/v1/watch/prompts" if path.startswith("/v1/watch/prompts/")
                                                   else "/static" if path.startswith("/static/") else "other")
        self.requests.labels(endpoint, str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Live:
    """Counters and gauges whose values live elsewhere, read when /metrics is scraped."""

    def __init__(self, read: Callable[[], dict]):
        self._read = read

    def collect(self):
        values = self._read()
        for name, help_text in (("frames_captured", "Camera frames read"),
                                ("frames_answered", "Distinct camera frames an answer was about"),
                                ("frames_dropped", "Camera frames replaced by a newer one before any answer"),
                                ("camera_reconnects", "Times a lost camera was opened again")):
            yield CounterMetricFamily(f"crome_{name}", help_text, value=values.get(name, 0))
        depth = GaugeMetricFamily("crome_queue_depth", "Jobs waiting for the engine", labels=["lane"])
        for lane, n in values.get("queue_depth", {}).items():
            depth.add_metric([lane], n)
        yield depth
        yield GaugeMetricFamily("crome_engine_ready", "1 when the engine is loaded", value=values.get("engine_ready", 0))
        yield GaugeMetricFamily("crome_camera_delivering", "1 when the camera delivers frames",
                                value=values.get("camera_delivering", 0))
