"""Nothing outlives the engine, nothing listens, a stalled engine is noticed (README, Reliability).

Real engines (``python -m engine serve`` through :class:`EngineClient`), real
signals, and the processes and sockets as /proc shows them (Linux).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.client import EngineClient, EngineTimeout, Job
from tests import shapes
from tests.engine.engines import ENV, LONG, PYTHON, all_gone_within, descendants

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

ORPHAN_GRACE = 5.0  # seconds within which every process the engine started must be gone after the engine is

# A sphere in 8 chunks on 2 worker processes, each chunk's solver kept busy (LONG) until cancel or death.
CHUNKED = {**LONG, "chunk_size": 1.0, "executor": "processes", "workers": 2}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[EngineClient]:
    c = EngineClient(PYTHON, log_path=tmp_path / "engine.log", env=ENV)
    yield c
    c.close(timeout=0.5)


def start_workers(client: EngineClient) -> tuple[Job, int, set[int]]:
    """A chunked job running on its worker processes: the job, the engine's pid, and every process below it."""
    points, normals = shapes.sphere(20_000, radius=2.0)
    engine = client.start()["pid"]
    job = client.submit(points + 100.0, normals, **CHUNKED)
    end = time.monotonic() + 120
    while len(below := descendants(engine)) < 3:  # two workers and the resource tracker
        assert time.monotonic() < end and not job.done, (below, job.error)
        job.poll()
        time.sleep(0.1)
    time.sleep(1.0)  # the workers bind themselves to the engine first thing, then import torch and solve
    job.poll()
    assert not job.done, job.error
    return job, engine, descendants(engine)


def test_kill_9_of_the_engine_takes_its_worker_processes_along(client: EngineClient) -> None:
    job, engine, below = start_workers(client)
    os.kill(engine, signal.SIGKILL)
    assert not all_gone_within({engine}, 5.0)
    assert all_gone_within(below, ORPHAN_GRACE) == set(), "orphaned worker processes"


def test_the_clients_timeout_kill_takes_the_worker_processes_along(client: EngineClient) -> None:
    job, engine, below = start_workers(client)
    with pytest.raises(EngineTimeout):
        job.wait(timeout=0.5)
    assert all_gone_within({engine, *below}, ORPHAN_GRACE) == set(), "orphaned worker processes"
