"""The HTTP side (FastAPI): OpenAI chat completions, watch prompts and their SSE stream, frames, health,
metrics, and the web page.

    GET  /                      the web page (static/, package data)
    GET  /health                200 when the engine is loaded and the camera delivers; else 503 saying why
    GET  /metrics               Prometheus text
    GET  /v1/models             the model this server serves (and MODEL/NAME per adapter, MODEL/none)
    GET  /v1/adapters           the bundle's adapters and their routes
    POST /v1/adapters/reload    admin (needs the API key): take the bundle's adapters after `bundle add/remove`
    GET  /v1/frame.jpg          the camera's newest frame (X-Frame-Id, X-Frame-Age-Ms)
    POST /v1/chat/completions   OpenAI chat completions, streaming (SSE) or not
    GET  /v1/watch              SSE: every watch answer as it is made (recent ones first)
    GET|POST /v1/watch/prompts, DELETE /v1/watch/prompts/{id}

Handlers never touch the engine: they queue Jobs for the worker and read the job's events from an asyncio
queue the worker fills. Every error is OpenAI's JSON shape; no traceback reaches a client (bugs are logged
here with theirs). The Guard middleware enforces the body limit and the API key (constant-time compare;
everything but /health and the page's static files) and counts responses.

Not here: validation and response shapes (openai_api.py), the parts' lifecycle (server.py).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from importlib import resources
from typing import TYPE_CHECKING, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from crome_runtime.errors import CromeError
from crome_runtime.limits import TextError, check_text
from crome_runtime.serve import openai_api
from crome_runtime.serve.fairqueue import QueueClosed, QueueFull
from crome_runtime.serve.images import decode_data_uri
from crome_runtime.serve.openai_api import ApiError, bad
from crome_runtime.serve.watch import WatchError
from crome_runtime.serve.worker import EngineUnavailable, Job

if TYPE_CHECKING:
    from crome_runtime.serve.server import Server

log = logging.getLogger("crome_runtime.serve")

PUBLIC_PATHS = ("/health", "/", "/favicon.ico")  # and /static/*: the page's files hold no data
SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def static_dir() -> str:
    return str(resources.files("crome_runtime.serve") / "static")


# --- middleware -------------------------------------------------------------------------------------
class Guard:
    """Pure ASGI middleware: API key, body limit, response counting (around every HTTP request)."""

    def __init__(self, app, server: "Server"):
        self.app, self.server = app, server
        key = server.config.api_key
        self._key_digest = hashlib.sha256(key.encode()).digest() if key else None

    def authorized(self, headers: dict[bytes, bytes]) -> bool:
        value = headers.get(b"authorization", b"")
        token = value[7:].strip() if value[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
        # equal-length digests: the comparison takes the same time whatever the key and the guess are
        return self._key_digest is not None and hmac.compare_digest(hashlib.sha256(token).digest(), self._key_digest)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, status = scope["path"], [500]

        async def counted_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            headers = dict(scope["headers"])
            public = path in PUBLIC_PATHS or path.startswith("/static/")
            if self._key_digest is not None and not public and not self.authorized(headers):
                missing = b"authorization" not in headers and b"x-api-key" not in headers
                error = ApiError(401, "missing API key: send Authorization: Bearer <key>" if missing
                                 else "wrong API key", code="invalid_api_key")
                return await error_response(error)(scope, receive, counted_send)
            limit = self.server.config.limits.max_body_bytes
            length = headers.get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > limit):
                return await error_response(too_large(limit))(scope, receive, counted_send)
            received = [0]

            async def limited_receive():
                message = await receive()
                if message["type"] == "http.request":
                    received[0] += len(message.get("body", b""))
                    if received[0] > limit:
                        raise too_large(limit)
                return message

            await self.app(scope, limited_receive, counted_send)
        finally:
            self.server.metrics.request(path, status[0])


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is over this server's {limit:,}-byte limit; send a smaller image",
                    code="request_too_large")


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.http_status, headers=error.headers)


def json_body(raw: bytes):
    """A request body parsed as JSON, else a 400 saying why (never a 500: deep nesting is a RecursionError)."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise bad("the request body is not valid JSON (nested too deeply)") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise bad(f"the request body is not valid JSON ({error})") from None


