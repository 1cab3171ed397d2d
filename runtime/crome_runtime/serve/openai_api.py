"""OpenAI chat completions, as this server speaks them: request validation and response shapes.

A request is read strictly: a field this server does not know, or one it knows but cannot honour (n > 1,
tools, logprobs, stop strings, JSON response formats), is a 400 naming the field rather than being ignored.
The bundle answers one question about one image, so the question is the **last** message, which must be
the user's: its text parts are the question, its image_url part (at most one) the image —
`data:image/...;base64,...`, or `"camera"` (or no image at all) for the camera's newest frame. Earlier
messages (system prompt, chat history) are accepted and not shown to the model: the bundle's prompt
template has no place for them.

Responses carry OpenAI's `usage` and llama.cpp's `timings` (prompt_n, prompt_ms, prompt_per_second,
predicted_n, predicted_ms, predicted_per_second) plus ours: stages_ms, frame_id, frame_age_ms, queue_ms.
prompt_ms is the answer's start to its first token (vision, adapter, prefill, first sample); predicted_ms
the rest, so predicted_per_second counts the tokens after the first (the profiler's decode tokens/s). Not here: HTTP (app.py), decoding images (images.py).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

from crome_runtime.engine import GenerationOptions
from crome_runtime.errors import CromeError
from crome_runtime.limits import TextError, check_text
from crome_runtime.serve.config import Limits
from crome_runtime.serve.worker import JobResult

SUPPORTED = {"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
             "top_p", "top_k", "seed", "repetition_penalty", "repeat_penalty", "n", "user", "metadata", "store"}
# Known OpenAI fields this server cannot honour: accepted only at the value that means "off".
NEUTRAL = {"frequency_penalty": (0, 0.0), "presence_penalty": (0, 0.0), "logprobs": (False,), "top_logprobs": (0,),
           "stop": ((), ""), "tools": ((),), "tool_choice": ("none",), "parallel_tool_calls": (False, True),
           "response_format": ({"type": "text"},), "logit_bias": ({},)}
ROLES = ("system", "developer", "user", "assistant", "tool")
CAMERA = "camera"
FINISH = {"stop": "stop", "length": "length", "context": "length", "cancelled": "stop"}


class ApiError(CromeError):
    """An HTTP error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}. A handler raises one where
    the status depends on the endpoint; any other CromeError becomes one by `of`, from the status it carries."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
             500: "server_error", 503: "server_error"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.http_status, self.message, self.http_param, self.http_code = status, message, param, code
        self.headers = headers or {}

    @classmethod
    def of(cls, error: BaseException) -> "ApiError":
        """The HTTP error a client gets for `error`: the status, code and Retry-After a CromeError carries; for a
        server-side failure (status 500, or not a CromeError: a bug) only that the server's log has it."""
        if isinstance(error, ApiError):
            return error
        if isinstance(error, CromeError) and error.http_status != 500:
            headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s is not None else None
            return cls(error.http_status, str(error), error.http_param, error.http_code, headers)
        return cls(500, "the server failed to answer (the error is in its log)", code="internal_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.http_status, "invalid_request_error"),
                          "param": self.http_param, "code": self.http_code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param, code)


@dataclass
class ChatRequest:
    question: str
    image_url: str | None  # a data: URI; None = the camera's newest frame
    options: GenerationOptions
    stream: bool
    include_usage: bool
    model: str | None = None  # as sent; adapter_of() reads the adapter it names


