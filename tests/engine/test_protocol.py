"""The wire protocol: every message and dtype round-trips; every bad frame is a ProtocolError, never a hang."""

from __future__ import annotations

import io
import random
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.service import protocol
from engine.service.protocol import Decoder, Message, ProtocolError
from tests.engine import malformed

rng = np.random.default_rng(0)
N = 50

EXAMPLES: list[Message] = [
    Message("hello", {"engine_version": "0.1.0", "protocol_version": protocol.PROTOCOL_VERSION,
                      "torch_version": "2.13.0", "devices": [{"id": "cpu", "name": "CPU", "memory_gb": None}],
                      "python": "3.11.7", "pid": 123}),
    Message("reconstruct", {"options": {"detail_level": "auto", "voxel_size": None, "trim": True}},
            {"points": rng.normal(size=(N, 3)), "normals": rng.normal(size=(N, 3)).astype(np.float32),
             "colors": rng.integers(0, 256, (N, 3), dtype=np.uint8)}),
    Message("reconstruct", {"options": {}}, {"points": np.zeros((0, 3), np.float32),
                                             "normals": np.zeros((0, 3), np.float32)}),
    Message("reconstruct_file", {"options": {"voxel_size": 0.05}, "path": "/data/scan é.laz",
                                 "splat_min_opacity": 0.2}, {"sensors": np.array([[1.0, 2.0, 3.0]])}),
    Message("progress", {"stage": "solve", "fraction": 0.25, "text": "level 1: iteration 7 — résidu 1e-3"}),
    Message("log", {"level": "warning", "text": "15 points dropped"}),
    Message("heartbeat"),
    Message("result", {"stats": {"faces": 2, "seconds": {"solve": 0.5}, "levels": [3, 2]},
                       "origin": [1e6, -2.5e5, 0.125]},
            {"vertices": rng.normal(size=(4, 3)).astype(np.float32),
             "faces": np.array([[0, 1, 2], [0, 2, 3]], np.int32),
             "colors": rng.uniform(size=(4, 4)).astype(np.float32),
             "normals": rng.normal(size=(4, 3)).astype(np.float32)}),
    Message("error", {"code": "input", "message": "The point cloud is empty.", "hint": "Select an object.",
                      "reason": "too_few_points"}),
    Message("read", {"path": "/scans/site.laz", "options": {"every": 4}}),
    Message("cloud", {"offset": [652345.0, 5412988.0, 312.0], "total": 40, "dropped": {"transparent_splats": 2},
                      "format": "LAZ"},
            {"points": rng.normal(size=(N, 3)).astype(np.float32),
             "sensors": rng.normal(size=(N, 3)).astype(np.float32)}),
    Message("cancel"),
    Message("shutdown"),
]


def encoded(msgs: list[Message]) -> bytes:
    return b"".join(b"".join(protocol.encode(m)) for m in msgs)


def assert_same(got: Message, want: Message) -> None:
    assert got.type == want.type
    assert got.fields == want.fields
    assert got.arrays.keys() == want.arrays.keys()
    for name, a in want.arrays.items():
        b = got.arrays[name]
        assert b.dtype == a.dtype.newbyteorder("<") and b.shape == a.shape
        assert np.array_equal(a, b)


def test_protocol_version_is_an_int() -> None:
    assert isinstance(protocol.PROTOCOL_VERSION, int) and protocol.PROTOCOL_VERSION >= 1


def test_every_message_type_has_an_example() -> None:
    assert {m.type for m in EXAMPLES} == protocol.MESSAGE_TYPES


def test_round_trip_of_every_message_whole() -> None:
    got = protocol.messages(encoded(EXAMPLES))
    assert len(got) == len(EXAMPLES)
    for g, w in zip(got, EXAMPLES, strict=True):
        assert_same(g, w)


