"""C core preprocessing (crome_preprocess) against the OpenCV/numpy reference, and load_image's errors.

Tolerance: none. The C core reproduces cv2.cvtColor + cv2.resize(INTER_LINEAR) on uint8 bit-exactly and
normalises with the same float32 operations, so outputs must be identical. (If a future OpenCV changes
its fixed-point rounding, these tests say so; the difference would be at most one uint8 step,
1 / 255 / std ~= 0.015.)
"""

import struct
import zlib

import cv2
import numpy as np
import pytest

from crome_runtime import ccore
from crome_runtime.preprocess import (
    DEFAULT_MEAN,
    DEFAULT_STD,
    ImageError,
    load_image,
    nv12_to_bgr,
    preprocess_frame,
    preprocess_image,
    yuyv_to_bgr,
)

pytestmark = pytest.mark.skipif(not ccore.available(), reason="C core not built (pip install -e .)")

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _rgb_u8(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "src_hw, size",
    [((1, 1), 1), ((1, 1), 5), ((7, 13), 4), ((7, 13), 224), ((479, 641), 224), ((641, 479), 128),
     ((480, 640), 224), ((100, 100), 50), ((64, 64), 128), ((2, 3), 1), ((224, 224), 224), ((1, 200), 31)],
)
def test_bgr_matches_reference_exactly(src_hw, size):
    img = _rgb_u8(*src_hw)
    np.testing.assert_array_equal(preprocess_frame(img, "bgr", size, MEAN, STD), preprocess_image(img, size, MEAN, STD))


def test_rectangular_output_and_default_normalisation():
    img = _rgb_u8(50, 70)
    out = ccore.preprocess(img, "bgr", (20, 33), DEFAULT_MEAN, DEFAULT_STD)  # (height, width)
    rgb = cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), (33, 20), interpolation=cv2.INTER_LINEAR)
    ref = ((rgb.astype(np.float32) / np.float32(255) - np.float32(DEFAULT_MEAN)) / np.float32(DEFAULT_STD))
    np.testing.assert_array_equal(out, ref.transpose(2, 0, 1))


def test_rgb_input_is_bgr_with_channels_swapped():
    img = _rgb_u8(33, 47)
    rgb = np.ascontiguousarray(img[:, :, ::-1])
    np.testing.assert_array_equal(preprocess_frame(rgb, "rgb", 16, MEAN, STD), preprocess_image(img, 16, MEAN, STD))


@pytest.mark.parametrize(
    "view",
    [
        lambda a: a[10:-10, 5:-7],  # row stride larger than the row
        lambda a: a[::-1],  # negative row stride (bottom-up frame)
        lambda a: a[::2, ::3],  # strided pixels: copied first
        lambda a: a[:, :, ::-1],  # reversed channels (= the RGB frame): copied first
        lambda a: np.asfortranarray(a),  # column-major
    ],
    ids=["crop", "flipped", "subsampled", "channels-reversed", "fortran"],
)
def test_non_contiguous_frames(view):
    frame = view(_rgb_u8(60, 80))
    np.testing.assert_array_equal(
        preprocess_frame(frame, "bgr", 24, MEAN, STD), preprocess_image(np.ascontiguousarray(frame), 24, MEAN, STD)
    )


@pytest.mark.parametrize("hw", [(2, 2), (1, 2), (7, 14), (480, 640), (37, 102)])
def test_yuyv_matches_cvtcolor_then_reference(hw):
    frame = np.random.default_rng(1).integers(0, 256, (*hw, 2), dtype=np.uint8)
    for size in (1, 9, 64):
        ref = preprocess_image(yuyv_to_bgr(frame), size, MEAN, STD)
        np.testing.assert_array_equal(preprocess_frame(frame, "yuyv", size, MEAN, STD), ref)


