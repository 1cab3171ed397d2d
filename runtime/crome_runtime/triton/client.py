"""A small client for the crome model on Triton: KServe v2 HTTP/JSON with Triton's binary-data extension.

Standard library only (http.client, one keep-alive connection per client; use one client per thread), so the
device side needs no tritonclient (which pins numpy<2). The image travels as raw bytes after the JSON header
(`Inference-Header-Content-Length`, BYTES elements as 4-byte little-endian length + data); the outputs come
back as JSON. Every failure is a TritonRequestError with Triton's own message.

Not here: cameras and the per-camera loop (crome_cli.client, on crome_runtime.serve's capture code).
"""
from __future__ import annotations

import http.client
import json
import struct
import time
import urllib.parse
from dataclasses import dataclass, field

import numpy as np

from crome_runtime.engine import GenerationOptions
from crome_runtime.errors import CromeError
from crome_runtime.triton import io


class TritonRequestError(CromeError, RuntimeError):
    """Triton refused or failed a request (HTTP status and Triton's message), or is unreachable."""


@dataclass
class Result:
    text: str
    token_ids: list[int]
    finish_reason: str
    timings: dict  # the model's TIMINGS: stages_ms, ttft_ms, total_ms, vision_batch, requests_in_batch, ...
    latency_ms: float  # round trip measured by the client
    extra: dict = field(default_factory=dict)


class TritonClient:
    def __init__(self, url: str, model: str = "crome", timeout_s: float = 120.0):
        parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parsed.scheme != "http" or not parsed.hostname:
            raise TritonRequestError(f"--triton {url!r}: give the server's HTTP address, e.g. http://127.0.0.1:8000")
        self.host, self.port = parsed.hostname, parsed.port or 8000
        self.model, self.timeout_s = model, timeout_s
        self._connection: http.client.HTTPConnection | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        for attempt in (0, 1):  # a keep-alive connection the server closed is reopened once
            if self._connection is None:
                self._connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            try:
                self._connection.request(method, path, body=body, headers=headers or {})
                response = self._connection.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt:
                    raise TritonRequestError(f"{self.url} closed the connection") from None
            except OSError as error:
                self.close()
                raise TritonRequestError(f"cannot reach Triton at {self.url}: {error}") from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> "TritonClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- health and metadata ------------------------------------------------------------------------
    def ready(self) -> bool:
        try:
            return self._request("GET", "/v2/health/ready")[0] == 200
        except TritonRequestError:
            return False

    def model_ready(self) -> bool:
        try:
            return self._request("GET", f"/v2/models/{self.model}/ready")[0] == 200
        except TritonRequestError:
            return False

    def model_config(self) -> dict:
        status, body = self._request("GET", f"/v2/models/{self.model}/config")
        if status != 200:
            raise TritonRequestError(_message(status, body))
        return json.loads(body)

    def statistics(self) -> dict:
        status, body = self._request("GET", f"/v2/models/{self.model}/stats")
        if status != 200:
            raise TritonRequestError(_message(status, body))
        return json.loads(body)

    # --- inference ----------------------------------------------------------------------------------
    def infer(self, prompt: str, image: bytes | None = None, pixels: np.ndarray | None = None,
              options: GenerationOptions | None = None) -> Result:
        """One question about one image (encoded bytes) or preprocessed (3, S, S) pixels -> Result."""
        header, binary = request_body(prompt, image, pixels, options)
        start = time.perf_counter()
        status, body = self._request("POST", f"/v2/models/{self.model}/infer", header + binary, {
            "Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"})
        latency = (time.perf_counter() - start) * 1e3
        if status != 200:
            raise TritonRequestError(_message(status, body))
        return parse_response(json.loads(body), latency)


def request_body(prompt: str, image: bytes | None, pixels: np.ndarray | None,
                 options: GenerationOptions | None) -> tuple[bytes, bytes]:
    """(JSON header, binary tail) of an infer request."""
    inputs, binary = [], []

    def add_binary(name: str, datatype: str, shape: list[int], data: bytes) -> None:
        inputs.append({"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(data)}})
        binary.append(data)

    if image is not None:
        add_binary(io.IMAGE, "BYTES", [1, 1], struct.pack("<I", len(image)) + bytes(image))
    if pixels is not None:
        array = np.ascontiguousarray(pixels, dtype=np.float32)
        add_binary(io.PIXELS, "FP32", [1, *array.shape], array.tobytes())
    text = prompt.encode("utf-8")
    add_binary(io.PROMPT, "BYTES", [1, 1], struct.pack("<I", len(text)) + text)
    options = options or GenerationOptions()
    for tensor in io.inputs(1):
        if tensor.option is None:
            continue
        value = getattr(options, tensor.option)
        if value is None or (tensor.option == "seed" and value == 0):
            continue
        inputs.append({"name": tensor.name, "datatype": io.WIRE[tensor.data_type], "shape": [1, 1], "data": [value]})
    outputs = [{"name": t.name, "parameters": {"binary_data": False}} for t in io.OUTPUTS]
    header = json.dumps({"inputs": inputs, "outputs": outputs}).encode()
    return header, b"".join(binary)


def parse_response(body: dict, latency_ms: float) -> Result:
    found = {out["name"]: out.get("data", []) for out in body.get("outputs", [])}
    missing = [t.name for t in io.OUTPUTS if t.name not in found]
    if missing:
        raise TritonRequestError(f"the response lacks {', '.join(missing)}; is this crome-edge's model?")
    timings = json.loads(found[io.TIMINGS][0]) if found[io.TIMINGS] else {}
    return Result(found[io.TEXT][0], [int(t) for t in found[io.TOKEN_IDS]], found[io.FINISH_REASON][0], timings,
                  latency_ms)


def _message(status: int, body: bytes) -> str:
    try:
        said = json.loads(body).get("error", "")
    except (ValueError, AttributeError):
        said = body[:300].decode(errors="replace")
    return f"Triton answered {status}: {said}"
