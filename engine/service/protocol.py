"""The wire protocol between the Blender extension and the engine process: the one definition both sides use.

Standard library and numpy only (numpy 1.26 and 2.x, Python 3.11+): the
extension imports this module inside Blender, where torch must never load.

A frame is::

    u32 little-endian N | N bytes of UTF-8 JSON header | payload

The header is an object with ``type`` (one of :data:`MESSAGE_TYPES`),
``arrays`` (a list of ``{name, dtype, shape, nbytes}``) and the message's other
fields.  The payload is the arrays' raw little-endian bytes, concatenated in
the order the header lists them.  No pickle: only JSON and whitelisted dtypes
(:data:`DTYPES`) cross the pipe, so neither side can be made to run code.

Messages (fields beyond ``type``; arrays in brackets):

- ``hello`` engine -> client, first frame: engine_version, protocol_version,
  torch_version, devices, python, executable, pid.
- ``reconstruct`` client -> engine: options [points (N, 3), normals (N, 3),
  colors (N, 3|4) optional].  :data:`engine.options.REQUEST_SPECS` lists the
  accepted options.
- ``reconstruct_file`` client -> engine: options, path (a point-cloud file
  the engine reads itself, any format of :mod:`engine.formats`, so the points
  never cross the pipe), splat_min_opacity optional [sensors (1|N, 3)
  optional: the caller's viewpoint, which wins over the sensors the file
  records].  Answered like ``reconstruct``; the result's stats add the
  reading's ``read_dropped``, ``sensor_source`` and ``axes_orientation`` (new in 3).
- ``progress`` engine -> client: stage, fraction (of the stage, 0..1), text.
- ``log`` engine -> client: level, text.
- ``heartbeat`` engine -> client, during a job: no fields; sent whenever no
  other frame went out for a while (``engine.service.server.HEARTBEAT_INTERVAL``), so
  the client tells a long, silent stage from a stopped engine (new in 2).
- ``result`` engine -> client, ends a job: stats, origin [vertices (V, 3) f4,
  faces (F, 3) i4, colors (V, 4) f4 optional, normals (V, 3) f4 optional;
  with the option ``mesh_edges``, also edges (E, 2) i4 and corner_edges (3F,) i4,
  Blender's edge layout, see ``engine.mesh.mesh_edges``].
  Vertices are relative to ``origin`` (three float64 numbers), which keeps
  georeferenced coordinates exact: caller coordinates = origin + vertices.
- ``error`` engine -> client, ends a job (or the engine, if it cannot go on):
  code, message, hint.
- ``read`` client -> engine, a job like ``reconstruct`` (an importer's): path, options (``every``,
  ``voxel_size``, ``splat_min_opacity``: :func:`engine.importing.check_import_options`).  The engine reads
  the file and answers with progress frames and one ``cloud`` or ``error``.
- ``cloud`` engine -> client, ends a ``read`` job: offset, total, dropped, format [points (N, 3) f4,
  normals (N, 3) f4, colors (N, 4) f4, sensors (N, 3) f4, the last three optional].  Points and sensors
  are relative to ``offset`` (three float64 numbers): file coordinates = offset + points; ``total`` is the
  file's row count before subsampling, ``dropped`` the reader's rows left out, by reason.
- ``cancel`` client -> engine: stop the running job; it ends with an ``error``
  of code ``cancelled`` (or its ``result``, when that was already on its way).
- ``shutdown`` client -> engine: exit (the engine also exits on stdin EOF).
"""

from __future__ import annotations

import json
import math
import struct
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import numpy as np

from ..errors import EngineError

PROTOCOL_VERSION = 3  # 2: heartbeat; 3: reconstruct_file and read

MAX_HEADER_BYTES = 1 << 20
# Generous (a 100M-point request is about 4 GiB) but finite; both ends take a ``max_payload`` to change it.
MAX_PAYLOAD_BYTES = 16 << 30
MAX_DIMENSIONS = 4

DTYPES = frozenset({"<f4", "<f8", "<i4", "<i8", "|u1", "<u2", "<u4"})

