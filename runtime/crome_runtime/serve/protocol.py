"""What the server reads and writes, as typed (pydantic) models: OpenAI chat completions, watch prompts, errors.

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
the rest, so predicted_per_second counts the tokens after the first (the profiler's decode tokens/s).
A request with `"explain": true` also gets the top-level `crome` object (extension(); streamed: on the finish
chunk): adapter, adapter_version, confidence, and `explain`: the answer's heat map over its image (docs/explain.md).

Every refusal is an ApiError in OpenAI's shape, its `param` the JSON path of the field (`messages[0].content`).
Not here: HTTP (app.py), decoding images (images.py), running a request (jobs.py).
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from crome_runtime.engine import GenerationOptions
from crome_runtime.errors import CromeError
from crome_runtime.limits import MAX_SEED, TextError, check_text
from crome_runtime.serve.config import Limits
from crome_runtime.serve.worker import JobResult

ROLES = ("system", "developer", "user", "assistant", "tool")
CAMERA = "camera"
FINISH = {"stop": "stop", "length": "length", "context": "length", "cancelled": "stop"}
# Known OpenAI fields this server cannot honour: accepted only at the value that means "off".
NEUTRAL = {"frequency_penalty": (0, 0.0), "presence_penalty": (0, 0.0), "logprobs": (False,), "top_logprobs": (0,),
           "stop": ((), ""), "tools": ((),), "tool_choice": ("none",), "parallel_tool_calls": (False, True),
           "response_format": ({"type": "text"},), "logit_bias": ({},)}


class ApiError(CromeError):
    """An HTTP error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}. A handler raises one where
    the status depends on the endpoint; any other CromeError becomes one by `of`, from the status it carries."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "not_found_error", 405: "invalid_request_error", 408: "invalid_request_error",
             413: "invalid_request_error", 415: "invalid_request_error", 429: "rate_limit_error",
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


# --- requests ---------------------------------------------------------------------------------------
Strict = ConfigDict(extra="forbid", strict=True)  # types as JSON has them: no "4" for 4, no true for 1
Open = ConfigDict(extra="allow", strict=True)  # fields OpenAI defines that this server does not read


class TextPart(BaseModel):
    model_config = Open
    type: Literal["text"]
    text: str


class ImageUrl(BaseModel):
    model_config = Open  # "detail"
    url: str


class ImagePart(BaseModel):
    model_config = Open
    type: Literal["image_url"]
    image_url: ImageUrl | str

    @property
    def url(self) -> str:
        return self.image_url if isinstance(self.image_url, str) else self.image_url.url


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(BaseModel):
    """Any message of the conversation; only the last one's content is read (its parts: PARTS)."""

    model_config = Open  # name, tool_calls, ...
    role: Literal[ROLES]  # type: ignore[valid-type]
    content: Any = None


PARTS: TypeAdapter[list[TextPart | ImagePart]] = TypeAdapter(list[Part])


class StreamOptions(BaseModel):
    model_config = Strict
    include_usage: bool = False
    include_obfuscation: bool | None = None


Penalty = Annotated[float, Field(gt=0, le=10)]


class ChatCompletionRequest(BaseModel):
    model_config = Open  # the NEUTRAL fields, and unknown ones: parse_chat refuses those by name
    messages: Annotated[list[Message], Field(min_length=1)]
    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    repetition_penalty: Penalty | None = None
    repeat_penalty: Penalty | None = None
    explain: bool = False  # crome-edge's extension: the response's `crome` object (extension())
    n: int | None = None
    user: Any = None
    metadata: Any = None
    store: Any = None


class WatchPromptRequest(BaseModel):
    model_config = Strict
    prompt: str
    max_tokens: int | None = None


# What a field must be, said when pydantic refuses its value (the path and the value are added).
RULES = {
    "messages": "must be a non-empty list of {role, content} objects",
    "role": f"must be an object with role one of {', '.join(ROLES)}",
    "content": "must be a string or a list of text / image_url parts",
    "part": "each content part must be {\"type\": \"text\"} or {\"type\": \"image_url\"}",
    "text": "a text part needs a string `text`",
    "image_url": "an image_url part needs image_url.url: a data:image/…;base64,… URI or \"camera\"",
    "model": "must be a string", "stream": "must be true or false", "include_usage": "must be true or false",
    "stream_options": "must be an object with include_usage",
    "max_tokens": "must be an integer", "max_completion_tokens": "must be an integer", "n": "must be an integer",
    "temperature": "must be a number from 0 to 2", "top_p": "must be a number from 0 to 1, above 0",
    "top_k": "must be an integer >= 0 (0 = off)",
    "seed": f"must be a whole number from 0 to {MAX_SEED} (as `run --seed`)",
    "repetition_penalty": "must be a number from 0 to 10, above 0 (1 = off)",
    "repeat_penalty": "must be a number from 0 to 10, above 0 (1 = off)",
    "prompt": "must be a non-empty string",
    "explain": "must be true or false (true adds the `crome` object: adapter, adapter_version, confidence)",
}


