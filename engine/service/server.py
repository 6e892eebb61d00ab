"""``python -m engine serve``: a persistent engine speaking :mod:`engine.service.protocol` on stdin/stdout.

It sends ``hello``, then answers each ``reconstruct`` request with
``progress`` frames and exactly one ``result`` or ``error``; ``shutdown`` or
stdin EOF ends it with exit code 0.  A frame it cannot resynchronise after
(oversized header, bad JSON, a stream cut inside a frame) gets an ``error``
and exit code 2.

A reader thread takes frames off stdin while a job runs, so ``cancel``,
``shutdown`` and EOF reach the pipeline's ``cancel`` callback at its next check
(between steps and every solver iteration).  Frames go to a duplicate of the
original stdout; ``sys.stdout`` and file descriptor 1 point at stderr, so no
stray print, warning or C++ message can corrupt the stream.  While a job runs,
a heartbeat thread sends a ``heartbeat`` frame whenever nothing else went out
for ``HEARTBEAT_INTERVAL`` s, so that the client can tell a long, silent stage
from a stopped engine.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from functools import lru_cache
from typing import IO, Any, NoReturn

import numpy as np

from .. import __version__
from ..errors import Cancelled, EngineError, InputError, MemoryLimitError
from ..mesh import mesh_edges
from ..options import check
from . import protocol
from .protocol import Message, ProtocolError

EXIT_OK, EXIT_UNAVAILABLE, EXIT_PROTOCOL, EXIT_INTERNAL = 0, 1, 2, 3
PROGRESS_INTERVAL = 0.05  # seconds between progress frames within one stage (stage changes always go out)
HEARTBEAT_INTERVAL = 0.5  # seconds without a frame during a job after which the engine sends a heartbeat
HEARTBEAT = protocol.frame("heartbeat")

log = logging.getLogger("engine.server")


class Inbox:
    """Frames from stdin, read by a daemon thread; cancel, shutdown and EOF also flag the running job at once."""

    def __init__(self, stream: protocol.Readable) -> None:
        self.stream = stream
        self.queue: queue.Queue[tuple[int, Message] | ProtocolError | None] = queue.Queue()
        self.requests = 0  # job frames (protocol.JOB_REQUESTS) read so far; the n-th is job n
        self.cancel_through = 0  # jobs numbered up to this one are cancelled (plain ints: atomic under the GIL)
        self.thread = threading.Thread(target=self._run, name="engine-stdin", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def cancelled(self, job: int) -> bool:
        return self.cancel_through >= job

    def _run(self) -> None:
        while True:
            try:
                msg = protocol.read_message(self.stream)
            except ProtocolError as exc:
                self.queue.put(exc)
                if exc.resync:
                    continue
                msg = None
            except (OSError, ValueError):  # stdin closed under us
                msg = None
            except Exception as exc:  # MemoryError for a huge request, or a bug: never leave the main thread waiting
                log.exception("reading a frame failed")
                self.queue.put(ProtocolError(f"The engine could not read a frame: {type(exc).__name__}: {exc}",
                                             "The request may be too large for this machine's memory."))
                msg = None
            if msg is None or msg.type == "shutdown":
                self.cancel_through = 1 << 62  # the client is gone or wants out: stop the running job too
                self.queue.put(None)
                return
            if msg.type == "cancel":
                self.cancel_through = self.requests
                continue
            if msg.type in protocol.JOB_REQUESTS:
                self.requests += 1
            self.queue.put((self.requests, msg))


class Outbox:
    """Frames to the original stdout, and the progress callback that rate-limits them.

    The main thread writes a job's frames; the heartbeat thread writes ``heartbeat`` frames while a job runs
    (``working``).  One lock keeps each frame whole, and the frame that ends a job clears ``working`` under
    it, so no heartbeat follows a job's ``result`` or ``error``.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.stage = ""
        self.last = 0.0
        self.lock = threading.Lock()
        self.working = False
        self.written = time.monotonic()  # when the last frame went out

    def send(self, kind: str, arrays: dict[str, np.ndarray] | None = None, **fields: Any) -> None:
        self.write(protocol.encode(Message(kind, fields, arrays or {})))

    def write(self, pieces: list[bytes | memoryview], *, ends_job: bool = False) -> None:
        """Write an encoded frame (encode first, so a frame that cannot be encoded leaves no trace)."""
        with self.lock:
            if ends_job:
                self.working = False
            for piece in pieces:
                self.stream.write(piece)
            self.stream.flush()
            self.written = time.monotonic()

    def error(self, code: str, message: str, hint: str, *, ends_job: bool = False, **fields: Any) -> None:
        self.write(protocol.encode(Message("error", {"code": code, "message": message, "hint": hint, **fields})),
                   ends_job=ends_job)

    def progress(self, stage: str, fraction: float, text: str) -> None:
        now = time.monotonic()
        if stage != self.stage or now - self.last >= PROGRESS_INTERVAL:
            self.stage, self.last = stage, now
            self.send("progress", stage=stage, fraction=fraction, text=text)

    def beat(self) -> None:
        """A ``heartbeat`` frame, if a job runs and nothing else went out for ``HEARTBEAT_INTERVAL`` s."""
        with self.lock:
            if self.working and time.monotonic() - self.written >= HEARTBEAT_INTERVAL:
                self.stream.write(HEARTBEAT)
                self.stream.flush()
                self.written = time.monotonic()


