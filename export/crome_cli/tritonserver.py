"""`crome-edge tritonserver REPO`: start Triton Inference Server on a model repository (torch-free).

    crome-edge tritonserver models/                         # loopback, ports 8000 (HTTP) 8001 (gRPC) 8002 (metrics)
    crome-edge tritonserver models/ --print-command         # the plain `tritonserver ...` line and its environment

Finds tritonserver (crome_runtime.triton.server: $CROME_TRITON_HOME / --triton-home, an installed pytriton, or
the nvidia-pytriton wheel fetched once with `pip download --no-deps` into the cache), assembles the python
backend for this interpreter, starts it, waits for /v2/health/ready, says where it listens and how long it took,
and runs until Ctrl-C / SIGTERM, which stop it cleanly.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from crome_cli.flags import whole
from crome_runtime.errors import CromeError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repository", type=Path, nargs="?", help="model repository (crome-edge triton-repo)")
    parser.add_argument("--host", help="address every endpoint binds (default 127.0.0.1: this machine only)")
    parser.add_argument("--http-port", type=whole(0), metavar="P", help="HTTP port (default 8000; 0: a free one)")
    parser.add_argument("--grpc-port", type=whole(0), metavar="P", help="gRPC port (default 8001; 0: a free one)")
    parser.add_argument("--metrics-port", type=whole(0), metavar="P", help="metrics port (default 8002; 0: a free one)")
    parser.add_argument("--triton-home", type=Path, metavar="DIR", help="a Triton install (bin/tritonserver, backends/)")
    parser.add_argument("--fetch", action="store_true", help="only fetch and unpack the server into the cache")
    parser.add_argument("--wheel", type=Path, metavar="WHL", help="with --fetch: an nvidia-pytriton 0.7.0 wheel already downloaded")
    parser.add_argument("--print-command", action="store_true", help="print the tritonserver command and environment, do not run it")
    parser.add_argument("--log", type=Path, metavar="FILE", help="write the server's log here (default: this terminal)")


def run(args: argparse.Namespace) -> int:
    from crome_runtime.triton import server as triton

    def say(message: str) -> None:
        print(f"crome-edge tritonserver: {message}", file=sys.stderr, flush=True)

    if args.fetch:
        triton.fetch_wheel(args.wheel, say=say)
        return 0
    if args.repository is None:
        raise CromeError("give the model repository (crome-edge triton-repo BUNDLE OUT writes one)")
    install = triton.locate(args.triton_home, say=say)
    config = triton.ServerConfig()
    if args.host is not None:
        config.host = args.host
    for flag, name in (("http_port", "http"), ("grpc_port", "grpc"), ("metrics_port", "metrics")):
        if getattr(args, flag) is not None:
            setattr(config.ports, name, getattr(args, flag))
    if args.print_command:
        config.ports = config.ports.resolved(config.host)
        env = triton.environment(install, base={}, stub=triton.stub_env(say))
        print(" ".join(f"{k}={shlex.quote(v)}" for k, v in env.items() if k in ("LD_LIBRARY_PATH", "PATH")) + " \\")
        print("  " + " ".join(shlex.quote(a) for a in triton.command(install, args.repository, config)))
        return 0
    if config.host not in ("127.0.0.1", "localhost", "::1"):
        say(f"WARNING: listening on {config.host}: Triton has no authentication; anyone who can reach this "
            "machine can use the model")
    server = triton.TritonServer(install, args.repository, config, log=args.log).start()
    try:
        seconds = server.wait_ready()
        p = server.config.ports
        say(f"ready in {seconds:.1f} s ({install.source}: {install.binary})")
        say(f"HTTP {server.url}  ·  gRPC {config.host}:{p.grpc}  ·  metrics {server.metrics_url}")
        assert server.process is not None
        server.process.wait()
    finally:
        status = server.stop()
    say(f"stopped (exit status {status})")
    return 0 if status in (0, None) else 1
