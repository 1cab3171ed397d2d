"""The decoder's weights in GGUF block form, as a bundle file (formats.DECODER_BLOCKS_FILE), for the C decode
step (cdecoder.py): read, checked, written.

A safetensors file: per layer i, `layers.{i}.{q,k,v,o,gate,up,down}` uint8 (rows, row_bytes) block matrices
(gguf_blocks.py; HF orientation y = W x, q/k rows in HF's rotate-half order) and `layers.{i}.attn_norm` /
`.ffn_norm` float32 (d,); `final_norm` float32 (d,); `head` uint8 (vocab, row_bytes). String metadata: format
name and version, `dims` (LlmDims as JSON), `qtypes` ({tensor: "q4_1" | "q8_0"}) and `source` (where the blocks
came from: a GGUF's own blocks, or a weight-only Q8_0 form of float weights). Torch-free (safetensors.numpy).
Not here: making the blocks from a model (crome_export.blocks), running them (cdecoder.py).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from crome_runtime import gguf_blocks
from crome_runtime.manifest import BundleError
from crome_runtime import input_files

FORMAT = "crome-decoder-blocks"
FORMAT_VERSION = 1
MATRICES = ("q", "k", "v", "o", "gate", "up", "down")
NORMS = ("attn_norm", "ffn_norm")


@dataclass(frozen=True)
class LlmDims:
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    vocab: int
    rms_eps: float
    rope_theta: float

    def shapes(self) -> dict[str, tuple[int, int]]:
        """(rows, cols) of every matrix of one layer, and of the head."""
        d, qd, kvd = self.d_model, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        return {"q": (qd, d), "k": (kvd, d), "v": (kvd, d), "o": (d, qd), "gate": (self.d_ff, d),
                "up": (self.d_ff, d), "down": (d, self.d_ff), "head": (self.vocab, d)}


def layer_name(i: int, part: str) -> str:
    return f"layers.{i}.{part}"


@dataclass
class DecoderBlocks:
    dims: LlmDims
    tensors: dict[str, np.ndarray]  # name -> uint8 blocks or float32 norm weights
    qtypes: dict[str, str]  # matrix name -> "q4_1" | "q8_0"
    source: dict

    def matrix(self, name: str) -> np.ndarray:
        """The float32 (rows, cols) matrix a block tensor dequantises to."""
        return gguf_blocks.dequantize(self.tensors[name], self.qtypes[name])

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def check(blocks: DecoderBlocks, where: str = "decoder blocks") -> None:
    """Every tensor present with the shape and type the dims imply; raises BundleError naming the first that is not."""
    dims, shapes = blocks.dims, blocks.dims.shapes()
    expected: dict[str, tuple] = {"final_norm": (np.float32, (dims.d_model,))}
    for name, (rows, cols) in [("head", shapes["head"])] + [
            (layer_name(i, m), shapes[m]) for i in range(dims.n_layers) for m in MATRICES]:
        qtype = blocks.qtypes.get(name)
        if qtype not in gguf_blocks.BLOCK_BYTES or cols % gguf_blocks.QK:
            raise BundleError(f"{where}: {name} has block format {qtype!r} for {cols} columns; need q4_1 or q8_0 "
                              f"and a multiple of {gguf_blocks.QK}: re-export the bundle")
        expected[name] = (np.uint8, (rows, cols // gguf_blocks.QK * gguf_blocks.BLOCK_BYTES[qtype]))
    for i in range(dims.n_layers):
        for n in NORMS:
            expected[layer_name(i, n)] = (np.float32, (dims.d_model,))
    for name, (dtype, shape) in expected.items():
        tensor = blocks.tensors.get(name)
        if tensor is None or tensor.dtype != dtype or tensor.shape != shape:
            got = "missing" if tensor is None else f"{tensor.dtype} {tensor.shape}"
            raise BundleError(f"{where}: tensor {name} must be {np.dtype(dtype)} {shape}, got {got}; re-export the bundle")
    extra = sorted(set(blocks.tensors) - set(expected))
    if extra:
        raise BundleError(f"{where}: unexpected tensors {extra[:4]}; this file is not a {FORMAT} v{FORMAT_VERSION} file")


def save(blocks: DecoderBlocks, path: Path) -> None:
    from safetensors.numpy import save_file

    check(blocks)
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "dims": json.dumps(asdict(blocks.dims)),
                "qtypes": json.dumps(blocks.qtypes, sort_keys=True), "source": json.dumps(blocks.source, sort_keys=True)}
    save_file({k: np.ascontiguousarray(v) for k, v in blocks.tensors.items()}, str(path), metadata=metadata)
    _canonical_header(path)


def _canonical_header(path: Path) -> None:
    """Rewrites the safetensors header with its keys sorted, in place (same length, same offsets): safetensors
    writes the metadata in hash-map order, which changes from process to process, so the same blocks came out
    with another sha256 at every export (and a re-export looked like other decoder weights)."""
    import struct

    with open(path, "r+b") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = input_files.loads(f.read(length), f"{path.name}'s header")
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= length:  # reordering keys keeps the length; the padding is spaces, as safetensors pads
            f.seek(8)
            f.write(text.ljust(length, b" "))


def load(path: Path) -> DecoderBlocks:
    """Reads and checks a blocks file (BundleError on any problem)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT or meta.get("format_version") != str(FORMAT_VERSION):
                raise BundleError(f"{path.name} is not a {FORMAT} v{FORMAT_VERSION} file (format "
                                  f"{meta.get('format')!r} v{meta.get('format_version')!r}); re-export the bundle")
            raw = input_files.loads(meta["dims"], "its dims")
            names = {f.name for f in fields(LlmDims)}
            if set(raw) != names:
                raise BundleError(f"{path.name}: dims must have {sorted(names)}, got {sorted(raw)}")
            dims = LlmDims(**raw)
            qtypes, source = input_files.loads(meta["qtypes"], "its qtypes"), input_files.loads(meta["source"], "its source")
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as error:
        raise BundleError(f"{path.name} cannot be read as decoder blocks ({error}); re-export the bundle") from None
    blocks = DecoderBlocks(dims, tensors, qtypes, source)
    check(blocks, path.name)
    return blocks
