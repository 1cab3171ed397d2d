"""GGUF block formats the C core's decode kernels read (Q4_1, Q8_0): sizes and the numpy dequantiser.

A block-quantised matrix (rows, cols) is stored as uint8 (rows, cols / 32 * block_bytes), each row a run
of 32-weight blocks exactly as a GGUF file holds them (crome_core.h describes the bytes). `dequantize` is
the reference the kernels are tested against and the check export runs against the PyTorch weights: it
gives the same float32 as gguf.quants.dequantize ((d * q) + m in float32; d * q is exact). Torch-free.
Not here: quantising (export uses the gguf package's bit-exact ggml quantiser), the kernels (ccore.py).
"""
from __future__ import annotations

import numpy as np

QK = 32  # weights per block
BLOCK_BYTES = {"q4_1": 20, "q8_0": 34}
GGML_TYPES = {"q4_1": 3, "q8_0": 8}  # GGUF tensor type ids


def cols_of(qtype: str, row_bytes: int) -> int:
    """Weights per row of a (rows, row_bytes) block matrix."""
    per_block = BLOCK_BYTES[qtype]
    if row_bytes <= 0 or row_bytes % per_block:
        raise ValueError(f"a {qtype} row is a whole number of {per_block}-byte blocks, got {row_bytes} bytes")
    return row_bytes // per_block * QK


def dequantize(blocks: np.ndarray, qtype: str) -> np.ndarray:
    """uint8 (rows, row_bytes) blocks -> float32 (rows, cols)."""
    if qtype not in BLOCK_BYTES:
        raise ValueError(f"block format {qtype!r} is not one of {sorted(BLOCK_BYTES)}")
    if blocks.dtype != np.uint8 or blocks.ndim != 2:
        raise ValueError(f"blocks must be uint8 (rows, row_bytes), got {blocks.dtype} {blocks.shape}")
    rows, row_bytes = blocks.shape
    cols = cols_of(qtype, row_bytes)
    b = np.ascontiguousarray(blocks).reshape(-1, BLOCK_BYTES[qtype])  # (rows * cols / 32, bytes)
    d = b[:, 0:2].copy().view(np.float16).astype(np.float32)  # (n, 1)
    if qtype == "q8_0":
        q = b[:, 2:].copy().view(np.int8).astype(np.float32)  # (n, 32)
        return (q * d).reshape(rows, cols)
    m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
    qs = b[:, 4:]  # (n, 16): low nibbles are weights 0..15, high nibbles 16..31
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)  # (n, 32)
    return ((d * q) + m).reshape(rows, cols)
