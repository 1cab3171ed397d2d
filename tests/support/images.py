"""Image bytes for bad-input tests: a PNG that declares any width and height (both may be 0 or huge) without
holding the pixels, so a loader must refuse it from the header before decoding."""
from __future__ import annotations

import struct
import zlib


def png_header(width: int, height: int) -> bytes:
    """A well-formed PNG (IHDR, a tiny IDAT, IEND) whose header says width x height, 8-bit RGB."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
