"""argparse `type=` parsers for the commands' numeric flags: a value out of range is refused while the command
line is read, with the flag named ("argument --threads: must be a whole number >= 1, got '-1'"), before any
model loads. Only what a flag accepts lives here; defaults stay in each command's config dataclass.
"""
from __future__ import annotations

import argparse
import math


def whole(minimum: int):
    """A parser for whole numbers >= minimum (`--threads`, `--steps`: 1; `--seed`, `--max-new-tokens`: 0)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text!r}")
        return value

    parse.__name__ = f"whole number >= {minimum}"
    return parse


def number(minimum: float | None = None, above: float | None = None, below: float | None = None,
           maximum: float | None = None):
    """A parser for finite numbers (nan and inf refused) with optional bounds: >= minimum, > above, < below,
    <= maximum."""
    bounds = [f">= {minimum:g}" if minimum is not None else "", f"> {above:g}" if above is not None else "",
              f"< {below:g}" if below is not None else "", f"<= {maximum:g}" if maximum is not None else ""]
    wanted = "a finite number" + "".join(f" {b}" for b in bounds if b).replace(" >", " and >").replace(" <", " and <", 1)
    wanted = wanted.replace("number and ", "number ", 1)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
        if (not math.isfinite(value) or (minimum is not None and value < minimum)
                or (above is not None and value <= above) or (below is not None and value >= below)
                or (maximum is not None and value > maximum)):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    parse.__name__ = wanted
    return parse


THREADS = whole(1)
SEED = whole(0)
