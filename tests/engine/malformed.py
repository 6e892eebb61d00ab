"""Malformed frames, one definition for the protocol and the server tests.

``RECOVERABLE`` frames are whole (their end is known), so a decoder must reject
them and go on; ``FATAL`` ones leave the stream without a known end.
"""

from __future__ import annotations

import json
import struct

import numpy as np

from engine.service import protocol


def raw(header: object, payload: bytes = b"") -> bytes:
    """A frame with any header, JSON-encoded as given (no checks)."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<I", len(head)) + head + payload


def spec(name: str, dtype: str, shape: list[int], nbytes: int | None = None) -> dict[str, object]:
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize if nbytes is None else nbytes
    return {"name": name, "dtype": dtype, "shape": shape, "nbytes": size}


def request(*arrays: dict[str, object], options: object = None, **fields: object) -> bytes:
    """A raw reconstruct frame whose payload has the bytes each array spec claims."""
    header = {"type": "reconstruct", "options": {} if options is None else options, "arrays": list(arrays),
              **fields}
    return raw(header, b"\0" * sum(int(a["nbytes"]) for a in arrays))  # type: ignore[call-overload]


PTS = spec("points", "<f4", [4, 3])
NRM = spec("normals", "<f4", [4, 3])

RECOVERABLE: dict[str, bytes] = {
    "unknown type": raw({"type": "bogus", "arrays": []}),
    "header not an object": raw([1, 2, 3]),
    "header a string": raw("reconstruct"),
    "type not a string": raw({"type": 7, "arrays": []}),
    "dtype not whitelisted": request(spec("points", "<f2", [4, 3]), NRM),
    "object dtype (pickle)": request(spec("points", "|O", [4, 3], 96), NRM),
    "nbytes not shape x itemsize": request(spec("points", "<f4", [4, 3], 40), NRM),
    "shape not a list": request({**PTS, "shape": "4x3"}, NRM),
    "negative dimension": request({**PTS, "shape": [-4, -3]}, NRM),
    "too many dimensions": request({**PTS, "shape": [1, 1, 1, 1, 4, 3]}, NRM),
    "missing points array": request(NRM),
    "unexpected array": request(PTS, NRM, spec("weights", "<f4", [4])),
    "duplicate array": request(PTS, NRM, NRM),
    "array name not a string": request(PTS, NRM, {**NRM, "name": 3}),
    "options not an object": request(PTS, NRM, options=[1, 2]),
    "progress without stage": raw({"type": "progress", "arrays": [], "fraction": 0.5, "text": ""}),
    "error code not a string": raw({"type": "error", "arrays": [], "code": 1, "message": "", "hint": ""}),
}

FATAL: dict[str, bytes] = {
    "oversized header": struct.pack("<I", protocol.MAX_HEADER_BYTES + 1) + b"{" * 64,
    "header length 0xffffffff": b"\xff\xff\xff\xff" + b"x" * 64,
    "empty header": raw(b""),
    "bad JSON": raw(b'{"type": "cancel", "arrays": [}'),
    "not UTF-8": raw(b'{"type": "\xff\xfe", "arrays": []}'),
    "NaN in JSON": raw(b'{"type": "cancel", "arrays": [], "x": NaN}'),
    "no arrays list": raw({"type": "cancel"}),
    "arrays not objects": raw({"type": "cancel", "arrays": [1]}),
    "nbytes negative": raw({"type": "reconstruct", "options": {}, "arrays": [{**PTS, "nbytes": -48}]}),
    "nbytes not an integer": raw({"type": "reconstruct", "options": {}, "arrays": [{**PTS, "nbytes": 48.0}]}),
    "payload over the limit": raw({"type": "reconstruct", "options": {},
                                   "arrays": [{**PTS, "nbytes": protocol.MAX_PAYLOAD_BYTES + 1}]}),
    "deeply nested JSON": raw(b"[" * 100_000 + b"]" * 100_000),
}


def truncated(frame: bytes) -> list[bytes]:
    """Every cut of ``frame`` that ends inside it (prefix, header, payload), at a few places each."""
    cuts = sorted({1, 3, 4, 5, len(frame) // 2, len(frame) - 1})
    return [frame[:c] for c in cuts if 0 < c < len(frame)]
