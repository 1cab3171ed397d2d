"""The decoder loop's memory: decoder.onnx with a KV cache, run through IO binding into buffers allocated once.

decoder.onnx (crome_export.decoder) maps past KV (1, kv_heads, P, head_dim) per layer to present KV
(1, kv_heads, P + S, head_dim). Here both live in two flat "ping-pong" storages sized for the whole answer:
a step reads the past from one and ONNX Runtime writes the present straight into the other (bound by
pointer, viewed as a contiguous (1, kv_heads, P + S, head_dim) prefix), then the two swap. The attention
mask is a prefix of a ones buffer, the position id a pointer into an arange buffer, the step's input
embedding a pointer to its row of the (memory-mapped) embedding table, and the logits land in one
preallocated (1, 1, vocab) array. So a decode step allocates no array at all; `allocations` counts the
times the storages were (re)allocated (once per answer that needs more room than any before it).

Batch 1 (one question about one frame); the KV storages live on the GPU when the session runs on CUDA or
TensorRT. Torch-free. Not here: sampling, stop tokens, streaming (engine.py).
"""
from __future__ import annotations

import numpy as np

from crome_runtime import formats

_F32, _I64 = np.dtype(np.float32), np.dtype(np.int64)
BRANCH_ROWS = 16  # paths per batched run in branch_logits: bounds the repeated prefix KV (smol: ~1.8 MB a row)


def check_prefix(embeds: np.ndarray, d_model: int) -> None:
    """What prefill takes (both decoders): float32 C-contiguous (1, L, d_model); ValueError otherwise."""
    if embeds.dtype != _F32 or embeds.ndim != 3 or embeds.shape[0] != 1 or embeds.shape[2] != d_model \
            or not embeds.flags.c_contiguous:
        raise ValueError(f"prefill needs float32 C-contiguous (1, L, {d_model}), got {embeds.dtype} {embeds.shape}")


