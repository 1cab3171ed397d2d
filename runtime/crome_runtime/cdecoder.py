"""The CPU decode path on the decoder's own GGUF blocks: crome_llm (C core) steps, ONNX Runtime prefills.

Same interface as decoder.KVDecoder (reserve, prefill, step, logits, length, capacity, kv_bytes,
allocations, device), so the engine's stages use either. A decode step is one call into the C core, which
reads the Q4_1 / Q8_0 blocks (smol: 96 MB a token instead of the fp32 graph's 538 MB) with float32
activations and keeps its own KV cache. Prefill runs the bundle's ONNX decoder (KVDecoder: batched GEMMs
beat stepping the prefix through the blocks) and its present keys/values are copied into the C cache;
without an ONNX decoder the prefix is stepped through in C. Batch 1, CPU only. Torch-free.
Not here: the block file (decoder_blocks_file.py), the kernels (runtime/csrc/llm.c, qblock.c), sampling (engine.py).
"""
from __future__ import annotations

import ctypes
import weakref

import numpy as np

from crome_runtime import ccore
from crome_runtime.decoder_blocks_file import MATRICES, DecoderBlocks, layer_name
from crome_runtime.decoder import check_prefix
from crome_runtime import input_files


class CDecoder:
    device = "cpu"

    def __init__(self, blocks: DecoderBlocks, threads: int = 1, isa: str = "auto", prefill_decoder=None):
        """threads: the C pool's size (the calling thread included); isa: ccore.ISAS name; prefill_decoder: a
        KVDecoder over the same weights for prefill (None: prefill steps through the prefix in C)."""
        if isa not in ccore.ISAS or not ccore.isa_supported(isa):
            raise ccore.CoreError(f"ISA {isa!r} cannot run here; supported: "
                                  f"{[name for name in ccore.ISAS if ccore.isa_supported(name)]}")
        dims = self.dims = blocks.dims
        self.blocks, self.isa, self.threads = blocks, isa, int(threads)
        self.prefill_decoder = prefill_decoder
        self.d_model, self.vocab_size = dims.d_model, dims.vocab
        t = blocks.tensors

        def qtensor(name: str) -> ccore.QTensor:
            return ccore.QTensor(t[name].ctypes.data, ccore.QTYPES[blocks.qtypes[name]])

        layers = (ccore.LlmLayer * dims.n_layers)()
        for i in range(dims.n_layers):
            for m in MATRICES:
                setattr(layers[i], m, qtensor(layer_name(i, m)))
            layers[i].attn_norm = t[layer_name(i, "attn_norm")].ctypes.data
            layers[i].ffn_norm = t[layer_name(i, "ffn_norm")].ctypes.data
        weights = ccore.LlmWeights(layers, t["final_norm"].ctypes.data, qtensor("head"))
        params = ccore.LlmParams(dims.n_layers, dims.d_model, dims.n_heads, dims.n_kv_heads, dims.head_dim, dims.d_ff,
                                 dims.vocab, dims.rms_eps, dims.rope_theta, self.threads, ccore.ISAS[isa])
        lib = ccore.library()
        handle = ctypes.c_void_p()
        ccore._check(lib.crome_llm_init(ctypes.byref(params), ctypes.byref(weights), ctypes.byref(handle)),
                     "crome_llm_init")  # copies the weights: `blocks` may be dropped (or unmapped) after this
        self._handle = handle.value
        self._lib = lib
        self._finalizer = weakref.finalize(self, lib.crome_llm_free, handle.value)
        self.logits = np.zeros((1, 1, dims.vocab), np.float32)  # (1, 1, vocab), as KVDecoder
        self._logits_ptr = self.logits.ctypes.data
        self.allocations = 0
        self._step = lib.crome_llm_step

    def close(self) -> None:
        self._finalizer()
        self._handle = None

    # --- memory -------------------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return int(self._lib.crome_llm_capacity(self._handle))

    @property
    def length(self) -> int:
        return int(self._lib.crome_llm_length(self._handle))

    @property
    def kv_bytes(self) -> int:
        d = self.dims
        return 2 * d.n_layers * d.n_kv_heads * self.capacity * d.head_dim * 4

    def reserve(self, total_tokens: int) -> None:
        """Room for a prefix plus generated tokens of `total_tokens` (grows geometrically, like KVDecoder)."""
        if self.prefill_decoder is not None:
            self.prefill_decoder.reserve(total_tokens)
        if total_tokens > self.capacity:
            ccore._check(self._lib.crome_llm_reserve(self._handle, max(int(total_tokens), 2 * self.capacity)),
                         "crome_llm_reserve")
            self.allocations += 1

    # --- running ------------------------------------------------------------------------------------
    def prefill(self, embeds: np.ndarray) -> np.ndarray:
        """embeds (1, L, d) float32 C-contiguous: the whole prefix, into an empty cache -> logits (vocab,)."""
        check_prefix(embeds, self.d_model)
        length = embeds.shape[1]
        self.reserve(length + 1)
        lib = self._lib
        ccore._check(lib.crome_llm_set_length(self._handle, 0), "crome_llm_set_length")
        if self.prefill_decoder is None:
            for row in embeds[0]:
                self.step(row.ctypes.data)
            return self.logits[0, 0]
        ort = self.prefill_decoder
        logits = ort.prefill(embeds)
        self.logits[0, 0] = logits
        storage = ort._storages[0]  # after prefill the present KV lives in the first storage (decoder.py)
        d = self.dims
        slot = d.n_kv_heads * ort.capacity * d.head_dim  # elements per layer-tensor slot
        used = d.n_kv_heads * length * d.head_dim  # a (1, kv, L, hd) contiguous prefix of each slot
        for i in range(d.n_layers):
            k = storage[2 * i * slot: 2 * i * slot + used]
            v = storage[(2 * i + 1) * slot: (2 * i + 1) * slot + used]
            ccore._check(lib.crome_llm_set_kv(self._handle, i, k.ctypes.data, v.ctypes.data, length), "crome_llm_set_kv")
        ccore._check(lib.crome_llm_set_length(self._handle, length), "crome_llm_set_length")
        return self.logits[0, 0]

    def step(self, embedding_row_pointer: int) -> np.ndarray:
        """One token: the address of its (d,) float32 input embedding -> logits (vocab,) (a view, overwritten by
        the next call). The caller keeps the row alive and calls reserve() for the answer's full length first."""
        status = self._step(self._handle, embedding_row_pointer, self._logits_ptr)
        if status != 0:
            if self.length >= self.capacity:
                raise ValueError(f"the KV cache holds {self.capacity} tokens; reserve() more before decoding past it")
            ccore._check(status, "crome_llm_step")
        return self.logits[0, 0]


    def branch_logits(self, prefix_length: int, paths: list[tuple[int, ...]], embeddings: np.ndarray) -> np.ndarray:
        """Logits (len(paths), vocab) after each token path continuing the first `prefix_length` cached tokens, as
        KVDecoder.branch_logits: here a depth-first walk, C steps only, rewinding the cache (its rows past the
        length are dead) to the path's common prefix with the one before, so each distinct path token is one
        step. Leaves the cache's length at the last path's end. embeddings: the table (vocab, d), float32
        C-contiguous."""
        length = int(prefix_length)
        if not 0 < length <= self.length or not all(paths):
            raise ValueError(f"branch_logits needs a cached prefix (1..{self.length} tokens, got {length}) and "
                             "non-empty paths")
        if not (embeddings.dtype == np.float32 and embeddings.flags.c_contiguous):
            raise ValueError("branch_logits needs the float32 C-contiguous embedding table")
        lib, row_bytes = self._lib, embeddings.shape[1] * 4
        capacity = self.capacity
        ccore._check(lib.crome_llm_reserve(self._handle, length + max(len(p) for p in paths)), "crome_llm_reserve")
        self.allocations += self.capacity > capacity
        out = np.empty((len(paths), self.vocab_size), np.float32)
        previous: tuple[int, ...] = ()
        for i, path in enumerate(paths):
            common = 0
            while common < min(len(previous), len(path) - 1) and previous[common] == path[common]:
                common += 1
            ccore._check(lib.crome_llm_set_length(self._handle, length + common), "crome_llm_set_length")
            for token in path[common:]:
                self.step(embeddings.ctypes.data + int(token) * row_bytes)
            out[i] = self.logits[0, 0]
            previous = path
        return out


