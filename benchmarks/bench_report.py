"""How a benchmark's results leave the script: the command that made them, its Markdown section printed and
written into RESULTS.md, the JSON, and a PNG when matplotlib is there (an optional extra:
`pip install 'crome-edge[bench]'`). Shared by bench_decode.py, bench_e2e.py and bench_scaling.py."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def command_line(argv: list[str] | None) -> str:
    """The command as it was typed, for RESULTS.md (argv: main()'s own, None when run as a script)."""
    return "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])


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
    """Replace the section under `heading` in RESULTS.md (or append it), leaving every other section as it is."""
    text = path.read_text() if path.is_file() else "# Benchmark results\n\n"
    start = text.find(heading)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + ("" if end < 0 else text[end + 1:])
    path.write_text(text)


def publish(result: dict, args, heading: str, markdown, plot) -> None:
    """Prints the section; writes --json, --results (under `heading`) and --plot where the user asked for them."""
    section = markdown(result)
    print(section)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.results:
        write_results(args.results, section, heading)
    if args.plot:
        plot(result, args.plot)
