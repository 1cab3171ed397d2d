"""How sure an answer is (issue 24 item 2): margin, mean log-probability and the closed set's candidates, on the tiny
FP32 bundle (its colour adapter was trained on three answers: red, green, blue), on both decode paths.

References: the margin and the mean log-probability are recomputed from the engine's own stages (prefill, step);
the candidates' sequence log-probabilities from PyTorch (CromeModel, teacher-forced over the whole answer, no KV
cache) — the runtime shares the prompt's KV cache across candidates (one batched ONNX run, or a walk of C steps).
"""
import math

import numpy as np
import pytest
import torch
from tests.support.bundles import QUESTION, colour_image, copy_bundle, rewrite_manifest, tiny_bundle, torch_threads, \
    with_q8_blocks

from crome_runtime.confidence import Confidence, Meter, answer_set, branch_paths, logsumexp
from crome_runtime.engine import Engine, EngineConfig, GenerationOptions
from crome_runtime.manifest import BundleError, read_manifest, sha256_file
from crome_runtime.sampling import SamplingParams, draw_distribution, sample_reference

ANSWERS = ["blue", "green", "red"]
LOGPROB_TOL = 1e-4  # FP32 ONNX vs PyTorch, summed over an answer's few tokens (measured: ~1e-6)
C_TOL = 0.05  # the tiny bundle's C path decodes on lowered Q8_0 blocks (not the exact weights): a logprob within this


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_backbone):
    with torch_threads(1):
        paths = tiny_bundle(tmp_path_factory)
    gated = with_q8_blocks({"gate": "passed"}, tiny_backbone, copy_bundle(paths["bundle"], tmp_path_factory.mktemp("c") / "b"))
    return {**paths, "gated": gated}


@pytest.fixture(scope="module")
def onnx(bundles):
    return Engine.load(bundles["bundle"], EngineConfig(threads=1))


@pytest.fixture(scope="module")
def c_engine(bundles):
    pytest.importorskip("gguf")
    engine = Engine.load(bundles["gated"], EngineConfig(threads=1))
    assert engine.decoder_backend == "c"
    return engine


@pytest.fixture(scope="module")
def model(bundles, tiny_backbone):
    from crome_edge.adapter_file import load_adapter
    from crome_edge.model import CromeModel

    adapter, _ = load_adapter(bundles["adapter"], tiny_backbone)
    return CromeModel(tiny_backbone, adapter.eval()).eval()


def test_export_records_the_closed_answer_set(bundles):
    (entry,) = read_manifest(bundles["bundle"]).adapters
    assert entry.answers == ANSWERS  # the training data's distinct answers, sorted
    assert answer_set(["a", " a", "b"]) == ["a", "b"]
    assert answer_set([str(i) for i in range(33)]) is None  # over MAX_ANSWER_SET: open-set
    assert answer_set([]) is None


