"""`crome-edge client --triton URL --camera SRC ...`: several cameras -> the crome model on Triton, answers and
latency per camera (torch-free).

    crome-edge client --triton http://127.0.0.1:8000 --camera demo:1 --camera demo:2 --camera rtsp://cam3/stream \\
        --prompt "Which bin does this part go to?" --frames 20

Each camera is read by crome_runtime.serve's capture code (a reader thread keeping only the newest frame,
reconnect with backoff; the same `--camera` specs as `serve`), and has one sender thread with its own
connection: it takes the newest frame it has not asked about, sends it (PNG by default: lossless, so answers
equal `crome-edge run` on the same pixels; `--encoding jpg` is smaller), and prints one line per answer. At the
end (after --frames answers per camera, --duration seconds, or Ctrl-C) a summary per camera: answers, frames/s,
p50/p99 round-trip latency, the mean vision batch Triton formed. `demo` / `demo:SEED` is crome_edge's synthetic
conveyor camera. `--json` prints one JSON object per answer instead.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass, field

import crome_runtime  # noqa: F401  (first: it sets OpenCV's decoder pixel limit before anything loads cv2)
from crome_cli.flags import SEED, number, whole
from crome_runtime.errors import CromeError


@dataclass
class ClientConfig:
    model: str = "crome"
    prompt: str = "Which bin does this part go to?"
    encoding: str = "png"  # png (lossless) | jpg
    jpeg_quality: int = 90
    frames: int | None = None  # answers per camera, then stop (None: until --duration or Ctrl-C)
    duration_s: float | None = None
    demo_fps: float = 15.0
    wait_ready_s: float = 30.0  # how long to wait for the server's /v2/health/ready at start


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--triton", required=True, metavar="URL", help="Triton's HTTP address, e.g. http://127.0.0.1:8000")
    parser.add_argument("--camera", required=True, action="append", metavar="SRC",
                        help="a camera (repeatable): an index, /dev/videoN, a video file, an rtsp:// or http(s):// "
                             "stream, or demo / demo:SEED (synthetic conveyor)")
    parser.add_argument("--prompt", help=f"the question asked of every frame (default: {ClientConfig.prompt!r})")
    parser.add_argument("--model", help=f"model name in the repository (default {ClientConfig.model})")
    parser.add_argument("--frames", type=whole(1), metavar="N", help="stop after N answers per camera")
    parser.add_argument("--duration", type=number(above=0), metavar="S", help="stop after S seconds")
    parser.add_argument("--encoding", choices=("png", "jpg"), help="how frames travel (default png: lossless)")
    parser.add_argument("--max-new-tokens", type=whole(1), metavar="N", help="answer length cap (default: the bundle's)")
    parser.add_argument("--temperature", type=number(minimum=0), metavar="T", help="0 = greedy (default: the bundle's)")
    parser.add_argument("--seed", type=SEED, help="sampling seed")
    parser.add_argument("--demo-fps", type=number(above=0), metavar="F", help="frame rate of demo cameras (default 15)")
    parser.add_argument("--loop", action="store_true", help="video files: start again at the end")
    parser.add_argument("--json", action="store_true", help="one JSON object per answer on stdout")


@dataclass
class CameraStats:
    spec: str
    latencies_ms: list[float] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)
    errors: int = 0
    last_error: str = ""
    started: float = 0.0
    finished: float = 0.0

    def summary(self) -> dict:
        import numpy as np

        lat = self.latencies_ms
        p50, p99 = (round(float(v), 2) for v in np.percentile(lat, [50, 99])) if lat else (None, None)
        seconds = max(self.finished - self.started, 1e-9)
        return {"camera": self.spec, "answers": len(lat), "errors": self.errors,
                "frames_per_s": round(len(lat) / seconds, 2),
                "p50_ms": p50, "p99_ms": p99,
                "mean_vision_batch": round(sum(self.batches) / len(self.batches), 2) if self.batches else None,
                **({"last_error": self.last_error} if self.last_error else {})}


def run(args: argparse.Namespace) -> int:
    config = ClientConfig()
    for flag, name in (("prompt", "prompt"), ("model", "model"), ("frames", "frames"), ("duration", "duration_s"),
                       ("encoding", "encoding"), ("demo_fps", "demo_fps")):
        if getattr(args, flag) is not None:
            setattr(config, name, getattr(args, flag))
    if not config.prompt.strip():
        raise CromeError("--prompt is empty; ask a question about the frames")
    return _run(args, config)


def _sources(specs: list[str], config: ClientConfig, loop: bool):
    from crome_runtime.serve.config import CameraConfig
    from crome_runtime.serve.sources import parse_source

    def demo(seed: int):
        from crome_edge.synth.camera import SyntheticCamera

        return lambda: SyntheticCamera(fps=config.demo_fps, seed=seed, realtime=True)

    extra = {}
    for spec in specs:
        if spec == "demo" or spec.startswith("demo:"):
            tail = spec.partition(":")[2] or "0"
            if not tail.isdigit():
                raise CromeError(f"--camera {spec}: demo cameras are demo or demo:SEED (a whole number)")
            extra[spec] = demo(int(tail))
    camera_config = CameraConfig(loop=loop)
    return [parse_source(spec, camera_config, extra) for spec in specs], camera_config


def _run(args: argparse.Namespace, config: ClientConfig) -> int:
    from crome_runtime.engine import GenerationOptions
    from crome_runtime.serve.reader import CameraReader, FrameSlot
    from crome_runtime.triton.client import TritonClient

    options = GenerationOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                seed=args.seed or 0)
    sources, camera_config = _sources(args.camera, config, args.loop)
    probe = TritonClient(args.triton, config.model)
    deadline = time.monotonic() + config.wait_ready_s
    while not (probe.ready() and probe.model_ready()):
        if time.monotonic() > deadline:
            raise CromeError(f"Triton at {probe.url} is not ready (model {config.model}) after "
                             f"{config.wait_ready_s:.0f} s; start it with `crome-edge tritonserver REPO`")
        time.sleep(0.2)
    probe.close()
    firsts = [source.open() for source in sources]  # a camera that cannot be opened fails now
    slots = [FrameSlot() for _ in sources]
    readers = [CameraReader(s, slot, camera_config, first).start() for s, slot, first in zip(sources, slots, firsts)]
    stop = threading.Event()
    stats = [CameraStats(source.spec) for source in sources]
    lock = threading.Lock()

    def send(index: int) -> None:
        import cv2

        slot, stat = slots[index], stats[index]
        ext, params = (".png", []) if config.encoding == "png" else (".jpg", [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality])
        last_id = None
        with TritonClient(args.triton, config.model) as client:
            stat.started = time.monotonic()
            while not stop.is_set() and (config.frames is None or len(stat.latencies_ms) < config.frames):
                frame = slot.wait_newer(last_id, 0.5)
                if frame is None:
                    if readers[index].state == "ended":
                        break
                    continue
                slot.take()
                last_id = frame.id
                ok, data = cv2.imencode(ext, frame.image, params)
                try:
                    result = client.infer(config.prompt, data.tobytes(), options=options)
                except Exception as error:  # noqa: BLE001 - counted and shown per camera; the others go on
                    stat.errors += 1
                    stat.last_error = str(error)
                    if stat.errors >= 5 and not stat.latencies_ms:
                        break
                    continue
                stat.latencies_ms.append(result.latency_ms)
                stat.batches.append(int(result.timings.get("requests_in_batch", 1)))
                line = ({"camera": stat.spec, "frame_id": frame.id, "answer": result.text,
                         "finish_reason": result.finish_reason, "latency_ms": round(result.latency_ms, 2),
                         "frame_age_ms": round(frame.age_ms(), 2), "timings": result.timings} if args.json else
                        f"[{stat.spec}] frame {frame.id}: {result.text!r}  ({result.latency_ms:.1f} ms, "
                        f"batch {result.timings.get('requests_in_batch', '?')})")
                with lock:
                    print(json.dumps(line) if args.json else line, flush=True)
            stat.finished = time.monotonic()

    threads = [threading.Thread(target=send, args=(i,), name=f"crome-client-{i}", daemon=True)
               for i in range(len(sources))]
    for thread in threads:
        thread.start()
    try:
        end = None if config.duration_s is None else time.monotonic() + config.duration_s
        while any(t.is_alive() for t in threads):
            if end is not None and time.monotonic() > end:
                break
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        for reader in readers:
            reader.stop()
    for stat in stats:
        if not stat.finished:
            stat.finished = time.monotonic()
        print(json.dumps({"summary": stat.summary()}) if args.json else _summary_line(stat.summary()),
              file=sys.stdout if args.json else sys.stderr, flush=True)
    return 1 if any(s.errors and not s.latencies_ms for s in stats) else 0


def _summary_line(summary: dict) -> str:
    text = (f"{summary['camera']}: {summary['answers']} answers, {summary['frames_per_s']} frames/s, "
            f"p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms, mean batch {summary['mean_vision_batch']}")
    if summary["errors"]:
        text += f", {summary['errors']} errors (last: {summary.get('last_error', '')})"
    return text
