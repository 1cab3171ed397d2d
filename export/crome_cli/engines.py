"""`crome-edge build-engines BUNDLE`: TensorRT engines for a bundle, built on this device.

Thin: the work is in crome_export.engines (TensorRT imported lazily; a clear message without it).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="bundle directory (crome-edge export)")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="allow FP16 kernels (default)")
    precision.add_argument("--int8", action="store_true", help="allow INT8 kernels (uses the graphs' Q/DQ scales)")
    precision.add_argument("--fp32", action="store_true", help="FP32 kernels only")
    parser.add_argument("--workspace", type=int, default=2048, metavar="MiB", help="builder workspace (default %(default)s MiB)")
    parser.add_argument("--max-batch", type=int, default=8, help="largest batch the engines accept (default %(default)s)")
    parser.add_argument("--max-total-tokens", type=int, default=512, help="longest prefix + answer (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    from crome_export.engines import EngineLimits, build_engines
    from crome_runtime.outputs import check_output

    check_output(args.bundle, "the bundle", directory=True)  # engines/ is written into it
    precision = "int8" if args.int8 else "fp32" if args.fp32 else "fp16"
    limits = EngineLimits(max_batch=args.max_batch, max_total_tokens=args.max_total_tokens)
    print(build_engines(args.bundle, precision, args.workspace, limits))
    return 0
