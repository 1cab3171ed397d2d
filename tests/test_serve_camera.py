"""The server's camera side with real sources: an MJPEG-over-HTTP camera that the test stops and restarts
(loss, /health saying so, reconnect, answers again), a video file through the real `crome-edge serve`
process (looped, watch events in --events, SIGTERM -> exit 0), a file that ends, and cameras or ports that
cannot be used at start (clear errors)."""
import json
import signal
import socket
import subprocess
import sys

import httpx
import pytest
from tests.support.bundles import colour_image, tiny_bundle
from tests.support.serve import QUESTION, MjpegCamera, get, health, png_data_uri, served_base, serving, wait_for
from tests.support.torch_blocked import torch_blocked_env

from crome_cli.main import main
from crome_edge.synth.camera import write_video
from crome_runtime.serve.config import CameraConfig
from crome_runtime.serve.sources import has_gstreamer, parse_source

FAST_RECONNECT = CameraConfig(backoff_initial_s=0.1, backoff_max_s=0.4, stale_after_s=2.0, read_timeout_ms=3000,
                              open_timeout_ms=3000)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)["bundle"]


def _ask(base, image_url="camera"):
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": QUESTION},
                                                      {"type": "image_url", "image_url": {"url": image_url}}]}]}
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)


def _watch_events(server) -> list[dict]:
    return [e for e in server.hub.recent if e["type"] == "watch"]


def test_a_network_camera_that_drops_is_reconnected_while_the_server_serves(bundle):
    camera = MjpegCamera().start()
    try:
        source = parse_source(camera.url, FAST_RECONNECT)
        assert source.kind == "stream"
        with serving(bundle, source, watch=[QUESTION], camera_config=FAST_RECONNECT) as (server, base):
            assert _ask(base).json()["choices"][0]["message"]["content"] in ("red", "green", "blue")
            wait_for(lambda: _watch_events(server), "a watch answer before the loss")

            camera.stop()  # the camera goes away mid-run
            status, report = wait_for(lambda: (lambda h: h if h[0] == 503 else None)(health(base)),
                                      "/health -> 503 after the camera stopped")
            assert report["camera"]["state"] in ("reconnecting", "live") and not report["camera"]["delivering"]
            refused = wait_for(lambda: (lambda r: r if r.status_code == 503 else None)(_ask(base)),
                               "a camera question refused while the camera is down")
            assert refused.json()["error"]["code"] == "camera_unavailable" and refused.headers["retry-after"] == "1"
            upload = _ask(base, png_data_uri(colour_image("blue", 3)))  # the server itself still answers
            assert upload.status_code == 200 and upload.json()["choices"][0]["message"]["content"] == "blue"
            wait_for(lambda: health(base)[1]["camera"]["state"] == "reconnecting", "the reader to retry")
            last_before = health(base)[1]["camera"]["last_frame_id"]

            camera.start()  # back on the same port
            wait_for(lambda: health(base)[0] == 200, "/health -> 200 after the camera came back")
            report = health(base)[1]
            assert report["camera"]["reconnects"] >= 1 and report["camera"]["last_frame_id"] > last_before
            answer = _ask(base).json()
            assert answer["timings"]["frame_id"] > last_before
            wait_for(lambda: any(e["frame_id"] > last_before for e in _watch_events(server)),
                     "a watch answer about a frame after the reconnect")
            states = [e["state"] for e in server.hub.recent if e["type"] == "camera"]
            assert "reconnecting" in states and states[-1] == "live"
            metrics = get(f"{base}/metrics")[2].decode()
            reconnects = float(next(line.split()[-1] for line in metrics.splitlines()
                                    if line.startswith("crome_camera_reconnects_total ")))
            assert reconnects >= 1
    finally:
        camera.stop()


