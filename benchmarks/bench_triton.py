"""Many cameras: Triton Inference Server (python backend, dynamic batching) vs `crome-edge serve`, same bundle.

    python benchmarks/bench_triton.py --bundle B [--cameras 1 4 16] [--requests 48] [--threads 2] [--instances 1]

For each camera count N, N synthetic conveyor cameras (crome_edge.synth.camera, distinct seeds, frames rendered
beforehand and PNG-encoded) each send their next frame as soon as the previous answer came back (closed loop),
until --requests answers in all (at least 2 per camera). Measured per server: answers per second over the
wall time, round-trip latency p50/p99 (request sent -> answer read), and for Triton the mean number of
requests merged into one execute (one vision batch).

  * Triton: `crome-edge triton-repo B` (1 instance per --instances, ORT --threads per graph) served by the
    wheel's tritonserver on loopback ports (crome_runtime.triton.server); requests by crome_runtime.triton.client
    (KServe v2, image bytes). Start-up = process start -> /v2/health/ready (model loaded).
  * serve: the real `crome-edge serve --bundle B --threads T` process (one engine, its fair queue), no camera;
    requests are OpenAI chat completions with the same PNG frames as data URIs. Start-up = process start ->
    /health 200 (engine loaded).

The two servers run one after the other, never together. Prints a markdown block for benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import wait_ready  # noqa: E402  (one readiness poll for both servers)

PROMPT = "Which bin does this part go to?"


def frames(cameras: int, count: int) -> list[list[bytes]]:
    import cv2

    from crome_edge.synth.camera import SyntheticCamera

    out = []
    for c in range(cameras):
        camera = SyntheticCamera(seed=100 + c, realtime=False)
        images = []
        for _ in range(count):
            ok, image = camera.read()
            images.append(cv2.imencode(".png", image)[1].tobytes())
        out.append(images)
    return out


def closed_loop(cameras: int, total: int, send, images: list[list[bytes]]) -> dict:
    """N threads, each sending its camera's frames back to back; send(camera, image) -> (latency_ms, batch)."""
    per_camera = max(2, total // cameras)
    latencies: list[float] = []
    batches: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(cameras + 1)

    def camera(c: int) -> None:
        barrier.wait()
        for i in range(per_camera):
            try:
                latency, batch = send(c, images[c][i % len(images[c])])
            except Exception as error:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(str(error))
                continue
            with lock:
                latencies.append(latency)
                batches.append(batch)

    threads = [threading.Thread(target=camera, args=(c,)) for c in range(cameras)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    lat = np.asarray(latencies)
    return {"cameras": cameras, "answers": len(latencies), "errors": len(errors), "wall_s": wall,
            "fps": len(latencies) / wall, "p50": float(np.percentile(lat, 50)) if lat.size else float("nan"),
            "p99": float(np.percentile(lat, 99)) if lat.size else float("nan"),
            "batch": float(np.mean(batches)) if batches else float("nan"), "first_error": errors[0] if errors else ""}


def bench_triton(args, bundle: Path, work: Path, images) -> tuple[float, list[dict]]:
    from crome_runtime.triton import server as triton
    from crome_runtime.triton.client import TritonClient
    from crome_runtime.triton.repository import RepositoryConfig, write_repository

    repo = write_repository(bundle, work / "models", RepositoryConfig(threads=args.threads, instances=args.instances,
                                                                       max_batch_size=16))
    server = triton.TritonServer(triton.locate(), repo, triton.ServerConfig(ports=triton.Ports(0, 0, 0)),
                                 log=work / "tritonserver.log").start()
    results = []
    try:
        startup = server.wait_ready(300)
        for n in args.cameras:
            clients = [TritonClient(server.url) for _ in range(n)]

            def send(c, image, clients=clients):
                r = clients[c].infer(args.prompt, image=image)
                return r.latency_ms, int(r.timings.get("requests_in_batch", 1))

            closed_loop(n, n, send, images)  # warm-up: one answer per camera
            results.append(closed_loop(n, args.requests, send, images))
            for client in clients:
                client.close()
    finally:
        server.stop()
    return startup, results


def bench_serve(args, bundle: Path, images) -> tuple[float, list[dict]]:
    from crome_runtime.triton.server import free_port

    port = free_port()
    command = [sys.executable, "-m", "crome_cli", "serve", "--bundle", str(bundle), "--port", str(port),
               "--threads", str(args.threads), "--log-level", "warning", "--queue-size", "64"]
    start = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    results = []
    try:
        wait_ready(base, process, 300, poll_s=0.05)
        startup = time.monotonic() - start
        uris = [["data:image/png;base64," + base64.b64encode(i).decode() for i in cam] for cam in images]
        index = {id(b): (c, k) for c, cam in enumerate(images) for k, b in enumerate(cam)}

        def send(c, image):
            cam, k = index[id(image)]
            body = json.dumps({"model": "crome", "max_tokens": 64, "messages": [{"role": "user", "content": [
                {"type": "text", "text": args.prompt}, {"type": "image_url", "image_url": {"url": uris[cam][k]}}]}]})
            request = urllib.request.Request(f"{base}/v1/chat/completions", body.encode(),
                                             {"Content-Type": "application/json"})
            t = time.perf_counter()
            with urllib.request.urlopen(request, timeout=300) as response:
                response.read()
            return (time.perf_counter() - t) * 1e3, 1

        for n in args.cameras:
            closed_loop(n, n, send, images)
            results.append(closed_loop(n, args.requests, send, images))
    finally:
        process.terminate()
        process.wait(60)
    return startup, results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=48, help="answers per camera count (at least 2 per camera)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads per graph (both servers)")
    parser.add_argument("--instances", type=int, default=1, help="Triton model instances")
    parser.add_argument("--prompt", default=PROMPT)
    args = parser.parse_args()
    from crome_runtime.machine import describe_cpu

    images = frames(max(args.cameras), max(2, args.requests // min(args.cameras)) + 1)
    with tempfile.TemporaryDirectory(prefix="bench-triton-") as work:
        t_start, t_rows = bench_triton(args, args.bundle, Path(work), images)
    s_start, s_rows = bench_serve(args, args.bundle, images)
    cpu = describe_cpu()
    print(f"\nbundle {args.bundle.name}; threads {args.threads}; Triton instances {args.instances}; prompt {args.prompt!r}")
    print(f"CPU: {json.dumps(cpu)}\n")
    print(f"start-up (process -> ready, model loaded): Triton {t_start:.2f} s, serve {s_start:.2f} s\n")
    print("| cameras | server | answers | frames/s | p50 ms | p99 ms | mean requests per execute | errors |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for t, s in zip(t_rows, s_rows):
        for name, row, batch in (("Triton", t, f"{t['batch']:.2f}"), ("serve", s, "—")):
            print(f"| {row['cameras']} | {name} | {row['answers']} | {row['fps']:.2f} | {row['p50']:.1f} | "
                  f"{row['p99']:.1f} | {batch} | {row['errors']} |")
    for row in t_rows + s_rows:
        if row["first_error"]:
            print(f"first error ({row['cameras']} cameras): {row['first_error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