def _param(loc: tuple) -> str:
    """('messages', 0, 'content') -> 'messages[0].content'."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def refusal(error: ValidationError) -> ApiError:
    """The first problem pydantic found, as a 400 naming the field and what it must be."""
    problem = error.errors()[0]
    loc, value = problem["loc"], problem.get("input")
    if problem["type"] == "extra_forbidden":
        return bad(f"unknown field {loc[-1]!r}", _param(loc))
    if loc[0] == "messages" and len(loc) > 1:  # an item of the list that is not a {role, ...} object
        return bad(f"messages[{loc[1]}] {RULES['role']}", f"messages[{loc[1]}]")
    param = _param(loc)
    shown = "" if problem["type"] == "missing" else f", got {value!r:.80}"
    return bad(f"{param} {RULES.get(str(loc[-1]), 'is not valid')}{shown}", param)


def _parts(content: object, param: str) -> list[TextPart | ImagePart]:
    """The last message's content -> its parts: a string is one text part."""
    if isinstance(content, str):
        return [TextPart(type="text", text=content)]
    if not isinstance(content, list):
        raise bad(f"content {RULES['content']}", param)
    try:
        return PARTS.validate_python(content)
    except ValidationError as error:
        loc = error.errors()[0]["loc"]  # (index, the part's type tag, ...)
        tag = loc[1] if len(loc) > 1 else None
        raise bad(RULES[tag] if tag in ("text", "image_url") else RULES["part"], f"{param}[{loc[0]}]") from None


def parse(model: type[BaseModel], body: object) -> Any:
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise refusal(error) from None


@dataclass
class Chat:
    """A chat completion request, checked and read: what the engine is asked, and how to answer."""

    question: str
    image_url: str | None  # a data: URI; None = the camera's newest frame
    options: GenerationOptions
    stream: bool
    include_usage: bool
    model: str | None = None  # as sent; adapter_of() reads the adapter it names
    explain: bool = False  # the response carries the `crome` extension object


def parse_chat(body: object, limits: Limits, default_max_tokens: int | None) -> Chat:
    request: ChatCompletionRequest = parse(ChatCompletionRequest, body)
    extras = request.model_extra or {}
    for name, value in extras.items():
        if name not in NEUTRAL:
            raise bad(f"unknown field {name!r}; this server reads "
                      f"{', '.join(sorted(ChatCompletionRequest.model_fields))}", name)
        if value is not None and not _is_neutral(value, NEUTRAL[name]):
            raise bad(f"{name}={value!r} is not supported by this server (leave it out)", name)
    if request.n not in (None, 1):
        raise bad("n must be 1: this server returns one choice", "n")
    if request.stream_options is not None and not request.stream:
        raise bad("stream_options is only allowed with stream: true", "stream_options")
    max_tokens = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
    if max_tokens is not None and not 1 <= max_tokens <= limits.max_tokens:
        raise bad(f"max_tokens must be between 1 and {limits.max_tokens}, got {max_tokens}", "max_tokens")
    question, image_url = _last_user_message(request.messages, limits)
    penalty = request.repetition_penalty if request.repetition_penalty is not None else request.repeat_penalty
    options = GenerationOptions(max_new_tokens=max_tokens if max_tokens is not None else default_max_tokens,
                                temperature=request.temperature, top_k=request.top_k, top_p=request.top_p,
                                repetition_penalty=penalty, seed=request.seed or 0,
                                candidates=request.explain)  # a closed set's candidates: only when they are shown
    include_usage = request.stream_options is not None and request.stream_options.include_usage
    return Chat(question, image_url, options, request.stream, include_usage, request.model, request.explain)


def _is_neutral(value, neutral: tuple) -> bool:
    return any(value == n or (isinstance(n, tuple) and isinstance(value, list) and not value) for n in neutral)


