"""The HTTP rows of the bad-input suite: every endpoint of `crome-edge serve` (but chat completions' request
bodies, which test_serve_api.py's BAD_REQUESTS covers) with bad inputs -- no or a wrong API key, wrong methods,
oversized bodies and headers, malformed or hostile bodies, limits -- each asserting the HTTP status, OpenAI's
error JSON shape and code, no traceback text, and the server still serving afterwards.

Two servers: KEYED (an API key, a camera, a watch prompt, small limits) and OPEN (no key, no camera)."""
import json
import socket

import httpx
import pytest
from tests.support.bundles import colour_image, tiny_bundle
from tests.support.serve import QUESTION, colour_source, health, png_data_uri, serving

from crome_runtime.serve.config import Limits

KEY = "k3y-for-tests"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_BODY = 64 << 10
LIMITS = Limits(max_body_bytes=MAX_BODY, max_watch_prompts=2, max_subscribers=1)

# method, path of each endpoint that needs the key (everything but /health and the page)
KEYED_ENDPOINTS = {
    "chat": ("POST", "/v1/chat/completions"), "models": ("GET", "/v1/models"), "frame": ("GET", "/v1/frame.jpg"),
    "watch_stream": ("GET", "/v1/watch"), "watch_list": ("GET", "/v1/watch/prompts"),
    "watch_add": ("POST", "/v1/watch/prompts"), "watch_remove": ("DELETE", "/v1/watch/prompts/w-nope"),
    "adapters": ("GET", "/v1/adapters"), "adapters_reload": ("POST", "/v1/adapters/reload"),
    "metrics": ("GET", "/metrics"),
}
WRONG_METHODS = {
    "chat": ("PUT", "/v1/chat/completions"), "models": ("POST", "/v1/models"), "frame": ("DELETE", "/v1/frame.jpg"),
    "watch_stream": ("POST", "/v1/watch"), "watch_list": ("PATCH", "/v1/watch/prompts"),
    "watch_remove": ("GET", "/v1/watch/prompts/w-nope"), "adapters": ("DELETE", "/v1/adapters"),
    "adapters_reload": ("GET", "/v1/adapters/reload"), "metrics": ("PUT", "/metrics"), "health": ("POST", "/health"),
}
DEEP_JSON = b"[" * 50_000  # under the body limit; json.loads raises RecursionError on it