# type -> (required fields and their JSON types, required arrays, optional arrays)
_SCHEMA: dict[str, tuple[dict[str, type | tuple[type, ...]], frozenset[str], frozenset[str]]] = {
    "hello": ({"engine_version": str, "protocol_version": int}, frozenset(), frozenset()),
    "reconstruct": ({"options": dict}, frozenset({"points"}), frozenset({"normals", "colors", "sensors"})),
    "reconstruct_file": ({"options": dict, "path": str}, frozenset(), frozenset({"sensors"})),
    "read": ({"path": str, "options": dict}, frozenset(), frozenset()),
    "cloud": ({"offset": list, "total": int, "dropped": dict, "format": str}, frozenset({"points"}),
              frozenset({"normals", "colors", "sensors"})),
    "progress": ({"stage": str, "fraction": (int, float), "text": str}, frozenset(), frozenset()),
    "log": ({"level": str, "text": str}, frozenset(), frozenset()),
    "heartbeat": ({}, frozenset(), frozenset()),
    "result": ({"stats": dict, "origin": list}, frozenset({"vertices", "faces"}),
               frozenset({"colors", "normals", "edges", "corner_edges"})),
    "error": ({"code": str, "message": str, "hint": str}, frozenset(), frozenset()),
    "cancel": ({}, frozenset(), frozenset()),
    "shutdown": ({}, frozenset(), frozenset()),
}
MESSAGE_TYPES = frozenset(_SCHEMA)
JOB_REQUESTS = frozenset({"reconstruct", "reconstruct_file", "read"})  # requests that start a job (``cancel`` stops it)

_PREFIX = struct.Struct("<I")
_FIRST_ALLOCATION = 1 << 28  # bytes reserved for a payload before its bytes arrive; more as they do


class ProtocolError(EngineError):
    """A frame that breaks the protocol.

    ``resync`` is True when the bad frame was consumed whole, so the stream can
    go on; False when its end cannot be known and the stream is unusable.
    """

    code = "protocol"

    def __init__(self, message: str, hint: str = "", *, resync: bool = False) -> None:
        super().__init__(message, hint or ("The add-on and the engine must come from the same version (reinstall "
                                           "the add-on); if they do, this is a bug: please report it with the log."))
        self.resync = resync


@dataclass
class Message:
    """One decoded frame: its type, its JSON fields (without type and arrays), and its arrays by name."""

    type: str
    fields: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


# -- encoding ---------------------------------------------------------------------------------------------------------

def _jsonable(obj: Any) -> Any:
    """JSON-ready copy: numpy scalars and arrays to Python, tuples to lists, NaN and infinities to null."""
    if isinstance(obj, float | np.floating):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def wire_array(a: Any) -> np.ndarray:
    """``a`` as a C-contiguous little-endian array of a whitelisted dtype (same kind and size), else ProtocolError."""
    arr = np.asarray(a)
    dt = arr.dtype.newbyteorder("<") if arr.dtype.str[0] == ">" else arr.dtype
    if dt.str not in DTYPES:
        raise ProtocolError(f"dtype {arr.dtype} cannot cross the pipe; use one of {', '.join(sorted(DTYPES))}.")
    return np.ascontiguousarray(arr, dtype=dt)


def encode(msg: Message, *, max_header: int = MAX_HEADER_BYTES) -> list[bytes | memoryview]:
    """The frame of ``msg`` as pieces to write in order (array buffers are not copied)."""
    if msg.type not in MESSAGE_TYPES:
        raise ProtocolError(f"Unknown message type {msg.type!r}.")
    arrays = {name: wire_array(a) for name, a in msg.arrays.items()}
    header = {**_jsonable(msg.fields), "type": msg.type,
              "arrays": [{"name": n, "dtype": a.dtype.str, "shape": list(a.shape), "nbytes": a.nbytes}
                         for n, a in arrays.items()]}
    try:
        head = json.dumps(header, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"The {msg.type!r} message cannot be encoded as JSON: {exc}.") from None
    if len(head) > max_header:
        raise ProtocolError(f"The {msg.type!r} header is {len(head)} bytes, over the limit of {max_header}.")
    return [_PREFIX.pack(len(head)) + head, *(a.reshape(-1).view(np.uint8).data for a in arrays.values()
                                              if a.nbytes)]


def frame(kind: str, arrays: Mapping[str, Any] | None = None, **fields: Any) -> bytes:
    """One whole frame as bytes (small messages, tests)."""
    return b"".join(encode(Message(kind, fields, dict(arrays or {}))))


def write_message(stream: IO[bytes], msg: Message) -> None:
    """Write one frame to a blocking binary stream and flush it."""
    for piece in encode(msg):
        stream.write(piece)
    stream.flush()


# -- decoding ---------------------------------------------------------------------------------------------------------

