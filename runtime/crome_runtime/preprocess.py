"""Image loading and the reference preprocessing shared by training and the runtime.

`preprocess_image` defines the encoder input: training calls it, the runtime calls `preprocess_frame`,
whose C core (crome_preprocess) reproduces it bit-exactly from BGR, RGB, YUYV or NV12 camera frames in
one pass; tests/test_ccore_preprocess.py holds the two together. numpy + cv2 only (no torch).
Backbones from Hugging Face VLM checkpoints (LLaVA, SmolVLM) resize as their HF image processor does instead
(ResizeRecipe "pil", crome_runtime.hf_image, numpy): both functions take that path when the recipe says so.
"""

from __future__ import annotations

import functools
import os
import struct
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

# CLIP's normalisation, used by the BLIP-2 / InstructBLIP image processors (RGB order, [0, 1] scale).
DEFAULT_MEAN = (0.48145466, 0.4578275, 0.40821073)
DEFAULT_STD = (0.26862954, 0.26130258, 0.27577711)

from crome_runtime import MAX_IMAGE_PIXELS  # noqa: E402  (enforced by OpenCV's own decoders, see crome_runtime)
from crome_runtime.errors import CromeError  # noqa: E402
from crome_runtime.hf_image import PIL, ResizeRecipe, hf_preprocess  # noqa: E402
from crome_runtime.limits import MAX_IMAGE_SIDE  # noqa: E402  (what the C core's preprocessing addresses)

MAX_FILE_BYTES = 256 << 20
IMAGE_FORMATS = "PNG, JPEG, BMP, WebP, TIFF, PNM"


class ImageError(CromeError, ValueError):
    """An image file that cannot be used; the message names the file and the reason."""

    http_status = 400


class _Truncated(CromeError):
    """The data ends inside a recognised image header."""


# --- loading ----------------------------------------------------------------------------------------


def load_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 BGR (alpha dropped, grey expanded, EXIF orientation applied).
    Raises ImageError for a missing or unreadable file, and for everything decode_image refuses."""
    path = Path(path)
    try:
        if not path.is_file():
            raise ImageError(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
        size_bytes = path.stat().st_size
    except OSError as e:  # e.g. a name too long for the filesystem, a directory that cannot be searched
        raise ImageError(f"{str(path)[:300]}: cannot be looked up ({e.strerror or e})") from None
    if size_bytes > MAX_FILE_BYTES:
        raise ImageError(f"{path}: file is {size_bytes / 2**20:.0f} MiB, over the {MAX_FILE_BYTES >> 20} MiB limit")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"{path}: cannot read file ({e.strerror or e})") from e
    return decode_image(data, str(path), max_pixels)


def decode_image(data: bytes, source: str = "image", max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Encoded image bytes (a file's, or an upload's) -> (H, W, 3) uint8 BGR.

    Two limits, so a decompression bomb is never allocated: the header's dimensions are read first (a clear
    message, no decoding), and OpenCV's decoders enforce MAX_IMAGE_PIXELS on what they are about to allocate
    themselves — a crafted file whose header our parser reads differently from the decoder still stops there.
    Raises ImageError for a format that is not supported, a 0x0 image, more than max_pixels pixels, or data
    that does not decode.
    """
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(f"{source}: {len(data) / 2**20:.0f} MiB, over the {MAX_FILE_BYTES >> 20} MiB limit")
    import io

    try:
        dims = _header_size(io.BytesIO(data))
    except (_Truncated, struct.error):  # struct.error: a header field cut off by the end of the data
        raise ImageError(f"{source}: the image ends inside its header ({len(data):,} bytes): a truncated file") from None
    if dims is None:
        raise ImageError(f"{source}: not an image crome-edge can read (unrecognised header; supported: {IMAGE_FORMATS})")
    width, height = dims
    if width <= 0 or height <= 0:
        raise ImageError(f"{source}: image has zero size ({width}x{height})")
    limit = min(max_pixels, MAX_IMAGE_PIXELS)
    over = f"{source}: image is {{}}, over the {limit:,}-pixel limit; downscale it first"
    if width * height > limit:
        raise ImageError(over.format(f"{width}x{height} ({width * height:,} pixels)"))
    _check_sides(width, height, source)
    if not decoder_limit_enforced():
        raise ImageError(f"{source}: OpenCV was loaded before crome_runtime, so its decoders do not enforce the "
                         f"{MAX_IMAGE_PIXELS:,}-pixel limit; import crome_runtime before cv2 (or set "
                         f"OPENCV_IO_MAX_IMAGE_PIXELS={MAX_IMAGE_PIXELS} in the environment)")
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as error:
        if "CV_IO_MAX_IMAGE_PIXELS" in str(error):
            raise ImageError(over.format("larger than its header says (the decoder read other dimensions)")) from None
        raise ImageError(f"{source}: could not decode the {width}x{height} image ({str(error).strip()[:200]})") from None
    if image is None:
        raise ImageError(f"{source}: could not decode the {width}x{height} image (corrupt or truncated file?)")
    if image.shape[0] * image.shape[1] > limit:
        raise ImageError(over.format(f"{image.shape[1]}x{image.shape[0]}"))
    _check_sides(image.shape[1], image.shape[0], source)
    return image


