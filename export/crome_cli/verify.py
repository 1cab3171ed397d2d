"""`crome-edge verify BUNDLE`: the bundle's own acceptance set through the torch-free runtime on this device.

What a user runs on the target (a Jetson, another x86 box) after copying a bundle there: the frames, prompts
and PyTorch references the exporter stored in the bundle go through this device's preprocessing and every
stage of the engine (crome_runtime.verify), and the export's table is printed (per stage, greedy answers,
task accuracy, gates) with the machine it was measured on. Exit status: 0 when every gate passes, 1 when a
fidelity gate fails (the table names the stage), 2 on bad input (no bundle, an altered one, one without an
acceptance set: re-export it). Thin: torch is never imported.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from crome_cli.flags import THREADS
from crome_runtime.errors import CromeError
from crome_runtime.formats import PROVIDER_CHOICES  # torch- and cv2-free


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="bundle directory (crome-edge export)")
    parser.add_argument("--threads", type=THREADS, metavar="N",
                        help="ONNX Runtime threads per graph (default: one per core)")
    parser.add_argument("--provider", choices=PROVIDER_CHOICES,
                        help="execution provider (default auto: TensorRT > CUDA > CPU, whichever is available)")
    parser.add_argument("--report", type=Path, metavar="OUT.json", help="also write the verify report as JSON")


def run(args: argparse.Namespace) -> int:
    from crome_runtime.engine import EngineConfig
    from crome_runtime.fidelity import format_table
    from crome_runtime.verify import verify_bundle

    if args.report:  # refused before the acceptance set runs, not after
        from crome_runtime.outputs import check_output

        check_output(args.report, "--report", [args.bundle], within=[args.bundle])
    given = {"provider": args.provider, "threads": args.threads}  # None: EngineConfig's default
    config = EngineConfig(**{k: v for k, v in given.items() if v is not None})
    report = verify_bundle(args.bundle, config, progress=lambda message: print(message, file=sys.stderr))
    for name, section in report["adapters"].items():  # one table per adapter
        print(f"adapter {name}:\n{format_table(section)}")
    if not report["adapters"]:
        print("no adapters: the frozen backbone alone (every file's sha256 matches the manifest)")
    for name, versions in report["kept_versions"].items():
        print(f"adapter {name}: {len(versions)} kept version(s) ({', '.join(v[:12] for v in versions)}), every file's "
              "sha256 matches the manifest")
    if args.report:
        _write_report(args.report, report)
    failed = [name for name, gate in report["gates"].items() if not gate["ok"]]
    if failed:
        print(f"verify: FAILED ({', '.join(failed)}): this bundle does not answer like PyTorch on this device",
              file=sys.stderr)
        return 1
    print("verify: ok, every gate passes on this device", file=sys.stderr)
    return 0


def _write_report(path: Path, report: dict) -> None:
    from crome_runtime.atomic import atomic_path

    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    except OSError as error:
        raise CromeError(f"cannot write the report {path}: {error.strerror or error}") from None