def _last_user_message(messages: list[Message], limits: Limits) -> tuple[str, str | None]:
    last = len(messages) - 1
    if messages[last].role != "user":
        raise bad("the last message must be the user's question", f"messages[{last}].role")
    param = f"messages[{last}].content"
    parts = _parts(messages[last].content, param)
    texts = [p.text for p in parts if isinstance(p, TextPart)]
    images = [p.url for p in parts if isinstance(p, ImagePart)]
    if len(images) > 1:
        raise bad(f"one image per question, got {len(images)}", param)
    question = "\n".join(t for t in texts if t.strip()).strip()
    if not question:
        raise bad("the last user message has no text: ask a question about the image", param)
    _check_question(question, limits, param, "the question")
    url = images[0] if images else None
    return question, None if url is None or url.strip() == CAMERA else url


def _check_question(text: str, limits: Limits, param: str, what: str) -> None:
    if len(text) > limits.max_prompt_chars:
        raise bad(f"{what} is {len(text):,} characters, over this server's {limits.max_prompt_chars:,}",
                  param, "context_length_exceeded")
    try:
        check_text(text, what)  # the runtime's own rule (valid UTF-8 among others)
    except TextError as error:
        raise bad(str(error), param) from None


def parse_watch_prompt(body: object, limits: Limits) -> WatchPromptRequest:
    """POST /v1/watch/prompts: {"prompt": "...", "max_tokens": N?} with the prompt stripped."""
    if not isinstance(body, dict):
        raise bad("the body must be {\"prompt\": \"...\"} with an optional max_tokens")
    request: WatchPromptRequest = parse(WatchPromptRequest, body)
    if not request.prompt.strip():
        raise bad("prompt must be a non-empty string", "prompt")
    _check_question(request.prompt, limits, "prompt", "the prompt")
    if request.max_tokens is not None and not 1 <= request.max_tokens <= limits.max_tokens:
        raise bad(f"max_tokens must be an integer from 1 to {limits.max_tokens}", "max_tokens")
    return request.model_copy(update={"prompt": request.prompt.strip()})


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


# --- responses --------------------------------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ChatMessage
    finish_reason: str


class ChunkChoice(BaseModel):
    index: int = 0
    delta: dict[str, str]
    finish_reason: str | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    timings: dict[str, Any]


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None  # only in the extra chunk stream_options.include_usage asks for
    timings: dict[str, Any] | None = None  # on the finish chunk (and the usage chunk)


class Reply:
    """One response's identity, stamped once: `id`, `model` and `created` for the completion or every chunk; explain:
    the completion (or the finish chunk) carries the `crome` extension object."""

    def __init__(self, model: str, explain: bool = False):
        self.id, self.model, self.created = f"chatcmpl-{uuid.uuid4().hex[:24]}", model, int(time.time())
        self.explain = explain

    def completion(self, result: JobResult) -> dict:
        answer = result.answer
        body = ChatCompletion(
            id=self.id, created=self.created, model=self.model, usage=usage(result), timings=timings(result),
            choices=[Choice(message=ChatMessage(content=answer.text), finish_reason=FINISH[answer.finish_reason])],
        ).model_dump()
        if self.explain:
            body["crome"] = extension(result)
        return body

    def chunk(self, delta: dict[str, str], finish_reason: str | None = None, result: JobResult | None = None) -> dict:
        chunk = ChatCompletionChunk(id=self.id, created=self.created, model=self.model,
                                    choices=[ChunkChoice(delta=delta, finish_reason=finish_reason)],
                                    timings=None if result is None else timings(result))
        body = _present(chunk)
        if self.explain and result is not None:  # the finish chunk: the answer is complete
            body["crome"] = extension(result)
        return body

    def usage_chunk(self, result: JobResult) -> dict:
        return _present(ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[],
                                            usage=usage(result), timings=timings(result)))


def _present(chunk: ChatCompletionChunk) -> dict:
    """The chunk without the optional parts it does not carry (a delta's finish_reason stays, null or not)."""
    return {name: value for name, value in chunk.model_dump().items() if value is not None}


def extension(result: JobResult) -> dict:
    """The `crome` object a request with `"explain": true` gets (OpenAI clients ignore unknown top-level fields; the
    official client shows it in `completion.model_extra`): which adapter answered, its version (the sha256 of its
    .safetensors; null for the frozen backbone) and how sure it was (crome_runtime.confidence). One object, so
    further explanations join it as keys."""
    answer = result.answer
    body = {"adapter": answer.adapter, "adapter_version": answer.adapter_version,
            "confidence": answer.confidence.to_dict()}
    if result.explain is not None:  # the heat map (crome_runtime.explain), or {"unavailable": why}
        body["explain"] = result.explain
    return body


def usage(result: JobResult) -> Usage:
    answer = result.answer
    return Usage(prompt_tokens=answer.prompt_tokens, completion_tokens=len(answer.token_ids),
                 total_tokens=answer.prompt_tokens + len(answer.token_ids))


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
