"""Runtime: torch-free engine that runs crome-edge bundles (ONNX Runtime + a small C core)."""
