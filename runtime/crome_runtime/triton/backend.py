"""The python-backend model: a bundle answering Triton requests through the torch-free Engine.

Triton's stub process imports the repository's model.py, which imports `TritonPythonModel` from here. Each
model instance (instance_group count) is its own process with its own Engine. Per `execute` call (a batch
the dynamic batcher formed from concurrent requests):

    requests ─▶ parse (IMAGE bytes via the runtime's decoder, or PIXELS; PROMPT; optional options and ADAPTER),
                route each to its adapter (the bundle's routes, or the ADAPTER it names; none: the frozen backbone)
             ─▶ vision stage for every frame not in the engine's cache, as ONE batch (vision.onnx at batch B,
                or, in the GPU variant, one BLS request to the native vision model), then each adapter's
                visual branch over its requests' rows (the engine's kernel, or a BLS request to that
                adapter's native model); the results go into the engine's own per-adapter caches
             ─▶ per request: engine.answer / engine.stream (prefill + KV-cache decode, batch 1; the vision
                output comes from the cache the batch filled) ─▶ TEXT, TOKEN_IDS, FINISH_REASON, TIMINGS

A bad request gets its own error response; the others in the batch are answered. Decoupled (streaming)
models send one response per text piece and a last one with the token ids, the finish reason and timings.
The batching itself (`prime_vision`) and request parsing are plain functions, so they are tested without
Triton too. Not here: writing the repository (repository.py).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crome_runtime import formats
from crome_runtime.adapter_entries import NONE
from crome_runtime.engine import Engine, EngineConfig, Frame, GenerationOptions, vision_key
from crome_runtime.errors import CromeError
from crome_runtime.triton import io
from crome_runtime.vision_inputs import vision_feeds
from crome_runtime import input_files


@dataclass
class Job:
    frame: Frame
    prompt: str
    options: GenerationOptions  # options.adapter: the adapter that answers, as routed ("none": the frozen backbone)

    @property
    def adapter(self) -> str | None:
        return None if self.options.adapter == NONE else self.options.adapter


class RequestError(CromeError, ValueError):
    """One request that cannot be answered as sent (the message says which input and why)."""


# --- parsing (no Triton types: arrays by input name) -----------------------------------------------------
def parse_job(engine: Engine, arrays: dict[str, np.ndarray]) -> Job:
    """Input arrays of one request (each with its leading batch dimension of 1) -> Job, or RequestError."""
    from crome_runtime.preprocess import decode_image

    prompt = _one_string(arrays, io.PROMPT)
    if prompt is None:
        raise RequestError(f"{io.PROMPT} is required (the question about the image)")
    image, pixels = arrays.get(io.IMAGE), arrays.get(io.PIXELS)
    if (image is None) == (pixels is None):
        raise RequestError(f"send exactly one of {io.IMAGE} (encoded image bytes) or {io.PIXELS} (a preprocessed "
                           f"(3, S, S) float32 frame)")
    try:
        if image is not None:
            data = _one_string(arrays, io.IMAGE, decode=False)
            frame = engine.frame(decode_image(data, "the IMAGE input"))
        else:
            assert pixels is not None
            frame = engine.frame_from_pixels(np.asarray(pixels, np.float32).reshape(pixels.shape[-3:]))
    except CromeError as error:
        raise RequestError(str(error)) from None
    options = GenerationOptions()
    for tensor in io.inputs(engine.manifest.backbone.image_size):
        if tensor.option and tensor.name in arrays:
            if tensor.data_type == "STRING":
                setattr(options, tensor.option, _one_string(arrays, tensor.name))
                continue
            value = np.asarray(arrays[tensor.name]).reshape(-1)
            if value.size != 1:
                raise RequestError(f"{tensor.name} must hold one value, got {value.size}")
            setattr(options, tensor.option, value[0].item())
    try:
        adapter = engine.route(prompt, options.adapter)  # once: the vision stage and the answer use this adapter
        options.adapter = adapter if adapter is not None else NONE
        options.resolve(engine.generation_defaults(adapter))
    except CromeError as error:
        raise RequestError(str(error)) from None
    return Job(frame, prompt, options)


def _one_string(arrays: dict, name: str, decode: bool = True):
    if name not in arrays:
        return None
    values = np.asarray(arrays[name], dtype=object).reshape(-1)
    if values.size != 1:
        raise RequestError(f"{name} must hold one element per request, got {values.size}")
    value = values[0]
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, (bytes, bytearray)):
        raise RequestError(f"{name} must be BYTES")
    if not decode:
        return bytes(value)
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(f"{name} is not UTF-8 text") from None


# --- the batched vision stage ----------------------------------------------------------------------------
def missing_vision(engine: Engine, jobs: list[Job]) -> dict:
    """{(adapter, vision key): job} for the jobs whose adapted visual queries are not in their adapter's cache yet
    (one per distinct pair)."""
    aware = engine.manifest.backbone.instruction_aware
    todo: dict = {}
    for job in jobs:
        key = (job.adapter, vision_key(job.frame, job.prompt, aware))
        if key not in todo and engine.visual_cache(job.adapter).get(key[1]) is None:
            todo[key] = job
    return todo


def prime_vision(engine: Engine, jobs: list[Job], run_vision=None, run_adapter=None) -> tuple[int, float]:
    """Runs the vision stage once for all uncached frames of `jobs`, then each adapter's visual branch over its
    jobs' rows, and puts the results into the engine's caches (the vision graph's output, and each adapter's
    adapted queries), so the answers that follow start at prefill. -> (vision batch size, ms).

    run_vision(pixels (B,3,S,S), questions) -> (B, Nq, d): the GPU variant's BLS call to the native vision model;
    default: the engine's own vision session at batch B. run_adapter(adapter, (n, Nq, d)) -> (n, Nq, d): the GPU
    variant's BLS call to that adapter's native model; default: the engine's adapter (C kernel or graph)."""
    todo = missing_vision(engine, jobs)
    if not todo:
        return 0, 0.0
    start = time.perf_counter()
    b = engine.manifest.backbone
    raw: dict = {}  # vision key -> (Nq, d): this batch's vision outputs and the cached ones it needs
    needed: dict = {}  # vision key -> job: frames the vision graph has not seen
    for (_, key), job in todo.items():
        if key not in raw and key not in needed:
            cached = engine.raw_vision_cache.get(key)
            if cached is None:
                needed[key] = job
            else:
                raw[key] = cached
    if needed:
        pixels = np.stack([job.frame.pixels for job in needed.values()])  # (B, 3, S, S)
        questions = [job.prompt for job in needed.values()]
        if run_vision is None:
            feeds = vision_feeds(pixels, questions, b, engine.bundle.qformer_tokenizer)
            visual = engine.sessions["vision"].run([formats.OUT_VISUAL_EMBEDS], feeds)[0]  # (B, Nq, d)
        else:
            visual = run_vision(pixels, questions)
        if visual.shape != (len(needed), b.num_query_tokens, b.d_model):
            raise RequestError(f"{formats.VISION_ONNX} returned {visual.shape} for a batch of {len(needed)}")
        for key, rows in zip(needed, visual):
            raw[key] = np.ascontiguousarray(rows)
            engine.raw_vision_cache.put(key, raw[key])
    by_adapter: dict = {}
    for adapter, key in todo:
        by_adapter.setdefault(adapter, []).append(key)
    for adapter, keys in by_adapter.items():
        rows = np.stack([raw[key] for key in keys])  # (n, Nq, d)
        if adapter is None:
            adapted = rows
        elif run_adapter is not None:
            adapted = run_adapter(adapter, rows)
        else:  # row-wise: all n*Nq rows through the adapter at once
            adapted = engine.adapt(rows.reshape(-1, b.d_model), "visual", adapter).reshape(rows.shape)
        cache = engine.visual_cache(adapter)
        for key, value in zip(keys, adapted):
            cache.put(key, np.ascontiguousarray(value))
    return len(needed), (time.perf_counter() - start) * 1e3


