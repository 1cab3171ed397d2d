"""Coverage-guided fuzzing (atheris / libFuzzer) of the two readers that see untrusted bytes first: the image
header parser + decoder entry (crome_runtime.preprocess.decode_image) and the safetensors header reader
(crome_runtime.safetensors_header.read_header). Not a test module; tests/test_fuzz_headers.py runs it briefly.

The property: decode_image returns a (H, W, 3) uint8 image or raises ImageError; read_header returns a dict or
raises SafetensorsHeaderError. Anything else (struct.error, IndexError, a hang, a crash) is a finding: libFuzzer
stops and writes the input as crash-<sha1> in the current directory. The seed corpus is one valid file of every
image format and a valid adapter-shaped safetensors file.

    python tests/fuzz_headers.py -runs=3000 CORPUS_DIR                     # what CI runs (seconds)
    python tests/fuzz_headers.py -max_total_time=3600 -print_final_stats=1 CORPUS_DIR   # an hour

CORPUS_DIR (created if missing) gets the seeds and keeps what libFuzzer finds; the safetensors reader's scratch
file is CORPUS_DIR.scratch beside it (libFuzzer ends the process with exit(), so nothing is cleaned up here).
"""
from __future__ import annotations

import json
import os
import struct
import sys

import atheris

with atheris.instrument_imports():
    import crome_runtime  # noqa: F401  sets OpenCV's decoder pixel limit before cv2 loads
    from crome_runtime.preprocess import ImageError, decode_image
    from crome_runtime.safetensors_header import SafetensorsHeaderError, read_header

import cv2  # noqa: E402
import numpy as np  # noqa: E402

MAX_PIXELS = 1 << 20  # the fuzzed decoder never allocates more than a 1 MP image (the product's limit is 40 MP)
_SCRATCH = ""  # set by main(): CORPUS_DIR.scratch


def _safetensors_seed() -> bytes:
    header = {"up": {"dtype": "F32", "shape": [2, 8], "data_offsets": [0, 64]},
              "__metadata__": {"format": "crome-adapter", "format_version": "1"}}
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(64)


def seeds() -> list[bytes]:
    image = np.random.default_rng(0).integers(0, 255, (9, 13, 3), dtype=np.uint8)
    encoded = [cv2.imencode(ext, image)[1].tobytes() for ext in (".png", ".jpg", ".bmp", ".webp", ".tif", ".ppm")]
    return [b"\x00" + blob for blob in encoded] + [b"\x01" + _safetensors_seed()]


def one_input(data: bytes) -> None:
    """First byte: which reader (even: image, odd: safetensors); the rest is the file."""
    if not data:
        return
    payload = data[1:]
    if data[0] % 2 == 0:
        try:
            image = decode_image(payload, "fuzz", max_pixels=MAX_PIXELS)
        except ImageError:
            return
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        return
    with open(_SCRATCH, "wb") as f:
        f.write(payload)
    try:
        header = read_header(_SCRATCH)
    except SafetensorsHeaderError:
        return
    assert isinstance(header, dict)


def main() -> None:
    global _SCRATCH
    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    if not corpus:
        sys.exit(__doc__.split("\n\n")[-2])
    directory = corpus[0].rstrip("/")
    os.makedirs(directory, exist_ok=True)
    _SCRATCH = directory + ".scratch"
    for i, seed in enumerate(seeds()):
        with open(os.path.join(directory, f"seed-{i}"), "wb") as f:
            f.write(seed)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
