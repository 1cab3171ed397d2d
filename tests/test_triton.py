"""Triton Inference Server: the real tritonserver 2.51 from the nvidia-pytriton wheel (fetched once into the user
cache with `pip download --no-deps`) on free loopback ports, serving the repository `crome-edge triton-repo`
writes for the tiny bundle. Checks: answers equal `crome-edge run`'s for the same frames and prompts (encoded
image and preprocessed pixels), concurrent cameras are batched into one vision run, a bad request is refused
while the model keeps serving, /v2/health/ready and the metrics endpoint answer, `crome-edge client` streams
two cameras, and SIGTERM stops the server cleanly (exit 0). A LLaVA and a SmolVLM/Idefics3 bundle (slow: small
random-weight directories, trained and exported first) answer through the server as `run` answers, batched too.
The repository's configs (python and GPU variants) are checked against Triton's ModelConfig schema without a
server. Every wait is bounded; nothing here is a speed assertion.
"""
import json
import platform
import threading
import urllib.request
from contextlib import contextmanager

import cv2
import numpy as np
import pytest
from tests.support.bundles import (COLOURS, QUESTION, WARM_QUESTION, colour_image, copy_bundle, multi_bundle,
                                   rewrite_manifest, tiny_bundle, vlm_bundle)

from crome_cli.main import main
from crome_runtime.triton import pbtxt
from crome_runtime.triton import server as triton
from crome_runtime.triton.client import TritonClient, TritonRequestError
from crome_runtime.triton.repository import RepositoryConfig, RepositoryError, write_repository

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64",
                                reason="the nvidia-pytriton wheel's tritonserver is built for Linux x86_64")
WAIT_S = 120.0  # bound on start-up on a loaded 2-core machine (ready in ~1.5 s when idle)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)["bundle"]


