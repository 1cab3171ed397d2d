"""What a hostile page or client sends to `crome-edge serve` on loopback (issue 21, rows 4, 5, 7 and 10), each refused
in OpenAI's error shape while the server serves on:

- DNS rebinding and CSRF: a foreign Host (evil.example resolving to 127.0.0.1) cannot read a frame or add a watch
  prompt; a cross-site Origin cannot change state; a `text/plain` body (a form's or fetch's "simple request") is
  never parsed as JSON;
- slow and unfinished requests: a body that never arrives is a 408 after the read timeout (not a hang, not a
  traceback), a head that never ends is closed, and idle connections over the cap make room for /health;
- a camera with huge frames: resized to the frame cap, said once in the log and in /health; one that declares
  16000x14000 frames is refused before a frame is decoded;
- `"seed": -1` is a 400 naming the field, with nothing in the log.

Not here: many connections against the real `serve` process (test_serve_slowloris.py)."""
import json
import logging
import socket
import time

import httpx
import numpy as np
import pytest
from tests.support.bundles import colour_image, tiny_bundle
from tests.support.serve import QUESTION, colour_source, health, png_data_uri, serving, wait_for

import crome_runtime  # noqa: F401  (before cv2: OpenCV's decoder pixel limit)
import cv2
from crome_runtime.serve.config import CameraConfig, Limits, ServeConfig
from crome_runtime.serve.guard import allowed_hosts, host_name
from crome_runtime.serve.sources import CameraSource

READ_TIMEOUT_S = 1.0  # this module's servers give a request's head or body this long


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)["bundle"]


@pytest.fixture(scope="module")
def served(bundle):
    with serving(bundle, colour_source(), watch=[QUESTION], read_timeout_s=READ_TIMEOUT_S,
                 limits=Limits(max_connections=16)) as running:
        yield running


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def _prompts(base: str) -> list[str]:
    return [w["prompt"] for w in httpx.get(f"{base}/v1/watch/prompts", timeout=60).json()["data"]]


def _refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and set(error) == {"message", "type", "param", "code"}, error
    assert "Traceback" not in response.text


def test_dns_rebinding_and_cross_site_requests_are_refused(served):
    server, base = served
    port = _port(base)
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}", f"localhost.evil:{port}"):
        for path in ("/v1/frame.jpg", "/v1/models", "/health", "/"):
            _refused(httpx.get(f"{base}{path}", headers={"Host": host}, timeout=60), 400, "host_not_allowed")
        _refused(httpx.post(f"{base}/v1/watch/prompts", json={"prompt": "rebound?"}, headers={"Host": host},
                            timeout=60), 400, "host_not_allowed")
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LocalHost.", f"[::1]:{port}", f"10.1.2.3:{port}"):
        assert httpx.get(f"{base}/v1/frame.jpg", headers={"Host": host}, timeout=60).status_code == 200, host
    before = _prompts(base)
    for origin in ("http://evil.example", f"http://evil.example:{port}", "null", f"http://localhost:{port + 1}"):
        _refused(httpx.post(f"{base}/v1/watch/prompts", json={"prompt": "cross-site?"}, headers={"Origin": origin},
                            timeout=60), 403, "origin_not_allowed")
        _refused(httpx.delete(f"{base}/v1/watch/prompts/w1", headers={"Origin": origin}, timeout=60), 403,
                 "origin_not_allowed")
        _refused(httpx.post(f"{base}/v1/chat/completions", json={"messages": [{"role": "user", "content": QUESTION}]},
                            headers={"Origin": origin}, timeout=60), 403, "origin_not_allowed")
    for media in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data"):
        body = json.dumps({"prompt": "simple request?"})
        _refused(httpx.post(f"{base}/v1/watch/prompts", content=body, headers={"Content-Type": media}, timeout=60),
                 415, "unsupported_media_type")
        chat = json.dumps({"messages": [{"role": "user", "content": QUESTION}]})
        _refused(httpx.post(f"{base}/v1/chat/completions", content=chat, headers={"Content-Type": media}, timeout=60),
                 415, "unsupported_media_type")
    assert _prompts(base) == before  # nothing was added
    # the server's own page (same origin, JSON) still may; reading pages from anywhere (GET, no Origin check) too
    own = httpx.post(f"{base}/v1/watch/prompts", json={"prompt": "Own page?"}, timeout=60,
                     headers={"Origin": f"http://127.0.0.1:{port}", "Content-Type": "application/json; charset=utf-8"})
    assert own.status_code == 201, own.text
    removed = httpx.delete(f"{base}/v1/watch/prompts/{own.json()['id']}", headers={"Origin": base}, timeout=60)
    assert removed.status_code == 200 and _prompts(base) == before
    assert httpx.get(f"{base}/v1/models", headers={"Origin": "http://evil.example"}, timeout=60).status_code == 200


