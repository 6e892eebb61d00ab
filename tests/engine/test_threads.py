"""The kernels' thread ranges: chunks cover their rows once, and run_parts hands every range to a thread."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from engine.solver import threads
from engine.solver.threads import CHUNKS_PER_THREAD, MIN_CHUNK, chunks, run_parts


def _check_cover(ranges: list[tuple[int, int]], start: int, stop: int) -> None:
    assert ranges[0][0] == start and ranges[-1][1] == stop
    assert all(lo < hi for lo, hi in ranges)
    assert all(a[1] == b[0] for a, b in zip(ranges[:-1], ranges[1:], strict=True))  # contiguous, no overlap


@pytest.mark.parametrize("count", [2, 3, 8])
@pytest.mark.parametrize("start,stop", [(0, 5), (7, 7 + 3 * MIN_CHUNK + 11), (100, 100 + 1_000_000)])
def test_chunks_cover_the_rows_once_in_enough_ranges(count: int, start: int, stop: int) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(count)
        ranges = chunks(start, stop)
    finally:
        torch.set_num_threads(before)
    _check_cover(ranges, start, stop)
    n = stop - start
    assert len(ranges) <= count * CHUNKS_PER_THREAD
    assert len(ranges) >= min(count, n)  # every thread has work while there are rows for it
    if len(ranges) > count:  # more ranges than threads only where each is worth its dispatch
        assert min(hi - lo for lo, hi in ranges) >= MIN_CHUNK // 2


def test_one_thread_gets_one_range_and_no_rows_none() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert chunks(3, 1_000_000) == [(3, 1_000_000)]
        assert chunks(5, 5) == []
        torch.set_num_threads(2)
        assert chunks(5, 5) == []
    finally:
        torch.set_num_threads(before)


def test_run_parts_gives_every_chunk_to_a_pool_thread_once_as_threads_come_free() -> None:
    """The first range waits until every other range is done: only a pool whose free thread takes the next range
    (not one that hands each thread a fixed share) gets there.  Each range runs once, on the pool's threads."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        ranges = chunks(0, 40 * MIN_CHUNK)
        assert len(ranges) == 2 * CHUNKS_PER_THREAD
        seen = np.zeros(40 * MIN_CHUNK, np.int64)
        names: set[str] = set()
        lock = threading.Lock()
        others_done = threading.Event()
        waited: list[bool] = []

        def job(lo: int, hi: int) -> None:
            if lo == 0:
                waited.append(others_done.wait(timeout=30))
            seen[lo:hi] += 1
            with lock:
                names.add(threading.current_thread().name)
                if (seen[ranges[1][0]:] == 1).all():
                    others_done.set()

        run_parts(job, ranges)
    finally:
        torch.set_num_threads(before)
    assert waited == [True]  # the other thread ran all the other ranges while the first one waited
    assert (seen == 1).all()
    assert names and all(name.startswith("nksr-kernel") for name in names)
    assert threads._pool and threads._pool[0][0] == 2