def _rows() -> dict:
    rows = {}  # id: (server, endpoint, method, path, headers, body, status, code or None, words or None)
    for name, (method, path) in KEYED_ENDPOINTS.items():
        rows[f"{name}-no_key"] = ("keyed", name, method, path, {}, None, 401, "invalid_api_key", "missing API key")
        rows[f"{name}-wrong_key"] = ("keyed", name, method, path, {"Authorization": "Bearer wrong"}, None, 401,
                                     "invalid_api_key", "wrong API key")
        rows[f"{name}-key_prefix"] = ("keyed", name, method, path, {"X-API-Key": KEY[:-1]}, None, 401,
                                      "invalid_api_key", "wrong API key")
        rows[f"{name}-oversized_body"] = ("keyed", name, method, path, AUTH, b"x" * (MAX_BODY + 1), 413,
                                          "request_too_large", "byte limit")
    for name, (method, path) in WRONG_METHODS.items():
        rows[f"{name}-wrong_method"] = ("keyed", name, method, path, AUTH, None, 405, None, "is not allowed")
    rows["health-oversized_body"] = ("keyed", "health", "POST", "/health", {}, b"x" * (MAX_BODY + 1), 413,
                                     "request_too_large", "byte limit")
    rows["unknown-no_key"] = ("keyed", "unknown", "GET", "/v1/secret", {}, None, 401, "invalid_api_key", None)
    rows["unknown-path_traversal"] = ("keyed", "unknown", "GET", "/static/../../etc/passwd", {}, None, None, None, None)
    for name, endpoint in (("chat", "/v1/chat/completions"), ("watch_add", "/v1/watch/prompts")):
        rows[f"{name}-empty_body"] = ("keyed", name, "POST", endpoint, AUTH, b"", 400, None, "not valid JSON")
        rows[f"{name}-invalid_utf8"] = ("keyed", name, "POST", endpoint, AUTH, b'{"prompt": "\xff\xfe"}', 400, None,
                                        "not valid JSON")
        rows[f"{name}-deep_json"] = ("keyed", name, "POST", endpoint, AUTH, DEEP_JSON, 400, None, "nested")
    watch = {  # POST /v1/watch/prompts bodies test_serve_api.py does not send
        "json_list": ([QUESTION], "the body must be"), "json_null": (None, "the body must be"),
        "prompt_null": ({"prompt": None}, "non-empty string"), "prompt_list": ({"prompt": [QUESTION]}, "non-empty"),
        "prompt_over_limit": ({"prompt": "x" * 5000}, "characters"),
        "max_tokens_bool": ({"prompt": "ok", "max_tokens": True}, "max_tokens"),
        "max_tokens_float": ({"prompt": "ok", "max_tokens": 2.0}, "max_tokens"),
        "max_tokens_huge": ({"prompt": "ok", "max_tokens": 10 ** 12}, "max_tokens"),
        "max_tokens_string": ({"prompt": "ok", "max_tokens": "4"}, "max_tokens"),
    }
    for case, (body, words) in watch.items():
        rows[f"watch_add-{case}"] = ("keyed", "watch_add", "POST", "/v1/watch/prompts", AUTH, json.dumps(body).encode(),
                                     400, None, words)
    for case, watch_id in (("unknown_id", "w-404"), ("long_id", "w" * 4000), ("encoded_slash", "..%2F..%2Fetc")):
        rows[f"watch_remove-{case}"] = ("keyed", "watch_remove", "DELETE", f"/v1/watch/prompts/{watch_id}", AUTH, None,
                                        404, None, None)
    # the OPEN server: no key, no camera
    rows["adapters_reload-without_a_key"] = ("open", "adapters_reload", "POST", "/v1/adapters/reload", {}, None, 403,
                                             "admin_needs_api_key", "--api-key")
    rows["frame-no_camera"] = ("open", "frame", "GET", "/v1/frame.jpg", {}, None, 404, "no_camera", "no camera")
    rows["watch_add-no_camera"] = ("open", "watch_add", "POST", "/v1/watch/prompts", {},
                                   json.dumps({"prompt": QUESTION}).encode(), 400, None, "no camera")
    rows["watch_remove-no_camera"] = ("open", "watch_remove", "DELETE", "/v1/watch/prompts/w1", {}, None, 404, None, None)
    rows["chat-no_camera_no_image"] = ("open", "chat", "POST", "/v1/chat/completions", {}, json.dumps(
        {"messages": [{"role": "user", "content": QUESTION}]}).encode(), 400, None, "no camera")
    rows["chat-unknown_adapter"] = ("open", "chat", "POST", "/v1/chat/completions", {}, json.dumps(
        {"model": "tiny-colour-fp32/nope", "messages": [{"role": "user", "content": QUESTION}]}).encode(), None, None,
        None)
    return rows


ROWS = _rows()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)["bundle"]


@pytest.fixture(scope="module")
def servers(bundle):
    with serving(bundle, colour_source(), watch=[QUESTION], limits=LIMITS, api_key=KEY) as keyed:
        with serving(bundle, None, limits=LIMITS) as open_:
            yield {"keyed": keyed[1], "open": open_[1]}


CLIENT = httpx.Client(timeout=60)


