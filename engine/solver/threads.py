"""Python threads over disjoint ranges, for the compiled kernels (numba), and whether a stage uses them.

The kernels release the GIL (``nogil``), so plain threads run them side by side;
each thread is given its own rows, cells or points and writes only those.  One
shared pool of torch's thread count (``OMP_NUM_THREADS`` sets it; the stats
report it as ``threads``) serves every caller: jobs never wait on the pool
themselves, so callers in several threads at once (chunks solved in threads)
only queue behind one another.  The engine never forks (its worker processes are
spawned): neither this pool's threads nor torch's own survive a fork (a forked
child's first torch operation hangs).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

CHUNKS_PER_THREAD = 8
MIN_CHUNK = 4096  # rows: a range's dispatch costs tens of microseconds

_pool: list[tuple[int, ThreadPoolExecutor]] = []  # the shared pool and its size, once made
_lock = threading.Lock()


def compiled_on(device: torch.device, compiled: bool | None) -> bool:
    """Whether a stage runs in its compiled CPU kernels (numba; ``compiled`` None: on the CPU) rather than in
    torch (the reference, and the CUDA path)."""
    return compiled if compiled is not None else device.type == "cpu"


def thread_count() -> int:
    """The threads the kernels run on: torch's count."""
    return max(1, torch.get_num_threads())


def _even_ranges(start: int, stop: int, count: int) -> list[tuple[int, int]]:
    """start:stop in ``count`` contiguous ranges of about equal length."""
    step = max(1, -(-(stop - start) // count))
    return [(lo, min(lo + step, stop)) for lo in range(start, stop, step)]


def chunks(start: int, stop: int) -> list[tuple[int, int]]:
    """start:stop in ranges for a kernel whose rows are independent: :data:`CHUNKS_PER_THREAD` per thread (each of
    at least :data:`MIN_CHUNK` rows, and never fewer ranges than threads), which the threads take as they come free.

    Why not one range per thread: ranges of equal length do not take equal time.  Memory the system maps for the
    first time costs a page fault per page, and one half of a fresh table can be mapped already (reused) while the
    other is not: on the 1M-point bunny's finest level the neighbours' coefficients took 0.013 s on one thread and
    0.22 s on the other, which the first then waited for.
    """
    threads = thread_count()
    if threads <= 1:
        return [(start, stop)] if stop > start else []
    return _even_ranges(start, stop, max(threads, min(threads * CHUNKS_PER_THREAD, (stop - start) // MIN_CHUNK)))


def run_parts(job: Callable[[int, int], None], ranges: list[tuple[int, int]]) -> None:
    """``job(lo, hi)`` for every range, on the shared pool (here, when there is one range)."""
    if len(ranges) <= 1:
        for lo, hi in ranges:
            job(lo, hi)
        return
    with _lock:
        if _pool and _pool[0][0] != thread_count():  # torch's count was changed: follow it
            _pool.pop()[1].shutdown(wait=False)
        if not _pool:
            _pool.append((thread_count(), ThreadPoolExecutor(thread_count(), thread_name_prefix="nksr-kernel")))
        pool = _pool[0][1]
    list(pool.map(lambda part: job(*part), ranges))


def on_rows(kernel: Callable[..., None], *args: Any) -> None:
    """``kernel(*args)`` split by rows: each thread gets rows lo:hi of every array argument (all of one length,
    or empty: an empty one is passed whole), the other arguments as they are."""
    n = max(a.shape[0] for a in args if isinstance(a, np.ndarray))

    def job(lo: int, hi: int) -> None:
        kernel(*(a[lo:hi] if isinstance(a, np.ndarray) else a for a in args))

    run_parts(job, chunks(0, n))
