"""The engine client: start, jobs polled or waited for, cancel, crashes, timeouts, bad interpreters, no orphans."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine import __version__
from engine.service import protocol
from engine.service.client import (
    ClientError,
    EngineClient,
    EngineCrashed,
    EngineTimeout,
    EngineUnavailable,
    InvalidRequest,
    Job,
    RemoteError,
)
from engine.service.server import synthetic_mesh
from tests import shapes
from tests.engine.engines import (
    COLORS,
    ENV,
    LONG,
    NORMALS,
    POINTS,
    PYTHON,
    ROOT,
    alive,
    collapse,
    expected_stages,
    gone_within,
    in_process,
    python_wrapper,
    stub_engine_dir,
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineClient]:
    c = EngineClient(PYTHON, log_path=tmp_path_factory.mktemp("client") / "engine.log", env=ENV)
    yield c
    c.close()


def wait_for_solve(job: Job) -> None:
    """Poll like a UI timer until the solver runs."""
    end = time.monotonic() + 60
    while job.progress is None or job.progress.stage != "solve":
        assert time.monotonic() < end and not job.done, job.error
        job.poll()
        time.sleep(0.02)


def echo(client: EngineClient, faces: int = 10) -> None:
    result = client.reconstruct(POINTS[:5], NORMALS[:5], _benchmark_echo_faces=faces, timeout=60)
    assert result.faces.shape == (faces, 3)


def test_start_says_hello_once(client: EngineClient) -> None:
    hello = client.start()
    assert hello["engine_version"] == __version__ and hello["protocol_version"] == protocol.PROTOCOL_VERSION
    assert hello["pid"] == client.pid and alive(hello["pid"])
    assert client.start() is hello and client.running


def test_reconstruct_matches_in_process(client: EngineClient) -> None:
    stages: list[str] = []
    result = client.reconstruct(POINTS, NORMALS, COLORS, device="cpu", timeout=120,
                                on_progress=lambda stage, fraction, text: stages.append(stage))
    ref = in_process()
    assert collapse(stages) == expected_stages(len(ref.stats["levels"]))
    assert np.array_equal(result.faces, ref.faces) and result.faces.dtype == np.int32
    assert np.array_equal(result.origin, ref.origin)
    np.testing.assert_allclose(result.vertices64, ref.vertices64, atol=1e-5)
    np.testing.assert_allclose(result.vertices, ref.vertices, atol=1e-4)
    np.testing.assert_allclose(result.colors, ref.colors, atol=1e-6)  # type: ignore[arg-type]
    assert result.normals is not None and result.stats["faces"] == len(ref.faces)


def test_cancel_mid_solve_then_the_next_job_on_the_same_engine_polled_from_a_timer(client: EngineClient) -> None:
    pid = client.start()["pid"]
    job = client.submit(POINTS, NORMALS, **LONG)
    with pytest.raises(ClientError, match="already running"):
        client.submit(POINTS, NORMALS)
    wait_for_solve(job)
    t = time.monotonic()
    job.cancel()
    assert time.monotonic() - t < 1.0
    assert job.done and job.cancelled and isinstance(job.error, RemoteError) and job.error.code == "cancelled"
    with pytest.raises(RemoteError, match="cancelled"):
        job.result  # noqa: B018

    job = client.submit(POINTS, NORMALS, device="cpu")
    slowest, seen = 0.0, 0
    while not job.done:
        t = time.perf_counter()
        seen += len(job.poll())
        slowest = max(slowest, time.perf_counter() - t)
        time.sleep(0.1)  # a Blender timer's interval
    assert client.pid == pid  # the same engine
    assert job.error is None and np.array_equal(job.result.faces, in_process().faces)
    assert seen > 3 and slowest < 0.1
    assert job.poll() == []  # done: nothing more


def test_errors_of_the_engine_and_of_the_request(client: EngineClient) -> None:
    with pytest.raises(RemoteError) as info:
        client.reconstruct(POINTS[:3], NORMALS[:3], timeout=60)
    err = info.value
    assert err.code == "input" and err.reason == "too_few_points" and "3 usable points" in err.message and err.hint
    pid = client.pid
    with pytest.raises(InvalidRequest, match="Unknown option 'voxelsize'"):
        client.submit(POINTS, NORMALS, voxelsize=0.1)
    with pytest.raises(InvalidRequest, match="numeric"):
        client.submit(np.array([["a", "b", "c"]]), NORMALS)
    with pytest.raises(InvalidRequest, match="not an array"):
        client.submit([[1.0, 2.0], [3.0]], NORMALS)
    result = client.reconstruct(POINTS.astype(np.float16), NORMALS.astype(np.int64), _benchmark_echo_faces=3)
    assert result.stats["benchmark_echo"] and client.pid == pid


def test_large_arrays_cross_the_pipes_intact(client: EngineClient) -> None:
    """Megabytes each way, so reads and writes span many pipe buffers (content of the benchmark hook's mesh)."""
    rng = np.random.default_rng(1)
    points = rng.normal(size=(300_000, 3)).astype(np.float32)
    result = client.reconstruct(points, points, rng.integers(0, 255, (300_000, 3), np.uint8),
                                _benchmark_echo_faces=600_000, mesh_edges=True, timeout=60)
    sent = synthetic_mesh(600_000, colors=True, edges=True)
    assert result.stats["points_in"] == 300_000
    for name in ("faces", "colors", "normals", "edges", "corner_edges"):
        assert np.array_equal(getattr(result, name), sent[name]), name
    assert np.array_equal(result.local_vertices, sent["vertices"])


def test_engine_killed_mid_job_then_a_fresh_engine(client: EngineClient) -> None:
    old = client.start()["pid"]
    job = client.submit(POINTS, NORMALS, **LONG)
    wait_for_solve(job)
    os.kill(old, signal.SIGKILL)
    with pytest.raises(EngineCrashed) as info:
        job.wait(timeout=30)
    assert "SIGKILL" in info.value.message and "engine log" in info.value.message and info.value.hint
    assert not alive(old) and not client.running
    echo(client)
    assert client.pid != old and client.running


def test_close_leaves_no_process(client: EngineClient) -> None:
    client.start()
    proc = client._proc
    assert proc is not None
    client.close()
    assert proc.returncode == 0 and not alive(proc.pid) and client.pid is None
    client.close()  # idempotent


# -- a stuck engine (a stub that never answers) --------------------------------------------------------------------


@pytest.fixture
def stuck(tmp_path: Path) -> Iterator[EngineClient]:
    c = EngineClient(PYTHON, engine_dir=stub_engine_dir(tmp_path), log_path=tmp_path / "stub.log", env=ENV)
    yield c
    c.close(timeout=0.2)


def test_wait_times_out_and_kills(stuck: EngineClient) -> None:
    pid = stuck.start()["pid"]
    job = stuck.submit(POINTS, NORMALS)
    t = time.monotonic()
    with pytest.raises(EngineTimeout, match="within 0.5 s"):
        job.wait(timeout=0.5)
    assert 0.5 <= time.monotonic() - t < 2.0
    assert not alive(pid) and job.progress is not None and job.progress.text == "stuck"


def test_cancel_kills_an_engine_that_does_not_stop(stuck: EngineClient) -> None:
    pid = stuck.start()["pid"]
    job = stuck.submit(POINTS, NORMALS)
    t = time.monotonic()
    job.cancel(grace=0.3, wait=False)  # a UI: returns at once, the timer's polls do the rest
    assert time.monotonic() - t < 0.2 and not job.done
    while not job.done:
        job.poll()
        time.sleep(0.05)
    assert 0.3 <= time.monotonic() - t < 1.5
    assert isinstance(job.error, RemoteError) and job.error.code == "cancelled" and "was stopped" in job.error.message
    assert not alive(pid)


def test_close_kills_an_engine_that_does_not_exit(stuck: EngineClient) -> None:
    pid = stuck.start()["pid"]
    stuck.close(timeout=0.2)
    assert not alive(pid)


def test_protocol_mismatch_is_refused(tmp_path: Path) -> None:
    c = EngineClient(PYTHON, engine_dir=stub_engine_dir(tmp_path, protocol_version=99), log_path=tmp_path / "l")
    with pytest.raises(EngineUnavailable, match="protocol 99") as info:
        c.start()
    assert "Reinstall" in info.value.hint and c.pid is None


# -- interpreters that cannot run the engine ---------------------------------------------------------------------------


def test_nonexistent_interpreter(tmp_path: Path) -> None:
    c = EngineClient(tmp_path / "no" / "python3", log_path=tmp_path / "l")
    with pytest.raises(EngineUnavailable) as info:
        c.start()
    assert str(tmp_path / "no" / "python3") in info.value.message and "torch" in info.value.hint
    with pytest.raises(EngineUnavailable):
        c.submit(POINTS, NORMALS)


def test_interpreter_without_packages(tmp_path: Path) -> None:
    """``-S``: no site-packages, so neither numpy nor torch."""
    python = python_wrapper(tmp_path, "bare-python", f'exec "{PYTHON}" -S "$@"')
    with pytest.raises(EngineUnavailable) as info:
        EngineClient(python, log_path=tmp_path / "l").start()
    msg = info.value.message
    assert str(python) in msg and "exit code 1" in msg and "No module named 'numpy'" in msg
    assert "pip install torch numpy" in info.value.hint


def test_interpreter_without_torch(tmp_path: Path) -> None:
    fake = tmp_path / "site"
    fake.mkdir()
    (fake / "torch.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    python = python_wrapper(tmp_path, "numpy-only-python", f'PYTHONPATH="$PYTHONPATH:{fake}" exec "{PYTHON}" "$@"')
    with pytest.raises(EngineUnavailable, match="cannot import torch") as info:
        EngineClient(python, log_path=tmp_path / "l", env=ENV).start()
    assert "pip install torch" in info.value.hint


def test_start_without_waiting_is_polled_to_its_hello_or_its_failure(tmp_path: Path) -> None:
    """The UI's start: spawn, then look at the pipe from a timer; never a call that waits for torch's import."""
    good = EngineClient(PYTHON, log_path=tmp_path / "good", env=ENV)
    try:
        t0 = time.perf_counter()
        assert good.start(wait=False) is None and good.starting and not good.running
        polls = 0
        while (hello := good.poll_start()) is None:
            polls += 1
            assert time.perf_counter() - t0 < 120
            time.sleep(0.05)
        assert hello["pid"] == good.pid and good.running and polls > 0
        assert good.reconstruct(POINTS[:5], NORMALS[:5], _benchmark_echo_faces=4).faces.shape == (4, 3)
    finally:
        good.close()
    bare = EngineClient(python_wrapper(tmp_path, "bare-python", f'exec "{PYTHON}" -S "$@"'), log_path=tmp_path / "l")
    bare.start(wait=False)
    with pytest.raises(EngineUnavailable, match="No module named 'numpy'"):
        while bare.poll_start() is None:
            time.sleep(0.05)
    assert not bare.starting and not bare.running


def test_missing_engine_files(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match="engine's files are missing"):
        EngineClient(PYTHON, engine_dir=tmp_path).start()


# -- the light modules and the bundled layout ------------------------------------------------------------------------
# (That the protocol and the client load without torch is tests/engine/test_architecture.py's check.)


PARENT = """
import os, sys, time
sys.path.insert(0, {bundle!r})
from nksr_blender.engine.service.client import EngineClient  # the extension's name for the package
client = EngineClient(sys.executable, engine_dir={engine_dir!r}, log_path={log!r}, env={env!r})
hello = client.start()
assert "torch" not in sys.modules
print(hello["pid"], flush=True)
if {stay}:
    time.sleep(600)
"""


def test_no_engine_outlives_its_parent(tmp_path: Path) -> None:
    """A parent that exits without close() has its engine stopped by the finalizer (here a stub that ignores
    EOF, so it takes the kill); a real engine, bundled as in the extension, exits when its parent is killed."""
    bundle = tmp_path / "addons"
    shutil.copytree(ROOT / "engine", bundle / "nksr_blender" / "engine",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (bundle / "nksr_blender" / "__init__.py").write_text("")
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    parents = [subprocess.Popen([PYTHON, "-c", textwrap.dedent(PARENT.format(
        bundle=str(bundle), engine_dir=engine_dir, log=str(tmp_path / f"{stay}.log"), env=ENV, stay=stay))],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
        for engine_dir, stay in ((str(stub_engine_dir(tmp_path)), False), (None, True))]
    pids = []
    for p in parents:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.strip().isdigit(), (tmp_path / "True.log").read_text()[-2000:]
        pids.append(int(line))
    assert parents[0].wait(30) == 0 and not alive(pids[0])  # the finalizer waited for its engine to go
    assert parents[1].poll() is None
    os.kill(parents[1].pid, signal.SIGKILL)  # no finalizer runs: the engine sees EOF on stdin
    parents[1].wait()
    assert gone_within(pids[1], 10)



def test_points_alone_get_estimated_normals_facing_the_sensor(client: EngineClient) -> None:
    centre = POINTS.mean(axis=0)
    plain = client.reconstruct(POINTS, device="cpu", mise_iter=0)
    assert plain.stats["normals_estimated"] and plain.stats["normals_orientation"] != "sensor"
    # One scanner position per point (as merged multi-view scans carry), all outside: the same sphere.
    seen = client.reconstruct(POINTS, sensor=POINTS + 5 * NORMALS, device="cpu", mise_iter=0)
    assert seen.stats["normals_orientation"] == "sensor"
    for result in (plain, seen):
        radius = np.linalg.norm(result.vertices64 - centre, axis=1)
        assert np.abs(radius - 2.0).max() < 0.5 * result.stats["voxel_size"]


@pytest.mark.slow
def test_chunked_job_on_worker_processes_keeps_the_stream_clean(client: EngineClient) -> None:
    """Chunks solved by a process pool inside the engine: its workers must not write to the protocol's stdout."""
    points, normals = shapes.sphere(20_000, radius=2.0)
    stages: list[str] = []
    result = client.reconstruct(points + 100.0, normals, device="cpu", chunk_size=1.0, executor="processes",
                                workers=2, timeout=300, on_progress=lambda stage, fraction, text: stages.append(stage))
    assert result.stats["chunks"] == 8 and result.stats["executor"] == "processes (2)"
    assert "chunks" in stages
    radius = np.linalg.norm(result.vertices64 - 100.0, axis=1)
    assert np.abs(radius - 2.0).max() < 0.5 * result.stats["voxel_size"]
    echo(client)  # the stream is still in step


def test_a_temporary_log_is_removed_at_close_unless_an_error_named_it(tmp_path: Path) -> None:
    quiet = EngineClient(PYTHON, env=ENV)
    log = quiet.log_path
    assert log.exists()
    echo(quiet)
    quiet.close()
    assert not log.exists(), "no litter in the temp folder"
    named = EngineClient(python_wrapper(tmp_path, "bare-python", f'exec "{PYTHON}" -S "$@"'))
    with pytest.raises(EngineUnavailable) as info:
        named.start()
    assert str(named.log_path) in str(info.value)
    named.close()
    assert named.log_path.exists(), "the message tells the user to read it"
    named.log_path.unlink()


def test_an_interpreter_that_is_a_folder_is_named_as_such(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python3").write_text("")
    with pytest.raises(EngineUnavailable) as info:
        EngineClient(venv, log_path=tmp_path / "l").start()
    msg = info.value.message
    assert "is a folder, not a Python interpreter" in msg and str(venv / "bin" / "python3") in msg
    assert "missing" not in msg and "Permission denied" not in msg and info.value.hint