def _check_sides(width: int, height: int, source: str) -> None:
    """The same longest side for every command: the runtime's C preprocessing addresses MAX_IMAGE_SIDE."""
    if max(width, height) > MAX_IMAGE_SIDE:
        raise ImageError(f"{source}: image is {width}x{height}, a side over the {MAX_IMAGE_SIDE:,}-pixel limit; "
                         "crop or downscale it first")


@functools.lru_cache(maxsize=1)
def decoder_limit_enforced() -> bool:
    """Whether OpenCV's decoders refuse images over MAX_IMAGE_PIXELS (they do when OPENCV_IO_MAX_IMAGE_PIXELS was
    set before cv2 loaded). Probed with a PNG header one row over the limit and no pixel data: a decoder that enforces the
    limit raises before reading pixels; one that does not simply fails to decode (libpng caps a row at 1M pixels,
    hence 8000 columns)."""
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", 8000, MAX_IMAGE_PIXELS // 8000 + 1, 8, 0, 0, 0, 0)  # width, height, 8-bit grey
    probe = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    try:
        cv2.imdecode(np.frombuffer(probe, np.uint8), cv2.IMREAD_GRAYSCALE)
    except cv2.error as error:
        return "CV_IO_MAX_IMAGE_PIXELS" in str(error)
    return False


