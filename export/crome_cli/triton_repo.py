"""`crome-edge triton-repo BUNDLE OUT`: a Triton Inference Server model repository from a bundle (torch-free).

    crome-edge triton-repo line3.bundle models/                       # python backend, runs anywhere
    crome-edge triton-repo line3.bundle models-gpu/ --variant gpu     # native vision/adapter models on GPUs
    crome-edge triton-repo line3.bundle models-trt/ --variant gpu --gpu-backend tensorrt

Thin: flags into crome_runtime.triton.repository.RepositoryConfig (defaults live there), write, check every
config.pbtxt against Triton's schema, print the layout and how to serve it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from crome_cli.flags import whole


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="bundle directory (crome-edge export)")
    parser.add_argument("out", type=Path, help="the model repository to write (must not exist)")
    parser.add_argument("--variant", choices=("python", "gpu"),
                        help="python (default): one python-backend model running the bundle through the engine; "
                             "gpu: vision and each adapter's visual branch as native onnxruntime/tensorrt models on GPU "
                             "instances, the decode loop in python calling them over BLS")
    parser.add_argument("--gpu-backend", choices=("onnxruntime", "tensorrt"),
                        help="--variant gpu: the native models' backend (default onnxruntime; tensorrt: build the "
                             "plans on the server, see BUILD_TENSORRT.md)")
    parser.add_argument("--max-batch-size", type=whole(1), metavar="N",
                        help="requests Triton may merge into one vision batch (default 16)")
    parser.add_argument("--max-queue-delay-us", type=whole(0), metavar="US",
                        help="how long a request may wait to be batched (default 2000 µs)")
    parser.add_argument("--instances", type=whole(1), metavar="N", help="model instances, each its own engine (default 1)")
    parser.add_argument("--threads", type=whole(0), metavar="N", help="ONNX Runtime threads per graph per instance "
                                                                       "(default 1; 0: one per core)")
    parser.add_argument("--stream", action="store_true", help="decoupled model: stream text pieces as they decode")
    parser.add_argument("--link-bundle", action="store_true",
                        help="refer to BUNDLE by its absolute path instead of copying it into the repository")


def run(args: argparse.Namespace) -> int:
    from crome_runtime.outputs import check_output
    from crome_runtime.triton.repository import RepositoryConfig, write_repository

    check_output(args.out, "the repository", [args.bundle], directory=True, within=[args.bundle])
    config = RepositoryConfig()
    for flag, name in (("variant", "variant"), ("gpu_backend", "gpu_backend"), ("max_batch_size", "max_batch_size"),
                       ("max_queue_delay_us", "max_queue_delay_us"), ("instances", "instances"), ("threads", "threads")):
        if getattr(args, flag) is not None:
            setattr(config, name, getattr(args, flag))
    config.decoupled, config.link_bundle = bool(args.stream), bool(args.link_bundle)
    out = write_repository(args.bundle, args.out, config)
    models = sorted(d.name for d in out.iterdir() if (d / "config.pbtxt").is_file())
    print(f"model repository {out}: {', '.join(models)} (configs checked against Triton 2.51's schema)")
    print(f"serve it:  crome-edge tritonserver {out}")
    print("ask it:    crome-edge client --triton http://127.0.0.1:8000 --camera demo")
    return 0