def adapter_of(model: str | None, model_ids: tuple[str, ...], adapters: list[str], any_model: bool) -> str | None:
    """The `model` field -> GenerationOptions.adapter: None (the bundle's routes) for no model or the server's own
    id; "none" for the frozen backbone; an adapter's name for NAME or ID/NAME (ID: the server's model id or the
    bundle directory's name). Any other name is a 404 — except for a bundle of one adapter, which has always
    answered whatever model a client names (any_model): its routes answer."""
    if model is None or model in model_ids:
        return None
    prefix, slash, name = model.rpartition("/")
    if slash and prefix not in model_ids:
        raise ApiError(404, f"model {model!r:.80} is not served here; the models are {', '.join(model_ids[:1])} and "
                       f"{model_ids[0]}/NAME for NAME in: {', '.join(adapters + ['none'])} (GET /v1/models)",
                       "model", "model_not_found")
    if name.lower() == "none":
        return "none"
    if name in adapters:
        return name
    if any_model and not slash:
        return None
    raise ApiError(404, f"this bundle has no adapter {name!r:.80}; its adapters are {', '.join(adapters) or 'none'} "
                   "('none' is the frozen backbone alone; GET /v1/models lists them)", "model", "model_not_found")


def parse_chat_request(body: object, limits: Limits, default_max_tokens: int | None) -> ChatRequest:
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    for name in body:
        if name not in SUPPORTED and name not in NEUTRAL:
            raise bad(f"unknown field {name!r}; this server reads {', '.join(sorted(SUPPORTED))}", name)
    for name, neutral in NEUTRAL.items():
        if name in body and body[name] is not None and not _is_neutral(body[name], neutral):
            raise bad(f"{name}={body[name]!r} is not supported by this server (leave it out)", name)
    if body.get("n") not in (None, 1):
        raise bad("n must be 1: this server returns one choice", "n")
    question, image_url = _last_user_message(body.get("messages"), limits)
    stream = _bool(body, "stream")
    stream_options = body.get("stream_options")
    include_usage = False
    if stream_options is not None:
        if not isinstance(stream_options, dict) or set(stream_options) - {"include_usage", "include_obfuscation"}:
            raise bad("stream_options must be an object with include_usage", "stream_options")
        include_usage = _bool(stream_options, "include_usage", "stream_options.include_usage")
        if not stream:
            raise bad("stream_options is only allowed with stream: true", "stream_options")
    max_tokens = _int(body, "max_completion_tokens")
    max_tokens = _int(body, "max_tokens") if max_tokens is None else max_tokens
    if max_tokens is not None and not 1 <= max_tokens <= limits.max_tokens:
        raise bad(f"max_tokens must be between 1 and {limits.max_tokens}, got {max_tokens}", "max_tokens")
    temperature = _number(body, "temperature", 0.0, 2.0)
    top_p = _number(body, "top_p", 0.0, 1.0)
    if top_p is not None and top_p == 0.0:
        raise bad("top_p must be above 0", "top_p")
    penalty = _number(body, "repetition_penalty", 0.0, 10.0)
    penalty = _number(body, "repeat_penalty", 0.0, 10.0) if penalty is None else penalty
    if penalty is not None and penalty == 0.0:
        raise bad("repetition_penalty must be above 0 (1 = off)", "repetition_penalty")
    top_k = _int(body, "top_k")
    if top_k is not None and top_k < 0:
        raise bad("top_k must be >= 0 (0 = off)", "top_k")
    seed = _int(body, "seed")
    if body.get("model") is not None and not isinstance(body["model"], str):
        raise bad("model must be a string", "model")
    options = GenerationOptions(max_new_tokens=max_tokens if max_tokens is not None else default_max_tokens,
                                temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=penalty,
                                seed=0 if seed is None else seed)
    return ChatRequest(question, image_url, options, stream, include_usage, body.get("model"))


def _is_neutral(value, neutral: tuple) -> bool:
    return any(value == n or (isinstance(n, tuple) and isinstance(value, list) and not value) for n in neutral)


