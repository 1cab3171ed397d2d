"""`crome-edge bundle add|remove|list|history|rollback`: the adapters of a bundle (one backbone, several adapters)
and their versions.

Thin: parses arguments for crome_export.multi, which exports and checks only the added adapter and swaps the
bundle atomically, and crome_export.versions (the versions `add --replace` keeps); torch is imported only by `add`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from crome_cli.flags import THREADS, whole
from crome_runtime.adapter_versions import DEFAULT_KEPT_VERSIONS
from crome_runtime.limits import MAX_KEPT_VERSIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="add|remove|list|history|rollback")
    add = sub.add_parser("add", help="export an adapter into an existing bundle (its backbone parts are reused)")
    add.add_argument("bundle", type=Path, help="bundle directory")
    add.add_argument("--adapter", required=True, help="adapter .safetensors trained on the bundle's backbone")
    add.add_argument("--route", action="append", metavar="REGEX",
                     help="questions it answers, as a regular expression (default: its training data's questions)")
    add.add_argument("--route-question", action="append", metavar="TEXT", help="a question it answers, exactly")
    add.add_argument("--replace", action="store_true",
                     help="replace an adapter of the same name; the replaced one is kept in the bundle as a previous "
                          "version (`bundle history`, `bundle rollback`)")
    add.add_argument("--keep", type=int, metavar="N",
                     help=f"with --replace: how many replaced versions the bundle keeps, 0 to {MAX_KEPT_VERSIONS} "
                          f"(default {DEFAULT_KEPT_VERSIONS}; older ones are dropped)")
    add.add_argument("--data", type=Path, help="the adapter's training data, if it moved")
    add.add_argument("--calib", metavar="N|DIR", help="int8 bundles: the calibration the bundle was exported with")
    add.add_argument("--eval-limit", type=whole(1), metavar="N",
                     help="held-out samples its fidelity report runs on (default: export's)")
    add.add_argument("--threads", type=THREADS, help="torch and onnxruntime threads (default: all cores)")
    add.add_argument("--no-cache", action="store_true",
                     help="rebuild the backbone parts and measure everything afresh instead of using the export cache")
    remove = sub.add_parser("remove", help="remove an adapter (the last one leaves the frozen backbone alone)")
    remove.add_argument("bundle", type=Path, help="bundle directory")
    remove.add_argument("name", help="the adapter's name (`crome-edge bundle list BUNDLE`)")
    listing = sub.add_parser("list", help="the bundle's adapters and the questions routed to each")
    listing.add_argument("bundle", type=Path, help="bundle directory")
    history = sub.add_parser("history", help="an adapter's versions, current first: dates, training summary, data "
                                             "recipe, fidelity gates")
    history.add_argument("bundle", type=Path, help="bundle directory")
    history.add_argument("name", help="the adapter's name (`crome-edge bundle list BUNDLE`)")
    history.add_argument("--json", action="store_true", help="print the versions as JSON (with whole fidelity reports)")
    rollback = sub.add_parser("rollback", help="make a kept version of an adapter current again (atomically; the "
                                               "replaced one is kept, so a rollback can be undone)")
    rollback.add_argument("bundle", type=Path, help="bundle directory")
    rollback.add_argument("name", help="the adapter's name")
    rollback.add_argument("version", nargs="?",
                          help="a kept version: its sha256 or a unique prefix (`bundle history`; default the most "
                               "recently replaced one)")


def run(args: argparse.Namespace) -> int:
    from crome_export import multi
    from crome_runtime.outputs import check_output

    if args.action not in ("list", "history"):  # these change it: a directory (or nothing), never a link or a device
        check_output(args.bundle, "the bundle", directory=True)
    if args.action == "list":
        print(json.dumps(multi.describe(args.bundle), indent=2))
        return 0
    if args.action == "remove":
        print(multi.remove_adapter(args.bundle, args.name))
        return 0
    if args.action in ("history", "rollback"):
        return _versions(args)
    from crome_edge.weights import resolve_adapter
    from crome_export.pipeline import ExportConfig

    adapter = resolve_adapter(args.adapter)
    config = ExportConfig(adapter=adapter, calib=args.calib, use_cache=not args.no_cache, threads=args.threads,
                          data=args.data)
    if args.eval_limit is not None:
        config.eval_limit = args.eval_limit
    path, seconds = multi.add_adapter(args.bundle, adapter, config, args.route, args.route_question, args.replace,
                                      keep=args.keep)
    name = multi.adapter_name(adapter)
    kept: list[str] = next((a.get("kept_versions", []) for a in multi.describe(path) if a["name"] == name), [])
    history = (f"; kept versions of {name}: {', '.join(v[:12] for v in kept)} (`crome-edge bundle history {path} "
               f"{name}`)") if args.replace and kept else ""
    print(f"added {name} to {path} in {seconds:.1f} s{history}", file=sys.stderr)
    print(path)
    return 0


def _versions(args: argparse.Namespace) -> int:
    from crome_export import versions

    if args.action == "history":
        rows = versions.history(args.bundle, args.name)
        print(json.dumps(rows, indent=2) if args.json else versions.format_history(args.bundle, args.name, rows))
        return 0
    path, restored, replaced = versions.rollback_adapter(args.bundle, args.name, args.version)
    print(f"rolled back {args.name} in {path} to version {restored[:12]} (version {replaced[:12]} is kept: "
          f"`crome-edge bundle rollback {args.bundle} {args.name} {replaced[:12]}` undoes this); a running server "
          "takes it with POST /v1/adapters/reload", file=sys.stderr)
    print(path)
    return 0
