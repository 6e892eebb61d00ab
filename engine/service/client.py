"""Client of the engine process: start ``python -m engine serve``, send requests, poll or wait, stop it.

Standard library and numpy only, and no threads: the Blender extension imports
this module (as ``nksr_blender.engine.service.client``) and polls jobs from a 0.1 s
timer, so every read is non-blocking and only :meth:`Job.wait` blocks.
Imports of siblings are relative for the same reason.

The engine's stderr goes to a log file (never an undrained pipe); error
messages carry its tail.  A dead engine is restarted by the next
:meth:`EngineClient.submit`; no engine outlives its client, which closes it
at garbage collection and at interpreter exit, and the engine exits on its
own when its stdin reaches EOF (the parent died).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..importing import check_import_options
from ..mesh import Mesh
from ..options import OptionError, check
from ..progress import ProgressFn
from . import protocol
from .protocol import Message, ProtocolError

_PIPE_SIZE = 1 << 20  # Linux pipes hold 64 KiB by default; bigger ones cut the syscalls per megabyte 16-fold
_WAIT_SLICE = 0.1
_CONTROL_PATIENCE = 1.0  # seconds a cancel or shutdown frame may wait for the engine to read (then: kill)
STALL_TIMEOUT = 30.0  # seconds of silence from a working engine after which it counts as stalled (it beats every 0.5)
_HINT_PYTHON = ("Set the engine's Python to an interpreter with the engine's requirements "
                "(python -m pip install torch numpy scipy).")


class ClientError(Exception):
    """Base of every error the client raises; ``hint`` tells the user what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n{self.hint}".strip()


class EngineUnavailable(ClientError):
    """The engine could not be started: no such interpreter, missing packages, or it died before ``hello``."""


class EngineCrashed(ClientError):
    """The engine process died (or broke the protocol) during a job."""


class EngineTimeout(ClientError):
    """A job did not finish in time; the engine was stopped."""


class EngineStalled(EngineTimeout):
    """No frame (not even a heartbeat) came for ``stall_timeout`` s during a job: the engine was stopped."""


class RemoteError(ClientError):
    """The engine answered a job with an ``error``: ``code`` is input, memory, cancelled, protocol or internal."""

    def __init__(self, code: str, message: str, hint: str = "", reason: str | None = None) -> None:
        super().__init__(message, hint)
        self.code = code
        self.reason = reason  # the engine's finer error code, e.g. too_few_points


class InvalidRequest(ClientError, ValueError):
    """Options or arrays that cannot be sent, caught before anything is sent."""


class Progress(NamedTuple):
    stage: str
    fraction: float
    text: str


Result = Mesh  # the engine's own result type (engine/mesh.py needs only numpy)


@dataclass
class ImportedCloud:
    """What a ``read`` job brings back: a file's cloud, subsampled, ready for an importer.

    points (N, 3) float32 relative to ``offset`` ((3,) float64): file coordinates
    = offset + points, so a georeferenced file keeps its precision; normals
    (N, 3), colors (N, 4) RGBA 0-1 (as the file stores them, usually sRGB),
    sensors (N, 3) relative to ``offset``: float32 or None.  ``total``: the file's
    rows before subsampling; ``dropped``: rows the reader left out, by reason;
    ``format``: the reader's name.
    """

    points: np.ndarray
    offset: np.ndarray
    normals: np.ndarray | None = None
    colors: np.ndarray | None = None
    sensors: np.ndarray | None = None
    total: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    format: str = ""


def _imported(msg: Message) -> ImportedCloud:
    a = msg.arrays
    return ImportedCloud(a["points"], np.asarray(msg["offset"], np.float64).reshape(3), a.get("normals"),
                         a.get("colors"), a.get("sensors"), int(msg["total"]), dict(msg["dropped"]), msg["format"])


def _result(msg: Message) -> Mesh:
    a = msg.arrays
    return Mesh(a["vertices"], a["faces"], np.asarray(msg["origin"], np.float64).reshape(3), a.get("colors"),
                a.get("normals"), msg["stats"], a.get("edges"), a.get("corner_edges"))


# -- non-blocking pipe reads, per platform -----------------------------------------------------------------------------