def _assert_still_serving(base: str, headers: dict) -> None:
    assert health(base)[0] == 200
    assert CLIENT.get(f"{base}/v1/models", headers=headers).status_code == 200


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_http_input_is_an_openai_error_and_the_server_serves_on(row, servers):
    server, endpoint, method, path, headers, body, status, code, words = ROWS[row]
    base = servers[server]
    response = CLIENT.request(method, f"{base}{path}", headers=headers, content=body)
    assert "Traceback" not in response.text and 'File "' not in response.text
    if status is None:  # the rule is "a 4xx in OpenAI's shape", whichever code the endpoint picks
        assert 400 <= response.status_code < 500, response.text
    else:
        assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"] and "\n" not in error["message"]
    assert error["type"] in ("invalid_request_error", "authentication_error", "permission_error", "not_found_error",
                             "rate_limit_error", "server_error"), error
    if code is not None:
        assert error["code"] == code, error
    if words is not None:
        assert words in error["message"], error["message"]
    _assert_still_serving(base, AUTH if server == "keyed" else {})


@pytest.mark.parametrize("size", [200_000, 2_000_000])  # over h11's 16 KiB incomplete-event bound
def test_oversized_headers_are_refused_without_a_traceback_and_the_server_serves_on(size, servers):
    base = servers["keyed"]
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        request = (f"GET /v1/models HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
                   f"X-Padding: {'a' * size}\r\n\r\n").encode()
        try:
            sock.sendall(request)
            reply = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):  # the server may close before reading it all
            reply = b""
    status_line = reply.split(b"\r\n", 1)[0]
    assert reply == b"" or status_line.split()[1] in (b"400", b"431"), reply[:200]
    assert b"Traceback" not in reply
    _assert_still_serving(base, AUTH)


def _raw(base: str, head: str) -> bytes:
    """Sends `head` (request line and headers, no body) on a new connection; the reply, read until it closes."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(head.encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def test_a_content_length_over_the_limit_is_413_before_any_body_is_read(servers):
    base = servers["keyed"]
    for method, path in KEYED_ENDPOINTS.values():
        reply = _raw(base, f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
                           f"Content-Length: 99999999\r\nConnection: close\r\n\r\n")
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.split()[1] == b"413", (path, reply[:300])
        assert json.loads(body)["error"]["code"] == "request_too_large" and b"Traceback" not in reply
    _assert_still_serving(base, AUTH)


def test_many_header_lines_with_the_key_on_every_endpoint_still_answer(servers):
    base = servers["keyed"]
    headers = {**AUTH, **{f"X-Extra-{i}": "v" for i in range(50)}}
    for name, (method, path) in KEYED_ENDPOINTS.items():
        if name in ("watch_stream", "chat", "watch_add", "adapters_reload", "watch_remove"):
            continue  # streams, bodies or state changes: covered by their own tests
        assert httpx.request(method, f"{base}{path}", headers=headers, timeout=60).status_code == 200, name


def test_watch_limits_give_429_in_openai_shape(servers):
    base = servers["keyed"]
    added = []
    try:
        while True:
            response = httpx.post(f"{base}/v1/watch/prompts", json={"prompt": f"colour {len(added)}?"},
                                  headers=AUTH, timeout=60)
            if response.status_code != 201:
                break
            added.append(response.json()["id"])
            assert len(added) <= LIMITS.max_watch_prompts
        assert response.status_code == 429 and response.json()["error"]["code"] == "too_many_watch_prompts"
        with httpx.stream("GET", f"{base}/v1/watch", headers=AUTH, timeout=60) as first:
            assert first.status_code == 200
            second = httpx.get(f"{base}/v1/watch", headers=AUTH, timeout=60)
            assert second.status_code == 429 and second.json()["error"]["code"] == "too_many_streams"
            assert second.headers["retry-after"]
    finally:
        for watch_id in added:
            httpx.delete(f"{base}/v1/watch/prompts/{watch_id}", headers=AUTH, timeout=60)
    _assert_still_serving(base, AUTH)


def test_after_every_bad_input_both_servers_still_answer(servers):
    red = png_data_uri(colour_image("red", 3))
    for server, headers in (("keyed", AUTH), ("open", {})):
        response = httpx.post(f"{servers[server]}/v1/chat/completions", headers=headers, timeout=60, json={
            "messages": [{"role": "user", "content": [{"type": "text", "text": QUESTION},
                                                      {"type": "image_url", "image_url": {"url": red}}]}]})
        assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "red"