def _header_size(f) -> tuple[int, int] | None:
    """(width, height) from the header of a supported image file, or None if the format is not recognised."""
    head = f.read(32)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(head) < 24:
            raise _Truncated()
        return struct.unpack(">II", head[16:24]) if head[12:16] == b"IHDR" else None
    if head.startswith(b"\xff\xd8"):
        return _jpeg_size(f)
    if head.startswith(b"BM") and len(head) >= 26:
        if struct.unpack("<I", head[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER
            return struct.unpack("<HH", head[18:22])
        width, height = struct.unpack("<ii", head[18:26])
        return width, abs(height)  # negative height: top-down rows
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return _webp_size(head + f.read(32))
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff_size(f, "<" if head[:2] == b"II" else ">")
    if len(head) >= 2 and head[:1] == b"P" and head[1:2] in b"123456":
        return _pnm_size(head + f.read(1024))
    return None


def _jpeg_size(f) -> tuple[int, int] | None:
    f.seek(2)
    while True:
        marker = _read(f, 1)
        if marker != b"\xff":
            return None
        code = _read(f, 1)
        while code == b"\xff":  # fill bytes before a marker code
            code = _read(f, 1)
        if code[0] == 0x01 or 0xD0 <= code[0] <= 0xD7:  # markers without a payload
            continue
        length_bytes = _read(f, 2)
        if 0xC0 <= code[0] <= 0xCF and code[0] not in (0xC4, 0xC8, 0xCC):  # start of frame
            sof = _read(f, 5)
            height, width = struct.unpack(">HH", sof[1:5])
            return width, height
        f.seek(struct.unpack(">H", length_bytes)[0] - 2, os.SEEK_CUR)


def _read(f, count: int) -> bytes:
    """Exactly `count` bytes of a header, or _Truncated."""
    data = f.read(count)
    if len(data) < count:
        raise _Truncated()
    return data


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 " and len(head) >= 30:
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25:
        bits = struct.unpack("<I", head[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(head) >= 30:
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    if chunk in (b"VP8 ", b"VP8L", b"VP8X"):
        raise _Truncated()
    return None


def _tiff_size(f, order: str) -> tuple[int, int] | None:
    f.seek(4)
    (ifd,) = struct.unpack(order + "I", _read(f, 4))
    f.seek(ifd)
    dims = {}
    for _ in range(struct.unpack(order + "H", _read(f, 2))[0]):
        entry = _read(f, 12)
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG (4)
            dims[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), entry[8:10] if kind == 3 else entry[8:12])[0]
    return (dims[256], dims[257]) if len(dims) == 2 else None


def _pnm_size(head: bytes) -> tuple[int, int] | None:
    fields = []
    for line in head[2:].split(b"\n"):
        fields += line.split(b"#", 1)[0].split()
        if len(fields) >= 2:
            break
    try:
        return int(fields[0]), int(fields[1])
    except (IndexError, ValueError):
        return None


# --- preprocessing ----------------------------------------------------------------------------------


def preprocess_image(
    image_bgr: np.ndarray,
    size: int,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
    resize: ResizeRecipe | None = None,
) -> np.ndarray:
    """BGR uint8 (H, W, 3) -> normalised RGB float32 (3, size, size): the encoder input, by definition.

    cv2.cvtColor BGR->RGB, cv2.resize to (size, size) with INTER_LINEAR on uint8, x / 255 in float32,
    then (x - mean) / std per channel, channels first. Training and the runtime both use exactly this.
    With a "pil" `resize` recipe: the HF image processor's steps instead (crome_runtime.hf_image.hf_preprocess).
    """
    if not isinstance(image_bgr, np.ndarray) or image_bgr.dtype != np.uint8 or image_bgr.ndim != 3 \
            or image_bgr.shape[2] != 3 or 0 in image_bgr.shape:
        raise ValueError(f"image must be a non-empty uint8 (H, W, 3) BGR array, got "
                         f"{getattr(image_bgr, 'dtype', type(image_bgr).__name__)} {getattr(image_bgr, 'shape', '')}")
    if not image_bgr.flags.c_contiguous:
        image_bgr = np.ascontiguousarray(image_bgr)
    rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
    if resize is not None and resize.method == PIL:
        return hf_preprocess(rgb, size, resize, mean, std)
    rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LINEAR)  # (size, size, 3) uint8
    x = rgb.astype(np.float32) / np.float32(255.0)
    normalized = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)  # (size, size, 3) float32
    return np.ascontiguousarray(normalized.transpose(2, 0, 1))  # (3, size, size)


def yuyv_to_bgr(frame: np.ndarray) -> np.ndarray:
    """YUYV (YUY2) camera frame as OpenCV lays it out, (H, W, 2) uint8, W even -> (H, W, 3) BGR."""
    return cv2.cvtColor(frame, cv2.COLOR_YUV2BGR_YUYV)


def nv12_to_bgr(frame: np.ndarray) -> np.ndarray:
    """NV12 camera frame, (H * 3 / 2, W) uint8 (Y plane, then interleaved UV), H and W even -> (H, W, 3) BGR."""
    return cv2.cvtColor(frame, cv2.COLOR_YUV2BGR_NV12)


def preprocess_frame(
    frame: np.ndarray,
    pixfmt: str = "bgr",
    size: int = 224,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
    out: np.ndarray | None = None,
    resize: ResizeRecipe | None = None,
) -> np.ndarray:
    """The runtime's preprocessing: a camera frame ("bgr", "rgb", "yuyv", "nv12") -> (3, size, size)
    float32, in one pass in the C core; equal to preprocess_image on the frame converted to BGR.
    out: optional C-contiguous float32 (3, size, size), e.g. one slot of a batch. A "pil" `resize` recipe (HF
    checkpoints) converts the frame to BGR with OpenCV and takes preprocess_image's numpy path instead."""
    if resize is not None and resize.method == PIL:
        converters = {"bgr": lambda f: f, "rgb": lambda f: cv2.cvtColor(f, cv2.COLOR_RGB2BGR),
                      "yuyv": yuyv_to_bgr, "nv12": nv12_to_bgr}
        if pixfmt not in converters:
            raise ValueError(f"pixel format must be one of {', '.join(converters)}, got {pixfmt!r:.20}")
        pixels = preprocess_image(converters[pixfmt](frame), size, mean, std, resize)
        if out is None:
            return pixels
        out[...] = pixels
        return out
    from crome_runtime import ccore  # the C library; the training side never needs it

    return ccore.preprocess(frame, pixfmt, size, mean, std, out)