def test_round_trip_byte_by_byte() -> None:
    data = encoded(EXAMPLES)
    ends = frame_ends(data)
    dec = Decoder()
    got: list[Message] = []
    for i in range(len(data)):
        got += dec.feed(data[i:i + 1])
        assert dec.idle == (i + 1 in ends)
    for g, w in zip(got, EXAMPLES, strict=True):
        assert_same(g, w)


def frame_ends(data: bytes) -> set[int]:
    ends, pos = set(), 0
    for m in EXAMPLES:
        pos += len(b"".join(protocol.encode(m)))
        ends.add(pos)
    assert pos == len(data)
    return ends


@pytest.mark.parametrize("seed", range(5))
def test_round_trip_in_random_chunks(seed: int) -> None:
    data = encoded(EXAMPLES * 2)
    r = random.Random(seed)
    chunks, pos = [], 0
    while pos < len(data):
        n = r.choice([0, 1, 2, 3, 7, 64, 1000, 5000])
        chunks.append(data[pos:pos + n])
        pos += n
    got = protocol.messages(chunks)
    for g, w in zip(got, EXAMPLES * 2, strict=True):
        assert_same(g, w)


@pytest.mark.parametrize("seed", range(3))
def test_reading_straight_into_the_decoder(seed: int) -> None:
    """The non-blocking client's path: read into writable(), then advance()."""
    data = memoryview(encoded(EXAMPLES * 2))
    r = random.Random(seed)
    dec, got, pos = Decoder(), [], 0
    while pos < len(data):
        space = dec.writable()
        assert space.nbytes > 0
        n = min(space.nbytes, r.choice([1, 3, 100, 4096]), len(data) - pos)
        space[:n] = data[pos:pos + n]
        pos += n
        got += dec.advance(n)
    assert dec.idle
    for g, w in zip(got, EXAMPLES * 2, strict=True):
        assert_same(g, w)


def test_blocking_reader() -> None:
    stream = io.BufferedReader(io.BytesIO(encoded(EXAMPLES)))  # type: ignore[arg-type]
    for want in EXAMPLES:
        got = protocol.read_message(stream)
        assert got is not None
        assert_same(got, want)
    assert protocol.read_message(stream) is None  # EOF between frames


def test_write_message_flushes_whole_frames() -> None:
    buf = io.BytesIO()
    for m in EXAMPLES:
        protocol.write_message(buf, m)
    assert buf.getvalue() == encoded(EXAMPLES)


@pytest.mark.parametrize("dtype", sorted(protocol.DTYPES))
@pytest.mark.parametrize("shape", [(0,), (7,), (5, 3), (0, 3), (2, 3, 4)])
def test_every_dtype_and_shape(dtype: str, shape: tuple[int, ...]) -> None:
    a = (np.arange(int(np.prod(shape))) % 200).astype(dtype).reshape(shape)
    (got,) = protocol.messages(protocol.frame("result", {"vertices": a, "faces": a[::-1]}, stats={}, origin=[0, 0, 0]))
    for name, want in (("vertices", a), ("faces", a[::-1])):
        b = got.arrays[name]
        assert b.dtype.str == dtype and b.shape == shape and np.array_equal(b, want)
        assert b.flags.c_contiguous and b.flags.aligned


def test_odd_offsets_stay_aligned() -> None:
    msg = Message("reconstruct", {"options": {}}, {"colors": np.arange(3, dtype=np.uint8).reshape(1, 3),
                                                   "points": np.ones((1, 3)), "normals": np.ones((1, 3), np.float32)})
    (got,) = protocol.messages(protocol.frame(msg.type, msg.arrays, **msg.fields))
    assert all(a.flags.aligned for a in got.arrays.values())
    assert np.array_equal(got.arrays["points"], np.ones((1, 3)))


def test_big_endian_and_strided_arrays_are_sent_little_endian() -> None:
    a = np.arange(12, dtype=">f8").reshape(4, 3)
    b = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
    (got,) = protocol.messages(protocol.frame("reconstruct", {"points": a, "normals": b}, options={}))
    assert got.arrays["points"].dtype.str == "<f8" and np.array_equal(got.arrays["points"], a)
    assert np.array_equal(got.arrays["normals"], b)


