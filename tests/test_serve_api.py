"""`crome-edge serve`'s HTTP API on the tiny bundle, through the official `openai` client and plain HTTP:
chat completions streamed and not (usage, llama.cpp-style timings, frame identity), models, frames, health,
metrics, the API key, and every kind of bad request getting OpenAI's error JSON while the server serves on."""
import base64
import json
import struct
import zlib

import httpx
import numpy as np
import openai
import pytest
from tests.support.bundles import colour_image, tiny_bundle
from tests.support.serve import QUESTION, colour_source, get, health, png_data_uri, serving, wait_for

from crome_runtime.serve.config import Limits

MAX_BODY = 256 << 10  # this module's server refuses bodies over 256 KiB


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)["bundle"]


@pytest.fixture(scope="module")
def served(bundle):
    with serving(bundle, colour_source(), watch=[QUESTION], limits=Limits(max_body_bytes=MAX_BODY)) as running:
        yield running


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=f"{served[1]}/v1", api_key="unused", max_retries=0, timeout=60)


def _ask(image_url=None, text=QUESTION):
    content = [{"type": "text", "text": text}]
    if image_url is not None:
        content.append({"type": "image_url", "image_url": {"url": image_url}})
    return [{"role": "user", "content": content}]


def test_openai_client_answers_an_uploaded_image_with_usage_and_timings(client):
    red = png_data_uri(colour_image("red", 42))
    completion = client.chat.completions.create(model="anything", messages=_ask(red))
    assert completion.object == "chat.completion" and completion.model == "tiny-colour-fp32"
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == "red" and choice.finish_reason == "stop"
    usage = completion.usage
    assert usage.completion_tokens == 3  # the tiny tokenizer spells "red" one character per token
    assert usage.prompt_tokens > usage.completion_tokens and usage.total_tokens == usage.prompt_tokens + 3
    timings = completion.model_extra["timings"]
    assert timings["prompt_n"] == usage.prompt_tokens and timings["predicted_n"] == 3
    assert timings["prompt_ms"] > 0 and timings["predicted_ms"] >= 0 and timings["predicted_per_second"] > 0
    assert {"preprocess", "vision", "adapter_visual", "prefill", "decode", "sample"} <= set(timings["stages_ms"])
    assert timings["frame_id"] is None and timings["frame_age_ms"] is None  # an upload, not a camera frame
    assert timings["total_ms"] >= timings["prompt_ms"]


