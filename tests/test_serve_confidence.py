"""Where users see an answer's confidence and adapter version when serving (issue 24 items 2-3), on the tiny bundle
(its colour adapter: a closed set of red, green, blue): the API's `crome` extension object with `"explain": true`
(through the official `openai` client, which keeps it in `model_extra`), streamed on the finish chunk; its bad
input."""
import httpx
import openai
import pytest
from tests.support.bundles import colour_image, tiny_bundle
from tests.support.serve import QUESTION, colour_source, png_data_uri, serving

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


def _ask(colour="red"):
    return [{"role": "user", "content": [{"type": "text", "text": QUESTION},
                                         {"type": "image_url", "image_url": {"url": png_data_uri(colour_image(colour, 42))}}]}]


def test_explain_adds_the_crome_object(client, bundle):
    (entry,) = read_manifest(bundle, verify=False).adapters
    completion = client.chat.completions.create(model="m", messages=_ask(), extra_body={"explain": True})
    crome = completion.model_extra["crome"]
    assert crome["adapter"] == "colour" and crome["adapter_version"] == entry.sha256
    confidence = crome["confidence"]
    assert 0.0 < confidence["first_token_margin"] <= 1.0 and confidence["mean_logprob"] <= 0.0
    assert set(confidence["candidates"]) == {"red", "green", "blue"}
    assert next(iter(confidence["candidates"])) == completion.choices[0].message.content == "red"
    assert sum(confidence["candidates"].values()) == pytest.approx(1.0, abs=1e-5)
    plain = client.chat.completions.create(model="m", messages=_ask())
    assert "crome" not in plain.model_extra  # only when asked
    off = client.chat.completions.create(model="m", messages=_ask(), extra_body={"explain": False})
    assert "crome" not in off.model_extra


def test_explain_streamed_on_the_finish_chunk(client):
    chunks = list(client.chat.completions.create(model="m", messages=_ask("blue"), stream=True,
                                                 stream_options={"include_usage": True}, extra_body={"explain": True}))
    carrying = [c for c in chunks if "crome" in (c.model_extra or {})]
    assert len(carrying) == 1 and carrying[0].choices[0].finish_reason == "stop"
    confidence = carrying[0].model_extra["crome"]["confidence"]
    assert next(iter(confidence["candidates"])) == "blue" and confidence["first_token_margin"] > 0


def test_frozen_backbone_has_no_version(client):
    completion = client.chat.completions.create(model="none", messages=_ask(), extra_body={"explain": True})
    crome = completion.model_extra["crome"]
    assert crome["adapter"] is None and crome["adapter_version"] is None
    assert "candidates" not in crome["confidence"] and crome["confidence"]["first_token_margin"] is not None


@pytest.mark.parametrize("value", ["yes", 1, None, {"on": True}])
def test_explain_of_the_wrong_type_is_refused(served, value):
    body = {"messages": _ask(), "explain": value}
    response = httpx.post(f"{served[1]}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "explain" and "explain must be true or false" in error["message"]