def heartbeats(out: Outbox) -> threading.Thread:
    """A daemon thread that keeps ``out`` beating while jobs run: the client's proof that the engine lives.

    It runs whatever the main thread does (torch and numpy release the GIL in
    their long calls; pure Python gives it up every few ms), so a long solve or
    assembly without progress frames still beats; a stopped or frozen engine
    does not, which is how the client tells the two apart.
    """
    def run() -> None:
        while True:
            time.sleep(HEARTBEAT_INTERVAL / 4)
            try:
                out.beat()
            except (OSError, ValueError):  # the client is gone: the main thread finds out too
                return

    thread = threading.Thread(target=run, name="engine-heartbeat", daemon=True)
    thread.start()
    return thread


def hello_fields() -> dict[str, Any]:
    """What the client shows and checks before the first job: versions, devices, the interpreter."""
    import torch

    devices: list[dict[str, Any]] = [{"id": "cpu", "name": "CPU", "memory_gb": None}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append({"id": f"cuda:{i}", "name": props.name, "memory_gb": props.total_memory / 2**30})
    return {"engine_version": __version__, "protocol_version": protocol.PROTOCOL_VERSION,
            "torch_version": torch.__version__, "devices": devices,
            "python": sys.version.split()[0], "executable": sys.executable, "pid": os.getpid()}


def error_reply(exc: BaseException) -> tuple[str, str, str]:
    """(code, message, hint) for an exception that ended a job."""
    if isinstance(exc, Cancelled):
        return "cancelled", exc.message, exc.hint or "Nothing was changed."
    if isinstance(exc, MemoryLimitError):
        return "memory", exc.message, exc.hint
    if isinstance(exc, ProtocolError):
        return "protocol", exc.message, exc.hint
    if isinstance(exc, InputError):
        return "input", exc.message, exc.hint or "Check the point cloud and the options."
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
        return "memory", f"The engine ran out of memory: {(str(exc) or type(exc).__name__).splitlines()[0][:300]}", (
            "Use a larger voxel size or a lower detail level, or the CPU device.")
    if isinstance(exc, EngineError):
        return "internal", exc.message, exc.hint or "See the engine log."
    return "internal", f"Internal engine error: {type(exc).__name__}: {str(exc)[:300]}", (
        "This is a bug: the engine log has the traceback; please report it with the log.")


@lru_cache(maxsize=1)
def synthetic_mesh(faces: int, colors: bool, edges: bool = False) -> dict[str, np.ndarray]:
    """Benchmark hook: a triangulated grid of ``faces`` triangles, to time the transport and mesh creation alone.

    A grid has the edge and vertex counts of a real surface mesh (V ~ F/2, E ~ 3F/2),
    so what the receiver does per edge costs what it would on a reconstruction.
    """
    side = int(np.ceil(np.sqrt(max(faces, 2) / 2))) + 1
    i, j = np.meshgrid(np.arange(side - 1), np.arange(side - 1), indexing="ij")
    a = (i * side + j).reshape(-1).astype(np.int32)
    quads = np.stack([a, a + 1, a + side + 1, a, a + side + 1, a + side], axis=1).reshape(-1, 3)
    x, y = np.meshgrid(np.linspace(0.0, 1.0, side), np.linspace(0.0, 1.0, side), indexing="ij")
    n = side * side
    arrays = {"vertices": np.stack([x.reshape(-1), y.reshape(-1), np.zeros(n)], axis=1).astype(np.float32),
              "faces": np.ascontiguousarray(quads[:faces]),
              "normals": np.tile(np.array([0.0, 0.0, 1.0], np.float32), (n, 1))}
    if colors:
        arrays["colors"] = np.ones((n, 4), np.float32)
    if edges:
        arrays["edges"], arrays["corner_edges"] = mesh_edges(arrays["faces"], n)
    return arrays


def read_file(request: Message, options: dict[str, Any], out: Outbox
              ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, dict[str, Any]]:
    """A ``reconstruct_file`` request's cloud, read here as the CLI reads it; sets ``options["sensor"]``.

    Returns points, normals, colours and how the file was read (for the result's stats).
    """
    from ..formats.splat import MIN_OPACITY
    from ..options import Options
    from ..scanfile import read_input

    path, opacity = request["path"], request.get("splat_min_opacity", MIN_OPACITY)
    if isinstance(opacity, bool) or not isinstance(opacity, (int, float)) or not 0.0 <= opacity < 1.0:
        raise InputError(f"splat_min_opacity must be a number from 0 to below 1; got {opacity!r}.",
                         "Send an opacity such as 0.1, or leave the field out.")
    out.progress("read", 0.0, f"reading {os.path.basename(path)}")
    opts = Options.of({k: v for k, v in options.items() if k != "sensor"})
    got = read_input(path, opts, options.get("sensor"), splat_min_opacity=float(opacity))
    options["sensor"] = got.sensor
    info = {**got.info, "points_read": len(got.points), "read_seconds": sum(got.seconds.values())}
    return got.points, got.normals, got.colors, info


def hold_in_solve(seconds: float, cancelled: Callable[[], bool], out: Outbox) -> None:
    """The ``_test_hold_seconds`` hook (engine.options): the solve stage's progress and cancel checks, no work."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if cancelled():
            raise Cancelled()
        out.progress("solve", 0.0, f"held for a test: {left:.0f} s left")
        time.sleep(min(left, 0.02))


def run_job(request: Message, job: int, inbox: Inbox, out: Outbox, reconstruct: Callable[..., Any]) -> None:
    """Answer one job request (``reconstruct``, ``reconstruct_file``): progress, then one ``result`` or ``error``."""
    t0 = time.perf_counter()
    out.stage = ""
    out.working = True
    try:
        options = check(request["options"])  # types and ranges, before any work
        echo = options.pop("_benchmark_echo_faces", None)
        hold = options.pop("_test_hold_seconds", None)
        with_edges = options.pop("mesh_edges", False)
        sensors = request.arrays.get("sensors")
        if sensors is not None:  # one viewpoint (1, 3) or one per point (N, 3)
            options["sensor"] = sensors[0] if len(sensors) == 1 else sensors
        read_info: dict[str, Any] = {}
        if request.type == "reconstruct_file":
            pts, nrm, col, read_info = read_file(request, options, out)
            if inbox.cancelled(job):
                raise Cancelled()
        else:
            pts, nrm, col = request.arrays["points"], request.arrays.get("normals"), request.arrays.get("colors")
        log.info("job %d: %d points, options %s", job, len(pts), options)
        if hold:
            hold_in_solve(hold, lambda: inbox.cancelled(job), out)
        if echo is not None:
            arrays = synthetic_mesh(echo, col is not None, with_edges)
            stats: dict[str, Any] = {"benchmark_echo": True, "points_in": len(pts)}
            origin = [0.0, 0.0, 0.0]
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                mesh = reconstruct(pts, nrm, col, progress=out.progress, cancel=lambda: inbox.cancelled(job),
                                   **options)
            for w in caught:
                log.warning("%s", w.message)
                out.send("log", level="warning", text=str(w.message))
            arrays = {"vertices": mesh.local_vertices, "faces": mesh.faces}
            arrays.update({k: v for k, v in (("colors", mesh.colors), ("normals", mesh.normals)) if v is not None})
            if with_edges:
                arrays["edges"], arrays["corner_edges"] = mesh_edges(mesh.faces, len(mesh.local_vertices))
            stats, origin = {**mesh.stats, **read_info}, mesh.origin.tolist()
        try:
            result = protocol.encode(Message("result", {"stats": stats, "origin": origin}, arrays))
        except ProtocolError as exc:  # the engine's fault, not the request's
            raise RuntimeError(f"the result cannot be sent: {exc.message}") from exc
    except Exception as exc:
        code, message, hint = error_reply(exc)
        if code == "internal":
            traceback.print_exc(file=sys.stderr)
        log.info("job %d: %s: %s (%.2f s)", job, code, message, time.perf_counter() - t0)
        out.error(code, message, hint, reason=getattr(exc, "code", type(exc).__name__), ends_job=True)
        return
    out.write(result, ends_job=True)
    log.info("job %d: result, %d faces (%.2f s)", job, len(arrays["faces"]), time.perf_counter() - t0)


def run_read(request: Message, job: int, inbox: Inbox, out: Outbox) -> None:
    """Answer one ``read`` request (an importer's) with progress frames and exactly one ``cloud`` or ``error``."""
    from ..formats import READERS
    from ..importing import read_for_import

    t0 = time.perf_counter()
    out.stage = ""
    out.working = True
    path = request["path"]
    try:
        cloud, offset, total = read_for_import(path, request["options"], out.progress,
                                               lambda: inbox.cancelled(job))
        out.progress("send", 0.0, f"{len(cloud.points):,} points")
        arrays = {"points": (cloud.points - offset).astype(np.float32)}
        if cloud.normals is not None:
            arrays["normals"] = cloud.normals.astype(np.float32)
        if cloud.colors is not None:
            arrays["colors"] = cloud.colors.astype(np.float32)
        if cloud.sensors is not None:
            arrays["sensors"] = (cloud.sensors - offset).astype(np.float32)
        reader = READERS[os.path.splitext(path)[1].lower()]
        reply = protocol.encode(Message("cloud", {"offset": offset.tolist(), "total": total,
                                                  "dropped": cloud.dropped, "format": reader.name}, arrays))
    except Exception as exc:
        code, message, hint = error_reply(exc)
        if code == "internal":
            traceback.print_exc(file=sys.stderr)
        log.info("job %d (read %s): %s: %s (%.2f s)", job, path, code, message, time.perf_counter() - t0)
        out.error(code, message, hint, reason=getattr(exc, "code", type(exc).__name__), ends_job=True)
        return
    out.write(reply, ends_job=True)
    log.info("job %d: read %s, %d of %d points (%.2f s)", job, path, len(arrays["points"]), total,
             time.perf_counter() - t0)


def serve(inbox: Inbox, out: Outbox, reconstruct: Callable[..., Any]) -> int:
    """The request loop; returns the exit code."""
    while True:
        item = inbox.queue.get()
        if item is None:
            return EXIT_OK
        if isinstance(item, ProtocolError):
            log.warning("bad frame: %s", item.message)
            out.error("protocol", item.message, item.hint)
            if not item.resync:
                return EXIT_PROTOCOL
            continue
        job, msg = item
        if msg.type == "read":
            run_read(msg, job, inbox, out)
        elif msg.type in protocol.JOB_REQUESTS:
            run_job(msg, job, inbox, out, reconstruct)
        else:
            out.error("protocol", f"The engine does not accept {msg.type!r} messages.",
                      "Send 'reconstruct', 'reconstruct_file', 'read', 'cancel' or 'shutdown'.")


def _binary(fd: int) -> int:
    if os.name == "nt":  # no newline translation on the frames
        import msvcrt

        msvcrt.setmode(fd, os.O_BINARY)  # type: ignore[attr-defined]
    return fd


def start_and_serve(inbox: Inbox, out: Outbox) -> int:
    """Import the pipeline, say hello, serve; the exit code."""
    try:
        from ..pipeline import reconstruct
        from ..warm import warm_kernels

        hello = hello_fields()
    except Exception as exc:  # a broken install: say so in a frame, not only in the log
        log.exception("the engine cannot start")
        what = f"cannot import {exc.name}" if isinstance(exc, ImportError) else f"fails to start: {exc}"
        out.error("unavailable", f"The engine's Python ({sys.executable}) {what}.",
                  f"Install the engine's requirements into it: {sys.executable} -m pip install torch numpy scipy")
        return EXIT_UNAVAILABLE
    out.send("hello", **hello)
    log.info("ready: engine %s, torch %s, devices %s", __version__, hello["torch_version"],
             [d["id"] for d in hello["devices"]])
    warm_kernels()  # the CPU kernels load while the client sends the first job, not during it
    inbox.start()
    heartbeats(out)
    return serve(inbox, out, reconstruct)


def main() -> NoReturn:
    """Entry point of ``python -m engine serve``; exits with one of the EXIT_ codes."""
    frames = os.fdopen(_binary(os.dup(1)), "wb")  # frames only
    os.dup2(2, 1)  # C-level writes to stdout land in the log
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the client stops us: cancel, shutdown, EOF or kill
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s engine[%(process)d] %(levelname)s %(message)s")
    code = EXIT_OK
    try:
        code = start_and_serve(Inbox(os.fdopen(_binary(os.dup(0)), "rb")), Outbox(frames))
        frames.flush()
    except BrokenPipeError:
        log.info("the client closed the pipe")
    except Exception:
        log.exception("the engine server failed")
        code = EXIT_INTERNAL
    sys.stderr.flush()
    # Exit at once: the reader thread may be blocked on stdin (a normal shutdown would wait on its buffer's
    # lock), and torch's teardown costs about a second, which a client closing the engine would wait for.
    os._exit(code)
