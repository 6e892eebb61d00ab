"""Where a large scene's chunks are solved: in this process, a local process pool, or a Dask cluster.

An executor takes the chunk tasks of :mod:`engine.large.tasks` (plain, picklable
data) and yields their solved fields as they finish, in any order.  It keeps
only a few tasks in flight, since each holds a copy of its points, and stops
for the run's cancel check between chunks; inside a chunk, a worker in another
process watches a cancel token (a file for local processes, a Dask ``Event``
on a cluster) at every solver iteration and stage, so cancel interrupts a
running chunk there too.  Nothing here listens beyond this machine: the Dask
executor connects to a scheduler the user started, or runs an in-process
cluster with in-memory transport, whose HTTP servers (Dask always starts
them) listen on loopback only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Protocol

from ..errors import InputError
from ..optional import import_optional
from ..options import EXECUTORS
from ..progress import Run
from .tasks import ChunkField, ChunkTask, solve_chunk
from .workers import start_worker

CANCEL_GRACE = 10.0  # seconds running chunks get to notice a cancel before their processes are killed
TOKEN_POLL = 0.2  # seconds between two looks at a cancel token from a worker
POLL = 0.1  # seconds between two cancel checks while waiting for chunks
LOOPBACK = "127.0.0.1:0"  # where the in-process Dask cluster's HTTP servers listen: this machine only, any free port


class Executor(Protocol):
    """Runs chunk tasks and yields their fields as they finish."""

    name: str
    concurrent: int  # chunks held in this machine's memory at once (the memory guard divides its budget)
    worker_processes: bool  # each of them in a process of its own (which costs an interpreter and torch)

    def map(self, tasks: Iterator[ChunkTask], count: int, run: Run) -> Iterator[ChunkField]: ...


class InProcess:
    """One chunk after the other in the engine's own process: the default, with progress inside chunks."""

    name = "inprocess"
    concurrent = 1
    worker_processes = False

    def map(self, tasks: Iterator[ChunkTask], count: int, run: Run) -> Iterator[ChunkField]:
        for task in tasks:
            def inner(stage: str, fraction: float, text: str, i: int = task.index) -> None:
                if stage == "solve" and text:  # the chunk's solver iterations, as a share of all chunks
                    run.report("chunks", (i + fraction) / count, text)

            yield solve_chunk(task, inner, run.cancel)


class PolledToken:
    """A cancel flag a worker looks at no more often than every ``TOKEN_POLL`` s, and that stays set.

    Subclasses say how to look (:meth:`_look`); only their own attributes travel to workers.
    """

    _checked = 0.0
    _set = False

    def is_set(self) -> bool:
        now = time.monotonic()
        if not self._set and now - self._checked >= TOKEN_POLL:
            self._checked = now
            self._set = self._look()
        return self._set

    def _look(self) -> bool:
        raise NotImplementedError

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k not in ("_checked", "_set")}


class FileToken(PolledToken):
    """A cancel flag that processes on this machine see: the file exists once cancel is asked."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="nksr-cancel-")  # private (0700), so the name cannot be taken
        self.path = os.path.join(self.folder, "cancel")

    def set(self) -> None:
        with open(self.path, "w"):
            pass

    def _look(self) -> bool:
        return os.path.exists(self.path)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class Processes:
    """A pool of ``workers`` local processes (spawned, each with its share of the CPU threads)."""

    def __init__(self, workers: int | None = None) -> None:
        self.concurrent = max(1, workers or min(4, os.cpu_count() or 1))
        self.worker_processes = True
        self.name = f"processes ({self.concurrent})"

    def map(self, tasks: Iterator[ChunkTask], count: int, run: Run) -> Iterator[ChunkField]:
        import multiprocessing

        token = FileToken()
        threads = max(1, (os.cpu_count() or 1) // self.concurrent)
        pool = ProcessPoolExecutor(self.concurrent, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=start_worker, initargs=(threads, os.getpid()))
        pending: set[Future[ChunkField]] = set()
        try:
            yield from _pump(tasks, self.concurrent, run, lambda t: pool.submit(solve_chunk, t), token, pending,
                             lambda futures: wait(futures, timeout=POLL, return_when=FIRST_COMPLETED))
        except BaseException:
            token.set()
            for f in pending:
                f.cancel()
            _, late = wait(pending, timeout=CANCEL_GRACE)
            if late:  # a chunk that did not stop: its process goes
                for proc in list(getattr(pool, "_processes", {}).values()):
                    proc.kill()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            token.remove()


def _pump(tasks: Iterator[ChunkTask], in_flight: int, run: Run, submit: Any, token: Any, pending: set[Any],
          wait_some: Any) -> Iterator[ChunkField]:
    """Keep ``in_flight`` tasks submitted, yield results as they finish, check cancel every ``POLL`` s.

    ``pending`` is the caller's, so that on an exception it can cancel what is still running;
    a chunk's own exception (a :class:`Cancelled`, a memory error) comes back through ``result()``.
    """
    queue = iter(tasks)
    exhausted = False
    while True:
        while not exhausted and len(pending) < in_flight:
            task = next(queue, None)
            if task is None:
                exhausted = True
                break
            task.cancel_token = token
            pending.add(submit(task))
        if not pending:
            return
        done, rest = wait_some(pending)
        pending.clear()
        pending.update(rest)
        run.check()
        for f in done:
            yield f.result()


class DaskToken(PolledToken):
    """A cancel flag on a Dask cluster: a named ``distributed.Event``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _look(self) -> bool:
        from distributed import Event

        return bool(Event(self.name).is_set())


