"""Load and soak, quick form (the full one is `python benchmarks/soak_serve.py`, results in benchmarks/RESULTS.md),
and the process-level faults of `crome-edge serve`: ~1,000 frames through the real `serve --camera demo` process
on the tiny bundle with a watch prompt and concurrent API clients (every request answered or 429, none lost;
memory flat after warm-up, no more threads or open files, read from /proc of the server process), stopped
with SIGINT; and `--events /dev/full` (every write fails with ENOSPC): the server serves on, says so once on
stderr and in /health, and stops on SIGTERM with exit 0."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.bundles import tiny_bundle
from tests.support.serve import QUESTION, get, health, served_base, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from soak_serve import SoakConfig, soak  # noqa: E402

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc (Linux)")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)["bundle"]


def test_quick_soak_loses_nothing_and_holds_memory_threads_and_files(bundle):
    result = soak(SoakConfig(bundle=bundle, frames=1000, warmup=300, demo_fps=150.0, clients=3, queue_size=2,
                             max_seconds=240.0, stop_signal="INT"))
    statuses = result["statuses"]
    assert result["lost"] == 0 and set(statuses) <= {"200", "429"}, (statuses, result["connection_errors"])
    assert statuses.get("200", 0) >= 3 and result["latency_ms"]["p99"] is not None
    assert result["watch_answers"] >= 1 and result["end"]["frames"] >= 1000
    # SIGINT (like SIGTERM) is a clean stop: exit 0, no traceback (a first SIGINT used to force-exit uvicorn)
    assert result["exit_code"] == 0 and not result["traceback"], result["traceback"]
    assert "stopped" in result["stderr"]
    warm, end = result["warmup"], result["end"]
    assert result["rss_growth"] < 0.05, result["rss_timeline"]  # the bound after warm-up
    assert end["threads"] <= warm["threads"] and end["fds"] <= warm["fds"], (warm, end)


def test_events_on_a_full_disk_serve_on_and_say_so_once(bundle, tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "crome_cli", "serve", "--bundle", str(bundle), "--camera", "demo", "--demo-fps",
         "30", "--port", "0", "--threads", "1", "--watch", QUESTION, "--max-new-tokens", "3", "--events", "/dev/full"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        base, lines = served_base(process)
        wait_for(lambda: health(base)[0] == 200, "/health -> 200 with --events /dev/full")
        wait_for(lambda: health(base)[1]["watch"][0]["answers"] >= 3, "three watch answers after the failed write")
        report = health(base)[1]
        assert "No space left on device" in report["events_file"]["error"], report["events_file"]
        status, _, body = get(f"{base}/v1/models")
        assert status == 200 and json.loads(body)["data"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        text = "".join(lines) + process.stderr.read()
        assert text.count("cannot write the events file /dev/full: No space left on device") == 1, text
        assert "Traceback" not in text and "stopped" in text
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        process.stderr.close()
