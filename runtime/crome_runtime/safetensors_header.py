"""The header of a `.safetensors` file (tensor names, dtypes, shapes and the string metadata), read without
torch or the safetensors package, with the checks that tell a truncated or foreign file from a good one.

Layout: 8 bytes little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}, ...,
"__metadata__": {str: str}}, then the tensor bytes; `data_offsets` are relative to the end of the header and
the last one ends exactly at the end of the file (safetensors' own loader refuses anything else).
Adapter files, backbone-parts files and a bundle's adapter.safetensors are all recognised through this one
reader. Not here: reading tensors (safetensors' loaders do that) or what the metadata means (formats.py).
"""
from __future__ import annotations

import json
import stat
import struct
from pathlib import Path

from crome_runtime.errors import CromeError
from crome_runtime import input_files
from crome_runtime.limits import MAX_SAFETENSORS_HEADER_BYTES



class SafetensorsHeaderError(CromeError, ValueError):
    """Not a (complete) safetensors file; the message says what is wrong, for the caller to add the fix."""


def read_header(path: str | Path) -> dict:
    """The parsed JSON header; SafetensorsHeaderError when the file is not safetensors or is truncated.
    OSError (missing, unreadable) passes through."""
    path = Path(path)
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):  # a FIFO would block the open below, a device would never end
        raise SafetensorsHeaderError(f"it is {input_files.file_kind(info.st_mode)}, not a regular file")
    size = info.st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsHeaderError(f"the file has {size} bytes, too few for a safetensors header: truncated")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_SAFETENSORS_HEADER_BYTES:
            raise SafetensorsHeaderError(f"its header length field reads {length} bytes: not a safetensors file")
        raw = f.read(length)
    if len(raw) < length:
        raise SafetensorsHeaderError(f"its header is {length} bytes but the file ends after {len(raw)}: truncated")
    try:
        header = input_files.loads(raw, "its header")
    except json.JSONDecodeError as error:  # input_files.JsonInputError: malformed, not UTF-8, nested too deeply
        raise SafetensorsHeaderError(f"{error}: not a safetensors file crome-edge wrote") from None
    if not isinstance(header, dict):
        raise SafetensorsHeaderError("its header is not a JSON object: not a safetensors file")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsHeaderError("its __metadata__ is not a string -> string table")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] and isinstance(entry.get("shape"), list)):
            raise SafetensorsHeaderError(f"its header entry for tensor {name!r} is malformed")
        end = max(end, offsets[1])
    data = size - 8 - length
    if end != data:
        raise SafetensorsHeaderError(
            f"its tensors need {end} bytes of data but the file holds {data}: "
            + ("truncated" if end > data else "trailing bytes after the tensors"))
    return header


def read_metadata(path: str | Path) -> dict[str, str]:
    """The `__metadata__` strings (empty when the file has none); raises as `read_header`."""
    return dict(read_header(path).get("__metadata__", {}))


def tensor_shapes(header: dict) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor in a header from `read_header`."""
    return {name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}
