"""crome-edge: CROME cross-modal adapters from training to the edge (PyTorch side)."""
import crome_runtime  # noqa: F401  first: it sets OpenCV's decoder pixel limit before anything loads cv2

__version__ = "0.1.0"