if os.name == "nt":  # no select() on pipes: ask how many bytes wait (untested on this project's CI)
    import _winapi
    import msvcrt

    def _read_some(fd: int, decoder: protocol.Decoder) -> int | None:
        """Read what waits into the decoder: the count (0 at EOF), or None when nothing waits."""
        try:
            waiting = _winapi.PeekNamedPipe(msvcrt.get_osfhandle(fd), 0)[0]  # type: ignore[attr-defined]
        except OSError:
            return 0
        if not waiting:
            return None
        space = decoder.writable()
        data = os.read(fd, min(waiting, space.nbytes))
        space[:len(data)] = data
        return len(data)

    def _wait_readable(fd: int, timeout: float) -> None:
        time.sleep(min(timeout, 0.005))

    def _nonblocking(fd: int) -> None:
        pass
else:
    def _read_some(fd: int, decoder: protocol.Decoder) -> int | None:
        """Read what waits straight into the decoder's buffer: the count (0 at EOF), or None when nothing waits."""
        try:
            return os.readv(fd, [decoder.writable()])
        except BlockingIOError:
            return None

    def _wait_readable(fd: int, timeout: float) -> None:
        select.select([fd], [], [], max(0.0, timeout))

    def _nonblocking(fd: int) -> None:
        os.set_blocking(fd, False)
        try:
            import fcntl

            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        except (ImportError, AttributeError, OSError):
            pass


def _survive_broken_pipes() -> None:
    """Writing to an engine that just died must raise BrokenPipeError, not kill the host with SIGPIPE.

    Python ignores SIGPIPE when it installs its signal handlers; an embedding
    host (Blender) may not have let it, so make sure once, from the main thread.
    """
    if hasattr(signal, "SIGPIPE") and signal.getsignal(signal.SIGPIPE) == signal.SIG_DFL:
        try:
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        except ValueError:  # not the main thread: leave it
            pass


def _stop_process(proc: subprocess.Popen[bytes], timeout: float = 1.0) -> None:
    """EOF first (the engine exits on it), then kill: used by close() and by the finalizer."""
    if proc.poll() is None:
        try:
            assert proc.stdin is not None
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        try:
            if pipe is not None:
                pipe.close()
        except OSError:
            pass


def python_in_folder(folder: str | os.PathLike[str]) -> str | None:
    """The interpreter of a virtual environment or Python installation ``folder``, if it has one: the file
    users usually mean when they choose the folder instead."""
    for name in ("bin/python3", "bin/python", "Scripts/python.exe", "python.exe", "python3"):
        if (Path(folder) / name).is_file():
            return str(Path(folder) / name)
    return None


def folder_not_python(folder: str) -> str:
    """The message for an engine Python that is a folder: not missing, but not an interpreter either."""
    inside = python_in_folder(folder)
    return (f"{folder} is a folder, not a Python interpreter" +
            (f"; choose the interpreter inside it: {inside}" if inside else ""))


def _drop_logs(paths: list[Path]) -> None:
    """Remove the temporary logs a client created (what ``paths`` still holds), at close or collection."""
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError:  # still open elsewhere (Windows): left to the system's temp cleaning
            pass
    paths.clear()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _rows(name: str, a: Any) -> np.ndarray:
    """``a`` as an array the protocol carries: its own dtype when whitelisted, else float64 (float32 if smaller)."""
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"{name} is not an array: {exc}", f"Pass {name} as a numeric (N, 3) array.") from None
    if arr.dtype.kind not in "fiu":
        raise InvalidRequest(f"{name} must be numeric; got dtype {arr.dtype}.", f"Convert {name} to float32.")
    try:
        return protocol.wire_array(arr)
    except ProtocolError:
        return protocol.wire_array(arr.astype(np.float32 if arr.dtype.itemsize < 4 else np.float64))


def _checked(options: dict[str, Any]) -> dict[str, Any]:
    """A request's options checked before anything is sent (an InvalidRequest names the bad one)."""
    try:
        return check(options)
    except OptionError as exc:
        raise InvalidRequest(exc.message, exc.hint) from None


