"""Runtime: torch-free engine that runs crome-edge bundles (ONNX Runtime + a small C core)."""
import os as _os

if __name__ != "crome_runtime":  # e.g. `import runtime.crome_runtime` from the repository root
    raise ImportError(f"import crome_runtime, not {__name__}: one module, one name (an `except` for one would miss the other)")

# The most pixels any image decoder in this process may allocate. OpenCV checks a file's dimensions against
# OPENCV_IO_MAX_IMAGE_PIXELS inside its decoders, before allocating, but reads the variable once, when cv2
# loads: so it is set here, before any crome module imports cv2 (preprocess.py checks that it took effect).
MAX_IMAGE_PIXELS = 40_000_000  # a 40 MP photo decodes to 120 MB of BGR
_os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))
# OpenCV logs decoder complaints ("PNG input buffer is incomplete") to stderr; crome's own ImageError says what is
# wrong in one line instead. OPENCV_LOG_LEVEL=WARNING (or INFO) in the environment brings OpenCV's lines back.
_os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
