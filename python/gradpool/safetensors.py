"""Safetensors files in pure Python, written byte-deterministically.

A safetensors file is an 8-byte little-endian header length, a JSON header
(each tensor's dtype, shape and byte range, plus a ``__metadata__`` map of
strings) and the tensors' bytes. :func:`dump` writes the header with
sorted keys and no spaces, the tensors in name order and the header padded
with spaces to a multiple of 8: equal tensors give equal bytes, which is
what lets a replay compare checkpoints by hash.

This module needs no third-party package. Tensors are given as
:class:`Raw` (dtype, shape, little-endian bytes); ``gradpool.segment``
converts PyTorch tensors to and from it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

#: Bytes per element of each safetensors dtype.
DTYPE_SIZES: Dict[str, int] = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}

#: The longest header a file may have (the format's own limit).
MAX_HEADER = 100_000_000


class SafetensorsError(ValueError):
    """A file that is not a well-formed safetensors file."""


@dataclass(frozen=True)
class Raw:
    """One tensor: its dtype (``"F32"``, …), shape and little-endian bytes."""

    dtype: str
    shape: Tuple[int, ...]
    data: bytes

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_SIZES:
            raise SafetensorsError(f"unknown dtype {self.dtype!r}")
        count = 1
        for d in self.shape:
            if d < 0:
                raise SafetensorsError(f"negative dimension in shape {self.shape}")
            count *= d
        if count * DTYPE_SIZES[self.dtype] != len(self.data):
            raise SafetensorsError(
                f"{len(self.data)} bytes for a {self.dtype} tensor of shape {list(self.shape)}"
            )


def dump(tensors: Mapping[str, Raw], metadata: Optional[Mapping[str, str]] = None) -> bytes:
    """The file's bytes: tensors in name order, a sorted compact header."""
    header: Dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    names = sorted(tensors)
    for name in names:
        if name == "__metadata__":
            raise SafetensorsError("a tensor may not be named __metadata__")
        t = tensors[name]
        header[name] = {
            "data_offsets": [offset, offset + len(t.data)],
            "dtype": t.dtype,
            "shape": list(t.shape),
        }
        offset += len(t.data)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    parts = [struct.pack("<Q", len(text)), text]
    parts.extend(tensors[name].data for name in names)
    return b"".join(parts)


def load(data: bytes) -> Tuple[Dict[str, Raw], Dict[str, str]]:
    """The tensors and metadata of a file, checked: every byte range inside
    the file, consistent with its dtype and shape, with no overlaps."""
    if len(data) < 8:
        raise SafetensorsError("shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER or 8 + n > len(data):
        raise SafetensorsError(f"a header of {n} bytes does not fit the file")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"the header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise SafetensorsError("the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise SafetensorsError("__metadata__ is not a map of strings")
    body = data[8 + n :]
    tensors: Dict[str, Raw] = {}
    for name, entry in header.items():
        try:
            dtype = entry["dtype"]
            shape = tuple(int(d) for d in entry["shape"])
            start, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"tensor {name!r}: a malformed entry") from None
        if not 0 <= start <= end <= len(body):
            raise SafetensorsError(f"tensor {name!r}: bytes {start}..{end} outside the file")
        tensors[name] = Raw(dtype, shape, bytes(body[start:end]))
    return tensors, dict(metadata)


def shapes(tensors: Mapping[str, Raw]) -> Sequence[Tuple[str, str, Tuple[int, ...]]]:
    """Each tensor's name, dtype and shape, in name order."""
    return [(name, tensors[name].dtype, tensors[name].shape) for name in sorted(tensors)]