class Job:
    """One reconstruction in flight: :meth:`poll` it from a timer, or :meth:`wait` for it."""

    def __init__(self, client: EngineClient) -> None:
        self._client = client
        self.done = False
        self.progress: Progress | None = None
        self.logs: list[tuple[str, str]] = []
        self.error: ClientError | None = None
        self._result: Any = None  # a Result (reconstruct) or an ImportedCloud (read)
        self._cancel_deadline: float | None = None
        self._cancel_grace = 0.0

    @property
    def cancelled(self) -> bool:
        """True once cancel() was called (the job may still have ended with its result)."""
        return self._cancel_deadline is not None

    @property
    def result(self) -> Any:
        """The mesh (an ImportedCloud for a ``read`` job); raises the job's error if it failed, ClientError if
        it is still running."""
        if self.error is not None:
            raise self.error
        if self._result is None:
            raise ClientError("The reconstruction is still running.", "Poll or wait for the job first.")
        return self._result

    def poll(self, budget: float = 0.02) -> list[Message]:
        """Handle what the engine sent so far, reading for at most about ``budget`` seconds; never blocks.

        Returns the messages handled (progress, log, heartbeat, result, error).
        After the job is done, ``result`` or ``error`` says how it ended: an
        engine silent for ``stall_timeout`` s is killed (EngineStalled).
        """
        if self.done:
            return []
        client = self._client
        msgs, failure = client._receive(budget)
        handled: list[Message] = []
        for msg in msgs:
            if self.done:
                break
            self._handle(msg)
            handled.append(msg)
        if self.done:
            return handled
        silent = time.monotonic() - client._heard
        if failure is not None:
            client._kill()
            self._fail(EngineCrashed(f"The engine broke the protocol: {failure.message}", failure.hint))
        elif client._gone():
            code = client._reap()
            self._fail(EngineCrashed(
                f"The engine process stopped during the reconstruction ({_describe_exit(code)}).{client._tail()}",
                "The next reconstruction starts a fresh engine.  If it happens again, the engine may be running "
                f"out of memory: try a larger voxel size or a lower detail level.  Log: {client.log_path}"))
        elif self._cancel_deadline is not None and time.monotonic() >= self._cancel_deadline:
            client._kill()
            self._finish(None, RemoteError(
                "cancelled", f"Reconstruction cancelled (the engine did not stop within {self._cancel_grace:g} s "
                "and was stopped).", "The next reconstruction starts a fresh engine."))
        elif client.stall_timeout is not None and silent > client.stall_timeout:
            client._kill()
            self._fail(EngineStalled(
                f"The engine has not answered for {silent:.0f} s (stalled: not even its heartbeat came); "
                "it was stopped.", "The system may have suspended or frozen it (a stopped process, a debugger, "
                "heavy swapping).  Nothing was changed; the next reconstruction starts a fresh engine."))
        return handled

    def wait(self, timeout: float | None = None, on_progress: ProgressFn | None = None) -> Any:
        """Block until the job ends and return its result; raise RemoteError, EngineCrashed or EngineTimeout.

        With ``timeout=None`` it waits as long as the engine works, but no
        longer than ``stall_timeout`` s of silence (EngineStalled).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            left = _WAIT_SLICE if deadline is None else deadline - time.monotonic()
            if left <= 0:
                self._client._kill()
                self._fail(EngineTimeout(f"The reconstruction did not finish within {timeout:g} s; "
                                         "the engine was stopped.",
                                         "Use a larger voxel size, a lower detail level or a longer timeout."))
                break
            self._client._wait_readable(min(left, _WAIT_SLICE))
            for msg in self.poll(budget=1.0):
                if msg.type == "progress" and on_progress is not None:
                    on_progress(msg["stage"], msg["fraction"], msg["text"])
        return self.result

    def cancel(self, grace: float = 3.0, wait: bool = True) -> None:
        """Ask the engine to stop; kill it if it has not answered within ``grace`` seconds.

        ``wait=False`` returns at once (a UI timer then keeps polling; poll()
        does the kill when the grace runs out).  The job ends with a
        RemoteError of code ``cancelled`` (or its result, if that came first).
        """
        if self.done:
            return
        if self._cancel_deadline is None:
            self._cancel_grace = grace
            self._cancel_deadline = time.monotonic() + grace
            try:
                self._client._send(Message("cancel"), patience=_CONTROL_PATIENCE)
            except (OSError, ValueError, EngineStalled):  # dead, or its pipe already closed
                pass  # already dead: poll() reports it
        while wait and not self.done:
            self._client._wait_readable(0.05)
            self.poll()

    def _handle(self, msg: Message) -> None:
        if msg.type == "progress":
            self.progress = Progress(msg["stage"], float(msg["fraction"]), msg["text"])
        elif msg.type == "log":
            self.logs.append((msg["level"], msg["text"]))
        elif msg.type == "heartbeat":
            pass  # its arrival is what counts (EngineClient._heard)
        elif msg.type == "result":
            try:
                result = _result(msg)
            except ValueError:
                self._client._kill()
                self._fail(EngineCrashed("The engine sent a result with a malformed origin.", "Reinstall the add-on."))
                return
            self._finish(result, None)
        elif msg.type == "cloud":
            try:
                cloud = _imported(msg)
            except (ValueError, TypeError):
                self._client._kill()
                self._fail(EngineCrashed("The engine sent a cloud with a malformed offset.", "Reinstall the add-on."))
                return
            self._finish(cloud, None)
        elif msg.type == "error":
            self._finish(None, RemoteError(msg["code"], msg["message"], msg["hint"], msg.get("reason")))
        else:
            self._client._kill()
            self._fail(EngineCrashed(f"The engine sent an unexpected {msg.type!r} message during a job.",
                                     "The next reconstruction starts a fresh engine."))

    def _fail(self, error: ClientError) -> None:
        if self.cancelled and not isinstance(error, RemoteError):
            error = RemoteError("cancelled", f"Reconstruction cancelled ({error.message})", error.hint)
        self._finish(None, error)

    def _finish(self, result: Any, error: ClientError | None) -> None:
        self.done, self._result, self.error = True, result, error
        if error is not None:
            self._client._cited(error)
        if self._client._job is self:
            self._client._job = None


class EngineClient:
    """Owns one engine process and runs one job at a time on it.

    ``python`` is the engine's interpreter (it needs torch, numpy, scipy).
    ``engine_dir`` is the folder that contains the ``engine`` package (default:
    the folder above this package, whatever this package is called at import
    time).  ``log_path`` receives the engine's stderr, appended (default: a new
    temporary file, removed at close unless an error message named it: users
    are told to read that one, and expect no other litter).  ``env`` replaces the environment (default: this
    process's, without PYTHONHOME).  ``stall_timeout``: seconds without any
    frame during a job (the engine sends a heartbeat every
    ``engine.service.server.HEARTBEAT_INTERVAL`` s of silence) after which the engine
    counts as stalled and is killed; None never gives up.
    """

    def __init__(self, python: str | os.PathLike[str], *, engine_dir: Path | None = None,
                 log_path: Path | None = None, env: dict[str, str] | None = None,
                 start_timeout: float = 120.0, stall_timeout: float | None = STALL_TIMEOUT) -> None:
        self.python = os.fspath(python)
        self.engine_dir = Path(engine_dir) if engine_dir is not None else Path(__file__).resolve().parents[2]
        self._temp_logs: list[Path] = []  # the temporary log this client made, while it is to be removed
        self._own_log = log_path is None
        self.log_path = Path(log_path) if log_path is not None else self._new_temp_log()
        weakref.finalize(self, _drop_logs, self._temp_logs)
        self.env = env
        self.start_timeout = start_timeout
        self.stall_timeout = stall_timeout
        self._heard = time.monotonic()  # when the engine's last bytes arrived
        self.hello: dict[str, Any] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self._decoder = protocol.Decoder()
        self._eof = False
        self._log_offset = 0
        self._job: Job | None = None
        self._start_deadline = 0.0

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def _new_temp_log(self) -> Path:
        fd, name = tempfile.mkstemp(prefix="nksr-engine-", suffix=".log")
        os.close(fd)
        self._temp_logs[:] = [Path(name)]
        return Path(name)

    def _cited(self, error: BaseException) -> None:
        """An error for the user names the log: keep it for them to read."""
        if str(self.log_path) in str(error):
            self._temp_logs.clear()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while a started engine process is alive."""
        return self._proc is not None and self.hello is not None and self._proc.poll() is None

    def start(self, wait: bool = True) -> dict[str, Any] | None:
        """Start the engine unless it runs, and return its ``hello`` (versions, devices, python, pid).

        ``wait=False`` spawns it and returns None at once (torch takes seconds to
        import); a UI timer then calls :meth:`poll_start` until the hello is there.
        """
        if self.running:
            return self.hello
        if not self.starting:
            self._kill()
            self._spawn()
            self._start_deadline = time.monotonic() + self.start_timeout
        if not wait:
            return None
        try:
            self.hello = self._handshake(self._start_deadline)
        except BaseException as exc:
            self._cited(exc)
            self._kill()
            raise
        return self.hello

    @property
    def starting(self) -> bool:
        """True between a spawn and the engine's hello."""
        return self._proc is not None and self.hello is None and self._proc.poll() is None

    def poll_start(self) -> dict[str, Any] | None:
        """Never blocks: the hello once the engine has sent it, else None; EngineUnavailable if the start failed."""
        if self.running:
            return self.hello
        if self._proc is None:
            self.start(wait=False)
        try:
            self.hello = self._handshake_step(self._start_deadline, budget=0.02)
        except BaseException as exc:
            self._cited(exc)
            self._kill()
            raise
        return self.hello

    def close(self, timeout: float = 2.0) -> None:
        """Stop the engine: ``shutdown``, then EOF, then kill if it has not exited within ``timeout``; remove
        the temporary log unless an error named it."""
        proc = self._proc
        if proc is None:
            _drop_logs(self._temp_logs)
            return
        if self._job is not None:
            self._job._fail(EngineCrashed("The engine was closed during the reconstruction.", "Nothing was changed."))
        try:
            self._send(Message("shutdown"), patience=_CONTROL_PATIENCE)
        except (OSError, ValueError, EngineStalled):  # dead, or its pipe already closed at exit
            pass
        _stop_process(proc, timeout)
        self._forget()
        _drop_logs(self._temp_logs)

    def __enter__(self) -> EngineClient:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- jobs ------------------------------------------------------------------------------------------------------

    def submit(self, points: Any, normals: Any = None, colors: Any = None, *, sensor: Any = None,
               **options: Any) -> Job:
        """Send a request (starting or restarting the engine first) and return its job at once.

        points (N, 3); normals (N, 3) or None (the engine estimates them, facing
        ``sensor`` when given: (3,) or (N, 3)); colors (N, 3|4) or None; options as for
        ``engine.reconstruct`` (:mod:`engine.options`, checked here before anything is sent).  Writing the
        request blocks while the engine reads it (about 40 MB for 1M points).
        """
        opts = _checked(options)
        arrays = {"points": _rows("points", points)}
        if normals is not None:  # without them the engine estimates normals
            arrays["normals"] = _rows("normals", normals)
        if colors is not None:
            arrays["colors"] = _rows("colors", colors)
        if sensor is not None:  # where the scanner was: (3,) one viewpoint, or (N, 3) one per point
            arrays["sensors"] = _rows("sensors", np.asarray(sensor, dtype=np.float64).reshape(-1, 3))
        return self._submit(Message("reconstruct", {"options": opts}, arrays))

    def submit_file(self, path: str | os.PathLike[str], *, sensor: Any = None,
                    splat_min_opacity: float | None = None, **options: Any) -> Job:
        """Like :meth:`submit`, but the engine reads the point cloud from ``path`` itself (``reconstruct_file``).

        The points never pass through this process: only the mesh comes back,
        with the reading's figures in its stats.  ``sensor`` (3,) wins over the
        sensor positions the file records; ``splat_min_opacity`` is for 3D
        Gaussian Splatting PLY files.  The engine checks the file (format,
        package, contents) and answers an unreadable one with an ``input`` error.
        """
        opts = _checked(options)
        fields: dict[str, Any] = {"options": opts, "path": os.path.abspath(os.fspath(path))}
        if splat_min_opacity is not None:
            fields["splat_min_opacity"] = float(splat_min_opacity)
        arrays: dict[str, np.ndarray] = {}
        if sensor is not None:
            arrays["sensors"] = _rows("sensors", np.asarray(sensor, dtype=np.float64).reshape(-1, 3))
        return self._submit(Message("reconstruct_file", fields, arrays))

    def submit_read(self, path: str | os.PathLike[str], *, every: int = 1, voxel_size: float | None = None,
                    **options: Any) -> Job:
        """Ask the engine to read a point-cloud file (any format it reads) and return its job at once.

        The job's result is an :class:`ImportedCloud`.  ``every`` keeps every k-th point, ``voxel_size`` one
        point per cube of that edge (file units); both are checked here before anything is sent.
        """
        try:
            opts = check_import_options({"every": every, "voxel_size": voxel_size, **options})
        except OptionError as exc:
            raise InvalidRequest(exc.message, exc.hint) from None
        return self._submit(Message("read", {"path": os.path.abspath(os.fspath(path)), "options": opts}))

    def read_file(self, path: str | os.PathLike[str], *, timeout: float | None = None,
                  on_progress: ProgressFn | None = None, **options: Any) -> ImportedCloud:
        """Blocking :meth:`submit_read`: the file's cloud.  An interrupt (Ctrl-C) cancels the job first."""
        job = self.submit_read(path, **options)
        try:
            result: ImportedCloud = job.wait(timeout, on_progress)
        except BaseException:
            if not job.done:
                job.cancel()
            raise
        return result

    def _submit(self, request: Message) -> Job:
        """Send a job's request (starting or restarting the engine first) and return the job at once."""
        if self._job is not None and not self._job.done:
            raise ClientError("A job is already running on this engine.", "Wait for it or cancel it.")
        self.start()
        job = Job(self)
        self._job = job
        self._heard = time.monotonic()
        try:
            self._send(request)
        except EngineStalled as exc:
            self._kill()
            job._fail(exc)
            raise
        except OSError:
            job.poll()  # the engine died while reading: say how
            if not job.done:
                self._kill()
                job._fail(EngineCrashed(f"The engine stopped while reading the request.{self._tail()}",
                                        "The next reconstruction starts a fresh engine."))
            raise job.error from None  # type: ignore[misc]
        return job

    def reconstruct(self, points: Any, normals: Any = None, colors: Any = None, *, timeout: float | None = None,
                    on_progress: ProgressFn | None = None, **options: Any) -> Result:
        """Blocking: submit and wait.  An interrupt (Ctrl-C) cancels the job before it propagates."""
        job = self.submit(points, normals, colors, **options)
        try:
            return job.wait(timeout, on_progress)
        except BaseException:
            if not job.done:
                job.cancel()
            raise

    # -- process and pipes -----------------------------------------------------------------------------------------

    def _spawn(self) -> None:
        if not (self.engine_dir / "engine" / "__main__.py").is_file():
            raise EngineUnavailable(f"The engine's files are missing: no engine package in {self.engine_dir}.",
                                    "Reinstall the add-on.")
        if os.path.isdir(self.python):
            raise EngineUnavailable(f"The engine's Python {folder_not_python(self.python)}.", _HINT_PYTHON)
        _survive_broken_pipes()
        if self._own_log and not self.log_path.exists():  # removed at an earlier close: a fresh temporary log
            self.log_path = self._new_temp_log()
        env = dict(os.environ) if self.env is None else dict(self.env)
        if self.env is None:
            env.pop("PYTHONHOME", None)  # the host's (Blender's) Python home is not the engine's
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.engine_dir), env.get("PYTHONPATH")) if p)
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            try:
                proc = subprocess.Popen([self.python, "-m", "engine", "serve"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=log, cwd=self.engine_dir, env=env)
            except OSError as exc:
                raise EngineUnavailable(f"Cannot run the engine's Python {self.python!r}: {exc.strerror or exc}.",
                                        _HINT_PYTHON) from None
        assert proc.stdin is not None and proc.stdout is not None
        self._proc = proc
        self._finalizer = weakref.finalize(self, _stop_process, proc)
        self._decoder = protocol.Decoder()
        self._eof = False
        _nonblocking(proc.stdout.fileno())
        if os.name != "nt":
            os.set_blocking(proc.stdin.fileno(), False)  # _send writes with a deadline
            try:
                import fcntl

                fcntl.fcntl(proc.stdin.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
            except (ImportError, AttributeError, OSError):
                pass

    def _handshake(self, deadline: float) -> dict[str, Any]:
        while (hello := self._handshake_step(deadline, budget=1.0)) is None:
            self._wait_readable(_WAIT_SLICE)
        return hello

    def _handshake_step(self, deadline: float, budget: float) -> dict[str, Any] | None:
        """One look at the pipe during the start: the hello, None if not there yet, or EngineUnavailable."""
        msgs, failure = self._receive(budget)
        if msgs:
            first = msgs[0]
            if first.type == "error":
                raise EngineUnavailable(f"{first['message']}{self._tail()}", first["hint"])
            if first.type != "hello":
                raise EngineUnavailable(f"The engine answered {first.type!r} instead of 'hello'.",
                                        "Reinstall the add-on.")
            version = first["protocol_version"]
            if version != protocol.PROTOCOL_VERSION:
                raise EngineUnavailable(
                    f"The engine speaks protocol {version}, the add-on {protocol.PROTOCOL_VERSION}.",
                    "Reinstall the add-on so that both come from the same version.")
            return dict(first.fields)
        if failure is not None:
            raise EngineUnavailable(f"The engine's first answer is not a valid frame: {failure.message}"
                                    f"{self._tail()}", _HINT_PYTHON)
        if self._gone():
            code = self._reap()
            raise EngineUnavailable(f"The engine's Python {self.python!r} stopped during start "
                                    f"({_describe_exit(code)}).{self._tail()}", f"{_HINT_PYTHON}  "
                                    f"Log: {self.log_path}")
        if time.monotonic() > deadline:
            raise EngineUnavailable(f"The engine did not start within {self.start_timeout:g} s.{self._tail()}",
                                    f"The machine may be busy; try again.  Log: {self.log_path}")
        return None

    def _send(self, msg: Message, patience: float | None = None) -> None:
        """Write one frame; an engine that takes no byte of it for ``patience`` s (default: the stall limit) is
        stalled: EngineStalled, so that a frozen engine cannot block the caller in a write either."""
        if self._proc is None or self._proc.stdin is None:
            raise BrokenPipeError("no engine")
        patience = self.stall_timeout if patience is None else patience
        stream = self._proc.stdin
        if os.name == "nt" or patience is None:
            protocol.write_message(stream, msg)
            return
        fd = stream.fileno()  # non-blocking since the spawn; nothing buffers in ``stream``
        for piece in protocol.encode(msg):
            view = memoryview(piece).cast("B")
            while view:
                if not select.select([], [fd], [], patience)[1]:
                    raise EngineStalled(
                        f"The engine took nothing of the request for {patience:g} s (stalled); it was stopped.",
                        "The system may have suspended or frozen it.  Nothing was changed; the next "
                        "reconstruction starts a fresh engine.")
                try:
                    view = view[os.write(fd, view):]
                except BlockingIOError:  # the pipe filled between select and write
                    continue

    def _receive(self, budget: float) -> tuple[list[Message], ProtocolError | None]:
        """Messages the pipe holds now (reading for about ``budget`` s at most), and a protocol failure if any."""
        out: list[Message] = []
        if self._proc is None or self._proc.stdout is None:
            return out, None
        fd = self._proc.stdout.fileno()
        end = time.monotonic() + budget
        try:
            while not self._eof:
                n = _read_some(fd, self._decoder)
                if n is None:
                    break
                if n == 0:
                    self._eof = True
                    out += self._decoder.close()
                    break
                self._heard = time.monotonic()
                out += self._decoder.advance(n)
                if time.monotonic() > end:
                    break
        except ProtocolError as exc:
            return out, exc
        return out, None

    def _wait_readable(self, timeout: float) -> None:
        if self._proc is not None and self._proc.stdout is not None and not self._eof:
            _wait_readable(self._proc.stdout.fileno(), timeout)
        else:
            time.sleep(min(timeout, 0.01))

    def _gone(self) -> bool:
        """True when the engine can send nothing more: EOF on its stdout, or it exited and the pipe is drained."""
        if self._proc is None or self._eof:
            return True
        return self._proc.poll() is not None and not self._receive_pending()

    def _receive_pending(self) -> bool:
        assert self._proc is not None and self._proc.stdout is not None
        r, _, _ = select.select([self._proc.stdout.fileno()], [], [], 0) if os.name != "nt" else ([], [], [])
        return bool(r)

    def _reap(self) -> int | None:
        """The exit code of an engine that is stopping (killed if it lingers); forgets the process."""
        proc = self._proc
        if proc is None:
            return None
        try:
            code = proc.wait(2.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        _stop_process(proc)
        self._forget()
        return code

    def _kill(self) -> None:
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            _stop_process(proc)
        self._forget()

    def _forget(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
        self._proc, self._finalizer, self.hello, self._eof = None, None, None, False

    def _tail(self, chars: int = 1500) -> str:
        """The end of this engine's part of the log, to quote in a message."""
        try:
            with open(self.log_path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(self._log_offset, size - chars))
                text = f.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""
        return f"\n--- engine log ({self.log_path}) ---\n{text}" if text else ""