def test_serve_command_on_a_looped_video_file_torch_free_and_sigterm(bundle, tmp_path):
    video = tmp_path / "belt.avi"
    write_video(video, frames=12, fps=15.0, size=(96, 72), seed=3)
    events = tmp_path / "events.jsonl"
    env = torch_blocked_env(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "crome_cli", "serve", "--bundle", str(bundle), "--camera", str(video), "--loop",
         "--port", "0", "--threads", "1", "--watch", QUESTION, "--max-new-tokens", "4", "--events", str(events),
         "--profile", str(tmp_path / "serve.json")],
        stderr=subprocess.PIPE, text=True, env=env)
    try:
        base, lines = served_base(process)
        assert base.startswith("http://127.0.0.1:")
        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"serve exited with {process.returncode}: {''.join(lines)}{process.stderr.read()}")
            return health(base)[0] == 200

        wait_for(ready, "/health -> 200 for the video file")
        camera = health(base)[1]["camera"]
        assert camera["kind"] == "file" and camera["loop"] is True

        def answered() -> list[dict]:
            if not events.is_file():
                return []
            return [json.loads(line) for line in events.read_text().splitlines() if '"type": "watch"' in line]

        looped = wait_for(lambda: [e for e in answered() if e["frame_id"] >= 12], "watch answers after the loop")
        event = looped[0]
        assert event["prompt"] == QUESTION and event["tokens"] <= 4 and event["frame_age_ms"] >= 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        rest = process.stderr.read()
        assert "Traceback" not in rest and "stopped" in rest
        profile = json.loads((tmp_path / "serve.json").read_text())
        assert profile["command"] == "crome-edge serve" and profile["runs"] >= len(looped)
        assert (tmp_path / "serve.trace.json").is_file()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        process.stderr.close()


def test_torch_free_device_without_a_bundle_is_told_what_to_do_and_demo_needs_no_torch(tmp_path):
    env = {**torch_blocked_env(tmp_path), "CROME_EDGE_CACHE": str(tmp_path / "empty-cache")}
    done = subprocess.run([sys.executable, "-m", "crome_cli", "serve", "--camera", "demo", "--port", "0"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "[train] extra" in done.stderr and "pass --bundle" in done.stderr
    demo = ("from crome_cli.serve import demo_camera\n"
            "camera = demo_camera(30.0)()\n"
            "ok, frame = camera.read()\n"
            "assert ok and frame.shape == (240, 320, 3), frame.shape\n"
            "import sys; assert 'torch' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", demo], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_video_file_that_ends_says_so(bundle, tmp_path):
    video = tmp_path / "short.avi"
    write_video(video, frames=5, fps=30.0, size=(64, 48), seed=1)
    source = parse_source(str(video))
    assert source.kind == "file" and not source.loop
    with serving(bundle, source, ready=False) as (server, base):
        def ended():
            status, report = health(base)
            return (status, report) if report["camera"]["state"] == "ended" and report["engine"]["state"] == "ready" \
                else None

        status, report = wait_for(ended, "the camera to end with the file (engine loaded)")
        assert status == 503 and report["status"] == "camera ended"
        assert report["camera"]["frames_captured"] == 5
        assert get(f"{base}/v1/frame.jpg")[0] == 200  # the last frame stays viewable


@pytest.mark.parametrize("camera, words", [("7", "video devices"), ("/dev/video9", "does not exist"),
                                           ("/no/such/clip.avi", "not a camera index"),
                                           ("videotestsrc ! appsink", "GStreamer")])
def test_a_camera_that_cannot_be_opened_is_a_clear_error(camera, words, bundle, capsys):
    if camera.startswith("videotestsrc") and has_gstreamer():
        pytest.skip("this OpenCV has GStreamer: the pipeline may open")
    assert main(["serve", "--bundle", str(bundle), "--camera", camera, "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    if camera == "7":
        assert "--camera demo" in err


def test_listening_beyond_loopback_without_a_key_is_a_loud_warning(bundle, capsys):
    assert main(["serve", "--bundle", str(bundle), "--host", "0.0.0.0", "--camera", "7", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "WARNING: listening on 0.0.0.0 WITHOUT an API key" in err


def test_a_port_in_use_is_a_clear_error(bundle, capsys):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        assert main(["serve", "--bundle", str(bundle), "--port", str(port)]) == 2
        assert f"port {port} on 127.0.0.1 is already in use" in capsys.readouterr().err
    finally:
        taken.close()


def test_bad_flags_are_clear_errors(bundle, tmp_path, capsys):
    for argv, words in ((["--watch", QUESTION], "--watch needs a camera"),
                        (["--camera", "demo", "--max-new-tokens", "0"], "--max-new-tokens"),
                        (["--api-key-file", str(tmp_path / "missing")], "cannot read --api-key-file"),
                        (["--events", str(tmp_path / "no" / "dir.jsonl")], "does not exist"),
                        (["--bundle", str(tmp_path)], "manifest")):
        assert main(["serve", "--bundle", str(bundle), "--port", "0", *argv]) == 2
        assert words in capsys.readouterr().err, argv

