"""`crome-edge export`: an adapter + its backbone -> a deployment bundle (ONNX, INT8, fidelity report).

Thin: parses arguments into crome_export.pipeline.ExportConfig; torch is imported only when it runs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from crome_cli.flags import THREADS, number, whole
from crome_runtime import formats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", required=True, action="append",
                        help="adapter .safetensors (crome-edge train), or 'line3' / 'line5' for a shipped demo adapter; repeat "
                             "it for a bundle of several adapters on one backbone (needs --out)")
    parser.add_argument("--route", action="append", metavar="NAME=REGEX",
                        help="adapter NAME answers the questions this regular expression matches (whole question), "
                             "instead of its training data's questions; repeatable")
    parser.add_argument("--route-question", action="append", metavar="NAME=TEXT",
                        help="adapter NAME answers exactly this question, instead of its training data's; repeatable")
    parser.add_argument("--backbone", help="backbone (tiny, smol or a HF directory); default: the adapter's")
    parser.add_argument("--out", type=Path, help="bundle directory; default: <adapter>.bundle next to the adapter "
                                                  "(for a shipped adapter: in the current directory)")
    parser.add_argument("--precision", default="int8",
                        help=f"backbone precision: {' | '.join(formats.PRECISIONS)} (default int8; adapter stays fp32)")
    parser.add_argument("--calib", metavar="N|DIR",
                        help="INT8 calibration: N frames of the adapter's training data (default 128) or a directory of images")
    parser.add_argument("--data", type=Path,
                        help="the adapter's training data (JSONL or dataset dir) when it is no longer where the "
                             "adapter says; its split gives the calibration and held-out frames")
    parser.add_argument("--opset", type=whole(1), default=formats.DEFAULT_OPSET, help="ONNX opset (18..20, default %(default)s)")
    parser.add_argument("--force", action="store_true", help="replace an existing bundle (atomically)")
    parser.add_argument("--int8-threshold", type=number(minimum=0), default=1.0, metavar="POINTS",
                        help="warn when INT8 loses more task accuracy than this (default %(default)s point)")
    parser.add_argument("--eval-limit", type=whole(1), default=200, metavar="N",
                        help="held-out samples the fidelity report runs on (default %(default)s)")
    parser.add_argument("--max-new-tokens", type=whole(1), help="generation cap for the report (default: longest answer + 2)")
    parser.add_argument("--decoder-int8", default="fp32", choices=("fp32", "matmulnbits8", "dynamic-qint8"),
                        help="the decoder's form in an int8 bundle (default %(default)s: on CPUs no INT8 form "
                             "was both accurate and faster, see benchmarks/RESULTS.md)")
    parser.add_argument("--decoder-blocks", choices=("auto", "q8_0"),
                        help="the C decode path's weights: auto (default: a GGUF-converted backbone's own exact "
                             "blocks, none for float backbones) or q8_0 (weight-only Q8_0 of an fp16/fp32 "
                             "backbone's decoder, gated like an INT8 stage; the engine uses them only if they pass)")
    parser.add_argument("--no-cache", action="store_true",
                        help="rebuild the backbone parts and measure everything afresh instead of using the export "
                             "cache (backbone parts; PyTorch references, vision outputs and engine answers an "
                             "earlier export measured on the same inputs)")
    parser.add_argument("--threads", type=THREADS, help="torch and onnxruntime threads (default: all cores)")


def run(args: argparse.Namespace) -> int:
    from crome_edge.weights import is_shipped, resolve_adapter
    from crome_export.pipeline import ExportConfig, default_bundle_path, export_bundle

    from crome_export.multi import export_adapters, parse_routes

    adapters = [resolve_adapter(a) for a in args.adapter]
    if args.out is not None:  # BundleWriter then decides whether an existing bundle may be replaced (--force)
        from crome_runtime.outputs import check_output

        calib = args.calib if args.calib and not str(args.calib).isdigit() else None  # N frames, or a directory
        check_output(args.out, "--out", [*adapters, args.data, calib], directory=True)
    # several adapters, or routes given: each exported alone, then merged (crome_export.multi); one adapter without
    # routes: the pipeline, which routes it by its training questions
    several = len(adapters) > 1 or args.route or args.route_question
    adapter = adapters[0]
    out = args.out
    if out is None and is_shipped(adapter):  # not into the installed package
        out = Path.cwd() / default_bundle_path(adapter).name
    config = ExportConfig(
        adapter=adapter, backbone=args.backbone, out=out, precision=args.precision, calib=args.calib,
        opset=args.opset, force=args.force, int8_threshold=args.int8_threshold, eval_limit=args.eval_limit,
        max_new_tokens=args.max_new_tokens, decoder_int8=args.decoder_int8,
        decoder_blocks=args.decoder_blocks or ExportConfig.decoder_blocks, use_cache=not args.no_cache,
        threads=args.threads, data=args.data,
    )
    if several:
        print(export_adapters(config, adapters, parse_routes(args.route), parse_routes(args.route_question,
                                                                                      "--route-question")))
        return 0
    result = export_bundle(config)
    print(result.bundle)
    return 0