def test_the_host_allow_list_takes_the_host_flag_and_allowed_hosts():
    assert host_name("LocalHost:8080") == "localhost" and host_name("[::1]:80") == "::1" and host_name("a.b.") == "a.b"
    assert allowed_hosts(ServeConfig()) == {"127.0.0.1", "localhost", "::1"}
    assert allowed_hosts(ServeConfig(host="camera-box.local", allowed_hosts=["Line3.example"])) == {
        "127.0.0.1", "localhost", "::1", "camera-box.local", "line3.example"}
    assert allowed_hosts(ServeConfig(host="0.0.0.0")) == {"127.0.0.1", "localhost", "::1"}  # a wildcard is no name
    assert allowed_hosts(ServeConfig(allowed_hosts=["*"])) is None
    from crome_cli.main import build_parser
    from crome_cli.serve import _config

    args = build_parser().parse_args(["serve", "--allowed-host", "camera-box.local", "--allowed-host", "10.0.0.7"])
    assert _config(args).allowed_hosts == ["camera-box.local", "10.0.0.7"]
    from crome_runtime.errors import CromeError

    with pytest.raises(CromeError, match="--allowed-host takes a host name"):
        _config(build_parser().parse_args(["serve", "--allowed-host", "http://camera-box.local:8080"]))


def test_a_negative_seed_is_a_400_naming_it_with_nothing_in_the_log(served, caplog):
    server, base = served
    red = png_data_uri(colour_image("red", 4))
    messages = [{"role": "user", "content": [{"type": "text", "text": QUESTION},
                                             {"type": "image_url", "image_url": {"url": red}}]}]
    with caplog.at_level(logging.INFO):
        for seed in (-1, -(2 ** 70), 2 ** 64, 1.5, "7", True):
            response = httpx.post(f"{base}/v1/chat/completions", json={"messages": messages, "seed": seed}, timeout=60)
            assert response.status_code == 400, (seed, response.text)
            error = response.json()["error"]
            assert error["param"] == "seed" and "seed must be a whole number from 0" in error["message"], error
        answered = httpx.post(f"{base}/v1/chat/completions", json={"messages": messages, "seed": 2 ** 64 - 1},
                              timeout=60)
        assert answered.status_code == 200 and answered.json()["choices"][0]["message"]["content"] == "red"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "Traceback" not in caplog.text


