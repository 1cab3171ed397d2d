"""ctypes binding of the runtime's C core (runtime/csrc/crome_core.h) with numpy-checked wrappers.

Every wrapper validates dtype, shape and memory layout before calling C, and the C side checks again and
returns a status, so a bad call raises CoreError instead of crashing the process. Inputs whose layout C
cannot address (e.g. a transposed view) are copied once; each wrapper documents when. The numpy/OpenCV
references the kernels are tested against live in preprocess.py and sampling.py, and for the gated
projection here (gated_projection_reference). numpy + ctypes only.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import weakref
from pathlib import Path
from typing import Sequence

import numpy as np

from crome_runtime.errors import CromeError

ABI_VERSION = 5  # CROME_ABI_VERSION in crome_core.h

PIXEL_FORMATS = {"bgr": 0, "rgb": 1, "yuyv": 2, "nv12": 3}  # crome_pixfmt
ISAS = {"auto": 0, "scalar": 1, "avx2": 2, "avx512": 3, "neon": 4}  # crome_isa
QTYPES = {"q4_1": 3, "q8_0": 8}  # crome_qtype (ggml's ids)
QK = 32  # CROME_QK: weights per block
MAX_OUT_SIDE = 8192  # crome_preprocess_params.out_width/out_height
from crome_runtime.limits import MAX_IMAGE_SIDE  # noqa: E402  crome_image width/height (csrc/preprocess.c MAX_SIDE)
_F32DT, _I64DT = np.dtype(np.float32), np.dtype(np.int64)
_NO_TOKENS = np.zeros(0, np.int64)
_ERR_VALUE = 6  # CROME_ERR_VALUE


class CoreError(CromeError, ValueError):
    """A C core call refused its arguments; the message names the argument and what it must be."""


class CoreUnavailable(CromeError, ImportError):
    """The C core library is missing or stale; the message says how to build it."""


class _Image(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("uv", ctypes.c_void_p),
        ("stride", ctypes.c_int64),
        ("uv_stride", ctypes.c_int64),
        ("width", ctypes.c_int32),
        ("height", ctypes.c_int32),
        ("format", ctypes.c_int32),
    ]


class _PreprocessParams(ctypes.Structure):
    _fields_ = [
        ("out_width", ctypes.c_int32),
        ("out_height", ctypes.c_int32),
        ("mean", ctypes.c_float * 3),
        ("std", ctypes.c_float * 3),
    ]


class _GprojParams(ctypes.Structure):
    _fields_ = [("d_model", ctypes.c_int32), ("rank", ctypes.c_int32)]


class _GprojWeights(ctypes.Structure):
    _fields_ = [("w1", ctypes.c_void_p), ("wu", ctypes.c_void_p)]


class _SamplerParams(ctypes.Structure):
    _fields_ = [
        ("temperature", ctypes.c_double),
        ("top_p", ctypes.c_double),
        ("repetition_penalty", ctypes.c_float),
        ("top_k", ctypes.c_int32),
    ]


class LlmParams(ctypes.Structure):  # crome_llm_params
    _fields_ = [*[(name, ctypes.c_int32) for name in
                  ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff", "vocab")],
                ("rms_eps", ctypes.c_float), ("rope_theta", ctypes.c_float), ("n_threads", ctypes.c_int32),
                ("isa", ctypes.c_int32)]


class QTensor(ctypes.Structure):  # crome_qtensor
    _fields_ = [("data", ctypes.c_void_p), ("qtype", ctypes.c_int32)]


class LlmLayer(ctypes.Structure):  # crome_llm_layer
    _fields_ = [(name, QTensor) for name in ("q", "k", "v", "o", "gate", "up", "down")] + [
        ("attn_norm", ctypes.c_void_p), ("ffn_norm", ctypes.c_void_p)]


class LlmWeights(ctypes.Structure):  # crome_llm_weights
    _fields_ = [("layers", ctypes.POINTER(LlmLayer)), ("final_norm", ctypes.c_void_p), ("head", QTensor)]


def _library_path() -> Path | None:
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if (here / f"_crome_core{suffix}").is_file():
            return here / f"_crome_core{suffix}"
    return None


@functools.lru_cache(maxsize=None)
def library() -> ctypes.CDLL:
    """The loaded C core, with argument types declared; raises CoreUnavailable naming the fix."""
    fix = "build it with `pip install -e .` in the crome-edge checkout (or `python setup.py build_ext --inplace`)"
    path = _library_path()
    if path is None:
        here = Path(__file__).parent
        raise CoreUnavailable(f"crome_runtime's C core is not built (no _crome_core*.so in {here}): {fix}")
    lib = ctypes.CDLL(str(path))
    lib.crome_abi_version.restype = ctypes.c_int
    if lib.crome_abi_version() != ABI_VERSION:
        raise CoreUnavailable(
            f"{path.name} has C ABI {lib.crome_abi_version()}, this crome_runtime needs {ABI_VERSION}: "
            f"the library is stale; re{fix}"
        )
    p, i32, i64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64
    lib.crome_status_str.argtypes, lib.crome_status_str.restype = [ctypes.c_int], ctypes.c_char_p
    lib.crome_build_info.argtypes, lib.crome_build_info.restype = [], ctypes.c_char_p
    lib.crome_preprocess.argtypes = [ctypes.POINTER(_Image), ctypes.POINTER(_PreprocessParams), p]
    lib.crome_gproj_init.argtypes = [ctypes.POINTER(_GprojParams), ctypes.POINTER(_GprojWeights), ctypes.POINTER(p)]
    lib.crome_gproj_free.argtypes, lib.crome_gproj_free.restype = [p], None
    lib.crome_gproj_apply.argtypes = [p, p, i64, p, i64, i64]
    lib.crome_sample.argtypes = [p, i64, p, i64, ctypes.POINTER(_SamplerParams), ctypes.c_double, ctypes.POINTER(i32)]
    lib.crome_isa_supported.argtypes, lib.crome_isa_supported.restype = [i32], ctypes.c_int
    lib.crome_isa_best.argtypes, lib.crome_isa_best.restype = [], i32
    lib.crome_qrow_bytes.argtypes, lib.crome_qrow_bytes.restype = [i32, i64], i64
    lib.crome_pool_init.argtypes = [i32, ctypes.POINTER(p)]
    lib.crome_pool_free.argtypes, lib.crome_pool_free.restype = [p], None
    lib.crome_pool_threads.argtypes, lib.crome_pool_threads.restype = [p], i32
    lib.crome_qmatvec.argtypes = [p, i32, i32, p, i64, i64, p, p]
    lib.crome_memread.argtypes = [p, p, i64, ctypes.POINTER(ctypes.c_uint64)]
    lib.crome_llm_params_default.argtypes, lib.crome_llm_params_default.restype = [], LlmParams
    lib.crome_llm_init.argtypes = [ctypes.POINTER(LlmParams), ctypes.POINTER(LlmWeights), ctypes.POINTER(p)]
    lib.crome_llm_free.argtypes, lib.crome_llm_free.restype = [p], None
    lib.crome_llm_reserve.argtypes = [p, i64]
    lib.crome_llm_capacity.argtypes, lib.crome_llm_capacity.restype = [p], i64
    lib.crome_llm_length.argtypes, lib.crome_llm_length.restype = [p], i64
    lib.crome_llm_set_length.argtypes = [p, i64]
    lib.crome_llm_set_kv.argtypes = [p, i32, p, p, i64]
    lib.crome_llm_step.argtypes = [p, p, p]
    for name in ("crome_preprocess", "crome_gproj_init", "crome_gproj_apply", "crome_sample", "crome_pool_init",
                 "crome_qmatvec", "crome_llm_init", "crome_llm_reserve", "crome_llm_set_length", "crome_llm_set_kv",
                 "crome_llm_step"):
        getattr(lib, name).restype = ctypes.c_int
    return lib


def available() -> bool:
    """Whether the C core loads (the reason is in the CoreUnavailable that library() raises)."""
    try:
        library()
    except CoreUnavailable:
        return False
    return True


def build_info() -> str:
    """How the loaded library was compiled, e.g. "gcc 12.2.0, AVX-512, 16 floats per vector"."""
    return library().crome_build_info().decode()


def _check(status: int, what: str) -> None:
    if status != 0:
        raise CoreError(f"{what}: {library().crome_status_str(status).decode()} (status {status})")


# --- crome_preprocess -------------------------------------------------------------------------------


def _frame_view(frame: np.ndarray, pixfmt: str) -> tuple[np.ndarray, _Image]:
    """The frame (copied when C cannot address its layout) and the crome_image describing it."""
    if pixfmt not in PIXEL_FORMATS:
        raise CoreError(f"pixel format {pixfmt!r} is not one of {sorted(PIXEL_FORMATS)}")
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        raise CoreError(f"frame must be a uint8 numpy array, got {getattr(frame, 'dtype', type(frame).__name__)}")
    if pixfmt == "nv12":
        if frame.ndim != 2 or frame.shape[0] % 3 or frame.shape[0] == 0:
            raise CoreError(f"an nv12 frame is (height * 3 / 2, width) uint8, got shape {frame.shape}")
        if frame.strides[1] != 1:  # rows must be byte-contiguous; any row stride is fine
            frame = np.ascontiguousarray(frame)
        height, width = frame.shape[0] * 2 // 3, frame.shape[1]
    else:
        channels = 2 if pixfmt == "yuyv" else 3
        if frame.ndim != 3 or frame.shape[2] != channels:
            raise CoreError(f"a {pixfmt} frame is (height, width, {channels}) uint8, got shape {frame.shape}")
        if frame.strides[2] != 1 or frame.strides[1] != channels:  # pixels packed within a row
            frame = np.ascontiguousarray(frame)
        height, width = frame.shape[:2]
    if width == 0 or height == 0:
        raise CoreError(f"frame is empty: shape {frame.shape}")
    data, stride = frame.ctypes.data, frame.strides[0]
    uv = data + height * stride if pixfmt == "nv12" else None
    return frame, _Image(data, uv, stride, stride, width, height, PIXEL_FORMATS[pixfmt])


def preprocess(
    frame: np.ndarray,
    pixfmt: str,
    size: int | tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Camera frame -> (3, H, W) float32 encoder input, bit-exact with preprocess.preprocess_image.

    frame: "bgr"/"rgb" (H, W, 3), "yuyv" (H, W, 2) as OpenCV lays it out, or "nv12" (H * 3 / 2, W);
    uint8, any row stride (negative too: a flipped view costs nothing). A frame whose pixels are not
    packed within a row (e.g. a channel-reversed or transposed view) is copied first.
    size: int for square output, or (height, width). out: optional C-contiguous float32 (3, H, W).
    """
    out_h, out_w = (size, size) if isinstance(size, (int, np.integer)) else size
    if not (1 <= out_h <= MAX_OUT_SIDE and 1 <= out_w <= MAX_OUT_SIDE):
        raise CoreError(f"output size {out_h}x{out_w} is out of range (1..{MAX_OUT_SIDE} a side)")
    if len(mean) != 3 or len(std) != 3:
        raise CoreError(f"mean and std need 3 values (R, G, B), got {len(mean)} and {len(std)}")
    if out is None:
        out = np.empty((3, out_h, out_w), np.float32)
    elif out.dtype != np.float32 or out.shape != (3, out_h, out_w) or not out.flags.c_contiguous:
        raise CoreError(f"out must be C-contiguous float32 (3, {out_h}, {out_w}), got {out.dtype} {out.shape}")
    frame, image = _frame_view(frame, pixfmt)
    if max(image.width, image.height) > MAX_IMAGE_SIDE:
        raise CoreError(f"frame is {image.width}x{image.height}, a side over the {MAX_IMAGE_SIDE:,}-pixel limit")
    if np.may_share_memory(frame, out):
        raise CoreError("out overlaps the frame")
    params = _PreprocessParams(out_w, out_h, (ctypes.c_float * 3)(*mean), (ctypes.c_float * 3)(*std))
    _check(library().crome_preprocess(ctypes.byref(image), ctypes.byref(params), out.ctypes.data), "crome_preprocess")
    return out


