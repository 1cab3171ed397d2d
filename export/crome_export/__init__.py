"""Export: PyTorch CROME model -> ONNX / TensorRT deployment bundle."""
if __name__ != "crome_export":  # e.g. `import export.crome_export` from the repository root
    raise ImportError(f"import crome_export, not {__name__}: one module, one name (an `except` for one would miss the other)")
