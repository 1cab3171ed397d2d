"""The heat map in the API (docs/explain.md), on the tiny bundle through the official `openai` client: `"explain": true`
puts it under `crome.explain` (the patch grid and per-query numbers), on the finish chunk when streamed; explain with
no image is a 400; a bundle exported before maps existed still answers and says why it has no map."""
import httpx
import numpy as np
import openai
import pytest
from tests.support.bundles import QUESTION, tiny_bundle
from tests.support.serve import colour_question, serving


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)["bundle"]


@pytest.fixture(scope="module")
def served(bundle):
    with serving(bundle) as running:  # no camera: a request without an image has nothing to draw the map over
        yield running


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=f"{served[1]}/v1", api_key="unused", max_retries=0, timeout=60)


def _check_map(explain: dict, adapter: str | None) -> None:
    grid = np.asarray(explain["grid"])
    assert explain["grid_shape"] == [4, 4] and grid.shape == (4, 4)  # tiny: a 4x4 patch grid
    assert grid.sum() == pytest.approx(1.0, abs=1e-3) and grid.min() >= 0  # a distribution (rounded to 4 places)
    assert len(explain["queries"]) == 4 and explain["adapter"] == adapter
    assert sum(q["weight"] for q in explain["queries"]) == pytest.approx(1.0, abs=1e-3)


def test_explain_carries_the_heat_map_beside_the_confidence(client):
    completion = client.chat.completions.create(model="m", messages=colour_question(), extra_body={"explain": True})
    crome = completion.model_extra["crome"]
    _check_map(crome["explain"], "colour")
    assert all(q["change"] > 0 and 0 < q["gate"] < 1 for q in crome["explain"]["queries"])
    assert "confidence" in crome  # the other keys of the same object stay
    plain = client.chat.completions.create(model="m", messages=colour_question())
    assert "crome" not in plain.model_extra


def test_explain_streamed_on_the_finish_chunk(client):
    chunks = list(client.chat.completions.create(model="m", messages=colour_question("green"), stream=True,
                                                 extra_body={"explain": True}))
    carrying = [c for c in chunks if "crome" in (c.model_extra or {})]
    assert len(carrying) == 1 and carrying[0].choices[0].finish_reason == "stop"
    _check_map(carrying[0].model_extra["crome"]["explain"], "colour")


def test_explain_on_a_text_only_request_is_a_400_saying_what_to_send(served):
    body = {"messages": [{"role": "user", "content": QUESTION}], "explain": True}
    response = httpx.post(f"{served[1]}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "explain" and "has none: send the image in the request" in error["message"]


def test_a_bundle_from_before_maps_answers_and_says_why_there_is_none(tmp_path, bundle):
    import onnx

    from crome_export.optional_outputs import split_optional
    from crome_runtime import formats
    from crome_runtime.manifest import sha256_file
    from tests.support.bundles import copy_bundle, rewrite_manifest

    old = copy_bundle(bundle, tmp_path / "old.bundle")
    vision = old / formats.VISION_ONNX
    onnx.save(split_optional(onnx.load(str(vision)))[0], str(vision))
    entry = {"sha256": sha256_file(vision), "bytes": vision.stat().st_size}
    rewrite_manifest(old, lambda m: m["files"][formats.VISION_ONNX].update(entry))
    with serving(old) as (_, url):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        completion = client.chat.completions.create(model="m", messages=colour_question(), extra_body={"explain": True})
    assert completion.choices[0].message.content == "red"
    unavailable = completion.model_extra["crome"]["explain"]["unavailable"]
    assert "no query_attention output" in unavailable and "crome-edge export" in unavailable


def _watch_events(base: str, query: str, count: int, until=lambda events: False) -> list[dict]:
    """Watch events from a stream, at most `count`, or fewer once until(events) holds."""
    import json

    events: list[dict] = []
    with httpx.stream("GET", f"{base}/v1/watch{query}", timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["type"] == "watch":
                events.append(json.loads(line[6:]))
            if len(events) >= count or until(events):
                break
    return events


def test_watch_answers_carry_their_map_only_while_a_stream_asks(bundle):
    from tests.support.serve import colour_source, wait_for

    with serving(bundle, colour_source(), watch=[QUESTION]) as (server, base):
        plain = _watch_events(base, "", 2)
        assert all("explain" not in e for e in plain)  # nobody asked: not computed
        wait_for(lambda: server.hub.subscribers == 0, "the first stream to close")
        # the stream starts with the backlog of answers from before it asked; then the maps come
        events = _watch_events(base, "?explain=true", 80, lambda got: sum("explain" in e for e in got) >= 2)
        asked = [e for e in events if "explain" in e]
        assert len(asked) == 2
        for event in asked:
            _check_map(event["explain"], "colour")
        refused = httpx.get(f"{base}/v1/watch?explain=yes", timeout=30)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "explain"