@dataclass
class _Head:
    """A parsed header whose payload is still to come."""

    header: dict[str, Any]
    sizes: list[int]
    total: int


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _parse_header(raw: np.ndarray, max_payload: int) -> _Head:
    """Enough of the header to know where the frame ends; an error here leaves the stream unusable unless
    it says ``resync`` (the frame is known to end with its header)."""
    try:
        header = json.loads(raw.tobytes().decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"Frame header is not valid UTF-8 JSON: {str(exc)[:200]}.") from None
    if not isinstance(header, dict):  # it lists no arrays, so the frame ends here and the next one can be read
        raise ProtocolError(f"Frame header must be a JSON object, not {type(header).__name__}.", resync=True)
    specs = header.get("arrays")
    if not isinstance(specs, list) or not all(isinstance(s, dict) for s in specs):
        raise ProtocolError("Frame header needs 'arrays', a list of {name, dtype, shape, nbytes} objects.")
    sizes = [s.get("nbytes") for s in specs]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in sizes):
        raise ProtocolError("Every array's 'nbytes' must be a non-negative integer.")
    total = sum(sizes)
    if total > max_payload:
        raise ProtocolError(f"Frame payload of {total} bytes is over the limit of {max_payload}.")
    return _Head(header, sizes, total)


def _shape(spec: dict[str, Any]) -> tuple[int, ...]:
    shape = spec.get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_DIMENSIONS or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"Array {spec.get('name')!r}: shape must be a list of at most {MAX_DIMENSIONS} "
                            f"non-negative integers; got {str(shape)[:100]}.", resync=True)
    return tuple(shape)


def _build(head: _Head, payload: np.ndarray) -> Message:
    """The message of a complete frame; a ProtocolError here leaves the stream usable (``resync``)."""
    h = head.header
    kind = h.get("type")
    if kind not in MESSAGE_TYPES:
        raise ProtocolError(f"Unknown message type {str(kind)[:100]!r}.", resync=True)
    wanted, required, optional = _SCHEMA[kind]
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for spec, size in zip(h["arrays"], head.sizes, strict=True):
        name, dtype = spec.get("name"), spec.get("dtype")
        if not isinstance(name, str) or name in arrays or name not in required | optional:
            raise ProtocolError(f"{kind!r} cannot carry an array named {str(name)[:100]!r} (or carries it twice).",
                                resync=True)
        if dtype not in DTYPES:
            raise ProtocolError(f"Array {name!r}: dtype {str(dtype)[:20]!r} is not one of {sorted(DTYPES)}.",
                                resync=True)
        shape = _shape(spec)
        dt = np.dtype(dtype)
        if math.prod(shape) * dt.itemsize != size:
            raise ProtocolError(f"Array {name!r}: shape {list(shape)} of {dtype} is "
                                f"{math.prod(shape) * dt.itemsize} bytes, but nbytes says {size}.", resync=True)
        if size == 0:
            arr = np.zeros(shape, dt)
        else:
            arr = np.frombuffer(payload, dt, math.prod(shape), offset).reshape(shape)
            if offset % dt.itemsize:
                arr = arr.copy()  # keep every array aligned
        arrays[name] = arr
        offset += size
    if missing := sorted(required - arrays.keys()):
        raise ProtocolError(f"{kind!r} lacks the array(s) {', '.join(missing)}.", resync=True)
    fields = {k: v for k, v in h.items() if k not in ("type", "arrays")}
    for key, kinds in wanted.items():
        value = fields.get(key)
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise ProtocolError(f"{kind!r} needs the field {key!r}, of JSON type "
                                f"{getattr(kinds, '__name__', 'number')}.", resync=True)
    return Message(kind, fields, arrays)


def _header_length(prefix: bytes, max_header: int) -> int:
    (n,) = _PREFIX.unpack(prefix)
    if n > max_header:
        raise ProtocolError(f"Frame header of {n} bytes is over the limit of {max_header} (not a frame?).")
    return n


class Readable(Protocol):
    """A blocking binary input stream (``sys.stdin.buffer``, a pipe opened with ``open(fd, "rb")``)."""

    def read(self, n: int = -1, /) -> bytes: ...

    def readinto(self, buffer: memoryview, /) -> int | None: ...