def _last_user_message(messages, limits: Limits) -> tuple[str, str | None]:
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list of {role, content} objects", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise bad(f"messages[{i}] must be an object with role one of {', '.join(ROLES)}", f"messages[{i}]")
    last = len(messages) - 1
    if messages[last]["role"] != "user":
        raise bad("the last message must be the user's question", f"messages[{last}].role")
    content = messages[last].get("content")
    param = f"messages[{last}].content"
    if isinstance(content, str):
        parts = [{"type": "text", "text": content}]
    elif isinstance(content, list):
        parts = content
    else:
        raise bad("content must be a string or a list of text / image_url parts", param)
    texts, images = [], []
    for j, part in enumerate(parts):
        where = f"{param}[{j}]"
        if not isinstance(part, dict) or part.get("type") not in ("text", "image_url"):
            raise bad("each content part must be {\"type\": \"text\"} or {\"type\": \"image_url\"}", where)
        if part["type"] == "text":
            if not isinstance(part.get("text"), str):
                raise bad("a text part needs a string `text`", where)
            texts.append(part["text"])
        else:
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise bad("an image_url part needs image_url.url: a data:image/…;base64,… URI or \"camera\"", where)
            images.append(url)
    if len(images) > 1:
        raise bad(f"one image per question, got {len(images)}", param)
    question = "\n".join(t for t in texts if t.strip()).strip()
    if not question:
        raise bad("the last user message has no text: ask a question about the image", param)
    if len(question) > limits.max_prompt_chars:
        raise bad(f"the question is {len(question):,} characters, over this server's {limits.max_prompt_chars:,}",
                  param, "context_length_exceeded")
    try:
        check_text(question)  # the runtime's own rule (valid UTF-8 among others)
    except TextError as error:
        raise bad(str(error), param) from None
    url = images[0] if images else None
    return question, None if url is None or url.strip() == CAMERA else url


def _bool(body: dict, name: str, param: str | None = None) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad(f"{param or name} must be true or false, got {value!r}", param or name)
    return value


def _int(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"{name} must be an integer, got {value!r}", name)
    return value


def _number(body: dict, name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise bad(f"{name} must be a number from {low:g} to {high:g}, got {value!r}", name)
    return float(value)


# --- responses --------------------------------------------------------------------------------------
def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(result: JobResult) -> dict:
    answer = result.answer
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": len(answer.token_ids),
            "total_tokens": answer.prompt_tokens + len(answer.token_ids)}


def timings(result: JobResult) -> dict:
    answer = result.answer
    total = answer.total_ms or 0.0
    prompt_ms = answer.ttft_ms if answer.ttft_ms is not None else total
    predicted_ms = max(total - prompt_ms, 0.0)
    n = len(answer.token_ids)
    frame = result.frame or {}
    return {
        "prompt_n": answer.prompt_tokens, "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / answer.prompt_tokens if answer.prompt_tokens else None,
        "prompt_per_second": answer.prompt_tokens / (prompt_ms / 1e3) if prompt_ms else None,
        "predicted_n": n, "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / (n - 1) if n > 1 else None,
        "predicted_per_second": (n - 1) / (predicted_ms / 1e3) if n > 1 and predicted_ms else None,
        "stages_ms": result.stages_ms(), "cache": answer.cache, "queue_ms": result.queue_ms,
        "total_ms": result.latency_ms, "frame_id": frame.get("id"), "frame_captured_at": frame.get("captured_at"),
        "frame_age_ms": frame.get("age_ms"), "adapter": answer.adapter,
    }


def completion(request_id: str, model: str, created: int, result: JobResult) -> dict:
    """The non-streamed response; `created`: when the request was accepted (stamped once, as for every chunk)."""
    answer = result.answer
    return {"id": request_id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                         "finish_reason": FINISH[answer.finish_reason]}],
            "usage": usage(result), "timings": timings(result)}


def chunk(request_id: str, model: str, created: int, delta: dict, finish_reason: str | None = None,
          **extra) -> dict:
    return {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}


def usage_chunk(request_id: str, model: str, created: int, result: JobResult) -> dict:
    return {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
            "usage": usage(result), "timings": timings(result)}
