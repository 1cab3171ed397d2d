"""crome-edge: CROME cross-modal adapters from training to the edge (PyTorch side)."""
__version__ = "0.1.0"
