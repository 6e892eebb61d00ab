"""``python -m engine serve`` driven with raw frames: answers, progress, bad input, exit codes, a clean stdout."""

from __future__ import annotations

import io
import os
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine import __version__
from engine.options import OptionError
from engine.service import protocol, server
from engine.service.protocol import Decoder, Message
from tests.engine import malformed
from tests.engine.engines import COLORS, ENV, LONG, NORMALS, POINTS, PYTHON, ROOT, collapse, expected_stages, in_process


class Raw:
    """A serve process fed raw bytes; keeps all it wrote to stdout, to check that it is nothing but frames."""

    def __init__(self, log: Path) -> None:
        with open(log, "ab") as err:
            self.proc = subprocess.Popen([PYTHON, "-m", "engine", "serve"], cwd=ROOT, env=ENV, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err)
        assert self.proc.stdout is not None
        self.fd = self.proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.log = log
        self.out = bytearray()
        self.dec = Decoder()
        self.hello: Message | None = None  # the first frame, read by the fixture
        self.inbox: list[Message] = []

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def request(self, points: np.ndarray, normals: np.ndarray, colors: np.ndarray | None = None,
                **options: object) -> None:
        arrays = {"points": points, "normals": normals, **({"colors": colors} if colors is not None else {})}
        self.send(protocol.frame("reconstruct", arrays, options=options))

    def _pump(self, timeout: float) -> bool:
        """Read what comes within ``timeout``; False at EOF."""
        select.select([self.fd], [], [], timeout)
        try:
            chunk = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            return True
        self.out += chunk
        self.inbox += self.dec.feed(chunk)
        return bool(chunk)

    def next(self, timeout: float = 60.0) -> Message:
        end = time.monotonic() + timeout
        while not self.inbox:
            assert time.monotonic() < end, f"no frame within {timeout} s"
            assert self._pump(0.1), f"the engine exited (code {self.proc.poll()}): {self.log.read_text()[-2000:]}"
        return self.inbox.pop(0)

    def until(self, *kinds: str, timeout: float = 60.0) -> list[Message]:
        """Messages up to and including the first of ``kinds``."""
        got = [self.next(timeout)]
        while got[-1].type not in kinds:
            got.append(self.next(timeout))
        return got

    def finish(self, timeout: float = 30.0) -> int:
        """Wait for the exit; everything on stdout must have been whole, valid frames."""
        code = self.proc.wait(timeout)
        while self._pump(0):
            pass
        self.dec.close()
        assert protocol.messages(bytes(self.out))  # the whole of stdout decodes: hello and whatever followed
        return code


def echo(raw: Raw, faces: int = 10) -> Message:
    """A request the engine answers without solving: proves it is alive and in step."""
    raw.request(POINTS[:5], NORMALS[:5], _benchmark_echo_faces=faces)
    (result,) = raw.until("result", "error")[-1:]
    assert result.type == "result", result.fields
    return result


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Raw]:
    r = Raw(tmp_path_factory.mktemp("serve") / "engine.log")
    r.hello = r.next()  # read here, so that any selection of the tests below (-k) finds the stream in step
    yield r
    if r.proc.poll() is None:
        r.proc.kill()
        r.proc.wait()


def test_hello_comes_first(raw: Raw) -> None:
    hello = raw.hello
    assert hello is not None and hello.type == "hello"
    assert hello["engine_version"] == __version__ and hello["protocol_version"] == protocol.PROTOCOL_VERSION
    assert hello["pid"] == raw.proc.pid and hello["python"].count(".") == 2
    assert hello["torch_version"] and "fvdb" not in hello.fields, "no field for a backend nothing uses"
    assert hello["devices"][0]["id"] == "cpu"


def test_reconstruct_matches_in_process_with_progress_in_stage_order(raw: Raw) -> None:
    raw.request(POINTS, NORMALS, COLORS, device="cpu")
    frames = raw.until("result", "error")
    *progress, result = frames
    assert result.type == "result", result.fields
    assert {m.type for m in progress} <= {"progress", "heartbeat"}  # heartbeats where a stage is long and silent
    progress = [m for m in progress if m.type == "progress"]
    ref = in_process()
    assert collapse([m["stage"] for m in progress]) == expected_stages(len(ref.stats["levels"]))
    for a, b in zip(progress, progress[1:], strict=False):
        if a["stage"] == b["stage"]:
            assert a["fraction"] <= b["fraction"]
    assert np.array_equal(result.arrays["faces"], ref.faces)
    assert result["origin"] == ref.origin.tolist()
    np.testing.assert_allclose(result.arrays["vertices"], ref.local_vertices, atol=1e-6)
    np.testing.assert_allclose(result.arrays["colors"], ref.colors, atol=1e-6)
    np.testing.assert_allclose(result.arrays["normals"], ref.normals, atol=1e-5)
    assert result["stats"]["faces"] == ref.stats["faces"] and result["stats"]["points_in"] == len(POINTS)


