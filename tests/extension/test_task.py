"""The long-running operators' state machine (nksr_blender/task.py), driven without Blender.

``nksr_blender/__init__.py`` imports bpy, so the module is loaded by its path:
it must stand alone (standard library only).  The work is real: child
processes that sleep, write and fail.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_task() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nksr_task", ROOT / "nksr_blender" / "task.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and enums look their module up
    spec.loader.exec_module(module)
    return module


task = _load_task()
State = task.State


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


SLEEP = py("import time; time.sleep(60)")


def chain(tmp_path: Path, *commands: list[str]) -> task.CommandChain:
    return task.CommandChain(list(commands), tmp_path / "setup.log", "Creating the environment", grace=1.0)


def tick_until_ended(t: task.Task, limit: float = 10.0) -> State:
    deadline = time.monotonic() + limit
    while not t.ended:
        assert time.monotonic() < deadline, t.state
        t.tick()
        time.sleep(0.02)
    return t.state


def test_ticks_run_the_steps_in_order_and_finish(tmp_path: Path) -> None:
    work = chain(tmp_path, py("print('first')"), py("print('second')"))
    t = task.Task(work, (task.StepFailed,))
    assert t.tick() is State.RUNNING and work.started == 1
    assert tick_until_ended(t) is State.FINISHED
    assert (tmp_path / "setup.log").read_text().split() == ["first", "second"]
    assert work._out is None  # the log is closed


def test_a_failing_step_fails_the_task_naming_the_log_and_stops_the_chain(tmp_path: Path) -> None:
    work = chain(tmp_path, py("import sys; sys.exit(3)"), py("print('never')"))
    t = task.Task(work, (task.StepFailed,))
    assert tick_until_ended(t) is State.FAILED
    assert isinstance(t.error, task.StepFailed)
    assert str(t.error) == f"Creating the environment failed; see {tmp_path / 'setup.log'}."
    assert "never" not in (tmp_path / "setup.log").read_text()
    assert not t.escape() and t.cancel() is State.FAILED  # an ended task stays as it ended


def test_other_exceptions_are_bugs_and_propagate(tmp_path: Path) -> None:
    work = chain(tmp_path, py("pass"))
    t = task.Task(work, (task.StepFailed,))
    work.commands = [[str(tmp_path / "missing-program")]]
    with pytest.raises(OSError):
        t.tick()
    assert t.state is State.RUNNING and work._out is None  # the log was still closed


def test_escape_stops_the_step_without_blocking_and_ticks_see_it_end(tmp_path: Path) -> None:
    work = chain(tmp_path, SLEEP, py("print('never')"))
    t = task.Task(work, (task.StepFailed,))
    t.tick()
    process = work.process
    t0 = time.perf_counter()
    assert t.escape() and t.state is State.CANCELLING
    assert time.perf_counter() - t0 < 0.2
    assert not t.escape()  # a second Esc does nothing more
    assert tick_until_ended(t, limit=2.0) is State.CANCELLED
    assert process.poll() is not None and work._out is None
    assert "never" not in (tmp_path / "setup.log").read_text()


def test_escape_kills_a_step_that_ignores_terminate_after_the_grace(tmp_path: Path) -> None:
    stubborn = py("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
                  "time.sleep(60)")
    work = chain(tmp_path, stubborn)
    t = task.Task(work, (task.StepFailed,))
    t.tick()
    while "up" not in (tmp_path / "setup.log").read_text():  # SIGTERM is ignored from here on
        time.sleep(0.02)
    t0 = time.monotonic()
    t.escape()
    assert tick_until_ended(t, limit=3.0) is State.CANCELLED
    assert 0.9 < time.monotonic() - t0 < 2.0  # the grace is 1 s


def test_cancel_blocks_until_nothing_runs(tmp_path: Path) -> None:
    """What Blender's cancel() does when it drops the operator: no tick follows, so it must wait."""
    work = chain(tmp_path, SLEEP, py("print('never')"))
    t = task.Task(work, (task.StepFailed,))
    t.tick()
    process = work.process
    assert t.cancel() is State.CANCELLED
    assert process.poll() is not None and work._out is None
    assert t.tick() is State.CANCELLED and work.process is None  # nothing more starts


def test_cancel_after_escape_waits_for_the_stop(tmp_path: Path) -> None:
    """Esc, then Blender drops the operator before a tick saw the step end."""
    work = chain(tmp_path, SLEEP)
    t = task.Task(work, (task.StepFailed,))
    t.tick()
    process = work.process
    t.escape()
    assert t.cancel() is State.CANCELLED and process.poll() is not None


def test_cancel_after_finishing_changes_nothing(tmp_path: Path) -> None:
    t = task.Task(chain(tmp_path, py("pass")), (task.StepFailed,))
    assert tick_until_ended(t) is State.FINISHED
    assert t.cancel() is State.FINISHED and not t.escape()


def test_finishing_can_still_fail(tmp_path: Path) -> None:
    """Building the meshes after the work is done may fail: the task then ends failed, with that error."""
    t = task.Task(chain(tmp_path, py("pass")), (task.StepFailed,))
    tick_until_ended(t)
    error = ValueError("no room for the mesh")
    t.fail(error)
    assert t.state is State.FAILED and t.error is error


def test_the_blocking_path_runs_the_same_steps(tmp_path: Path) -> None:
    chain(tmp_path, py("print('first')"), py("print('second')")).run_blocking()
    assert (tmp_path / "setup.log").read_text().split() == ["first", "second"]
    failing = chain(tmp_path, py("import sys; sys.exit(1)"), py("print('never')"))
    with pytest.raises(task.StepFailed, match="see .*setup.log"):
        failing.run_blocking()
    assert "never" not in (tmp_path / "setup.log").read_text()