def bundle_blocks_usable(bundle) -> str | None:
    """Why the bundle's decode steps cannot run on its decoder blocks (None: they can): the blocks file must be
    listed in the manifest (so its sha256 was checked at load) and faithful by the export's gates: the GGUF's
    own blocks (bit-identical to the PyTorch weights, checked at export), or a lowered form whose gate passed."""
    from crome_runtime import formats

    if formats.DECODER_BLOCKS_FILE not in bundle.manifest.files:
        return "the bundle has no decoder blocks (re-export it from a GGUF-converted backbone)"
    source = _read_source(bundle.path / formats.DECODER_BLOCKS_FILE)
    if source.get("kind") != "gguf" and source.get("gate") != "passed":
        return f"the bundle's decoder blocks ({source.get('kind')} {source.get('qtype', '')}) did not pass the export gates"
    return None


def _read_source(path) -> dict:
    from crome_runtime.safetensors_header import read_header

    return input_files.loads(read_header(path).get("__metadata__", {}).get("source", "{}"), "its source")


def open_cdecoder(bundle, prefill_decoder, threads: int = 0) -> CDecoder:
    """The bundle's C decoder (prefill through `prefill_decoder`, its KVDecoder); threads 0 = one per core."""
    import os

    from crome_runtime import decoder_blocks_file, formats

    if threads <= 0:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    blocks = decoder_blocks_file.load(bundle.path / formats.DECODER_BLOCKS_FILE)
    llm = bundle.manifest.llm
    dims = blocks.dims
    if (dims.n_layers, dims.n_kv_heads, dims.head_dim, dims.vocab) != (llm.num_layers, llm.num_kv_heads, llm.head_dim,
                                                                       llm.vocab_size):
        from crome_runtime.manifest import BundleError

        raise BundleError(f"{formats.DECODER_BLOCKS_FILE} is for a decoder of {dims}, the manifest's is {llm}; "
                          "re-export the bundle")
    return CDecoder(blocks, threads=min(int(threads), 256), prefill_decoder=prefill_decoder)
