"""The HTTP routes (FastAPI): OpenAI chat completions, watch prompts and their SSE stream, frames, health,
metrics, and the web page.

    GET  /                      the web page (static/, package data)
    GET  /health                200 when the engine is loaded and the camera delivers; else 503 saying why
    GET  /metrics               Prometheus text
    GET  /v1/models             the model this server serves (and MODEL/NAME per adapter, MODEL/none)
    GET  /v1/adapters           the bundle's adapters and their routes
    POST /v1/adapters/reload    admin (needs the API key): take the bundle's adapters after `bundle add/remove`
    GET  /v1/frame.jpg          the camera's newest frame (X-Frame-Id, X-Frame-Age-Ms); ?id=N an explained answer's
    POST /v1/chat/completions   OpenAI chat completions, streaming (SSE) or not
    GET  /v1/watch              SSE: every watch answer as it is made (recent ones first)
    GET|POST /v1/watch/prompts, DELETE /v1/watch/prompts/{id}

A handler parses (protocol.py), calls, and returns: it never touches the engine, but submits a Job and reads
its stream (jobs.py), which also handles a client that leaves. Every error is OpenAI's JSON shape, from the
status the error carries; no traceback reaches a client (bugs are logged with theirs).

Not here: the request and response shapes (protocol.py), the checks before a route (guard.py), running it
(host.py), the parts' lifecycle (server.py).
"""
from __future__ import annotations

import asyncio
import json
import logging
from importlib import resources
from typing import TYPE_CHECKING, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from crome_runtime.errors import CromeError
from crome_runtime.serve import jobs, protocol
from crome_runtime.serve.guard import Guard, error_response
from crome_runtime.serve.images import decode_data_uri
from crome_runtime.serve.protocol import ApiError, bad
from crome_runtime.serve.reader import EXPLAINED_FRAMES_KEPT
from crome_runtime.serve.watch import WatchError
from crome_runtime.serve.worker import AnswerFailed, Job

if TYPE_CHECKING:
    from crome_runtime.serve.server import Server

log = logging.getLogger("crome_runtime.serve")

SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def static_dir() -> str:
    return str(resources.files("crome_runtime.serve") / "static")


