"""The `crome-edge` command line: one module per command, on top of the three libraries.

Dependencies point one way: crome_runtime <- crome_edge <- crome_export <- crome_cli. Nothing in the libraries
imports this package. Every command module is cheap to import (no torch at module level), so the torch-free
commands (run, serve, verify, client, triton-repo, tritonserver) work on a device with only the runtime's
dependencies. The entry point is `crome_cli.main:main` (`crome-edge`, or `python -m crome_cli`).
"""
if __name__ != "crome_cli":  # e.g. `import export.crome_cli` from the repository root
    raise ImportError(f"import crome_cli, not {__name__}: one module, one name (an `except` for one would miss the other)")