class _Filling:
    """``size`` bytes to come, allocated as they arrive (uninitialised, at most doubling): a lying size in a
    header costs address space, not memory, and never more than the bytes that actually came."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data = np.empty(min(size, _FIRST_ALLOCATION), np.uint8)
        self.filled = 0

    @property
    def full(self) -> bool:
        return self.filled == self.size

    def space(self) -> memoryview:
        """The part still to fill (empty when full)."""
        if self.filled == len(self.data) < self.size:
            grown = np.empty(min(self.size, 2 * len(self.data)), np.uint8)
            grown[:self.filled] = self.data[:self.filled]
            self.data = grown
        return self.data[self.filled:].data


def _read_exact(stream: Readable, n: int, what: str) -> np.ndarray:
    buf = _Filling(n)
    while not buf.full:
        got = stream.readinto(buf.space())
        if not got:
            raise ProtocolError(f"The stream ended inside a frame's {what} ({buf.filled} of {n} bytes).")
        buf.filled += got
    return buf.data


def read_message(stream: Readable, *, max_header: int = MAX_HEADER_BYTES,
                 max_payload: int = MAX_PAYLOAD_BYTES) -> Message | None:
    """The next message of a blocking binary stream; None at EOF between frames; ProtocolError on a bad frame."""
    first = stream.read(1)
    if not first:
        return None
    prefix = first + _read_exact(stream, _PREFIX.size - 1, "length").tobytes()
    head = _parse_header(_read_exact(stream, _header_length(prefix, max_header), "header"), max_payload)
    return _build(head, _read_exact(stream, head.total, "payload"))


class Decoder:
    """Incremental decoder for non-blocking reads.

    Either :meth:`feed` it bytes, or read straight into :meth:`writable` (with
    ``os.readv``, ``recv_into``) and call :meth:`advance` with the count: the
    payload then lands in its final buffer with no copy.  Both return the
    messages completed so far.  A bad frame raises :class:`ProtocolError` in
    order: the messages before it are returned first, and the error is raised
    by the next call.  After an error with ``resync`` decoding goes on with the
    next frame; after any other the stream is unusable and every later call
    raises.
    """

    def __init__(self, *, max_header: int = MAX_HEADER_BYTES, max_payload: int = MAX_PAYLOAD_BYTES) -> None:
        self.max_header, self.max_payload = max_header, max_payload
        self._part = "prefix"  # the part of the frame being read: prefix, header or payload
        self._buf = _Filling(_PREFIX.size)
        self._head: _Head | None = None
        self._queue: deque[Message | ProtocolError] = deque()
        self._broken: ProtocolError | None = None

    @property
    def idle(self) -> bool:
        """True between frames, with nothing left to deliver."""
        return self._part == "prefix" and self._buf.filled == 0 and not self._queue

    def writable(self) -> memoryview:
        """Where the next bytes of the stream go (never empty); then call :meth:`advance`."""
        return self._buf.space() if self._broken is None else memoryview(bytearray(1 << 16))

    def advance(self, n: int) -> list[Message]:
        """``n`` bytes were written to :meth:`writable`: the messages they complete."""
        if self._broken is None:
            self._consume(n)
        return self._deliver()

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """The messages completed by ``data`` (and any held back behind an error)."""
        view = memoryview(data).cast("B")
        while view.nbytes and self._broken is None:
            space = self._buf.space()
            n = min(space.nbytes, view.nbytes)
            space[:n] = view[:n]
            view = view[n:]
            self._consume(n)
        return self._deliver()

    def close(self) -> list[Message]:
        """At the end of the stream: the last messages; ProtocolError if it stopped inside a frame."""
        out = self._deliver()
        if self._queue:
            raise self._queue.popleft()  # type: ignore[misc]
        if not self.idle:
            raise ProtocolError("The stream ended inside a frame.")
        return out

    def _consume(self, n: int) -> None:
        self._buf.filled += n
        try:
            while self._buf.full:
                self._next_part()
        except ProtocolError as exc:
            self._broken = exc
            self._queue.append(exc)

    def _next_part(self) -> None:
        """The current part is complete: prefix -> header -> payload -> message -> next prefix."""
        if self._part == "prefix":
            self._part, self._buf = "header", _Filling(_header_length(self._buf.data.tobytes(), self.max_header))
        elif self._part == "header":
            try:
                self._head = _parse_header(self._buf.data, self.max_payload)
            except ProtocolError as exc:
                if not exc.resync:
                    raise
                self._part, self._buf = "prefix", _Filling(_PREFIX.size)
                self._queue.append(exc)  # a frame without payload, consumed whole: go on with the next one
                return
            self._part, self._buf = "payload", _Filling(self._head.total)
        else:
            assert self._head is not None
            head, payload = self._head, self._buf.data
            self._part, self._buf, self._head = "prefix", _Filling(_PREFIX.size), None
            try:
                self._queue.append(_build(head, payload))
            except ProtocolError as exc:
                self._queue.append(exc)  # the frame was consumed whole: go on with the next one

    def _deliver(self) -> list[Message]:
        if self._broken is not None and not self._queue:
            raise ProtocolError(f"The stream is unusable after an earlier bad frame: {self._broken.message}")
        first = self._queue[0] if self._queue else None
        if isinstance(first, ProtocolError):
            self._queue.popleft()
            raise first
        out: list[Message] = []
        while self._queue and isinstance(self._queue[0], Message):
            out.append(self._queue.popleft())  # type: ignore[arg-type]
        return out


def messages(data: bytes | bytearray | Iterable[bytes]) -> list[Message]:
    """Every message in a complete byte string (or chunks of one); ProtocolError on a bad or unfinished frame."""
    dec = Decoder()
    out: list[Message] = []
    for chunk in [data] if isinstance(data, bytes | bytearray) else data:
        out += dec.feed(chunk)
    return out + dec.close()
