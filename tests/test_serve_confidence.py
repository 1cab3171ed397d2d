"""Where users see an answer's confidence and adapter version when serving (issue 24 items 2-3), on the tiny bundle
(its colour adapter: a closed set of red, green, blue): the API's `crome` extension object with `"explain": true`
(through the official `openai` client, which keeps it in `model_extra`), streamed on the finish chunk; the watch
loop's events (adapter, version, confidence, frame), `--min-margin` flagging and dropping, the margin histogram in
/metrics; bad input."""
import json

import httpx
import openai
import pytest
from tests.support.bundles import tiny_bundle
from tests.support.serve import QUESTION, colour_question, colour_source, serving, wait_for

from crome_runtime.manifest import read_manifest


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)["bundle"]


@pytest.fixture(scope="module")
def served(bundle):
    with serving(bundle, colour_source()) as running:
        yield running


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=f"{served[1]}/v1", api_key="unused", max_retries=0, timeout=60)


def test_explain_adds_the_crome_object(client, bundle):
    (entry,) = read_manifest(bundle, verify=False).adapters
    completion = client.chat.completions.create(model="m", messages=colour_question(), extra_body={"explain": True})
    crome = completion.model_extra["crome"]
    assert crome["adapter"] == "colour" and crome["adapter_version"] == entry.sha256
    confidence = crome["confidence"]
    assert 0.0 < confidence["first_token_margin"] <= 1.0 and confidence["mean_logprob"] <= 0.0
    assert set(confidence["candidates"]) == {"red", "green", "blue"}
    assert next(iter(confidence["candidates"])) == completion.choices[0].message.content == "red"
    assert sum(confidence["candidates"].values()) == pytest.approx(1.0, abs=1e-5)
    plain = client.chat.completions.create(model="m", messages=colour_question())
    assert "crome" not in plain.model_extra  # only when asked
    off = client.chat.completions.create(model="m", messages=colour_question(), extra_body={"explain": False})
    assert "crome" not in off.model_extra


def test_explain_streamed_on_the_finish_chunk(client):
    chunks = list(client.chat.completions.create(model="m", messages=colour_question("blue"), stream=True,
                                                 stream_options={"include_usage": True}, extra_body={"explain": True}))
    carrying = [c for c in chunks if "crome" in (c.model_extra or {})]
    assert len(carrying) == 1 and carrying[0].choices[0].finish_reason == "stop"
    confidence = carrying[0].model_extra["crome"]["confidence"]
    assert next(iter(confidence["candidates"])) == "blue" and confidence["first_token_margin"] > 0


def test_frozen_backbone_has_no_version(client):
    completion = client.chat.completions.create(model="none", messages=colour_question(), extra_body={"explain": True})
    crome = completion.model_extra["crome"]
    assert crome["adapter"] is None and crome["adapter_version"] is None
    assert "candidates" not in crome["confidence"] and crome["confidence"]["first_token_margin"] is not None


@pytest.mark.parametrize("value", ["yes", 1, None, {"on": True}])
def test_explain_of_the_wrong_type_is_refused(served, value):
    body = {"messages": colour_question(), "explain": value}
    response = httpx.post(f"{served[1]}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "explain" and "explain must be true or false" in error["message"]


# --- the watch loop: events, --min-margin, metrics ----------------------------------------------------------
def _watch_events(path, count: int) -> list[dict]:
    wait_for(lambda: sum('"type": "watch"' in line for line in path.read_text().splitlines()) >= count,
             f"{count} watch events in {path}")
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["type"] == "watch"]


def test_watch_events_record_adapter_version_confidence_and_frame(bundle, tmp_path):
    (entry,) = read_manifest(bundle, verify=False).adapters
    events = tmp_path / "events.jsonl"
    with serving(bundle, colour_source(), watch=[QUESTION], events=events, min_margin=0.0) as (server, base):
        for event in _watch_events(events, 3)[:3]:
            assert event["adapter"] == "colour" and event["adapter_version"] == entry.sha256
            assert isinstance(event["frame_id"], int)
            confidence = event["confidence"]
            assert 0.0 <= confidence["first_token_margin"] <= 1.0 and confidence["mean_logprob"] <= 0.0
            assert set(confidence["candidates"]) == {"red", "green", "blue"}  # watch answers score the closed set
            assert event["low_confidence"] is False  # no margin is under 0
        metrics = httpx.get(f"{base}/metrics", timeout=30).text
    count = _sample(metrics, 'crome_first_token_margin_ratio_count{adapter="colour",source="watch"}')
    assert count >= 3
    assert _sample(metrics, 'crome_first_token_margin_ratio_bucket{adapter="colour",le="1.0",source="watch"}') == count


def test_min_margin_flags_and_drop_counts_without_publishing(bundle, tmp_path):
    flagged = tmp_path / "flagged.jsonl"
    with serving(bundle, colour_source(), watch=[QUESTION], events=flagged, min_margin=1.0):
        assert all(e["low_confidence"] for e in _watch_events(flagged, 2))  # every margin is under 1
    dropped = tmp_path / "dropped.jsonl"
    with serving(bundle, colour_source(), watch=[QUESTION], events=dropped, min_margin=1.0,
                 drop_below_margin=True) as (server, base):
        wait_for(lambda: server.watch.prompts()[0]["dropped"] >= 2, "two dropped watch answers")
        (prompt,) = httpx.get(f"{base}/v1/watch/prompts", timeout=30).json()["data"]
        metrics = httpx.get(f"{base}/metrics", timeout=30).text
    assert prompt["dropped"] == prompt["low_confidence"] >= 2 and prompt["answers"] >= prompt["dropped"]
    assert _sample(metrics, 'crome_watch_low_confidence_total{adapter="colour",dropped="true"}') >= 2
    assert not any(json.loads(line)["type"] == "watch" for line in dropped.read_text().splitlines())


@pytest.mark.parametrize("min_margin, drop, message", [(1.5, False, "min_margin must be from 0 to 1"),
                                                        (-0.1, False, "min_margin must be from 0 to 1"),
                                                        (None, True, "drop_below_margin needs min_margin")])
def test_serve_config_out_of_range_is_refused(bundle, min_margin, drop, message):
    from crome_runtime.serve.config import ServeConfig
    from crome_runtime.serve.server import Server

    with pytest.raises(ValueError, match=message):
        Server(ServeConfig(min_margin=min_margin, drop_below_margin=drop), bundle)


def _sample(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")
