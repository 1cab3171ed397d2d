"""Runtime: torch-free engine that runs crome-edge bundles (ONNX Runtime + a small C core)."""
if __name__ != "crome_runtime":  # e.g. `import runtime.crome_runtime` from the repository root
    raise ImportError(f"import crome_runtime, not {__name__}: one module, one name (an `except` for one would miss the other)")