def test_openai_client_streams_the_same_answer(client):
    red = png_data_uri(colour_image("red", 42))
    chunks = list(client.chat.completions.create(model="m", messages=_ask(red), stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "red"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == 3
    assert last.model_extra["timings"]["predicted_n"] == 3
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert all(c.usage is None for c in chunks[:-1])  # usage only in the chunk include_usage asked for
    plain = list(client.chat.completions.create(model="m", messages=_ask(red), stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in plain if c.choices) == "red"
    assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason == "stop"  # not asked for
    assert plain[-1].model_extra["timings"]["predicted_n"] == 3  # llama.cpp's timings stay on the last chunk


def test_a_completion_is_stamped_once():
    """`created` is the request's one stamp (the chunks of a stream share it), not a second clock read."""
    from types import SimpleNamespace

    from crome_runtime.serve import protocol

    answer = SimpleNamespace(text="red", token_ids=[1, 2, 3], finish_reason="stop", prompt_tokens=9, ttft_ms=1.0,
                             total_ms=2.0, timings_ms={}, cache={}, adapter=None)
    result = SimpleNamespace(answer=answer, frame=None, queue_ms=0.0, latency_ms=2.0, stages_ms=lambda: {})
    reply = protocol.Reply("m")
    stamps = {reply.completion(result)["created"], reply.chunk({"content": "r"})["created"],
              reply.usage_chunk(result)["created"]}
    assert stamps == {reply.created}


def test_camera_frames_answer_with_their_id_and_age(client, served):
    server, base = served
    completion = client.chat.completions.create(model="m", messages=_ask("camera"))
    assert completion.choices[0].message.content in ("red", "green", "blue")
    timings = completion.model_extra["timings"]
    assert isinstance(timings["frame_id"], int) and timings["frame_age_ms"] >= 0
    no_image = client.chat.completions.create(model="m", messages=[{"role": "user", "content": QUESTION}])
    assert no_image.model_extra["timings"]["frame_id"] >= timings["frame_id"]  # no image = the newest frame


def test_models_frame_health_and_metrics(client, served):
    server, base = served
    assert [m.id for m in client.models.list().data] == ["tiny-colour-fp32", "tiny-colour-fp32/colour",
                                                         "tiny-colour-fp32/none"]
    status, headers, body = get(f"{base}/v1/frame.jpg")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    import cv2

    frame = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert frame.shape == (64, 64, 3) and int(headers["x-frame-id"]) >= 0 and float(headers["x-frame-age-ms"]) >= 0
    status, report = health(base)
    assert status == 200 and report["status"] == "ok" and report["engine"]["state"] == "ready"
    assert report["camera"]["state"] == "live" and report["camera"]["delivering"]
    assert report["watch"][0]["prompt"] == QUESTION
    wait_for(lambda: health(base)[1]["watch"][0]["answers"] >= 2, "two watch answers")
    status, headers, body = get(f"{base}/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    for line in ('crome_stage_seconds_bucket{le="0.001",stage="vision"}', 'crome_answers_total{finish_reason="stop",'
                 'source="api"}', "crome_frames_captured_total", "crome_frames_dropped_total",
                 "crome_camera_reconnects_total", 'crome_queue_depth{lane="api"}', 'crome_tokens_generated_total{'
                 'source="watch"}', "crome_time_to_first_token_seconds_bucket", "crome_frame_age_seconds_count",
                 'crome_requests_total{endpoint="/v1/chat/completions",status="200"}', "crome_engine_ready 1.0"):
        assert line in text, line
    answered = _metric(text, "crome_frames_answered_total")
    assert 0 < answered <= _metric(text, "crome_frames_captured_total")


def _metric(text: str, name: str) -> float:
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


BAD_REQUESTS = {
    # case: (body, status, param or None, words the message must contain)
    "malformed_json": (b'{"messages": [', 400, None, "not valid JSON"),
    "not_an_object": (b"[1, 2]", 400, None, "JSON object"),
    "messages_not_a_list": ({"messages": "hi"}, 400, "messages", "non-empty list"),
    "no_messages": ({"model": "m"}, 400, "messages", "non-empty list"),
    "bad_role": ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0]", "role"),
    "last_not_user": ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "messages[0].role", "last"),
    "content_wrong_type": ({"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content", "string"),
    "unknown_part": ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, 400,
                     "messages[0].content[0]", "content part"),
    "empty_question": ({"messages": [{"role": "user", "content": "  "}]}, 400, "messages[0].content", "no text"),
    "unknown_field": ({"messages": _ask(), "frobnicate": 1}, 400, "frobnicate", "unknown field"),
    "unsupported_n": ({"messages": _ask(), "n": 3}, 400, "n", "n must be 1"),
    "unsupported_tools": ({"messages": _ask(), "tools": [{"type": "function"}]}, 400, "tools", "not supported"),
    "temperature_string": ({"messages": _ask(), "temperature": "hot"}, 400, "temperature", "number"),
    "temperature_range": ({"messages": _ask(), "temperature": 7}, 400, "temperature", "from 0 to 2"),
    "stream_not_bool": ({"messages": _ask(), "stream": "yes"}, 400, "stream", "true or false"),
    "max_tokens_zero": ({"messages": _ask(), "max_tokens": 0}, 400, "max_tokens", "between 1 and 1024"),
    "max_tokens_huge": ({"messages": _ask(), "max_tokens": 10 ** 9}, 400, "max_tokens", "between 1 and 1024"),
    "max_tokens_bool": ({"messages": _ask(), "max_tokens": True}, 400, "max_tokens", "integer"),
    "max_tokens_float": ({"messages": _ask(), "max_tokens": 2.5}, 400, "max_tokens", "integer"),
    "two_images": ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": "camera"}},
        {"type": "image_url", "image_url": {"url": "camera"}}]}]}, 400, "messages[0].content", "one image"),
    "bad_base64": ({"messages": _ask("data:image/png;base64,@@not-base64@@")}, 400, "messages", "base64"),
    "not_an_image": ({"messages": _ask("data:image/png;base64," + _b64(b"hello, world"))}, 400, "messages",
                     "not an image"),
    "not_image_mime": ({"messages": _ask("data:text/plain;base64," + _b64(b"hi"))}, 400, "messages", "image/png"),
    "decompression_bomb": ({"messages": _ask("data:image/png;base64," + _b64(_png_header(100_000, 100_000)))}, 400,
                           "messages", "pixel limit"),
    "truncated_png": ({"messages": _ask("data:image/png;base64," + _b64(_png_header(64, 64)))}, 400, "messages",
                      "decode"),
    "remote_url": ({"messages": _ask("https://example.com/part.png")}, 400, "messages", "not fetched"),
    "prompt_over_context": ({"messages": _ask(text="what colour " * 40)}, 400, "messages", "context"),
    "prompt_over_limit": ({"messages": _ask(text="x" * 5000)}, 400, "messages[0].content", "4,000"),
    "lone_surrogate": ({"messages": _ask(text="what \ud800 colour?")}, 400, "messages[0].content", "UTF-8"),
    "oversized_body": ({"messages": _ask(text="x" * (MAX_BODY + 10))}, 413, None, "byte limit"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_openai_errors_and_the_server_serves_on(case, served, client):
    server, base = served
    body, status, param, words = BAD_REQUESTS[case]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{base}/v1/chat/completions", content=content,
                          headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert error["type"] == "invalid_request_error" and words in error["message"], error["message"]
    assert "Traceback" not in response.text
    if case == "prompt_over_context":
        assert error["code"] == "context_length_exceeded"
    red = png_data_uri(colour_image("red", 7))
    assert client.chat.completions.create(model="m", messages=_ask(red)).choices[0].message.content == "red"


def test_streamed_bad_request_is_an_error_before_the_stream(client):
    with pytest.raises(openai.BadRequestError, match="context"):
        list(client.chat.completions.create(model="m", messages=_ask(text="what colour " * 40), stream=True))


def test_chunked_oversized_body_is_refused(served):
    server, base = served

    def body():
        for _ in range(MAX_BODY // 4096 + 2):
            yield b"x" * 4096

    response = httpx.post(f"{base}/v1/chat/completions", content=body(), timeout=60)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


def test_unknown_endpoints_and_methods(served):
    server, base = served
    status, _, body = get(f"{base}/v1/nothing-here")
    assert status == 404 and "no such endpoint" in json.loads(body)["error"]["message"]
    status, _, body = get(f"{base}/v1/chat/completions")
    assert status == 405 and json.loads(body)["error"]["type"] == "invalid_request_error"


def test_watch_prompts_can_be_added_and_removed(served):
    server, base = served
    added = httpx.post(f"{base}/v1/watch/prompts", json={"prompt": "Which colour?", "max_tokens": 4}, timeout=60)
    assert added.status_code == 201
    watch_id = added.json()["id"]
    listed = httpx.get(f"{base}/v1/watch/prompts", timeout=60).json()["data"]
    assert [w["prompt"] for w in listed] == [QUESTION, "Which colour?"]
    wait_for(lambda: health(base)[1]["watch"][1]["answers"] >= 1, "an answer to the added watch prompt")
    for bad in ({"prompt": ""}, {"prompt": 5}, {"prompt": "ok", "extra": 1}, {"prompt": "ok", "max_tokens": 0},
                {"prompt": "\ud800?"}):
        response = httpx.post(f"{base}/v1/watch/prompts", content=json.dumps(bad), timeout=60)  # ASCII-escaped
        assert response.status_code == 400 and "error" in response.json()
    assert httpx.delete(f"{base}/v1/watch/prompts/{watch_id}", timeout=60).json()["deleted"] is True
    gone = httpx.delete(f"{base}/v1/watch/prompts/{watch_id}", timeout=60)
    assert gone.status_code == 404 and gone.json()["error"]["type"] == "not_found_error"
    assert [w["prompt"] for w in httpx.get(f"{base}/v1/watch/prompts", timeout=60).json()["data"]] == [QUESTION]


def test_watch_stream_delivers_answers_with_frame_age(served):
    server, base = served
    events = []
    with httpx.stream("GET", f"{base}/v1/watch", timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if event["type"] == "watch" and event["prompt"] == QUESTION:  # not the one the test above removed
                    events.append(event)
            if len(events) >= 3:
                break
    for event in events:
        assert event["answer"] in ("red", "green", "blue")
        assert event["frame_age_ms"] >= event["latency_ms"] - event["queue_ms"] - 1e-3 >= 0
        assert {"vision", "prefill", "decode"} <= set(event["timings_ms"]) or event["tokens"] <= 1
    ids = [e["frame_id"] for e in events]
    assert ids == sorted(ids)
    wait_for(lambda: server.hub.subscribers == 0, "the closed watch stream to be dropped")


def test_api_key_is_required_everywhere_but_health(bundle):
    with serving(bundle, colour_source(), api_key="s3cret") as (server, base):
        assert health(base)[0] == 200
        status, _, body = get(f"{base}/v1/models")
        assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
        assert "missing" in json.loads(body)["error"]["message"]
        for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": "Bearer s3cret-and-more"},
                        {"Authorization": "Basic s3cret"}, {"X-API-Key": "nope"}):
            status, _, body = get(f"{base}/metrics", headers)
            assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"
        assert get(f"{base}/metrics", {"Authorization": "Bearer s3cret"})[0] == 200
        assert get(f"{base}/v1/frame.jpg", {"X-API-Key": "s3cret"})[0] == 200
        assert get(f"{base}/")[0] == 200 and get(f"{base}/static/app.js")[0] == 200  # the page holds no data
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=f"{base}/v1", api_key="s3cret", max_retries=0)
        assert good.chat.completions.create(model="m", messages=_ask("camera")).choices[0].message.content