@pytest.mark.parametrize("hw", [(2, 2), (8, 14), (480, 640), (38, 102)])
def test_nv12_matches_cvtcolor_then_reference(hw):
    frame = np.random.default_rng(2).integers(0, 256, (hw[0] * 3 // 2, hw[1]), dtype=np.uint8)
    for size in (1, 9, 64):
        ref = preprocess_image(nv12_to_bgr(frame), size, MEAN, STD)
        np.testing.assert_array_equal(preprocess_frame(frame, "nv12", size, MEAN, STD), ref)


def test_nv12_with_padded_rows():
    padded = np.random.default_rng(3).integers(0, 256, (30, 40), dtype=np.uint8)
    frame = padded[:, :32]  # row stride 40 bytes for a 32-pixel-wide frame
    ref = preprocess_image(nv12_to_bgr(np.ascontiguousarray(frame)), 16, MEAN, STD)
    np.testing.assert_array_equal(preprocess_frame(frame, "nv12", 16, MEAN, STD), ref)


def test_out_buffer_is_filled_in_place():
    batch = np.zeros((2, 3, 16, 16), np.float32)
    img = _rgb_u8(20, 30)
    result = preprocess_frame(img, "bgr", 16, MEAN, STD, out=batch[1])
    assert result.base is batch or result is batch[1] or np.shares_memory(result, batch)
    np.testing.assert_array_equal(batch[1], preprocess_image(img, 16, MEAN, STD))
    assert not batch[0].any()


@pytest.mark.parametrize(
    "frame, pixfmt, kwargs, match",
    [
        (np.zeros((4, 4, 3), np.float32), "bgr", {}, "uint8"),
        (np.zeros((4, 4), np.uint8), "bgr", {}, r"\(height, width, 3\)"),
        (np.zeros((4, 4, 3), np.uint8), "bgra", {}, "not one of"),
        (np.zeros((0, 4, 3), np.uint8), "bgr", {}, "empty"),
        (np.zeros((4, 5, 2), np.uint8), "yuyv", {}, "out of range"),  # odd width
        (np.zeros((7, 4), np.uint8), "nv12", {}, r"height \* 3 / 2"),
        (np.zeros((9, 5), np.uint8), "nv12", {}, "out of range"),  # odd width
        (np.zeros((4, 4, 3), np.uint8), "bgr", {"std": (0.2, 0.0, 0.3)}, "parameter"),
        (np.zeros((4, 4, 3), np.uint8), "bgr", {"mean": (np.nan, 0, 0)}, "parameter"),
        (np.zeros((4, 4, 3), np.uint8), "bgr", {"mean": (0, 0)}, "3 values"),
        (np.zeros((4, 4, 3), np.uint8), "bgr", {"size": 0}, "out of range"),
        (np.zeros((4, 4, 3), np.uint8), "bgr", {"size": 10_000}, "out of range"),
        (np.zeros((4, 4, 3), np.uint8), "bgr", {"out": np.zeros((3, 8, 8), np.float64)}, "out must be"),
    ],
)
def test_bad_calls_raise_instead_of_crashing(frame, pixfmt, kwargs, match):
    args = {"size": 8, "mean": MEAN, "std": STD, "out": None, **kwargs}
    with pytest.raises(ccore.CoreError, match=match):
        ccore.preprocess(frame, pixfmt, args["size"], args["mean"], args["std"], args["out"])


def test_reference_rejects_non_bgr_input():
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\)"):
        preprocess_image(np.zeros((4, 4), np.uint8), 8)


# --- load_image ---------------------------------------------------------------------------------------


def _png_bytes(width, height, idat=b""):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("ext", ["png", "jpg", "bmp", "webp", "tiff", "ppm", "pgm"])
def test_load_image_reads_supported_formats_as_bgr(tmp_path, ext):
    img = _rgb_u8(37, 53)
    path = tmp_path / f"frame.{ext}"
    assert cv2.imwrite(str(path), img[:, :, 0] if ext == "pgm" else img)
    loaded = load_image(path)
    assert loaded.shape == (37, 53, 3) and loaded.dtype == np.uint8
    if ext in ("png", "bmp", "tiff", "ppm"):
        np.testing.assert_array_equal(loaded, img)


def test_load_image_reads_jpeg_size_past_exif(tmp_path):
    ok, jpg = cv2.imencode(".jpg", _rgb_u8(21, 34))
    jpg = jpg.tobytes()
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 5000) + b"Exif\x00" + bytes(4995)  # a large APP1 before SOF
    path = tmp_path / "exif.jpg"
    path.write_bytes(jpg[:2] + app1 + jpg[2:])
    assert load_image(path).shape == (21, 34, 3)


def test_load_image_errors(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ImageError, match="unrecognised header"):
        load_image(tmp_path / "notes.txt")
    (tmp_path / "empty.png").write_bytes(_png_bytes(0, 0))
    with pytest.raises(ImageError, match="zero size"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "bomb.png").write_bytes(_png_bytes(20000, 20000))  # header only: must not be decoded
    with pytest.raises(ImageError, match=r"20000x20000 \(400,000,000 pixels\), over the 40,000,000-pixel limit"):
        load_image(tmp_path / "bomb.png")
    (tmp_path / "truncated.png").write_bytes(_png_bytes(64, 64, zlib.compress(b"\x00" * 10)))
    with pytest.raises(ImageError, match="could not decode"):
        load_image(tmp_path / "truncated.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(tmp_path / "dir.png")
    with pytest.raises(ImageError, match="not a regular file"):
        load_image("/dev/zero")
    assert issubclass(ImageError, ValueError)


def test_a_bomb_whose_header_disagrees_with_the_decoder_is_stopped_by_the_decoder(tmp_path, monkeypatch):
    """The header parser is only the first line: made to misread a 64 MP PNG (as a parser fooled by a crafted file
    would), the decoder itself refuses it before allocating (OPENCV_IO_MAX_IMAGE_PIXELS, set by crome_runtime)."""
    from crome_runtime import preprocess

    width, height = 8000, 8000
    rows = zlib.compress((b"\x00" + bytes(3 * width)) * height, 9)  # 64 MP of black: 192 MB decoded, ~190 KB here
    (tmp_path / "bomb.png").write_bytes(_png_bytes(width, height, rows))
    monkeypatch.setattr(preprocess, "_header_size", lambda f: (64, 64))
    with pytest.raises(ImageError, match="over the 40,000,000-pixel limit"):
        load_image(tmp_path / "bomb.png")
    assert preprocess.decoder_limit_enforced()


def test_decode_image_reads_bytes_like_load_image(tmp_path):
    from crome_runtime.preprocess import decode_image

    ok, png = cv2.imencode(".png", _rgb_u8(12, 9))
    np.testing.assert_array_equal(decode_image(png.tobytes(), "upload"), _rgb_u8(12, 9))
    with pytest.raises(ImageError, match="upload: not an image"):
        decode_image(b"GIF89a....", "upload")


def test_load_image_respects_max_pixels(tmp_path):
    path = tmp_path / "frame.png"
    cv2.imwrite(str(path), _rgb_u8(40, 50))
    with pytest.raises(ImageError, match=r"50x40 \(2,000 pixels\), over the 1,000-pixel limit"):
        load_image(path, max_pixels=1000)
