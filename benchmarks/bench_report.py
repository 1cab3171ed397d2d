"""How a benchmark's results leave the script: the command that made them, its Markdown section printed and
written into RESULTS.md, the JSON, and a PNG when matplotlib is there (an optional extra:
`pip install 'crome-edge[bench]'`), and the options and grouped bar chart those scripts share. Used by
bench_decode.py, bench_e2e.py, bench_scaling.py and routed_accuracy.py."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def command_line(argv: list[str] | None) -> str:
    """The command as it was typed, for RESULTS.md (argv: main()'s own, None when run as a script)."""
    return "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])


def add_run_arguments(parser: argparse.ArgumentParser, runs: int, warmup: int) -> None:
    """The bundle and how it is timed: --threads (one run per count), --runs, --warmup."""
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument("--warmup", type=int, default=warmup)


def add_output_arguments(parser: argparse.ArgumentParser, plot: str | None) -> None:
    """--json, --results and (given what the PNG shows) --plot: where `publish` writes."""
    parser.add_argument("--json", type=Path)
    parser.add_argument("--results", type=Path, help="write this run's section into this RESULTS.md")
    if plot:
        parser.add_argument("--plot", type=Path, help=f"PNG of {plot} (needs matplotlib)")


def grouped_bars(ax, runs: list[dict], value, rotation: int) -> None:
    """One bar per column of runs[0]["order"] and per run (thread count) side by side: value(run, column)."""
    import numpy as np

    names = runs[0]["order"]
    width = 0.8 / len(runs)
    for k, run in enumerate(runs):
        ax.bar(np.arange(len(names)) + k * width, [value(run, n) for n in names], width,
               label=f"{run['threads']} thread(s)")
    ax.set_xticks(np.arange(len(names)) + width * (len(runs) - 1) / 2, names, rotation=rotation, ha="right")
    ax.legend()


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None after saying why the plot is skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib: skipping the plot (pip install 'crome-edge[bench]')", file=sys.stderr)
        return None
    return plt


def write_results(path: Path, section: str, heading: str) -> None:
    """Replace the section under `heading` in RESULTS.md (or append it), leaving every other section as it is.

    The heading must fill its line at any level (`## X` also matches `### X`); the section ends at the next heading
    of the same or a higher level, so the subsections after it are kept."""
    text = path.read_text() if path.is_file() else "# Benchmark results\n\n"
    title = heading.lstrip("#").strip()
    found = re.search(rf"^(#+) {re.escape(title)}$", text, re.MULTILINE)
    if found is None:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        level = len(found.group(1))
        section = found.group(1) + section[len(heading) - len(heading.lstrip("#")):]  # the level it has there
        after = re.compile(rf"^#{{1,{level}}} ", re.MULTILINE).search(text, found.end())
        text = text[:found.start()] + section + ("" if after is None else "\n" + text[after.start():])
    path.write_text(text)


def publish(result: dict, args, heading: str, markdown, plot) -> None:
    """Prints the section; writes --json, --results (under `heading`) and --plot where the user asked for them."""
    section = markdown(result)
    print(section)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.results:
        write_results(args.results, section, heading)
    if getattr(args, "plot", None):
        plot(result, args.plot)
