"""Images in requests: `data:image/...;base64,...` URIs -> (H, W, 3) uint8 BGR, refusing anything else.

Remote URLs are never fetched (the server would become a proxy into the user's network, and a camera box
has no business downloading). The base64 is decoded strictly; the image goes through the runtime's decoder
(crome_runtime.preprocess.decode_image), which reads the size from the header first and has OpenCV enforce
the pixel limit, so a decompression bomb is refused unallocated.
Every refusal is an ImageRefused whose message says what was wrong. Runs on a thread-pool thread.

Not here: the camera (`"camera"` or no image at all means its newest frame: protocol.py).
"""
from __future__ import annotations

import base64
import binascii
import re
import struct

import numpy as np

from crome_runtime.errors import CromeError
from crome_runtime.preprocess import ImageError, decode_image

_DATA_URI = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,",
                       re.ASCII)


class ImageRefused(CromeError, ValueError):
    """An image_url the server will not use; the message says why and what to send instead."""

    http_status = 400
    http_code = "invalid_image"
    http_param = "messages"


def decode_data_uri(url: str, max_pixels: int) -> np.ndarray:
    match = _DATA_URI.match(url)
    if match is None:
        if re.match(r"[a-z][a-z0-9+.-]*://", url, re.I):
            raise ImageRefused(f"remote image URLs are not fetched ({url.split('://')[0]}://…); send the image "
                               "inline as a data:image/png;base64,… URI, or \"camera\" for the newest camera frame")
        raise ImageRefused("image_url.url must be a data:image/…;base64,… URI or \"camera\"")
    mime = (match["mime"] or "").lower()
    if not mime.startswith("image/"):
        raise ImageRefused(f"the data URI's type is {mime or 'missing'}; it must be image/png, image/jpeg, …")
    if not match["b64"]:
        raise ImageRefused("the data URI must be base64-encoded (data:image/png;base64,…)")
    payload = url[match.end():]
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRefused("the image's base64 does not decode (characters outside the base64 alphabet, or "
                           "wrong padding)") from None
    if not data:
        raise ImageRefused("the data URI holds no image (empty payload)")
    return decode_image_bytes(data, max_pixels)


def decode_image_bytes(data: bytes, max_pixels: int) -> np.ndarray:
    """Encoded bytes -> (H, W, 3) uint8 BGR through the runtime's one decoder (header checked first)."""
    try:
        return decode_image(data, "the image", max_pixels)
    except ImageError as error:
        raise ImageRefused(str(error)) from None
    except struct.error:  # a header cut short inside a field
        raise ImageRefused("the image's header is truncated") from None