@pytest.mark.parametrize("name", sorted(malformed.RECOVERABLE))
def test_bad_frames_get_an_error_and_the_engine_goes_on(raw: Raw, name: str) -> None:
    raw.send(malformed.RECOVERABLE[name])
    reply = raw.next(timeout=10)
    assert reply.type == "error" and reply["code"] == "protocol", reply.fields
    assert reply["message"] and reply["hint"]
    echo(raw)


BAD_REQUESTS = {
    "unknown option": ({"voxelsize": 0.1}, POINTS, NORMALS, "input", "Unknown option 'voxelsize'"),
    "option of the wrong type": ({"trim": "yes"}, POINTS, NORMALS, "input", "Option 'trim' must be true or false"),
    "bad option value": ({"detail_level": 3.0}, POINTS, NORMALS, "input", "'detail_level' must be a number from 0"),
    "unbounded refinement": ({"mise_iter": 10}, POINTS, NORMALS, "input", "'mise_iter' must be an integer from 0 to 3"),
    "negative tolerance": ({"solver_tol": -1}, POINTS, NORMALS, "input", "'solver_tol' must be a number above 0"),
    "no solver iterations": ({"solver_max_iter": 0}, POINTS, NORMALS, "input", "'solver_max_iter' must be an integer"),
    "huge benchmark echo": ({"_benchmark_echo_faces": 10**9}, POINTS, NORMALS, "input", "'_benchmark_echo_faces'"),
    "unknown device": ({"device": "tpu"}, POINTS, NORMALS, "input", "'device' must be 'auto'"),
    "mismatched lengths": ({}, POINTS, NORMALS[:-1], "input", "normals has 1999 rows but points has 2000"),
    "wrong width": ({}, POINTS[:, :2], NORMALS, "input", "points must be an array of shape"),
    "too few points": ({}, POINTS[:3], NORMALS[:3], "input", "3 usable points"),
    "all NaN": ({}, np.full((50, 3), np.nan), NORMALS[:50], "input", "NaN/Inf"),
    "memory limit": ({"memory_limit_gb": 0.01}, POINTS, NORMALS, "memory", "more than the limit"),
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_requests_get_an_input_error(raw: Raw, name: str) -> None:
    options, points, normals, code, text = BAD_REQUESTS[name]
    raw.request(points, normals, **options)
    *progress, reply = raw.until("result", "error", timeout=30)
    assert reply.type == "error" and reply["code"] == code and text in reply["message"], reply.fields
    assert reply["hint"]


@pytest.mark.parametrize("kind", ["hello", "progress", "heartbeat", "result"])
def test_engine_to_client_messages_are_refused(raw: Raw, kind: str) -> None:
    fields = {"hello": {"engine_version": "x", "protocol_version": 1},
              "progress": {"stage": "s", "fraction": 0.0, "text": ""}, "heartbeat": {},
              "result": {"stats": {}, "origin": [0, 0, 0]}}[kind]
    arrays = {"vertices": np.zeros((0, 3), np.float32), "faces": np.zeros((0, 3), np.int32)} if kind == "result" else {}
    raw.send(protocol.frame(kind, arrays, **fields))
    reply = raw.next(timeout=10)
    assert reply.type == "error" and reply["code"] == "protocol" and kind in reply["message"]


def test_cancel_without_a_job_is_ignored(raw: Raw) -> None:
    raw.send(protocol.frame("cancel"))
    result = echo(raw, faces=1000)  # the cancel did not leak into this job
    assert result.arrays["faces"].shape == (1000, 3)


def test_cancel_stops_a_job_in_its_solve_stage(raw: Raw) -> None:
    raw.request(POINTS, NORMALS, **LONG)
    while (m := raw.next()).get("stage") != "solve":
        assert m.type in ("progress", "heartbeat")
    raw.send(protocol.frame("cancel"))
    sent = time.monotonic()
    reply = raw.until("result", "error", timeout=10)[-1]
    assert reply.type == "error" and reply["code"] == "cancelled" and reply["hint"]
    assert time.monotonic() - sent < 1.0
    echo(raw)


def test_bad_json_gets_an_error_then_exit(raw: Raw) -> None:
    """The last test on the shared engine: after a frame of unknown length nothing can be trusted."""
    raw.send(malformed.FATAL["bad JSON"] + protocol.frame("shutdown"))
    reply = raw.next(timeout=10)
    assert reply.type == "error" and reply["code"] == "protocol" and "JSON" in reply["message"]
    assert raw.finish() == server.EXIT_PROTOCOL
    assert "Traceback" not in raw.log.read_text()


def test_eof_ends_the_engine_and_unrecoverable_input_gets_an_error_then_exit(tmp_path: Path) -> None:
    """One engine per case, all started at once (each imports torch)."""
    good = protocol.frame("reconstruct", {"points": POINTS, "normals": NORMALS}, options={})
    cases = {"EOF": (b"", ["hello"], server.EXIT_OK),
             "oversized header": (malformed.FATAL["oversized header"], ["hello", "error"], server.EXIT_PROTOCOL),
             "truncated at EOF": (good[: len(good) // 2], ["hello", "error"], server.EXIT_PROTOCOL)}
    engines = {name: Raw(tmp_path / f"{i}.log") for i, name in enumerate(cases)}
    for name, (data, _, _) in cases.items():
        engines[name].send(data)
        assert engines[name].proc.stdin is not None
        engines[name].proc.stdin.close()
    for name, (_, types, code) in cases.items():
        r = engines[name]
        assert r.finish(timeout=120) == code, name
        assert [m.type for m in protocol.messages(bytes(r.out))] == types, name
        assert "Traceback" not in r.log.read_text(), name


def test_progress_is_rate_limited_but_keeps_stage_changes() -> None:
    buf = io.BytesIO()
    out = server.Outbox(buf)
    for i in range(1000):
        out.progress("solve", i / 1000, f"iteration {i}")
    out.progress("mesh", 0.0, "")
    out.progress("trim", 0.0, "")
    got = protocol.messages(buf.getvalue())
    assert [m["stage"] for m in got[-2:]] == ["mesh", "trim"]
    assert 2 <= len(got) <= 2 + 20  # a few ms of solve frames: at most one per 50 ms


def test_error_codes() -> None:
    from engine.errors import Cancelled, InputError, MemoryLimitError, TooFewPointsError

    assert server.error_reply(Cancelled())[0] == "cancelled"
    assert server.error_reply(MemoryLimitError("m", "h"))[0] == "memory"
    assert server.error_reply(TooFewPointsError("m", "h"))[:2] == ("input", "m")
    assert server.error_reply(InputError("m"))[2]  # always a hint
    assert server.error_reply(MemoryError())[0] == "memory"
    assert server.error_reply(OptionError("bad"))[0] == "input"
    assert server.error_reply(protocol.ProtocolError("bad"))[0] == "protocol"
    code, message, hint = server.error_reply(ZeroDivisionError("boom"))
    assert code == "internal" and "ZeroDivisionError: boom" in message and "log" in hint


def run_one(reconstruct: object, **options: object) -> list[Message]:
    """run_job in this process, with a stand-in pipeline; the frames it wrote."""
    buf = io.BytesIO()
    request = Message("reconstruct", {"options": options}, {"points": POINTS, "normals": NORMALS})
    server.run_job(request, 1, server.Inbox(io.BytesIO()), server.Outbox(buf), reconstruct)  # type: ignore[arg-type]
    return protocol.messages(buf.getvalue())


def test_an_internal_failure_is_an_error_frame_and_a_traceback_in_the_log(capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("lost")

    (reply,) = run_one(broken)
    assert reply.type == "error" and reply["code"] == "internal" and "KeyError" in reply["message"]
    assert "Traceback" in capsys.readouterr().err


def test_a_result_that_cannot_be_encoded_leaves_no_partial_frame() -> None:
    ref = in_process()
    bad = type(ref)(ref.local_vertices, ref.faces, ref.origin, stats={"oops": object()})
    (reply,) = run_one(lambda *a, **k: bad)
    assert reply.type == "error" and reply["code"] == "internal" and "JSON" in reply["message"]


def test_pipeline_warnings_become_log_frames() -> None:
    import warnings

    def noisy(*args: object, **kwargs: object) -> object:
        warnings.warn("careful", stacklevel=1)
        return in_process()

    log, result = run_one(noisy)
    assert (log.type, log["level"], log["text"]) == ("log", "warning", "careful") and result.type == "result"


def test_a_frame_that_cannot_be_read_ends_the_engine_with_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """E.g. MemoryError for a huge request: the main loop gets an error and an end, and never waits forever."""
    def no_memory(stream: object, **kwargs: object) -> None:
        raise MemoryError()

    monkeypatch.setattr(protocol, "read_message", no_memory)
    inbox = server.Inbox(io.BytesIO())
    inbox.start()
    inbox.thread.join(5)
    error, end = inbox.queue.get(timeout=1), inbox.queue.get(timeout=1)
    assert isinstance(error, protocol.ProtocolError) and not error.resync and "MemoryError" in error.message
    assert end is None and inbox.cancelled(1)