def test_margin_and_mean_logprob_are_the_drawn_distribution(onnx):
    """Recomputed from the engine's stages: prefill logits -> softmax -> top-2; each step's log-probability."""
    frame = onnx.frame(colour_image("green", 3))
    answer = onnx.answer(frame, QUESTION, GenerationOptions(max_new_tokens=6, candidates=True))
    c = answer.confidence
    prefix = onnx.join_prefix(onnx.adapt(onnx.vision(frame, QUESTION), "visual"),
                              onnx.adapt(onnx.embeddings[onnx.prompt_ids(QUESTION)], "text"), QUESTION)
    logits = onnx.prefill(prefix, 8).astype(np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    top = np.sort(p)[-2:]
    assert c.first_token_margin == pytest.approx(top[1] - top[0], abs=1e-9)
    logprobs = []  # greedy again, step by step: each drawn token's log-probability, the stop token included
    for i in range(len(answer.token_ids) + (answer.finish_reason == "stop")):
        token = int(np.argmax(logits))
        assert token == (answer.token_ids[i] if i < len(answer.token_ids) else token)
        logprobs.append(logits[token] - logsumexp(logits))
        logits = onnx.step(token).astype(np.float64)
    assert c.mean_logprob == pytest.approx(float(np.mean(logprobs)), abs=1e-6)
    assert 0.0 <= c.first_token_margin <= 1.0 and c.mean_logprob <= 0.0


def _torch_logprob(model, frame_pixels, answer: str) -> float:
    """log p(answer + stop suffix | image, question) in PyTorch: one teacher-forced forward, no cache."""
    with torch.no_grad():
        visual = model.visual_embeds(torch.from_numpy(frame_pixels[None]), [QUESTION])
        prefix = model.prefix_rows(visual, [QUESTION])[0]  # (L, d)
        ids = torch.tensor(model.answer_ids(answer))
        rows = torch.cat([prefix, model.backbone.embed_tokens(ids[None])[0]])[None]
        hidden = model.backbone.llm.base_model(inputs_embeds=rows).last_hidden_state[0]
        logits = model.backbone.llm.get_output_embeddings()(hidden[prefix.shape[0] - 1: -1]).double()
        return float(torch.log_softmax(logits, -1).gather(1, ids[:, None]).sum())


@pytest.mark.parametrize("colour", ["red", "blue"])
def test_candidates_match_pytorch_teacher_forcing(onnx, model, colour):
    with torch_threads(1):
        frame = onnx.frame(colour_image(colour, 11))
        answer = onnx.answer(frame, QUESTION, GenerationOptions(max_new_tokens=6, candidates=True))
        reference = {a: _torch_logprob(model, frame.pixels, a) for a in ANSWERS}
    c = answer.confidence
    assert list(c.candidates) == sorted(ANSWERS, key=lambda a: -reference[a])  # most likely first
    assert sum(c.candidates.values()) == pytest.approx(1.0, abs=1e-9)
    mass = sum(math.exp(v) for v in reference.values())
    assert c.candidate_mass == pytest.approx(mass, rel=1e-3)
    for a in ANSWERS:
        assert math.log(c.candidates[a] * c.candidate_mass) == pytest.approx(reference[a], abs=LOGPROB_TOL)
    if answer.text in ANSWERS:  # greedy said the set's most likely member (or something outside the set)
        assert next(iter(c.candidates)) == answer.text


def test_c_decoder_gives_the_same_confidence(onnx, c_engine):
    """The C path walks the candidates' shared prefixes in C steps; its numbers track the ONNX decoder's."""
    frame = colour_image("red", 5)
    a = onnx.answer(onnx.frame(frame), QUESTION, GenerationOptions(max_new_tokens=6, candidates=True))
    b = c_engine.answer(c_engine.frame(frame), QUESTION, GenerationOptions(max_new_tokens=6, candidates=True))
    assert b.confidence.first_token_margin == a.confidence.first_token_margin  # prefill is the ONNX decoder in both
    assert b.token_ids == a.token_ids
    assert b.confidence.mean_logprob == pytest.approx(a.confidence.mean_logprob, abs=C_TOL)
    assert list(b.confidence.candidates) == list(a.confidence.candidates)
    for answer, p in a.confidence.candidates.items():
        assert b.confidence.candidates[answer] == pytest.approx(p, abs=C_TOL)


def test_branch_logits_equal_stepping_on_each_decoder(onnx, c_engine):
    """Each path's logits = prefill, then stepping its tokens one by one on the same decoder (same kernels)."""
    frame = onnx.frame(colour_image("blue", 8))
    prefix = onnx.join_prefix(onnx.adapt(onnx.vision(frame, QUESTION), "visual"),
                              onnx.adapt(onnx.embeddings[onnx.prompt_ids(QUESTION)], "text"), QUESTION)
    paths = branch_paths([[5, 9, 2], [5, 9, 7, 2], [3, 2], [5, 4]])
    assert paths == [(3,), (5,), (5, 9), (5, 9, 7)]
    for engine, tol in ((onnx, 1e-4), (c_engine, 1e-5)):
        engine.prefill(prefix, 8)
        engine.step(11)  # an answer token decoded after the prefix: ignored by the branches
        got = engine.branch_logits(prefix.shape[0], paths)
        for path, row in zip(paths, got):
            engine.prefill(prefix, 8)
            for token in path:
                want = engine.step(token).copy()
            np.testing.assert_allclose(row, want, atol=tol, rtol=0)


def test_version_and_frozen_backbone(onnx, bundles):
    answer = onnx.answer(colour_image("red", 1), QUESTION, GenerationOptions(candidates=True))
    assert answer.adapter == "colour" and answer.adapter_version == sha256_file(bundles["adapter"])
    frozen = onnx.answer(colour_image("red", 1), QUESTION, GenerationOptions(adapter="none", candidates=True))
    assert frozen.adapter is None and frozen.adapter_version is None
    assert frozen.confidence.candidates is None and frozen.confidence.first_token_margin is not None
    skipped = onnx.answer(colour_image("red", 1), QUESTION)  # not asked: not scored (a decoder run per answer)
    assert skipped.confidence.candidates is None
    assert skipped.confidence.first_token_margin == answer.confidence.first_token_margin
    nothing = onnx.answer(colour_image("red", 1), QUESTION, GenerationOptions(max_new_tokens=0))
    assert nothing.confidence.first_token_margin is None and nothing.confidence.mean_logprob is None
    assert set(answer.confidence.to_dict()) == {"first_token_margin", "mean_logprob", "candidates", "candidate_mass"}
    assert Confidence().to_dict() == {"first_token_margin": None, "mean_logprob": None}


def test_old_bundle_without_answers_is_open_set(bundles, tmp_path):
    old = copy_bundle(bundles["bundle"], tmp_path / "old")
    rewrite_manifest(old, lambda m: m["adapters"][0].pop("answers"))
    answer = Engine.load(old, EngineConfig(threads=1)).answer(colour_image("red", 1), QUESTION,
                                                              GenerationOptions(candidates=True))
    assert answer.confidence.candidates is None and answer.confidence.first_token_margin is not None


@pytest.mark.parametrize("answers", [["red", "red"], "red", [""], [1], [f"a{i}" for i in range(33)]])
def test_malformed_answer_set_is_refused(bundles, tmp_path, answers):
    bad = copy_bundle(bundles["bundle"], tmp_path / "bad")
    rewrite_manifest(bad, lambda m: m["adapters"][0].__setitem__("answers", answers))
    with pytest.raises(BundleError, match="answers must be a list of at most 32 distinct non-empty strings"):
        read_manifest(bad, verify=False)


@pytest.mark.parametrize("params", [SamplingParams(temperature=0.7), SamplingParams(temperature=1.3, top_k=5),
                                    SamplingParams(temperature=0.9, top_p=0.8),
                                    SamplingParams(temperature=1.0, top_k=20, top_p=0.5, repetition_penalty=1.3)])
def test_draw_distribution_is_what_the_sampler_draws_from(params):
    """For every u, sample_reference picks the first id whose cumulative probability exceeds u."""
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal(300) * 3).astype(np.float32)
    recent = [1, 2, 3]
    ids, p = draw_distribution(logits, params, recent)
    ids = np.arange(logits.size) if ids is None else ids
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    cdf = np.cumsum(p)
    for u in rng.random(200):
        assert sample_reference(logits, params, recent, float(u)) == ids[min(np.searchsorted(cdf, u, "right"), ids.size - 1)]


def test_meter_greedy_is_the_softmax_at_temperature_one():
    logits = np.array([2.0, 1.0, 0.0, -1.0], np.float32)
    meter = Meter(SamplingParams())
    meter.drawn(logits, [], 0)
    meter.drawn(logits, [], 1)
    p = np.exp(logits.astype(np.float64)) / np.exp(logits.astype(np.float64)).sum()
    c = meter.confidence()
    assert c.first_token_margin == pytest.approx(p[0] - p[1], abs=1e-12)
    assert c.mean_logprob == pytest.approx((math.log(p[0]) + math.log(p[1])) / 2, abs=1e-12)
