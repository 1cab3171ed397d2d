"""`crome-edge serve`: a camera -> answers, an OpenAI-compatible API, a live web view and metrics (torch-free).

    crome-edge serve --camera demo --watch "Which bin does this part go to?"
    crome-edge serve --bundle line3.bundle --camera 0 --api-key-file key.txt --host 0.0.0.0 --events events.jsonl

Thin: parses arguments into crome_runtime.serve's ServeConfig (defaults live there), opens the camera once
to fail fast, binds the port, then runs crome_runtime.serve.server.Server under crome_runtime.serve.host until
SIGTERM / SIGINT (exit 0).
`--camera demo` is crome_edge's synthetic conveyor camera (numpy + OpenCV, no torch). With no --bundle the
embedded default bundle is exported once into the cache (crome_cli.default_bundle; needs the [train] extra).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import crome_runtime  # noqa: F401  (first: it sets OpenCV's decoder pixel limit before anything loads cv2)
from crome_cli.flags import number, whole
from crome_runtime.errors import CromeError

PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")  # crome_runtime.providers.CHOICES (not imported at parse time)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, help="bundle directory (crome-edge export); default: the embedded "
                                                    "default (smol + line3), exported once into the cache")
    parser.add_argument("--camera", metavar="SRC",
                        help="camera: an index (0), a device (/dev/video2), a video file, an rtsp:// or http(s):// "
                             "stream, a GStreamer pipeline (OpenCV with GStreamer only), or demo (synthetic conveyor); "
                             "none: answer uploaded images only")
    parser.add_argument("--loop", action="store_true", help="video files: start again at the end")
    parser.add_argument("--demo-fps", type=number(above=0), metavar="F", help="frame rate of --camera demo (default 15)")
    parser.add_argument("--watch", action="append", metavar="PROMPT",
                        help="a standing question asked of every new frame (repeatable); answers go to /v1/watch, "
                             "the web page and --events")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=whole(0), help="port (default 8080; 0 picks a free one)")
    parser.add_argument("--allowed-host", action="append", metavar="NAME",
                        help="also answer requests whose Host header is NAME (repeatable; * for any): loopback names, "
                             "IP addresses and the --host value always are; any other name is refused (DNS rebinding)")
    key = parser.add_mutually_exclusive_group()
    key.add_argument("--api-key", metavar="KEY", help="require this key (Authorization: Bearer KEY) on every "
                                                      "endpoint but /health and the page's files")
    key.add_argument("--api-key-file", type=Path, metavar="F", help="read the key from this file (first line)")
    parser.add_argument("--threads", type=whole(0), metavar="N", help="ONNX Runtime threads per graph (default: one per core)")
    parser.add_argument("--provider", default="auto", choices=PROVIDERS, help="execution provider (default auto)")
    parser.add_argument("--max-new-tokens", type=whole(1), metavar="N", help="default answer length (default: the bundle's)")
    parser.add_argument("--queue-size", type=whole(1), metavar="N", help="API requests that may wait for the engine; "
                                                                    "one more gets 429 (default 16)")
    parser.add_argument("--events", type=Path, metavar="FILE.jsonl", help="append every watch answer (and camera state change) here, one JSON line each")
    parser.add_argument("--min-margin", type=number(minimum=0, maximum=1), metavar="X",
                        help="flag watch answers whose first-token margin (top-1 minus top-2 probability, 0..1) is "
                             "under X: \"low_confidence\": true in their event (default: none flagged)")
    parser.add_argument("--drop-below-margin", action="store_true",
                        help="with --min-margin: do not publish flagged watch answers (page, /v1/watch, --events); "
                             "they are still counted (GET /v1/watch/prompts, crome_watch_low_confidence_total)")
    parser.add_argument("--profile", type=Path, metavar="OUT.json",
                        help="at exit, write the engine's per-stage summary here and a Chrome trace next to it")
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the bundle's files")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                        help="server log level (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    config = _config(args)
    logging.basicConfig(format="crome-edge serve: %(message)s", stream=sys.stderr)
    logging.getLogger("crome_runtime.serve").setLevel(args.log_level.upper())
    if not config.loopback and config.api_key is None:
        print(f"crome-edge serve: WARNING: listening on {config.host} WITHOUT an API key: anyone who can reach this "
              "machine can use the model and see the camera. Pass --api-key-file F, or --host 127.0.0.1",
              file=sys.stderr)
    return _serve(args, config)


def _config(args: argparse.Namespace):
    from crome_runtime.serve.config import ServeConfig

    config = ServeConfig()
    for name in ("host", "port", "max_new_tokens", "events", "profile", "min_margin"):
        value = getattr(args, name)
        if value is not None:
            setattr(config, name, value)
    config.watch = [w for w in (args.watch or [])]
    config.allowed_hosts = [name.strip() for name in (args.allowed_host or [])]
    if any(not name or any(c in name for c in "/@: ") for name in config.allowed_hosts):
        raise CromeError("--allowed-host takes a host name (camera-box.local) or *, without a scheme, port or path")
    config.camera.loop = bool(args.loop)
    config.drop_below_margin = bool(args.drop_below_margin)
    if config.drop_below_margin and config.min_margin is None:
        raise CromeError("--drop-below-margin needs --min-margin X: the margin (0..1) under which watch answers are dropped")
    if config.min_margin is not None and not config.watch and args.camera in (None, "none"):
        raise CromeError("--min-margin applies to watch answers, which need a camera: pass --camera (e.g. --camera demo)")
    if args.queue_size is not None:
        config.limits.queue_size = args.queue_size
    if not 0 <= config.port <= 65535:
        raise CromeError(f"--port {config.port} is not a port (0..65535)")
    if config.max_new_tokens is not None and config.max_new_tokens > config.limits.max_tokens:
        raise CromeError(f"--max-new-tokens must be at most {config.limits.max_tokens}")
    if any(not w.strip() for w in config.watch):
        raise CromeError("--watch needs a question, e.g. --watch \"Which bin does this part go to?\"")
    if args.api_key_file is not None:
        config.api_key = read_key_file(args.api_key_file)
        if not config.api_key:
            raise CromeError(f"--api-key-file {args.api_key_file} is empty")
    elif args.api_key is not None:
        if not args.api_key.strip():
            raise CromeError("--api-key is empty")
        config.api_key = args.api_key
    if config.watch and args.camera in (None, "none"):
        raise CromeError("--watch needs a camera: pass --camera (e.g. --camera demo)")
    if config.events is not None and not config.events.parent.is_dir():
        raise CromeError(f"--events {config.events}: directory {config.events.parent} does not exist")
    from crome_runtime.outputs import check_output
    from crome_runtime.profiler import check_profile_output

    inputs = [args.bundle, args.api_key_file]
    if config.events is not None:
        check_output(config.events, "--events", inputs, within=[args.bundle], append=True)  # appended, never replaced
    if config.profile is not None:  # written at exit: refused now, not after hours of serving
        check_profile_output(config.profile, "--profile", inputs + [config.events], within=[args.bundle])
    return config


def read_key_file(path: Path) -> str:
    """The API key: the first line of `path`, a regular file of at most MAX_KEY_FILE_BYTES (/dev/zero, a FIFO or a
    huge file is refused before it is read, not read until memory runs out or forever)."""
    from crome_runtime.input_files import read_bytes
    from crome_runtime.limits import MAX_KEY_FILE_BYTES

    try:
        data = read_bytes(path, MAX_KEY_FILE_BYTES, "--api-key-file")
    except CromeError:  # input_files.InputFileError (an OSError too): a FIFO, a device, over the limit
        raise
    except OSError as error:
        raise CromeError(f"cannot read --api-key-file {path}: {error.strerror or error}") from None
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise CromeError(f"--api-key-file {path} is not UTF-8 text; put the key on its first line") from None
    return lines[0].strip() if lines else ""


def demo_camera(fps: float | None):
    """`--camera demo`: the synthetic conveyor camera at a steady frame rate (crome_edge.synth, no torch)."""
    from crome_edge.synth.camera import SyntheticCamera

    return lambda: SyntheticCamera(realtime=True) if fps is None else SyntheticCamera(fps=fps, realtime=True)


def _serve(args: argparse.Namespace, config) -> int:
    from crome_runtime.engine import EngineConfig
    from crome_runtime.serve.host import serve
    from crome_runtime.serve.server import Server, bind
    from crome_runtime.serve.sources import parse_source

    def say(message: str) -> None:
        print(f"crome-edge serve: {message}", file=sys.stderr, flush=True)

    if args.bundle is not None:
        bundle = args.bundle
    else:
        from crome_cli.default_bundle import ensure_default_bundle

        bundle = ensure_default_bundle(say)
        say(f"embedded default bundle: {bundle}")
    source = first = None
    if args.camera not in (None, "none"):
        source = parse_source(args.camera, config.camera, extra={"demo": demo_camera(args.demo_fps)})
        first = source.open()  # a camera that cannot be opened fails now, listing the video devices there are
    try:
        engine_config = EngineConfig(provider=args.provider, verify=not args.no_verify,
                                     **({} if args.threads is None else {"threads": args.threads}))
        server = Server(config, bundle, engine_config, source, first)  # OSError: the events file
        sock = bind(config.host, config.port)  # PortInUse, or an OSError naming host:port
    except BaseException:
        if first is not None:
            first.release()
        raise
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    say(f"model {server.model_id}; camera {source.spec if source else 'none'}; "
        f"watching {len(config.watch)} prompt(s); loading the engine")
    say(f"web view {url}/  ·  OpenAI API {url}/v1  ·  health {url}/health  ·  metrics {url}/metrics")
    serve(server, sock, log_level="warning")
    if server.fatal_error is not None:
        raise CromeError(f"the engine failed to load: {server.fatal_error}")
    say("stopped")
    return 0
