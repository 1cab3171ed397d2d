"""Export: PyTorch CROME model -> ONNX / TensorRT deployment bundle."""