# --- crome_gproj ------------------------------------------------------------------------------------


class GatedProjection:
    """One modality's fused gated projection y = x + (SiLU(x.Wg) * (x.Wd)) . Wu, in the C core.

    w1: (d, 2r) = [Wd | Wg], wu: (r, d); float32, or int8 with w1_scale (2r,) and wu_scale (d,) per output
    column, dequantised here once (W = q * scale: an int8 kernel lost to that, benchmarks/RESULTS.md).
    The weights are copied into the handle, which is immutable: apply() may run on several threads at
    once. Free it with close() or by dropping the object.
    """

    def __init__(
        self,
        w1: np.ndarray,
        wu: np.ndarray,
        w1_scale: np.ndarray | None = None,
        wu_scale: np.ndarray | None = None,
    ):
        if w1.ndim != 2 or wu.ndim != 2 or w1.shape[1] % 2 or wu.shape != (w1.shape[1] // 2, w1.shape[0]):
            raise CoreError(f"need w1 (d, 2r) and wu (r, d), got w1 {w1.shape} and wu {wu.shape}")
        self.d_model, self.rank = w1.shape[0], w1.shape[1] // 2
        if w1.dtype != wu.dtype or w1.dtype not in (np.float32, np.int8):
            raise CoreError(f"w1 and wu must both be float32 or both int8, got {w1.dtype} and {wu.dtype}")
        int8 = w1.dtype == np.int8
        if int8 != (w1_scale is not None) or int8 != (wu_scale is not None):
            raise CoreError("int8 weights need w1_scale and wu_scale; float32 weights take neither")
        if int8:
            s1, su = (np.asarray(s, dtype=np.float32) for s in (w1_scale, wu_scale))
            if s1.shape != (2 * self.rank,) or su.shape != (self.d_model,):
                raise CoreError(f"need w1_scale ({2 * self.rank},) and wu_scale ({self.d_model},), "
                                f"got {s1.shape} and {su.shape}")
            w1, wu = w1.astype(np.float32) * s1, wu.astype(np.float32) * su
        w1, wu = np.ascontiguousarray(w1), np.ascontiguousarray(wu)
        lib = library()
        handle = ctypes.c_void_p()
        _check(lib.crome_gproj_init(ctypes.byref(_GprojParams(self.d_model, self.rank)),
                                    ctypes.byref(_GprojWeights(w1.ctypes.data, wu.ctypes.data)), ctypes.byref(handle)),
               "crome_gproj_init")
        self._handle = handle.value
        self._apply = lib.crome_gproj_apply
        self._finalizer = weakref.finalize(self, lib.crome_gproj_free, handle.value)

    def close(self) -> None:
        self._finalizer()
        self._handle = None

    def __enter__(self) -> GatedProjection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def apply(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """x: float32 (..., d) -> y (..., d). Rows may have any stride; if the leading axes cannot be
        walked with one row stride (or the last axis is strided) x is copied first. out may be x (in place)."""
        if self._handle is None:
            raise CoreError("GatedProjection is closed")
        if type(x) is not np.ndarray or x.dtype != _F32DT or x.ndim < 1 or x.shape[-1] != self.d_model:
            raise CoreError(f"x must be float32 (..., {self.d_model}), got "
                            f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
        d = self.d_model
        if out is None:
            out = np.empty(x.shape, _F32DT)
        elif type(out) is not np.ndarray or out.dtype != _F32DT or out.shape != x.shape:
            raise CoreError(f"out must be float32 {x.shape}, got {getattr(out, 'dtype', type(out).__name__)} "
                            f"{getattr(out, 'shape', '')}")
        elif out is not x and np.may_share_memory(x, out):
            x = x.copy()  # C reads x tile by tile: a partial overlap would be clobbered
        n = x.size // d
        if n == 0:
            return out
        x_rows = d if x.flags.c_contiguous else _row_stride(x)
        y_rows = d if out.flags.c_contiguous else _row_stride(out)
        if y_rows is None:
            raise CoreError("out must be addressable as rows of one stride (e.g. C-contiguous)")
        if x_rows is None:
            x, x_rows = np.ascontiguousarray(x), d
        _check(self._apply(self._handle, x.ctypes.data, x_rows, out.ctypes.data, y_rows, n), "crome_gproj_apply")
        return out


def gated_projection_reference(
    x: np.ndarray,
    w1: np.ndarray,
    wu: np.ndarray,
    w1_scale: np.ndarray | None = None,
    wu_scale: np.ndarray | None = None,
) -> np.ndarray:
    """numpy definition of GatedProjection.apply (docs/architecture.md §2, fused form), float32 throughout:
    h = x . W1 (..., 2r); z = SiLU(h[..., r:]) * h[..., :r]; y = x + z . Wu. int8 weights are dequantised
    as q * scale per output column."""
    if w1_scale is not None:
        assert wu_scale is not None, "int8 weights come with both scales"
        w1 = w1.astype(np.float32) * w1_scale
        wu = wu.astype(np.float32) * wu_scale
    r = w1.shape[1] // 2
    h = x @ w1  # (..., 2r)
    gate = h[..., r:]
    z = gate / (np.float32(1.0) + np.exp(-gate)) * h[..., :r]  # (..., r)
    return x + z @ wu


def _row_stride(a: np.ndarray) -> int | None:
    """Element stride between consecutive rows of a viewed as (-1, a.shape[-1]), or None if not one stride."""
    if a.strides[-1] != a.itemsize:
        return None
    lead = [(n, s) for n, s in zip(a.shape[:-1], a.strides[:-1]) if n > 1]
    if not lead:
        return a.shape[-1]
    for (_, outer), (n_in, inner) in zip(lead, lead[1:]):
        if outer != n_in * inner:
            return None
    step = lead[-1][1]
    return step // a.itemsize if step > 0 and step % a.itemsize == 0 else None


# --- crome_sample -----------------------------------------------------------------------------------


def sample(logits: np.ndarray, params, recent_tokens, u: float) -> int:
    """crome_sample on one row of logits (vocab,). params: an object with temperature, top_k, top_p and
    repetition_penalty (sampling.SamplingParams); recent_tokens: integer ids (any sequence or array);
    u in [0, 1). float16/float64 or strided logits are copied to contiguous float32."""
    if type(logits) is not np.ndarray or logits.ndim != 1 or logits.size == 0:
        raise CoreError(f"logits must be a non-empty 1-D array, got {getattr(logits, 'shape', type(logits).__name__)}")
    if logits.dtype != _F32DT or not logits.flags.c_contiguous:
        logits = np.ascontiguousarray(logits, dtype=np.float32)
    recent = np.asarray(recent_tokens)
    if recent.size == 0:
        recent = _NO_TOKENS
    elif recent.ndim != 1 or recent.dtype.kind not in "iu":
        raise CoreError(f"recent_tokens must be 1-D integer ids, got {recent.dtype} {recent.shape}")
    elif recent.dtype != _I64DT or not recent.flags.c_contiguous:
        recent = np.ascontiguousarray(recent, dtype=np.int64)  # uint64 ids >= 2^63 turn negative: refused in C
    cparams = _SamplerParams(params.temperature, params.top_p, params.repetition_penalty, params.top_k)
    token = ctypes.c_int32()
    status = library().crome_sample(logits.ctypes.data, logits.size, recent.ctypes.data, recent.size,
                                    ctypes.byref(cparams), u, ctypes.byref(token))
    if status == _ERR_VALUE and recent.size and not (0 <= recent.min() and recent.max() < logits.size):
        raise CoreError(f"recent_tokens must be ids in [0, {logits.size}), got {recent.min()}..{recent.max()}")
    _check(status, "crome_sample")
    return token.value


# --- block-quantised kernels: ISA choice, thread pool, crome_qmatvec --------------------------------


def isa_supported(isa: str) -> bool:
    """Whether this library on this CPU can run kernel path `isa` (ISAS: auto, scalar, avx2, avx512, neon)."""
    if isa not in ISAS:
        raise CoreError(f"ISA {isa!r} is not one of {sorted(ISAS)}")
    return bool(library().crome_isa_supported(ISAS[isa]))


def isa_best() -> str:
    """The kernel path "auto" picks on this CPU."""
    best = library().crome_isa_best()
    return next(name for name, value in ISAS.items() if value == best)


def qrow_bytes(qtype: str, cols: int) -> int:
    """Bytes of one row of `cols` weights in block format `qtype` (q4_1: 20 per 32, q8_0: 34 per 32)."""
    if qtype not in QTYPES:
        raise CoreError(f"block format {qtype!r} is not one of {sorted(QTYPES)}")
    n = library().crome_qrow_bytes(QTYPES[qtype], cols)
    if n < 0:
        raise CoreError(f"a {qtype} row needs a positive multiple of {QK} columns, got {cols}")
    return n


class Pool:
    """crome_pool: `threads` threads in all (the caller counts as one) for crome_qmatvec. One job at a time."""

    def __init__(self, threads: int):
        if not isinstance(threads, (int, np.integer)) or not 1 <= threads <= 256:
            raise CoreError(f"a pool has 1 .. 256 threads, got {threads!r}")
        lib = library()
        handle = ctypes.c_void_p()
        _check(lib.crome_pool_init(int(threads), ctypes.byref(handle)), "crome_pool_init")
        self.handle, self.threads = handle.value, int(threads)
        self._finalizer = weakref.finalize(self, lib.crome_pool_free, handle.value)

    def close(self) -> None:
        self._finalizer()
        self.handle = None


def qmatvec(blocks: np.ndarray, qtype: str, x: np.ndarray, isa: str = "auto", pool: Pool | None = None,
            out: np.ndarray | None = None) -> np.ndarray:
    """W . x for a block-quantised W given as uint8 (rows, row_bytes) (a GGUF tensor's bytes, one row of
    blocks per row); x float32 (cols,) with cols = row_bytes / bytes-per-block * 32 -> float32 (rows,)."""
    if qtype not in QTYPES:
        raise CoreError(f"block format {qtype!r} is not one of {sorted(QTYPES)}")
    if isa not in ISAS:
        raise CoreError(f"ISA {isa!r} is not one of {sorted(ISAS)}")
    if type(blocks) is not np.ndarray or blocks.dtype != np.uint8 or blocks.ndim != 2 or not blocks.flags.c_contiguous:
        raise CoreError(f"blocks must be C-contiguous uint8 (rows, row_bytes), got "
                        f"{getattr(blocks, 'dtype', type(blocks).__name__)} {getattr(blocks, 'shape', '')}")
    per_block = 34 if qtype == "q8_0" else 20
    rows, row_bytes = blocks.shape
    if rows == 0 or row_bytes == 0 or row_bytes % per_block:
        raise CoreError(f"a {qtype} matrix is (rows, n_blocks * {per_block}) bytes, got {blocks.shape}")
    cols = row_bytes // per_block * QK
    if type(x) is not np.ndarray or x.dtype != _F32DT or x.shape != (cols,):
        raise CoreError(f"x must be float32 ({cols},), got {getattr(x, 'dtype', type(x).__name__)} "
                        f"{getattr(x, 'shape', '')}")
    x = np.ascontiguousarray(x)
    if out is None:
        out = np.empty(rows, _F32DT)
    elif type(out) is not np.ndarray or out.dtype != _F32DT or out.shape != (rows,) or not out.flags.c_contiguous:
        raise CoreError(f"out must be C-contiguous float32 ({rows},)")
    if not isa_supported(isa):
        raise CoreError(f"this CPU (or this build) cannot run the {isa} path; pick one of "
                        f"{[name for name in ISAS if isa_supported(name)]}")
    _check(library().crome_qmatvec(pool.handle if pool else None, ISAS[isa], QTYPES[qtype], blocks.ctypes.data,
                                   rows, cols, x.ctypes.data, out.ctypes.data), "crome_qmatvec")
    return out


def memread(data: np.ndarray, pool: Pool | None = None) -> int:
    """crome_memread: read every byte of a C-contiguous array once with the pool's threads (the plain read loop
    that bounds the block kernels); -> the XOR of its 64-bit words. Benchmarks time this call."""
    if type(data) is not np.ndarray or not data.flags.c_contiguous or data.ctypes.data % 8:
        raise CoreError("data must be a C-contiguous numpy array, 8-byte aligned")
    checksum = ctypes.c_uint64()
    _check(library().crome_memread(pool.handle if pool else None, data.ctypes.data, data.nbytes,
                                   ctypes.byref(checksum)), "crome_memread")
    return int(checksum.value)
