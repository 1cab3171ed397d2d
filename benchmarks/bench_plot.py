"""matplotlib for the benchmark scripts' PNGs, or None (it is an optional extra: `pip install 'crome-edge[bench]'`)."""
from __future__ import annotations

import sys


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