class KVDecoder:
    def __init__(self, session, num_layers: int, num_kv_heads: int, head_dim: int, d_model: int, vocab_size: int,
                 device: str = "cpu"):
        self.session = session
        self.num_layers, self.kv_heads, self.head_dim = num_layers, num_kv_heads, head_dim
        self.d_model, self.vocab_size, self.device = d_model, vocab_size, device
        self.binding = session.io_binding()
        self.logits = np.zeros((1, 1, vocab_size), np.float32)  # (1, 1, vocab): the sampler reads row [0, 0]
        self.capacity = 0  # tokens of KV the storages hold
        self.length = 0  # tokens in the cache now
        self.allocations = 0
        self._storages: list = []  # two flat float32 storages, 2 * layers * kv_heads * capacity * head_dim each
        self._pointers: list[int] = []
        self._mask = np.ones(0, np.int64)
        self._positions = np.zeros(0, np.int64)
        self._past_names = [n for i in range(num_layers) for n in (formats.past_key_name(i), formats.past_value_name(i))]
        self._present_names = [n for i in range(num_layers)
                               for n in (formats.present_key_name(i), formats.present_value_name(i))]

    # --- memory -------------------------------------------------------------------------------------
    def reserve(self, total_tokens: int) -> None:
        """Makes room for a prefix plus generated tokens of `total_tokens`; reallocates only when it must grow."""
        if total_tokens <= self.capacity:
            return
        capacity = max(total_tokens, 2 * self.capacity)  # grow geometrically so a longer answer reallocates rarely
        elements = 2 * self.num_layers * self.kv_heads * capacity * self.head_dim
        self._storages = [self._allocate(elements) for _ in range(2)]
        self._pointers = [self._pointer(s) for s in self._storages]
        self._mask = np.ones(capacity, np.int64)
        self._positions = np.arange(capacity, dtype=np.int64)
        self.capacity = capacity
        self.length = 0
        self.allocations += 1

    @property
    def kv_bytes(self) -> int:
        return 2 * 2 * self.num_layers * self.kv_heads * self.capacity * self.head_dim * 4

    def _allocate(self, elements: int):
        if self.device == "cpu":
            return np.empty(elements, np.float32)
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_shape_and_type([elements], np.float32, "cuda", 0)

    def _pointer(self, storage) -> int:
        return storage.ctypes.data if isinstance(storage, np.ndarray) else storage.data_ptr()

    # --- running ------------------------------------------------------------------------------------
    def prefill(self, embeds: np.ndarray) -> np.ndarray:
        """embeds (1, L, d) float32 C-contiguous: the whole prefix, into an empty cache -> logits (vocab,)."""
        check_prefix(embeds, self.d_model)
        length = embeds.shape[1]
        self.reserve(length + 1)
        self.length = 0
        self._run(embeds.ctypes.data, length)
        return self.logits[0, 0]

    def step(self, embedding_row_pointer: int) -> np.ndarray:
        """One token: the address of its (d,) float32 input embedding (a row of the table) -> logits (vocab,).
        The caller keeps the table alive and calls reserve() for the answer's full length first."""
        if self.length + 1 > self.capacity:
            raise ValueError(f"the KV cache holds {self.capacity} tokens; reserve() more before decoding past it")
        self._run(embedding_row_pointer, 1)
        return self.logits[0, 0]

    def branch_logits(self, prefix_length: int, paths: list[tuple[int, ...]], embeddings: np.ndarray,
                      rows_per_run: int = BRANCH_ROWS) -> np.ndarray:
        """Logits (len(paths), vocab) after each token path continuing the first `prefix_length` tokens in the cache
        (a prefill's prefix; decode steps after it are ignored), without changing the cache: the paths are the batch
        of one decoder run (`rows_per_run` at a time), each left-padded to the longest (the padding masked out), the
        prefix's keys/values repeated per row. embeddings: the token-embedding table (vocab, d)."""
        length, count = int(prefix_length), len(paths)
        if not 0 < length <= self.length or not all(paths):
            raise ValueError(f"branch_logits needs a cached prefix (1..{self.length} tokens, got {length}) and "
                             "non-empty paths")
        depth = max(len(path) for path in paths)
        storage = self._storages[0]  # the last run's present: `self.length` tokens, (1, kv, length, hd) per slot
        host = storage if isinstance(storage, np.ndarray) else storage.numpy()  # a GPU cache is read back once
        slot, used = self.kv_heads * self.capacity * self.head_dim, self.kv_heads * self.length * self.head_dim
        past = [host[i * slot: i * slot + used].reshape(1, self.kv_heads, self.length, self.head_dim)[:, :, :length]
                for i in range(len(self._past_names))]  # (1, kv, prefix, hd) views
        out = np.empty((count, self.vocab_size), np.float32)
        for start in range(0, count, rows_per_run):
            rows = paths[start:start + rows_per_run]
            n = len(rows)
            embeds = np.zeros((n, depth, self.d_model), np.float32)  # (n, depth, d)
            mask = np.ones((n, length + depth), np.int64)
            positions = np.full((n, depth), length, np.int64)
            for r, path in enumerate(rows):
                pad = depth - len(path)
                embeds[r, pad:] = embeddings[list(path)]
                mask[r, length:length + pad] = 0  # padding between the prefix and the path: no token attends to it
                positions[r, pad:] = np.arange(length, length + len(path))
            feeds = {formats.IN_INPUTS_EMBEDS: embeds, formats.IN_ATTENTION_MASK: mask, formats.IN_POSITION_IDS: positions}
            feeds.update({name: np.repeat(block, n, axis=0) for name, block in zip(self._past_names, past)})
            out[start:start + n] = self.session.run([formats.OUT_LOGITS], feeds)[0][:, 0]  # (n, 1, vocab) -> (n, vocab)
        return out

    def _run(self, embeds_pointer: int, steps: int) -> None:
        past, total = self.length, self.length + steps
        bind_input, bind_output = self.binding.bind_input, self.binding.bind_output
        bind_input(formats.IN_INPUTS_EMBEDS, "cpu", 0, _F32, [1, steps, self.d_model], embeds_pointer)
        bind_input(formats.IN_ATTENTION_MASK, "cpu", 0, _I64, [1, total], self._mask.ctypes.data)
        bind_input(formats.IN_POSITION_IDS, "cpu", 0, _I64, [1, steps], self._positions.ctypes.data + 8 * past)
        source, target = self._pointers
        stride = self.kv_heads * self.capacity * self.head_dim * 4  # bytes per layer-tensor slot in a storage
        past_shape, present_shape = [1, self.kv_heads, past, self.head_dim], [1, self.kv_heads, total, self.head_dim]
        for slot, (past_name, present_name) in enumerate(zip(self._past_names, self._present_names)):
            bind_input(past_name, self.device, 0, _F32, past_shape, source + slot * stride)
            bind_output(present_name, self.device, 0, _F32, present_shape, target + slot * stride)
        bind_output(formats.OUT_LOGITS, "cpu", 0, _F32, [1, 1, self.vocab_size], self.logits.ctypes.data)
        self.session.run_with_iobinding(self.binding)
        self._pointers.reverse()  # the present just written is the next step's past
        self._storages.reverse()
        self.length = total
