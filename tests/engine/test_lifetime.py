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

import numpy as np
import pytest

from engine.service.client import EngineClient, EngineStalled, EngineTimeout, Job
from tests import shapes
from tests.engine.engines import ENV, LONG, NORMALS, POINTS, PYTHON, TIGHT, all_gone_within, descendants

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

ORPHAN_GRACE = 5.0  # seconds within which every process the engine started must be gone after the engine is

# A sphere in 8 chunks on 2 worker processes, real solves (the hook holds the engine, not its workers): many
# seconds of work, of which the tests need the first one or two.
CHUNKED = {**TIGHT, "chunk_size": 1.0, "executor": "processes", "workers": 2}


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


# -- a stalled engine ----------------------------------------------------------------------------------------------

STALL = 1.5  # seconds: small, so that the tests are quick; the default is client.STALL_TIMEOUT


def test_a_stopped_engine_is_noticed_within_the_stall_limit_and_killed(tmp_path: Path) -> None:
    client = EngineClient(PYTHON, log_path=tmp_path / "engine.log", env=ENV, stall_timeout=STALL)
    try:
        engine = client.start()["pid"]
        job = client.submit(POINTS, NORMALS, **LONG)
        end = time.monotonic() + 60
        while job.progress is None or job.progress.stage != "solve":
            assert time.monotonic() < end and not job.done, job.error
            job.poll()
            time.sleep(0.02)
        os.kill(engine, signal.SIGSTOP)  # what a frozen or suspended engine looks like from outside
        stopped = time.monotonic()
        with pytest.raises(EngineStalled, match=r"has not answered for \d+ s \(stalled") as info:
            job.wait()  # no timeout: only the stall check ends it
        assert STALL - 0.2 < time.monotonic() - stopped < STALL + 1.0
        assert info.value.hint and all_gone_within({engine}, 2.0) == set()
        assert client.reconstruct(POINTS[:5], NORMALS[:5], _benchmark_echo_faces=3).faces.shape == (3, 3)
    finally:
        client.close()


def test_a_request_to_a_stopped_engine_is_noticed_within_the_stall_limit(tmp_path: Path) -> None:
    """A request larger than the pipe holds (here about 50 MB) to an engine frozen before it reads: the write
    itself must give up, not block the caller (Blender's UI thread) for ever."""
    client = EngineClient(PYTHON, log_path=tmp_path / "engine.log", env=ENV, stall_timeout=STALL)
    try:
        engine = client.start()["pid"]
        os.kill(engine, signal.SIGSTOP)
        points = np.random.default_rng(0).normal(size=(1_000_000, 3))
        stopped = time.monotonic()
        with pytest.raises(EngineStalled, match="took nothing of the request"):
            client.submit(points, points, device="cpu")
        assert time.monotonic() - stopped < STALL + 1.0
        assert all_gone_within({engine}, 2.0) == set()
        assert client.reconstruct(POINTS[:5], NORMALS[:5], _benchmark_echo_faces=3).faces.shape == (3, 3)
    finally:
        client.close()


@pytest.mark.slow
def test_a_long_silent_stage_is_not_a_stall(tmp_path: Path) -> None:
    """Chunks on worker processes: the engine's main thread sends nothing between two finished chunks (seconds
    each, longer than the stall limit), but its heartbeat thread keeps beating."""
    client = EngineClient(PYTHON, log_path=tmp_path / "engine.log", env=ENV, stall_timeout=STALL)
    points, normals = shapes.sphere(20_000, radius=2.0)
    try:
        client.start()
        job = client.submit(points + 100.0, normals, device="cpu", chunk_size=1.0, executor="processes", workers=2)
        arrivals: list[tuple[float, str]] = []
        while not job.done:
            arrivals += [(time.monotonic(), m.type) for m in job.poll()]
            time.sleep(0.1)  # a Blender timer
        assert job.error is None and job.result.stats["chunks"] == 8
        times = [t for t, _ in arrivals]
        news = [t for t, kind in arrivals if kind != "heartbeat"]
        assert max(np.diff(news)) > STALL, "a silent stretch longer than the stall limit, or this proves nothing"
        assert max(np.diff(times)) < STALL - 0.5, "heartbeats came through it"
    finally:
        client.close()


# -- nothing listens beyond this machine ----------------------------------------------------------------------------

def listening(pid: int) -> set[tuple[str, int]]:
    """The (address, port) pairs process ``pid`` listens on (TCP, IPv4 and IPv6)."""
    psutil = pytest.importorskip("psutil")  # installed with distributed
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections("inet")
            if c.status == psutil.CONN_LISTEN}


def test_the_in_process_dask_cluster_listens_on_loopback_only() -> None:
    """While a chunked run on the ``dask`` executor is solving its chunks, in this process."""
    pytest.importorskip("distributed")
    from engine import reconstruct
    from engine.errors import Cancelled

    seen: list[set[tuple[str, int]]] = []

    def look(stage: str, fraction: float, text: str) -> None:
        if stage == "chunks" and " solved" in text and not seen:  # the cluster is up: a chunk came back
            seen.append(listening(os.getpid()))

    points, normals = shapes.sphere(5_000, radius=2.0)
    with pytest.raises(Cancelled):  # once it has looked
        reconstruct(points, normals, device="cpu", chunk_size=1.0, executor="dask", workers=2, progress=look,
                    cancel=lambda: bool(seen))
    assert seen, "the chunks stage was reached"
    public = {(ip, port) for ip, port in seen[0] if ip not in ("127.0.0.1", "::1")}
    assert public == set(), f"listening beyond loopback: {sorted(public)}"