class Dask:
    """Chunks as tasks on Dask distributed: a scheduler at ``address``, or an in-process cluster.

    With an address the engine is only a client of a cluster the user runs
    (``dask scheduler`` and ``dask worker`` with this engine installed); its
    workers' memory is theirs to limit (``--memory-limit``).  Without one, a
    cluster of ``workers`` threads in this process, with in-memory transport
    and its HTTP servers on loopback.
    """

    # On a cluster, chunks live on the workers and the engine holds only their results; the memory
    # guard still sizes chunks as if one ran here (the workers' machines are not known to it).
    concurrent = 1
    worker_processes = True

    def __init__(self, address: str | None = None, workers: int | None = None, client: Any = None) -> None:
        self.address = address
        self.workers = max(1, workers or 2)
        self.client = client
        self.name = f"dask ({address})" if address else f"dask (in-process, {self.workers} threads)"
        if address is None and client is None:  # the in-process cluster's threads solve chunks here
            self.concurrent, self.worker_processes = self.workers, False

    def _connect(self) -> tuple[Any, Any]:
        distributed = import_optional("distributed", "The Dask executor", "distributed")
        if self.client is not None:
            return self.client, None
        if self.address:
            try:
                return distributed.Client(self.address, timeout="5s"), None
            except OSError as exc:
                raise InputError(f"Cannot reach the Dask scheduler at {self.address}: {exc}.",
                                 "Start it (dask scheduler, then dask worker ADDRESS on each machine), "
                                 "check the address, or use the 'processes' executor.") from None
        # In-memory transport between the client, scheduler and worker; but each still starts an HTTP server
        # (a scheduler on 0.0.0.0:8787 and [::] even without a dashboard): bind them to loopback, any port.
        cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=self.workers, processes=False,
                                           dashboard_address=LOOPBACK, worker_dashboard_address=LOOPBACK)
        try:
            return distributed.Client(cluster), cluster
        except BaseException:
            cluster.close()
            raise

    def map(self, tasks: Iterator[ChunkTask], count: int, run: Run) -> Iterator[ChunkField]:
        import distributed

        client, cluster = self._connect()
        name = f"nksr-cancel-{uuid.uuid4().hex}"
        pending: set[Any] = set()
        try:
            event = distributed.Event(name, client=client)
            workers = len(client.scheduler_info().get("workers", {}))
            in_flight = self.workers if cluster is not None else max(2, 2 * workers)

            def submit(task: ChunkTask) -> Any:
                return client.submit(solve_chunk, task, key=f"nksr-chunk-{name}-{task.index}", pure=False)

            def wait_some(futures: set[Any]) -> tuple[set[Any], set[Any]]:
                try:
                    done, rest = distributed.wait(list(futures), timeout=POLL, return_when="FIRST_COMPLETED")
                    return set(done), set(rest)
                except (TimeoutError, distributed.TimeoutError):  # Dask's wait raises where the standard one returns
                    return set(), set(futures)

            try:
                yield from _pump(tasks, in_flight, run, submit, DaskToken(name), pending, wait_some)
            except BaseException:
                event.set()  # running chunks stop at their next check; pending ones never start
                client.cancel(list(pending))
                try:
                    distributed.wait(list(pending), timeout=CANCEL_GRACE)
                except Exception:  # a timeout, or the futures' own cancellation: both mean go on
                    pass
                raise
        finally:
            if cluster is not None:
                client.close()
                cluster.close()
            elif self.client is None:
                client.close()


def make_executor(spec: str | Executor, workers: int | None = None) -> Executor:
    """The executor a name (or Dask scheduler address) stands for; an :class:`Executor` is used as is.

    Names and ``workers`` come checked by :mod:`engine.options` (the same forms as here).
    """
    if not isinstance(spec, str):
        return spec
    name = spec.strip()
    if name in ("", "inprocess"):
        return InProcess()
    if name == "processes":
        return Processes(workers)
    if name == "dask":
        return Dask(None, workers)
    if name.startswith("dask://"):
        return Dask("tcp://" + name[len("dask://"):], workers)
    if "://" in name and name.split("://")[0] in ("tcp", "tls", "ucx", "inproc"):
        return Dask(name, workers)
    raise InputError(f"Unknown executor {spec!r}.", f"Use {EXECUTORS}.")  # a caller that skipped the check