class Channel:
    """A job's events, from the worker thread into the handler's asyncio queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()

    def sink(self, kind: str, value) -> None:  # worker thread
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))


async def _until_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def sse(payload: dict | str) -> bytes:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n".encode()


# --- the app ----------------------------------------------------------------------------------------
def create_app(server: "Server") -> FastAPI:
    app = FastAPI(title="crome-edge", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=server.lifespan)
    config, limits = server.config, server.config.limits

    @app.exception_handler(CromeError)  # ApiError included: every error says its own status (ApiError.of)
    async def _crome_error(request: Request, error: CromeError):
        if error.http_status == 500 and not isinstance(error, ApiError):
            log.error("%s %s failed: %s", request.method, request.url.path, error, exc_info=error)
        return error_response(ApiError.of(error))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException):
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(error.status_code, str(error.detail))
        return error_response(ApiError(error.status_code, message))

    @app.exception_handler(Exception)
    async def _bug(request: Request, error: Exception):  # Starlette re-raises it afterwards: uvicorn logs it whole
        return error_response(ApiError(500, "internal server error (the error is in the server's log)",
                                       code="internal_error"))

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(f"{static_dir()}/index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=static_dir()), name="static")

    @app.get("/health")
    async def health():
        body, ok = server.health()
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics():
        return Response(server.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": server.model_cards()}

    @app.get("/v1/adapters")
    async def adapters():
        return {"object": "list", "data": server.adapter_cards()}

    @app.post("/v1/adapters/reload")
    async def adapters_reload():
        """Admin: after `crome-edge bundle add/remove` changed the bundle, swap its adapters in while serving."""
        if not server.config.api_key:
            raise ApiError(403, "the admin endpoints need the server started with an API key (--api-key)",
                           code="admin_needs_api_key")
        try:
            report = await asyncio.wrap_future(server.reload_adapters())
        except CromeError as error:
            raise ApiError(409, f"{error}; still serving the adapters {', '.join(server.adapter_names) or 'none'}",
                           code="adapter_rejected") from None
        return {**report, "adapters": server.adapter_names}

    @app.get("/v1/frame.jpg")
    async def frame_jpg():
        if server.slot is None:
            raise ApiError(404, "this server has no camera", code="no_camera")
        frame = server.slot.latest()
        if frame is None:
            raise ApiError(503, "the camera has not delivered a frame yet", code="no_frame", headers={"Retry-After": "1"})
        jpeg = await run_in_threadpool(server.jpeg, frame)
        return Response(jpeg, media_type="image/jpeg", headers={
            "Cache-Control": "no-store", "X-Frame-Id": str(frame.id), "X-Frame-Age-Ms": f"{frame.age_ms():.1f}",
            "X-Frame-Captured-At": f"{frame.unix_s:.6f}"})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = json_body(await request.body())
        chat = openai_api.parse_chat_request(body, limits, config.max_new_tokens)
        chat.options.adapter = openai_api.adapter_of(chat.model, server.model_ids, server.adapter_names,
                                                     server.any_model)
        image = None
        if chat.image_url is not None:
            image = await run_in_threadpool(decode_data_uri, chat.image_url, limits.max_image_pixels)  # ImageRefused: 400
        elif server.reader is None:
            raise bad("this server has no camera: send the image as an image_url data URI", "messages")
        else:
            camera = server.reader.health()
            if not camera["delivering"]:  # never answer about a stale frame as if it were the current one
                age = camera["last_frame_age_s"]
                raise ApiError(503, f"the camera is not delivering frames (state {camera['state']}"
                               + (f"; its last frame is {age:.1f} s old" if age is not None else "; no frame yet")
                               + "): retry when /health is ok, or send the image as an image_url data URI",
                               code="camera_unavailable", headers={"Retry-After": "1"})
        channel = Channel(asyncio.get_running_loop())
        job = Job(chat.question, chat.options, "api", channel.sink, image)
        try:
            server.worker.submit(job)
        except QueueFull:
            raise ApiError(429, f"the engine has {limits.queue_size} requests waiting; retry shortly",
                           code="queue_full", headers={"Retry-After": "1"}) from None
        except (EngineUnavailable, QueueClosed) as error:
            raise ApiError(503, str(error), code="unavailable", headers={"Retry-After": "2"}) from None
        request_id, model, created = openai_api.new_id(), server.model_id, int(time.time())
        disconnected = asyncio.ensure_future(_until_disconnect(request))
        try:
            first = await _next_event(channel, disconnected, job, server)
        except BaseException:  # the handler was cancelled (server stopping): the job has nobody to answer
            disconnected.cancel()
            job.cancel()
            raise
        if first is None:  # the client left while waiting: nobody to answer
            return Response(status_code=499)
        if first[0] == "error":
            disconnected.cancel()
            raise ApiError.of(first[1])
        if not chat.stream:
            try:
                pieces, event = [], first
                while event[0] == "piece":
                    pieces.append(event[1])
                    event = await _next_event(channel, disconnected, job, server)
                    if event is None:
                        return Response(status_code=499)
            finally:
                disconnected.cancel()
            if event[0] == "error":
                raise ApiError.of(event[1])
            return openai_api.completion(request_id, model, created, event[1])
        disconnected.cancel()  # from here StreamingResponse notices a client that leaves

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield sse(openai_api.chunk(request_id, model, created, {"role": "assistant", "content": ""}))
                event = first
                while True:
                    kind, value = event
                    if kind == "piece":
                        yield sse(openai_api.chunk(request_id, model, created, {"content": value}))
                    elif kind == "done":
                        finish = openai_api.FINISH[value.answer.finish_reason]
                        # OpenAI: `usage` only in the extra chunk that stream_options.include_usage asks for
                        yield sse(openai_api.chunk(request_id, model, created, {}, finish,
                                                   timings=openai_api.timings(value)))
                        if chat.include_usage:
                            yield sse(openai_api.usage_chunk(request_id, model, created, value))
                        break
                    else:
                        yield sse(ApiError.of(value).body())
                        break
                    event = await channel.queue.get()
                yield sse("[DONE]")
            finally:  # the client left (the task is cancelled) or the stream ended: stop the job either way
                job.cancel()
                server.queue.remove(job)

        return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)

    # --- watch ------------------------------------------------------------------------------------
    @app.get("/v1/watch")
    async def watch_stream(request: Request):
        subscription = server.hub.subscribe()  # TooManySubscribers: 429

        async def events() -> AsyncIterator[bytes]:
            try:
                yield b": crome-edge watch stream\n\n"
                while True:
                    try:
                        event = await asyncio.wait_for(subscription.queue.get(), config.keepalive_s)
                    except asyncio.TimeoutError:
                        yield b": keepalive\n\n"  # a closed tab is noticed here at the latest
                        continue
                    if event is None:  # the server is stopping
                        break
                    yield sse(event)
            finally:
                server.hub.unsubscribe(subscription)

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    @app.get("/v1/watch/prompts")
    async def watch_list():
        return {"object": "list", "data": server.watch.prompts() if server.watch else []}

    @app.post("/v1/watch/prompts", status_code=201)
    async def watch_add(request: Request):
        if server.watch is None:
            raise bad("this server has no camera, so it has nothing to watch")
        body = json_body(await request.body())
        if not isinstance(body, dict) or set(body) - {"prompt", "max_tokens"}:
            raise bad("the body must be {\"prompt\": \"...\"} with an optional max_tokens")
        prompt, max_tokens = body.get("prompt"), body.get("max_tokens")
        if not isinstance(prompt, str) or not prompt.strip():
            raise bad("prompt must be a non-empty string", "prompt")
        if len(prompt) > limits.max_prompt_chars:
            raise bad(f"the prompt is over {limits.max_prompt_chars:,} characters", "prompt", "context_length_exceeded")
        try:
            check_text(prompt, "the prompt")
        except TextError as error:
            raise bad(str(error), "prompt") from None
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                       or not 1 <= max_tokens <= limits.max_tokens):
            raise bad(f"max_tokens must be an integer from 1 to {limits.max_tokens}", "max_tokens")
        try:
            return server.watch.add(prompt.strip(), max_tokens).describe()
        except WatchError as error:
            raise ApiError(429, str(error), code="too_many_watch_prompts") from None

    @app.delete("/v1/watch/prompts/{watch_id}")
    async def watch_remove(watch_id: str):
        if server.watch is None:
            raise ApiError(404, f"no watch prompt {watch_id!r}")
        try:
            removed = server.watch.remove(watch_id)
        except WatchError as error:
            raise ApiError(404, str(error)) from None
        return {**removed.describe(), "deleted": True}

    app.add_middleware(Guard, server=server)
    return app


async def _next_event(channel: Channel, disconnected: asyncio.Future, job: Job, server: "Server"):
    """The job's next event, or None when the client disconnected first (the job is then cancelled)."""
    getter = asyncio.ensure_future(channel.queue.get())
    try:
        done, _ = await asyncio.wait({getter, disconnected}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not getter.done():
            getter.cancel()
    if getter in done:
        return getter.result()
    job.cancel()
    server.queue.remove(job)
    return None