def json_body(raw: bytes):
    """A request body parsed as JSON, else a 400 saying why (never a 500: deep nesting is a RecursionError)."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise bad("the request body is not valid JSON (nested too deeply)") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise bad(f"the request body is not valid JSON ({error})") from None


def sse(payload: dict | str) -> bytes:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n".encode()


# --- the app ----------------------------------------------------------------------------------------
def create_app(server: "Server") -> FastAPI:
    app = FastAPI(title="crome-edge", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=server.lifespan)
    config, limits = server.config, server.config.limits

    @app.exception_handler(CromeError)  # ApiError included: every error says its own status (ApiError.of)
    async def _crome_error(request: Request, error: CromeError):
        if error.http_status == 500 and not isinstance(error, (ApiError, AnswerFailed)):  # AnswerFailed: logged
            log.error("%s %s failed: %s", request.method, request.url.path, error, exc_info=error)
        return error_response(ApiError.of(error))

    @app.exception_handler(ClientDisconnect)  # left while sending its body: nobody to answer, nothing to log
    async def _gone(request: Request, error: ClientDisconnect):
        return Response(status_code=499)

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
    async def frame_jpg(request: Request):
        if server.slot is None:
            raise ApiError(404, "this server has no camera", code="no_camera")
        wanted = request.query_params.get("id")
        if wanted is None:
            frame = server.slot.latest()
            if frame is None:
                raise ApiError(503, "the camera has not delivered a frame yet", code="no_frame",
                               headers={"Retry-After": "1"})
        else:
            if not (wanted.isascii() and wanted.isdigit() and len(wanted) <= 18):
                raise ApiError(400, f"id must be a frame id (a whole number >= 0), got {wanted[:40]!r}", param="id")
            frame = server.slot.kept(int(wanted))
            if frame is None:
                raise ApiError(404, f"frame {wanted} is not kept: only the newest frame and those of the last "
                               f"{EXPLAINED_FRAMES_KEPT} explained answers are", code="frame_not_kept")
        jpeg = await run_in_threadpool(server.jpeg, frame)
        return Response(jpeg, media_type="image/jpeg", headers={
            "Cache-Control": "no-store", "X-Frame-Id": str(frame.id), "X-Frame-Age-Ms": f"{frame.age_ms():.1f}",
            "X-Frame-Captured-At": f"{frame.unix_s:.6f}"})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        chat = protocol.parse_chat(json_body(await request.body()), limits, config.max_new_tokens)
        chat.options.adapter = protocol.adapter_of(chat.model, server.model_ids, server.adapter_names,
                                                   server.any_model)
        image = None
        if chat.image_url is not None:
            image = await run_in_threadpool(decode_data_uri, chat.image_url, limits.max_image_pixels)  # ImageRefused: 400
        else:
            if chat.explain and server.slot is None:
                raise ApiError(400, "explain draws the answer's heat map over its image, and this request has none: "
                               "send the image in the request (an image_url data URI), or drop explain",
                               param="explain", code="explain_without_image")
            camera_ready(server)
        stream = jobs.submit(server.worker, Job(chat.question, chat.options, "api", image=image, explain=chat.explain),
                             until=request.is_disconnected)
        reply = protocol.Reply(server.model_id, chat.explain)
        try:
            await stream.started()  # an error before the first token is the response's status, streamed or not
        except jobs.ClientGone:
            return Response(status_code=499)
        if not chat.stream:
            try:
                return reply.completion(await stream.collect())
            except jobs.ClientGone:
                return Response(status_code=499)

        async def chunks() -> AsyncIterator[bytes]:
            yield sse(reply.chunk({"role": "assistant", "content": ""}))
            try:
                async for piece in stream:
                    yield sse(reply.chunk({"content": piece}))
            except CromeError as error:
                yield sse(ApiError.of(error).body())
            finally:  # a response closed while it waited to send a chunk: the job stops here too
                stream.close()
            result = stream.result
            if result is not None:
                yield sse(reply.chunk({}, protocol.FINISH[result.answer.finish_reason], result))
                if chat.include_usage:  # OpenAI: `usage` only in the extra chunk include_usage asks for
                    yield sse(reply.usage_chunk(result))
            yield sse("[DONE]")

        return StreamingResponse(chunks(), media_type="text/event-stream", headers=SSE_HEADERS)

    # --- watch ------------------------------------------------------------------------------------
    @app.get("/v1/watch")
    async def watch_stream(request: Request):
        explain = request.query_params.get("explain", "false")
        if explain not in ("true", "false"):
            raise ApiError(400, f"explain must be true or false (true: watch answers carry their heat map), got "
                           f"{explain[:40]!r}", param="explain")
        subscription = server.hub.subscribe(explain == "true")  # TooManySubscribers: 429

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
        watch = protocol.parse_watch_prompt(json_body(await request.body()), limits)
        try:
            return server.watch.add(watch.prompt, watch.max_tokens).describe()
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


def camera_ready(server: "Server") -> None:
    """A question about the camera's newest frame needs a camera that delivers (never a stale frame as if current)."""
    if server.reader is None:
        raise bad("this server has no camera: send the image as an image_url data URI", "messages")
    camera = server.reader.health()
    if not camera["delivering"]:
        age = camera["last_frame_age_s"]
        raise ApiError(503, f"the camera is not delivering frames (state {camera['state']}"
                       + (f"; its last frame is {age:.1f} s old" if age is not None else "; no frame yet")
                       + "): retry when /health is ok, or send the image as an image_url data URI",
                       code="camera_unavailable", headers={"Retry-After": "1"})