@pytest.mark.parametrize("bad", [np.zeros(3, bool), np.zeros(3, np.float16), np.zeros(3, complex),
                                 np.array([object()]), np.zeros(3, "U3")])
def test_dtypes_outside_the_whitelist_are_refused(bad: np.ndarray) -> None:
    with pytest.raises(ProtocolError, match="cannot cross the pipe"):
        protocol.frame("result", {"vertices": bad, "faces": bad}, stats={}, origin=[0, 0, 0])


def test_nan_and_numpy_scalars_become_json() -> None:
    stats = {"residual": float("nan"), "big": float("inf"), "n": np.int64(3), "x": np.float32(0.5),
             "ok": np.bool_(True), "levels": (1, 2), "arr": np.arange(2)}
    (got,) = protocol.messages(protocol.frame("result", {"vertices": np.zeros((0, 3), np.float32),
                                                          "faces": np.zeros((0, 3), np.int32)},
                                              stats=stats, origin=[0.0, 0.0, 0.0]))
    assert got["stats"] == {"residual": None, "big": None, "n": 3, "x": 0.5, "ok": True, "levels": [1, 2],
                            "arr": [0, 1]}


def test_unknown_type_and_oversized_header_are_refused_when_encoding() -> None:
    with pytest.raises(ProtocolError, match="Unknown message type"):
        protocol.frame("bogus")
    with pytest.raises(ProtocolError, match="over the limit"):
        protocol.frame("log", level="info", text="x" * protocol.MAX_HEADER_BYTES)
    with pytest.raises(ProtocolError, match="cannot be encoded"):
        protocol.frame("log", level="info", text=object())


@pytest.mark.parametrize("name", sorted(malformed.RECOVERABLE))
def test_recoverable_bad_frames_are_skipped(name: str) -> None:
    good = protocol.frame("cancel")
    dec = Decoder()
    assert [m.type for m in dec.feed(good + malformed.RECOVERABLE[name] + good)] == ["cancel"]
    with pytest.raises(ProtocolError) as info:
        dec.feed(b"")
    assert info.value.resync and info.value.hint
    assert [m.type for m in dec.feed(b"")] == ["cancel"]  # the stream goes on
    stream = io.BufferedReader(io.BytesIO(malformed.RECOVERABLE[name] + good))  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        protocol.read_message(stream)
    assert protocol.read_message(stream).type == "cancel"  # type: ignore[union-attr]


@pytest.mark.parametrize("name", sorted(malformed.FATAL))
def test_fatal_bad_frames_end_the_stream(name: str) -> None:
    data = malformed.FATAL[name] + protocol.frame("cancel")
    dec = Decoder()
    with pytest.raises(ProtocolError) as info:
        dec.feed(data)
    assert not info.value.resync
    with pytest.raises(ProtocolError, match="unusable"):
        dec.feed(protocol.frame("cancel"))
    with pytest.raises(ProtocolError):
        protocol.read_message(io.BufferedReader(io.BytesIO(data)))  # type: ignore[arg-type]


def test_payload_limit_is_overridable() -> None:
    data = protocol.frame("reconstruct", {"points": np.zeros((100, 3)), "normals": np.zeros((100, 3))}, options={})
    with pytest.raises(ProtocolError, match="over the limit"):
        Decoder(max_payload=1000).feed(data)
    assert len(Decoder(max_payload=4800).feed(data)) == 1


def test_a_lying_size_allocates_nothing_up_front() -> None:
    header = malformed.raw({"type": "reconstruct", "options": {}, "arrays": [
        malformed.spec("points", "<f4", [2**28, 3]), malformed.spec("normals", "<f4", [2**28, 3])]})
    dec = Decoder()
    assert dec.feed(header + b"\0" * 1000) == []
    with pytest.raises(ProtocolError, match="ended inside a frame"):
        dec.close()
    with pytest.raises(ProtocolError, match="ended inside a frame's payload"):
        protocol.read_message(io.BufferedReader(io.BytesIO(header + b"\0" * 1000)))  # type: ignore[arg-type]