@pytest.fixture(scope="module")
def repository(bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("triton") / "models"
    # a long queue delay so that requests sent together are batched together even on a loaded machine
    assert main(["triton-repo", str(bundle), str(out), "--max-batch-size", "8", "--max-queue-delay-us", "200000"]) == 0
    return out


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory):
    install = triton.locate()
    log = tmp_path_factory.mktemp("triton-log") / "tritonserver.log"
    with triton.TritonServer(install, repository, triton.ServerConfig(ports=triton.Ports(0, 0, 0)), log=log) as srv:
        srv.wait_ready(WAIT_S)
        yield srv


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The bundle of two tiny adapters (colour, warm), each routed its training question."""
    return multi_bundle(tmp_path_factory)["both"]


@contextmanager
def _serving(repository, tmp_path):
    """A tritonserver on `repository` (ephemeral ports, its log in tmp_path), ready, and a client of it."""
    with triton.TritonServer(triton.locate(), repository, triton.ServerConfig(ports=triton.Ports(0, 0, 0)),
                             log=tmp_path / "tritonserver.log") as srv:
        srv.wait_ready(WAIT_S)
        with TritonClient(srv.url) as client:
            yield srv, client


def _cameras_at_once(url: str, images: list) -> list:
    """QUESTION about each image, one client thread per image, released together (a barrier) so that Triton can
    batch them; each thread's result, None where it got none within WAIT_S."""
    start, results = threading.Barrier(len(images)), [None] * len(images)

    def camera(i: int) -> None:
        with TritonClient(url) as client:
            start.wait(timeout=30)
            results[i] = client.infer(QUESTION, image=_png(images[i]))

    threads = [threading.Thread(target=camera, args=(i,)) for i in range(len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    return results


def _png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


def _run_cli(capsys, bundle, image_path, prompts, *extra) -> list[dict]:
    argv = ["run", "--bundle", str(bundle), "--image", str(image_path), "--json", "--threads", "1", *extra]
    for prompt in prompts:
        argv += ["--prompt", prompt]
    capsys.readouterr()
    assert main(argv) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_answers_equal_crome_edge_run_for_the_same_frames_and_prompts(server, bundle, tmp_path, capsys):
    from crome_runtime.engine import Engine, EngineConfig

    prompts = [QUESTION, "Is it red?"]
    engine = Engine.load(bundle, EngineConfig(threads=1))
    compared = 0
    with TritonClient(server.url) as client:
        for i, name in enumerate(COLOURS):
            image = colour_image(name, 100 + i)
            path = tmp_path / f"{name}.png"
            path.write_bytes(_png(image))
            expected = _run_cli(capsys, bundle, path, prompts)
            assert [e["prompt"] for e in expected] == prompts
            pixels = engine.frame(str(path)).pixels  # the same preprocessing `run` applies
            for want in expected:
                got = client.infer(want["prompt"], image=path.read_bytes())
                assert (got.text, got.token_ids, got.finish_reason) == (want["answer"], want["tokens"],
                                                                       want["finish_reason"])
                from_pixels = client.infer(want["prompt"], pixels=pixels)
                assert from_pixels.token_ids == want["tokens"]
                compared += 1
            assert expected[0]["answer"] == name  # the tiny adapter learned the colour question
    assert compared == len(COLOURS) * len(prompts)


def test_a_bundle_of_several_adapters_answers_like_crome_edge_run_per_adapter(both, tmp_path_factory, tmp_path,
                                                                             capsys):
    """A multi-adapter bundle through the real tritonserver: every request is routed as `crome-edge run` routes it
    (colour, warm, or the frozen backbone) or to the ADAPTER it names, with run's answer, token for token."""
    from crome_runtime.engine import GenerationOptions

    out = tmp_path_factory.mktemp("triton-both") / "models"
    assert main(["triton-repo", str(both), str(out), "--max-batch-size", "8"]) == 0
    prompts = [QUESTION, WARM_QUESTION, "How many parts are there?"]
    with _serving(out, tmp_path) as (srv, client):
        for i, name in enumerate(COLOURS):
            path = tmp_path / f"{name}.png"
            path.write_bytes(_png(colour_image(name, 300 + i)))
            expected = _run_cli(capsys, both, path, prompts)
            assert [e["adapter"] for e in expected] == ["colour", "warm", None]
            for want in expected:
                got = client.infer(want["prompt"], image=path.read_bytes())
                assert (got.text, got.token_ids, got.timings["adapter"]) == (want["answer"], want["tokens"],
                                                                            want["adapter"])
            named = _run_cli(capsys, both, path, [QUESTION], "--adapter", "warm")[0]
            got = client.infer(QUESTION, image=path.read_bytes(), options=GenerationOptions(adapter="warm"))
            assert (got.token_ids, got.timings["adapter"]) == (named["tokens"], "warm")
        with pytest.raises(TritonRequestError, match="no adapter 'nope'"):
            client.infer(QUESTION, image=path.read_bytes(), options=GenerationOptions(adapter="nope"))


def test_the_batched_vision_stage_primes_each_adapters_cache(both, bundle):
    """prime_vision without Triton: one vision batch for the frames, each adapter's visual branch over its own
    requests, into the engine's own caches, so every answer starts at prefill (its vision stage a cache hit) and
    equals an unbatched engine's answer; a bundle of one adapter likewise (no second vision run)."""
    from crome_runtime.engine import Engine, EngineConfig
    from crome_runtime.triton.backend import parse_job, prime_vision

    other = "How many parts are there?"
    cases = {both: [(QUESTION, None, "colour"), (WARM_QUESTION, None, "warm"), (other, None, None),
                    (QUESTION, "warm", "warm"), (QUESTION, "none", None)],
             bundle: [(QUESTION, None, "colour"), (WARM_QUESTION, None, None)]}
    for path, requests in cases.items():
        engine, plain = Engine.load(path, EngineConfig(threads=1)), Engine.load(path, EngineConfig(threads=1))
        pixels = engine.frame(colour_image("red", 7)).pixels
        jobs = []
        for prompt, adapter, _ in requests:
            arrays = {"PROMPT": np.array([[prompt.encode()]], dtype=object), "PIXELS": pixels[None]}
            if adapter is not None:
                arrays["ADAPTER"] = np.array([[adapter.encode()]], dtype=object)
            jobs.append(parse_job(engine, arrays))
        assert [job.adapter for job in jobs] == [routed for _, _, routed in requests]
        batch, _ = prime_vision(engine, jobs)
        # one vision row per distinct question (the tiny Q-Former reads the question), whatever the adapters
        assert batch == len({prompt for prompt, _, _ in requests})
        for job in jobs:
            answer = engine.answer(job.frame, job.prompt, job.options)
            assert answer.cache["vision"] and "vision" not in answer.timings_ms, job
            assert answer.adapter == job.adapter
            assert answer.token_ids == plain.answer(plain.frame_from_pixels(pixels), job.prompt, job.options).token_ids


def test_a_requests_options_start_from_the_routed_adapters_defaults(both, tmp_path):
    """The model's answer stops at the routed adapter's own generation cap, as `crome-edge run`'s does (the issue-20
    defect: options resolved against the bundle-wide defaults); the frozen backbone keeps the bundle's; a value the
    request sends wins."""
    from crome_runtime.engine import Engine, EngineConfig
    from crome_runtime.triton.backend import parse_job

    bundle = copy_bundle(both, tmp_path / "caps")

    def caps(manifest: dict) -> None:
        for entry in manifest["adapters"]:
            entry["max_new_tokens"] = 1  # the bundle-wide cap stays 7: a one-token answer shows whose cap ran
        manifest["generation"]["max_new_tokens"] = 7

    rewrite_manifest(bundle, caps)
    engine = Engine.load(bundle, EngineConfig(threads=1))
    pixels = engine.frame(colour_image("red", 7)).pixels

    def answer(prompt: str, **extra: np.ndarray):
        job = parse_job(engine, {"PROMPT": np.array([[prompt.encode()]], dtype=object), "PIXELS": pixels[None],
                                 **extra})
        return engine.answer(job.frame, job.prompt, job.options)

    for prompt, adapter in ((QUESTION, "colour"), (WARM_QUESTION, "warm")):
        got = answer(prompt)
        assert (got.adapter, len(got.token_ids), got.finish_reason) == (adapter, 1, "length")
    frozen = answer("How many parts are there?")
    assert frozen.adapter is None and (frozen.finish_reason == "stop" or len(frozen.token_ids) == 7)
    asked = answer(QUESTION, MAX_NEW_TOKENS=np.array([[2]], np.int32))
    assert asked.adapter == "colour" and 0 < len(asked.token_ids) <= 2


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llava", "idefics3"])
def test_llava_and_smolvlm_bundles_answer_through_triton_as_crome_edge_run(family, tmp_path_factory, tmp_path, capsys):
    """A LLaVA and a SmolVLM/Idefics3 bundle (small random-weight directories) through the real tritonserver: the
    repository builds from the bundle; an encoded frame and its preprocessed pixels get `crome-edge run`'s answer
    token for token, routed to the adapter or to the frozen backbone as run routes them; concurrent frames go
    through the connector's vision graph as one batch and still get the engine's answers."""
    from crome_runtime.engine import Engine, EngineConfig

    bundle = vlm_bundle(tmp_path_factory, family)
    out = tmp_path / "models"
    assert main(["triton-repo", str(bundle), str(out), "--max-batch-size", "4", "--max-queue-delay-us", "200000"]) == 0
    size = json.loads((bundle / "manifest.json").read_text())["backbone"]["image_size"]
    pixels_input = next(i for i in pbtxt.check_repository(out)["crome"].input if i.name == "PIXELS")
    assert list(pixels_input.dims) == [3, size, size]
    engine = Engine.load(bundle, EngineConfig(threads=1))
    prompts = [QUESTION, "How many parts are there?"]
    images = [colour_image(name, 400 + i, size=48) for i, name in enumerate(COLOURS)]
    with _serving(out, tmp_path) as (srv, client):
        for i, image in enumerate(images):
            path = tmp_path / f"frame{i}.png"
            path.write_bytes(_png(image))
            expected = _run_cli(capsys, bundle, path, prompts)
            assert [e["adapter"] for e in expected] == ["colour", None]
            pixels = engine.frame(str(path)).pixels  # what `run` feeds the vision graph
            for want in expected:
                got = client.infer(want["prompt"], image=path.read_bytes())
                assert (got.text, got.token_ids, got.finish_reason, got.timings["adapter"]) == (
                    want["answer"], want["tokens"], want["finish_reason"], want["adapter"]), (family, i)
                assert client.infer(want["prompt"], pixels=pixels).token_ids == want["tokens"], (family, i)

        images = [colour_image(name, 600 + i, size=48) for i, name in enumerate(COLOURS)]  # not in the vision cache
        expected = [engine.answer(engine.frame(image), QUESTION).token_ids for image in images]
        results = _cameras_at_once(srv.url, images)
    assert all(r is not None for r in results), "every camera got an answer"
    assert [r.token_ids for r in results] == expected
    assert max(r.timings["vision_batch"] for r in results) > 1, [r.timings for r in results]


@pytest.mark.parametrize("family", ["llava", "idefics3"])
def test_gpu_variant_of_a_llava_or_smolvlm_bundle_is_valid(family, tmp_path_factory, tmp_path):
    """The GPU variant's native vision model takes the tower's frames and returns the connector's (Nq, d) visual
    tokens (the Idefics3 graph's token axis is symbolic after the pixel shuffle; the python model sends and expects
    the manifest's)."""
    from crome_runtime import formats

    bundle = vlm_bundle(tmp_path_factory, family)
    b = json.loads((bundle / "manifest.json").read_text())["backbone"]
    models = pbtxt.check_repository(write_repository(bundle, tmp_path / "models", RepositoryConfig(variant="gpu")))
    assert set(models) == {"crome", "crome_vision", "crome_adapter_visual_colour"}
    vision, adapter = models["crome_vision"], models["crome_adapter_visual_colour"]
    assert [list(t.dims) for t in vision.input] == [[3, b["image_size"], b["image_size"]]]
    visual = next(t for t in vision.output if t.name == formats.OUT_VISUAL_EMBEDS)
    assert list(visual.dims) == [b["num_query_tokens"], b["d_model"]]
    assert [list(t.dims) for t in adapter.input] == [list(t.dims) for t in adapter.output] == [
        [b["num_query_tokens"], b["d_model"]]]

def test_concurrent_cameras_are_batched_into_one_vision_run(server, bundle):
    from crome_runtime.engine import Engine, EngineConfig

    cameras = 6
    images = [colour_image(list(COLOURS)[i % 3], 200 + i) for i in range(cameras)]
    engine = Engine.load(bundle, EngineConfig(threads=1))
    expected = [engine.answer(engine.frame(image), QUESTION).token_ids for image in images]
    results = _cameras_at_once(server.url, images)
    assert all(r is not None for r in results), "every camera got an answer"
    assert [r.token_ids for r in results] == expected
    batches = [r.timings["requests_in_batch"] for r in results]
    assert max(batches) > 1, f"concurrent requests were not batched: {batches}"
    assert max(r.timings["vision_batch"] for r in results) > 1  # one vision.onnx run for several frames
    with TritonClient(server.url) as client:
        stats = client.statistics()["model_stats"][0]
    assert stats["execution_count"] < stats["inference_count"]  # Triton's own count: fewer executions than requests


def test_a_bad_request_is_refused_and_the_model_keeps_serving(server):
    with TritonClient(server.url) as client:
        with pytest.raises(TritonRequestError, match="IMAGE input|image"):
            client.infer(QUESTION, image=b"not an image at all")
        with pytest.raises(TritonRequestError, match="exactly one of IMAGE"):
            client.infer(QUESTION)
        with pytest.raises(TritonRequestError, match="temperature|>= 0"):
            from crome_runtime.engine import GenerationOptions

            client.infer(QUESTION, image=_png(colour_image("red", 1)), options=GenerationOptions(temperature=-1.0))
        assert client.infer(QUESTION, image=_png(colour_image("green", 2))).text == "green"


def test_health_ready_and_metrics_are_reachable(server):
    with urllib.request.urlopen(f"{server.url}/v2/health/ready", timeout=30) as response:
        assert response.status == 200
    with TritonClient(server.url) as client:
        assert client.model_ready()
        config = client.model_config()
        client.infer(QUESTION, image=_png(colour_image("blue", 3)))
    assert config["max_batch_size"] == 8 and config["dynamic_batching"]
    assert {i["name"] for i in config["input"]} >= {"IMAGE", "PIXELS", "PROMPT", "MAX_NEW_TOKENS"}
    with urllib.request.urlopen(server.metrics_url, timeout=30) as response:
        metrics = response.read().decode()
    line = next(x for x in metrics.splitlines() if x.startswith("nv_inference_request_success{") and 'model="crome"' in x)
    assert float(line.split()[-1]) >= 1


def test_client_command_streams_two_cameras(server, tmp_path, capsys):
    videos = []
    for c, name in enumerate(("red", "blue")):
        path = tmp_path / f"camera{c}.avi"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (64, 64))
        for i in range(40):
            writer.write(colour_image(name, i, size=64))
        writer.release()
        videos.append(path)
    capsys.readouterr()
    argv = ["client", "--triton", server.url, "--camera", str(videos[0]), "--camera", str(videos[1]),
            "--prompt", QUESTION, "--frames", "3", "--json", "--loop"]
    assert main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    answers = [line for line in lines if "answer" in line]
    summaries = {line["summary"]["camera"]: line["summary"] for line in lines if "summary" in line}
    for c, name in enumerate(("red", "blue")):
        mine = [a for a in answers if a["camera"] == str(videos[c])]
        assert len(mine) == 3 and all(a["answer"] == name for a in mine)
        summary = summaries[str(videos[c])]
        assert summary["answers"] == 3 and summary["errors"] == 0 and summary["p50_ms"] > 0


def test_sigterm_stops_the_server_cleanly(repository, tmp_path):
    srv = triton.TritonServer(triton.locate(), repository, triton.ServerConfig(ports=triton.Ports(0, 0, 0)),
                              log=tmp_path / "log.txt").start()
    try:
        srv.wait_ready(WAIT_S)
        with TritonClient(srv.url) as client:  # closed before SIGTERM: nothing to wait out
            assert client.infer(QUESTION, image=_png(colour_image("red", 4))).text == "red"
    finally:
        status = srv.stop()
    assert status == 0
    assert not TritonClient(srv.url).ready()


# --- the repository's configs, without a server ---------------------------------------------------------
def test_python_repository_configs_match_the_schema_and_the_bundle(repository):
    models = pbtxt.check_repository(repository)
    config = models["crome"]
    assert config.backend == "python" and config.max_batch_size == 8
    assert config.HasField("dynamic_batching") and config.instance_group[0].count == 1
    assert (repository / "crome" / "1" / "bundle" / "manifest.json").is_file()


@pytest.mark.parametrize("gpu_backend", ["onnxruntime", "tensorrt"])
def test_gpu_variant_is_valid_against_tritons_schema(both, tmp_path, gpu_backend):
    """The GPU variant of a bundle of several adapters: the vision graph and each adapter's visual branch as native
    models (a bundle has no unnamed adapter_visual.onnx)."""
    import onnxruntime as ort

    bundle = both
    out = write_repository(bundle, tmp_path / "models", RepositoryConfig(variant="gpu", gpu_backend=gpu_backend))
    models = pbtxt.check_repository(out, expect_files=gpu_backend == "onnxruntime")
    assert set(models) == {"crome", "crome_vision", "crome_adapter_visual_colour", "crome_adapter_visual_warm"}
    if gpu_backend == "onnxruntime":
        assert (out / "crome_adapter_visual_warm" / "1" / "model.onnx").read_bytes() == \
            (bundle / "warm.adapter_visual.onnx").read_bytes()
    vision = models["crome_vision"]
    assert vision.platform == {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}[gpu_backend]
    kind = vision.instance_group[0].DESCRIPTOR.fields_by_name["kind"].enum_type.values_by_name["KIND_GPU"].number
    assert vision.instance_group[0].kind == kind
    graph = ort.InferenceSession(str(bundle / "vision.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in vision.input] == [i.name for i in graph.get_inputs()]
    assert [list(i.dims) for i in vision.input][0] == list(graph.get_inputs()[0].shape[1:])
    params = {k: v.string_value for k, v in models["crome"].parameters.items()}
    assert params["vision_model"] == "crome_vision" and json.loads(params["adapter_visual_models"]) == {
        "colour": "crome_adapter_visual_colour", "warm": "crome_adapter_visual_warm"}
    if gpu_backend == "tensorrt":
        assert "trtexec --onnx=" in (out / "crome_vision" / "BUILD_TENSORRT.md").read_text()


def test_configs_triton_would_refuse_are_refused(tmp_path):
    with pytest.raises(pbtxt.ConfigError, match="no field named"):
        pbtxt.render({"name": "m", "backend": "python", "max_batchsize": 4})
    model = tmp_path / "m"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text("")
    cases = {
        'name: "m" backend: "python" max_batch_size: 0 dynamic_batching {}': "max_batch_size > 0",
        'name: "m" backend: "python" input { name: "A" data_type: TYPE_FP32 dims: 0 }': "dims",
        'name: "other" backend: "python"': "differs from its directory",
        'name: "m" backend: "python" max_batch_size: 4 input { name: "A" dims: 1 }': "no data_type",
        'name: "m"': "needs a backend",
        'name: "m" backend: "python" bogus: 1': "not a Triton ModelConfig",
    }
    for text, message in cases.items():
        (model / "config.pbtxt").write_text(text)
        with pytest.raises(pbtxt.ConfigError, match=message):
            pbtxt.check(model / "config.pbtxt")


def test_an_existing_output_directory_is_refused(bundle, tmp_path):
    (tmp_path / "models").mkdir()
    with pytest.raises(RepositoryError, match="already exists"):
        write_repository(bundle, tmp_path / "models")