def timings_json(answer, batch: int, batch_ms: float, requests: int) -> str:
    return json.dumps({"stages_ms": {k: round(v, 3) for k, v in answer.timings_ms.items()},
                       "ttft_ms": answer.ttft_ms, "total_ms": answer.total_ms,
                       "prompt_tokens": answer.prompt_tokens, "cache": answer.cache, "adapter": answer.adapter,
                       "vision_batch": batch, "vision_batch_ms": round(batch_ms, 3), "requests_in_batch": requests,
                       "pid": os.getpid()})


def engine_config(params: dict[str, str], max_batch: int) -> EngineConfig:
    """The model's `parameters` (strings) -> EngineConfig; the vision cache holds at least two batches."""
    config = EngineConfig()
    if "provider" in params:
        config.provider = params["provider"]
    if "threads" in params:
        config.threads = int(params["threads"])
    if "decoder" in params:
        config.decoder = params["decoder"]
    if "verify" in params:
        config.verify = params["verify"].lower() in ("1", "true", "yes")
    config.vision_cache = max(config.vision_cache, 2 * max_batch)
    return config


# --- Triton glue ------------------------------------------------------------------------------------------
class TritonPythonModel:
    def initialize(self, args):
        import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

        self.pb = pb_utils
        self.config = input_files.loads(args["model_config"], "model_config")
        params = {k: v.get("string_value", "") for k, v in self.config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        bundle = Path(params.get("bundle", "bundle"))
        bundle = bundle if bundle.is_absolute() else version_dir / bundle
        self.engine = Engine.load(bundle, engine_config(params, int(self.config.get("max_batch_size", 1))))
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(self.config)
        self.vision_model = params.get("vision_model") or None  # GPU variant: native models over BLS
        # adapter name -> its native visual-branch model (repository.py writes one per adapter)
        self.adapter_models = input_files.loads(params.get("adapter_visual_models") or "{}", "adapter_visual_models")
        self.names = [t.name for t in io.inputs(self.engine.manifest.backbone.image_size)]

    def _arrays(self, request) -> dict[str, np.ndarray]:
        arrays = {}
        for name in self.names:
            tensor = self.pb.get_input_tensor_by_name(request, name)
            if tensor is not None:
                arrays[name] = tensor.as_numpy()
        return arrays

    def _error(self, message: str):
        error = self.pb.TritonError(message)
        return self.pb.InferenceResponse(output_tensors=[], error=error)

    def _outputs(self, text: str, tokens: list[int], finish: str, timings: str):
        t = self.pb.Tensor
        return self.pb.InferenceResponse(output_tensors=[
            t(io.TEXT, np.array([[text.encode()]], dtype=object)),
            t(io.TOKEN_IDS, np.array([tokens], dtype=np.int64).reshape(1, -1)),
            t(io.FINISH_REASON, np.array([[finish.encode()]], dtype=object)),
            t(io.TIMINGS, np.array([[timings.encode()]], dtype=object))])

    def _bls_vision(self, pixels: np.ndarray, questions: list[str]) -> np.ndarray:
        """GPU variant: one request to the native vision model at batch B -> (B, Nq, d)."""
        from crome_runtime.prompt import instruction_ids

        b = self.engine.manifest.backbone
        feeds = {formats.IN_PIXEL_VALUES: pixels.astype(np.float32)}
        if b.instruction_aware:  # padded to the fixed width so every request has one shape (batchable)
            ids = np.zeros((len(questions), b.max_instruction_tokens), np.int64)
            mask = np.zeros_like(ids)
            for i, q in enumerate(questions):
                row = instruction_ids(self.engine.bundle.qformer_tokenizer, q, b.max_instruction_tokens)
                ids[i, :len(row)], mask[i, :len(row)] = row, 1
            feeds[formats.IN_INSTRUCTION_IDS], feeds[formats.IN_INSTRUCTION_MASK] = ids, mask
        return self._bls(self.vision_model, feeds, formats.OUT_VISUAL_EMBEDS)

    def _bls_adapter(self, adapter: str, rows: np.ndarray) -> np.ndarray:
        """GPU variant: one request to `adapter`'s native visual-branch model (n, Nq, d) -> (n, Nq, d); an adapter the
        repository has no native model for (added to the bundle later) runs in this model's engine."""
        model = self.adapter_models.get(adapter)
        if model is None:
            d = rows.shape[-1]
            return self.engine.adapt(rows.reshape(-1, d), "visual", adapter).reshape(rows.shape)
        return self._bls(model, {formats.IN_ADAPTER_X: rows}, formats.OUT_ADAPTER_Y)

    def _bls(self, model: str, feeds: dict, output: str) -> np.ndarray:
        pb = self.pb
        request = pb.InferenceRequest(model_name=model, requested_output_names=[output],
                                      inputs=[pb.Tensor(name, value) for name, value in feeds.items()])
        response = request.exec()
        if response.has_error():
            raise RequestError(f"{model}: {response.error().message()}")
        return pb.get_output_tensor_by_name(response, output).as_numpy()

    def execute(self, requests):
        jobs: list[Job | str] = []
        for request in requests:
            try:
                jobs.append(parse_job(self.engine, self._arrays(request)))
            except RequestError as error:
                jobs.append(str(error))
        valid = [j for j in jobs if isinstance(j, Job)]
        try:
            native = self.vision_model is not None
            batch, batch_ms = prime_vision(self.engine, valid, self._bls_vision if native else None,
                                           self._bls_adapter if native else None)
        except CromeError as error:
            jobs = [f"the vision stage failed: {error}" if isinstance(j, Job) else j for j in jobs]
            batch, batch_ms = 0, 0.0
        responses = []
        for request, job in zip(requests, jobs):
            sender = request.get_response_sender() if self.decoupled else None
            if isinstance(job, str):
                response = self._error(job)
            else:
                try:
                    response = self._answer(job, sender, batch, batch_ms, len(requests))
                except CromeError as error:
                    response = self._error(str(error))
            if sender is not None:
                sender.send(response, flags=self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            else:
                responses.append(response)
        return None if self.decoupled else responses

    def _answer(self, job: Job, sender, batch: int, batch_ms: float, requests: int):
        stream = self.engine.stream(job.frame, job.prompt, job.options)
        for piece in stream:
            if sender is not None:
                sender.send(self._outputs(piece, [], "", "{}"))
        answer = stream.answer
        text = "" if sender is not None else answer.text
        return self._outputs(text, answer.token_ids, answer.finish_reason,
                             timings_json(answer, batch, batch_ms, requests))

    def finalize(self):
        self.engine = None
