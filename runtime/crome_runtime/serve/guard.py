"""The checks every HTTP request passes before a route sees it (pure ASGI middleware), and the response count.

In this order, each refusal in OpenAI's error shape:
- Host: one of the names this server answers to — loopback (127.0.0.1, localhost, ::1), the `--host` value,
  each `--allowed-host` ("*": any), or an IP address. A DNS-rebinding page (evil.example resolving to
  127.0.0.1) sends its own name, so it is refused (400 host_not_allowed) and cannot read frames or answers;
  an IP address cannot be rebound, so it is always answered (a LAN client of `--host 0.0.0.0`);
- the API key (when the server has one; constant-time compare) on everything but /health and the page's files;
- Origin, on state-changing methods (POST, PUT, PATCH, DELETE): when a browser sends one, it must be this
  server's own (http(s)://HOST) — a cross-site form or fetch gets 403 origin_not_allowed;
- the body: Content-Length over the limit is 413 before anything is read; a body declared as anything but
  JSON is 415 (a cross-site `text/plain` "simple request" never reaches a JSON parser; a body without a
  Content-Type, as non-browser clients send, is read as JSON); a body larger than declared is 413 as it
  arrives, and one that does not arrive within `read_timeout_s` is 408 (503 when the server stops meanwhile).

Not here: the routes (app.py), connection limits (host.py).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import time
from typing import TYPE_CHECKING

from fastapi.responses import JSONResponse

from crome_runtime.serve.config import LOOPBACK_HOSTS, ServeConfig
from crome_runtime.serve.protocol import ApiError

if TYPE_CHECKING:
    from crome_runtime.serve.server import Server

PUBLIC_PATHS = ("/health", "/", "/favicon.ico")  # and /static/*: the page's files hold no data
STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def allowed_hosts(config: ServeConfig) -> frozenset[str] | None:
    """The Host names this server answers to (lower case, no port); None: any."""
    if "*" in config.allowed_hosts:
        return None
    names = {*LOOPBACK_HOSTS, *config.allowed_hosts}
    if config.host not in WILDCARD_HOSTS:
        names.add(config.host)
    return frozenset(name.lower().strip("[]").rstrip(".") for name in names)


def host_name(value: str) -> str:
    """A Host header's name: 'LocalHost:8080' -> 'localhost', '[::1]:80' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0].rstrip(".") if value.count(":") == 1 else value.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Guard:
    """Around every HTTP request: the checks above, then counts the response (Metrics.request)."""

    def __init__(self, app, server: "Server"):
        self.app, self.server = app, server
        key = server.config.api_key
        self._key_digest = hashlib.sha256(key.encode()).digest() if key else None
        self._hosts = allowed_hosts(server.config)

    def authorized(self, headers: dict[bytes, bytes]) -> bool:
        value = headers.get(b"authorization", b"")
        token = value[7:].strip() if value[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
        # equal-length digests: the comparison takes the same time whatever the key and the guess are
        return self._key_digest is not None and hmac.compare_digest(hashlib.sha256(token).digest(), self._key_digest)

    def refusal(self, scope, headers: dict[bytes, bytes]) -> ApiError | None:
        """Why this request is refused before its body is read (None: it is not)."""
        host = headers.get(b"host", b"").decode("latin-1")
        if self._hosts is not None and not (host_name(host) in self._hosts or _is_ip(host_name(host))):
            return ApiError(400, f"this server does not answer to Host {host[:80]!r} (a page on another site would "
                            "send that through DNS rebinding); if you reach it by that name, start it with "
                            f"--allowed-host {host_name(host)[:80] or 'NAME'}", code="host_not_allowed")
        path, method = scope["path"], scope["method"]
        public = path in PUBLIC_PATHS or path.startswith("/static/")
        if self._key_digest is not None and not public and not self.authorized(headers):
            missing = b"authorization" not in headers and b"x-api-key" not in headers
            return ApiError(401, "missing API key: send Authorization: Bearer <key>" if missing else "wrong API key",
                            code="invalid_api_key")
        origin = headers.get(b"origin")
        if method in STATE_CHANGING and origin is not None and origin.decode("latin-1") not in (
                f"http://{host}", f"https://{host}"):
            return ApiError(403, f"{method} {path} from the page of another site (Origin "
                            f"{origin.decode('latin-1')[:80]!r}) is refused: only this server's own page may change "
                            "its state", code="origin_not_allowed")
        limit = self.server.config.limits.max_body_bytes
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return too_large(limit)
        media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        has_body = (length is not None and int(length) > 0) or b"transfer-encoding" in headers
        if has_body and media and media != b"application/json":
            return ApiError(415, f"the body is {media.decode('latin-1')[:80]!r}; this server reads JSON: send "
                            "Content-Type: application/json", code="unsupported_media_type")
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def counted_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            refused = self.refusal(scope, dict(scope["headers"]))
            if refused is not None:
                return await error_response(refused)(scope, receive, counted_send)
            await self.app(scope, self._bounded(receive), counted_send)
        finally:
            self.server.metrics.request(scope["path"], status[0])

    def _bounded(self, receive):
        """`receive`, refusing a body over the limit (413), slower than read_timeout_s in all (408), or still
        arriving when the server stops (503)."""
        limit, timeout = self.server.config.limits.max_body_bytes, self.server.config.read_timeout_s
        deadline = time.monotonic() + timeout
        received, complete = 0, False

        async def bounded_receive():
            nonlocal received, complete
            if complete:  # the body is in: what is left is waiting for a disconnect, however long
                return await receive()
            message = await self._body_part(receive(), deadline - time.monotonic(), timeout)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large(limit)
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        return bounded_receive

    async def _body_part(self, receiving, left_s: float, timeout: float) -> dict:
        waits = {asyncio.ensure_future(receiving)}
        stopped = self.server.shutdown
        if stopped is not None:
            waits.add(asyncio.ensure_future(stopped.wait()))
        done, pending = await asyncio.wait(waits, timeout=max(left_s, 0.0), return_when=asyncio.FIRST_COMPLETED)
        for waiting in pending:
            waiting.cancel()
        for finished in done:
            result = finished.result()
            if isinstance(result, dict):
                return result
        if done:
            raise ApiError(503, "the server is shutting down", code="shutting_down")
        raise ApiError(408, f"the request body did not arrive within {timeout:g} s; send it whole",
                       code="request_timeout")


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is over this server's {limit:,}-byte limit; send a smaller image",
                    code="request_too_large")


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.http_status, headers=error.headers)
