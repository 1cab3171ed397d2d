"""Serving discipline: N concurrent clients plus the watch loop with none lost (every request answered or
refused with 429 + Retry-After), the fair queue's turn-taking, cancellation of an answer in progress, and a
client that leaves mid-stream."""
import threading

import httpx
import pytest
from tests.support.bundles import colour_image, tiny_bundle
from tests.support.serve import QUESTION, colour_source, get, health, png_data_uri, serving, wait_for

from crome_runtime.engine import EngineConfig, GenerationOptions
from crome_runtime.serve.config import Limits
from crome_runtime.serve.fairqueue import FairQueue, QueueClosed, QueueFull
from crome_runtime.serve.server import Server
from crome_runtime.serve.worker import EngineWorker, Job

CLIENTS = 12


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)["bundle"]


def test_fair_queue_takes_lanes_in_turn_and_refuses_when_full():
    queue = FairQueue({"api": 2, "watch": 3})
    for i in range(3):
        queue.put("watch", f"w{i}")
    queue.put("api", "a0")
    queue.put("api", "a1")
    with pytest.raises(QueueFull):
        queue.put("api", "a2")
    with pytest.raises(QueueFull):
        queue.put("watch", "w3", block=True, timeout=0.01)
    assert queue.depth() == {"api": 2, "watch": 3}
    order = [queue.get(timeout=0) for _ in range(5)]
    assert order == ["a0", "w0", "a1", "w1", "w2"]  # a request waits at most one watch job
    assert queue.get(timeout=0) is None
    queue.put("api", "x")
    assert queue.remove("x") and not queue.remove("x")
    queue.put("api", "left")
    assert queue.close() == ["left"]
    with pytest.raises(QueueClosed):
        queue.put("api", "late")


def test_concurrent_clients_and_the_watch_loop_lose_nothing(bundle):
    red = png_data_uri(colour_image("red", 11))
    with serving(bundle, colour_source(), watch=[QUESTION], limits=Limits(queue_size=2)) as (server, base):
        watched_before = health(base)[1]["watch"][0]["answers"]
        results: list[httpx.Response] = []
        lock, start = threading.Lock(), threading.Barrier(CLIENTS)

        def client(i: int) -> None:
            body = {"messages": [{"role": "user", "content": [
                {"type": "text", "text": QUESTION},
                {"type": "image_url", "image_url": {"url": red if i % 2 else "camera"}}]}], "stream": i % 3 == 0}
            start.wait()
            response = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)
            response.read()
            with lock:
                results.append(response)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(results) == CLIENTS  # every client got a response
        answered = [r for r in results if r.status_code == 200]
        refused = [r for r in results if r.status_code == 429]
        assert len(answered) + len(refused) == CLIENTS, [r.status_code for r in results]
        assert answered, "at least the first request in line is answered"
        for r in refused:
            assert r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "rate_limit_error"
        for r in answered:
            if r.headers["content-type"].startswith("text/event-stream"):
                assert r.text.rstrip().endswith("data: [DONE]") and '"finish_reason": "stop"' in r.text
            else:
                assert r.json()["choices"][0]["message"]["content"] in ("red", "green", "blue")
        wait_for(lambda: health(base)[1]["watch"][0]["answers"] > watched_before + 1, "the watch loop to go on")
        metrics = get(f"{base}/metrics")[2].decode()

        def count(status: str) -> float:
            label = f'crome_requests_total{{endpoint="/v1/chat/completions",status="{status}"}}'
            return float(next((line.split()[-1] for line in metrics.splitlines() if line.startswith(label)), 0))

        assert count("200") == len(answered) and count("429") == len(refused)
        assert server.queue.depth() == {"api": 0, "watch": server.queue.depth()["watch"]}


def test_cancel_stops_an_answer_between_tokens(bundle):
    """The worker checks cancellation after every piece: cancelling at the first piece ends the answer early."""
    from crome_runtime.engine import Engine

    events, done = [], threading.Event()
    worker = EngineWorker(lambda: Engine.load(bundle, EngineConfig(threads=1, spin=False)),
                          FairQueue({"api": 4, "watch": 1}), slot=None)
    worker.start()
    try:
        wait_for(lambda: worker.state == "ready", "the engine to load")
        image = colour_image("red", 5)

        def run(cancel_at_first: bool) -> list:
            events.clear()
            done.clear()
            job_box = []

            def sink(kind, value):
                events.append((kind, value))
                if kind == "piece" and cancel_at_first:
                    job_box[0].cancel()
                if kind in ("done", "error"):
                    done.set()

            job = Job("Describe it.", GenerationOptions(max_new_tokens=12), "api", sink, image)
            job_box.append(job)
            worker.submit(job)
            assert done.wait(60)
            return list(events)

        full = run(False)
        assert full[-1][0] == "done" and full[-1][1].answer.finish_reason in ("length", "stop")
        full_tokens = len(full[-1][1].answer.token_ids)
        assert full_tokens >= 3, "the test needs an answer of several tokens"
        cut = run(True)
        answer = cut[-1][1].answer
        assert cut[-1][0] == "done" and answer.finish_reason == "cancelled"
        assert [k for k, _ in cut].count("piece") == 1 and len(answer.token_ids) < full_tokens
    finally:
        worker.stop()