def _connect(base: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", _port(base)), timeout=60)


def _read_all(sock: socket.socket) -> bytes:
    reply = b""
    while chunk := sock.recv(65536):
        reply += chunk
    return reply


def test_a_body_that_never_arrives_is_a_408_and_a_head_that_never_ends_is_closed(served, caplog):
    server, base = served
    with caplog.at_level(logging.INFO), _connect(base) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"messages\": [")  # 14 of the 1000 bytes, then nothing
        reply = _read_all(sock)  # the 408, then the connection closes: the rest of the body is not waited for
        assert time.monotonic() - started >= READ_TIMEOUT_S * 0.9  # the deadline, not an early refusal
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.split()[1] == b"408", reply[:300]
        assert json.loads(body)["error"]["code"] == "request_timeout"
    for head in (b"", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"):  # nothing at all / a head without its end
        with _connect(base) as sock:
            sock.sendall(head)
            assert _read_all(sock) == b""  # closed by the server after READ_TIMEOUT_S (the socket's own is 60 s)
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert health(base)[0] == 200


def test_idle_connections_over_the_cap_make_room_for_health(served):
    server, base = served
    idle = []
    try:
        for _ in range(3 * 16):  # three times this server's connection cap, sending nothing
            idle.append(_connect(base))
        for _ in range(5):
            started = time.monotonic()
            assert httpx.get(f"{base}/health", timeout=60).status_code == 200
            assert time.monotonic() - started < 1.0  # liveness: /health does not wait for the idle ones
    finally:
        for sock in idle:
            sock.close()


class BigFrameCamera:
    """A capture whose frames are `size` (w, h), and that declares `declared` (w, h) as its frame size."""

    def __init__(self, size=(64, 48), declared=(0, 0)):
        self.size, self.declared, self.open, self.reads = size, declared, True, 0

    def isOpened(self) -> bool:  # noqa: N802
        return self.open

    def read(self):
        time.sleep(0.05)
        self.reads += 1
        image = np.zeros((self.size[1], self.size[0], 3), np.uint8)
        image[:, : self.size[0] // 2] = (0, 0, 255)
        return True, image

    def get(self, prop: int) -> float:
        declared = {cv2.CAP_PROP_FRAME_WIDTH: self.declared[0], cv2.CAP_PROP_FRAME_HEIGHT: self.declared[1]}
        return float(declared.get(prop, 0))

    def release(self) -> None:
        self.open = False


def test_camera_frames_over_the_cap_are_resized_and_said_once(bundle, caplog):
    source = CameraSource("big", "custom", lambda: BigFrameCamera((64, 48)))
    with caplog.at_level(logging.INFO), serving(bundle, source, camera_config=CameraConfig(max_frame_pixels=32 * 24)) \
            as (server, base):
        wait_for(lambda: server.slot.captured >= 5, "five frames")
        camera = health(base)[1]["camera"]
        assert camera["frames_resized"] == {"from": [64, 48], "to": [32, 24]}, camera
        jpeg = httpx.get(f"{base}/v1/frame.jpg", timeout=60).content
        assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (24, 32, 3)
    said = [r.getMessage() for r in caplog.records if "over the" in r.getMessage()]
    assert len(said) == 1 and "64x48" in said[0] and "resized to 32x24" in said[0], said


def test_a_camera_declaring_16000x14000_frames_is_refused_before_a_frame_is_decoded(bundle):
    camera = BigFrameCamera((64, 48), declared=(16000, 14000))
    source = CameraSource("huge", "custom", lambda: camera)
    with serving(bundle, source, ready=False) as (server, base):
        report = wait_for(lambda: (lambda h: h if (h[1].get("camera") or {}).get("last_error") else None)(health(base)),
                          "the refusal in /health")[1]
        assert "16000x14000" in report["camera"]["last_error"] and "pixel limit" in report["camera"]["last_error"]
        assert report["status"] != "ok" and camera.reads == 0 and server.slot.captured == 0


def test_an_empty_state_change_needs_no_content_type(bundle):
    """Content-Type is checked on bodies only: `curl -X POST .../v1/adapters/reload` (form-encoded, empty) is no 415."""
    with serving(bundle, None, api_key="k") as (server, base):
        response = httpx.post(f"{base}/v1/adapters/reload", timeout=60, headers={
            "Authorization": "Bearer k", "Content-Type": "application/x-www-form-urlencoded"})
        assert response.status_code == 200 and response.json()["kept"] == ["colour"], response.text