@pytest.mark.parametrize("msg", EXAMPLES[:2] + [m for m in EXAMPLES if m.type == "result"], ids=lambda m: m.type)
def test_truncated_frames(msg: Message) -> None:
    data = b"".join(protocol.encode(msg))
    for cut in malformed.truncated(data):
        dec = Decoder()
        assert dec.feed(cut) == []
        with pytest.raises(ProtocolError, match="ended inside a frame"):
            dec.close()
        with pytest.raises(ProtocolError, match="ended inside a frame"):
            protocol.read_message(io.BufferedReader(io.BytesIO(cut)))  # type: ignore[arg-type]


def test_messages_before_a_bad_frame_come_first() -> None:
    dec = Decoder()
    data = protocol.frame("cancel") + malformed.FATAL["bad JSON"]
    assert [m.type for m in dec.feed(data)] == ["cancel"]
    with pytest.raises(ProtocolError, match="not valid UTF-8 JSON"):
        dec.feed(b"")


# -- fuzzing: anything fed to the decoder decodes or raises ProtocolError, and never hangs ---------------------------

VALID = encoded(EXAMPLES)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode_all(data: bytes, chunk: int) -> None:
    """Feed ``data`` in chunks, then close; only ProtocolError may escape."""
    dec = Decoder(max_payload=1 << 20)
    try:
        for i in range(0, len(data), chunk):
            dec.feed(data[i:i + chunk])
        dec.close()
    except ProtocolError:
        pass
    stream = io.BufferedReader(io.BytesIO(data))  # type: ignore[arg-type]
    try:
        for _ in range(len(data) + 1):
            if protocol.read_message(stream, max_payload=1 << 20) is None:
                break
    except ProtocolError:
        pass


@FUZZ
@given(st.binary(max_size=400), st.integers(1, 64))
def test_fuzz_random_bytes(data: bytes, chunk: int) -> None:
    decode_all(data, chunk)


@FUZZ
@given(st.binary(min_size=0, max_size=300), st.integers(0, 2**32 - 1), st.integers(1, 4096))
def test_fuzz_random_headers(head: bytes, length: int, chunk: int) -> None:
    decode_all(struct.pack("<I", min(length, len(head))) + head, chunk)
    decode_all(struct.pack("<I", length) + head, chunk)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, len(VALID)), st.integers(1, 4096))
def test_fuzz_mutated_frames(flips: list[tuple[int, int]], cut: int, chunk: int) -> None:
    data = bytearray(VALID)
    for pos, value in flips:
        data[pos] = value
    decode_all(bytes(data[:cut]), chunk)
    decode_all(bytes(data), chunk)


@FUZZ
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
                    max_leaves=10),
       st.sampled_from(sorted(protocol.MESSAGE_TYPES)))
def test_fuzz_json_headers(value: object, kind: str) -> None:
    for header in ({"type": kind, "arrays": [], "x": value}, {"type": kind, "arrays": value},
                   {"type": kind, "arrays": [{"name": "points", "dtype": "<f4", "shape": value, "nbytes": 12}]},
                   value):
        try:
            data = malformed.raw(header, b"\0" * 12)
        except (TypeError, ValueError):
            continue  # not JSON-encodable by the test itself
        decode_all(data, 5)


def test_payloads_larger_than_the_first_allocation_grow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "_FIRST_ALLOCATION", 16)
    msg = EXAMPLES[1]
    data = encoded([msg, msg])
    for chunk in (7, 1000, len(data)):
        got = protocol.messages([data[i:i + chunk] for i in range(0, len(data), chunk)])
        assert len(got) == 2
        assert_same(got[1], msg)
    got_blocking = protocol.read_message(io.BufferedReader(io.BytesIO(data)))  # type: ignore[arg-type]
    assert got_blocking is not None
    assert_same(got_blocking, msg)