def test_a_client_that_leaves_mid_stream_leaves_the_server_serving(bundle):
    red = png_data_uri(colour_image("red", 2))
    with serving(bundle, colour_source()) as (server, base):
        body = {"messages": [{"role": "user", "content": "Describe it at length."}], "stream": True, "max_tokens": 1000}
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as response:
            assert response.status_code == 200
            next(response.iter_lines())  # the first chunk, then hang up
        # the answer ends (cancelled when the server noticed in time, else at the context's end) and is counted
        wait_for(lambda: 'crome_answers_total{finish_reason=' in get(f"{base}/metrics")[2].decode()
                 and server.worker.current is None, "the abandoned answer to end")
        metrics = get(f"{base}/metrics")[2].decode()
        assert 'source="api"' in metrics
        follow_up = httpx.post(f"{base}/v1/chat/completions", timeout=60, json={"messages": [{"role": "user", "content": [
            {"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": red}}]}]})
        assert follow_up.json()["choices"][0]["message"]["content"] == "red"


class SlowLoadingServer(Server):
    """The real server whose engine load waits for the test (so "loading" can be looked at, not raced)."""

    release = None  # threading.Event, set per test
    fail = False

    def _load(self):
        assert self.release.wait(60)
        if self.fail:
            raise RuntimeError("the bundle's decoder does not load (test)")
        return super()._load()


def test_health_is_503_while_loading_and_requests_wait_for_it(bundle):
    SlowLoadingServer.release, SlowLoadingServer.fail = threading.Event(), False
    red = png_data_uri(colour_image("red", 1))
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": QUESTION},
                                                      {"type": "image_url", "image_url": {"url": red}}]}]}
    with serving(bundle, ready=False, server_class=SlowLoadingServer) as (server, base):
        status, report = wait_for(lambda: (lambda h: h if h[0] else None)(health(base)), "/health to answer")
        assert status == 503 and report["status"] == "loading" and report["engine"]["state"] == "loading"
        early = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)
        assert early.status_code == 503 and early.headers["retry-after"] == "2"
        assert "still loading" in early.json()["error"]["message"]
        SlowLoadingServer.release.set()
        wait_for(lambda: health(base)[0] == 200, "/health -> 200 once loaded")
        answer = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)
        assert answer.json()["choices"][0]["message"]["content"] == "red"


def test_an_engine_that_fails_to_load_stops_the_server_saying_why(bundle):
    SlowLoadingServer.release, SlowLoadingServer.fail = threading.Event(), True
    with serving(bundle, ready=False, server_class=SlowLoadingServer) as (server, base):
        SlowLoadingServer.release.set()
        wait_for(lambda: server.fatal_error, "the load failure to be recorded")
        assert "decoder does not load" in server.fatal_error and server.worker.state == "failed"
        wait_for(lambda: server._stopped.is_set(), "the server to stop by itself")


def test_the_request_path_points_one_way_and_every_job_runs_through_one_stream():
    """The parts (server, worker, watch loop, job streams, ...) import nothing of HTTP: the routes (app.py), their
    checks (guard.py) and uvicorn (host.py) sit on top. Chat completions and the watch loop both run their jobs
    through jobs.submit; nothing else hands a job to the worker."""
    import ast
    from pathlib import Path

    from crome_runtime.serve import app

    serve = Path(app.__file__).parent
    http = {"crome_runtime.serve.app", "crome_runtime.serve.guard", "crome_runtime.serve.host", "fastapi", "starlette",
            "uvicorn"}
    submits = {}
    for path in sorted(serve.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        if path.stem in ("server", "worker", "watch", "jobs", "events", "reader", "fairqueue", "metrics", "config"):
            assert not {m for m in imported if m.split(".")[0] in http or m in http}, (path.name, imported & http)
        calls = [n.func for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
        submits[path.stem] = [ast.unparse(f) for f in calls if f.attr == "submit"]
    assert submits["app"] == ["jobs.submit"] and submits["watch"] == ["jobs.submit"], submits
    assert [stem for stem, calls in submits.items() if any(c.endswith("worker.submit") for c in calls)] == ["jobs"]
