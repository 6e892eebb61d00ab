"""The long-running operators' state machine, without bpy (plain pytest drives it).

A :class:`Task` runs one piece of :class:`Work` for a modal operator: the
operator's timer calls :meth:`Task.tick`, Esc calls :meth:`Task.escape` (the work
is asked to stop and later ticks watch it end), and Blender's ``cancel()`` --
called when Blender drops the operator's handler because its window closed or a
file was loaded -- calls :meth:`Task.cancel`, which waits until nothing runs, so
the next run never finds the last one still holding the engine.

    RUNNING --tick: work done--> FINISHED --fail (finishing failed)--> FAILED
    RUNNING --tick: a failure--> FAILED
    RUNNING --escape--> CANCELLING --tick: work stopped--> CANCELLED
    RUNNING or CANCELLING --cancel (blocking)--> CANCELLED

:class:`CommandChain` is the Work of the engine set-up: commands run one after
the other into a log, by the blocking path and the modal path alike.
"""

from __future__ import annotations

import subprocess
import time
from enum import Enum
from pathlib import Path
from typing import IO, Protocol


class State(Enum):
    RUNNING = "running"
    CANCELLING = "cancelling"  # Esc: the work was asked to stop and has not yet
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


ENDED = frozenset({State.FINISHED, State.FAILED, State.CANCELLED})


class Work(Protocol):
    """What a long-running operator does, in steps that never block (the modal path) or all at once."""

    def tick(self) -> bool:
        """Advance without blocking; True once the work is done.  Raises a failure to report."""
        ...

    def cancel(self, wait: bool = True) -> None:
        """Ask the work to stop; with ``wait`` return only once nothing runs any more."""
        ...

    def settle(self) -> bool:
        """After ``cancel(wait=False)``: look again without blocking; True once nothing runs."""
        ...

    def run_blocking(self) -> None:
        """All of the work, blocking (background mode, scripts).  Raises a failure to report."""
        ...


class Task:
    """One run of ``work`` in the modal path: its state, and the failure that ended it.

    ``failures`` are the exception types to report to the user (they end the task
    as FAILED); anything else propagates, a bug for the operator to clean up after.
    """

    def __init__(self, work: Work, failures: tuple[type[Exception], ...]) -> None:
        self.work = work
        self.failures = failures
        self.state = State.RUNNING
        self.error: Exception | None = None

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    def tick(self) -> State:
        """A timer tick: advance the work (RUNNING) or see whether it stopped (CANCELLING); never blocks."""
        if self.state is State.RUNNING:
            try:
                if self.work.tick():
                    self.state = State.FINISHED
            except self.failures as exc:
                self.fail(exc)
        elif self.state is State.CANCELLING and self.work.settle():
            self.state = State.CANCELLED
        return self.state

    def escape(self) -> bool:
        """Esc: ask the work to stop without waiting.  False (nothing done) unless it was running."""
        if self.state is not State.RUNNING:
            return False
        self.work.cancel(wait=False)
        self.state = State.CANCELLING
        return True

    def cancel(self) -> State:
        """Blender dropped the operator: stop the work and wait until nothing runs.  A no-op once ended."""
        if not self.ended:
            self.work.cancel(wait=True)
            self.state = State.CANCELLED
        return self.state

    def fail(self, error: Exception) -> None:
        """The work, or finishing it (e.g. building the meshes), failed: the task ends with ``error``."""
        self.state, self.error = State.FAILED, error


class StepFailed(Exception):
    """A command of a :class:`CommandChain` exited with an error; the message names the log."""


class CommandChain:
    """Commands run one after the other, their output appended to ``log``: the engine set-up's Work.

    ``what`` names the whole chain in the failure message ("<what> failed; see <log>.").
    """

    def __init__(self, commands: list[list[str]], log: Path, what: str, grace: float = 3.0) -> None:
        self.commands = commands
        self.log = log
        self.what = what
        self.grace = grace  # seconds a stopped command gets to exit before it is killed
        self.started = 0  # commands started so far
        self.process: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self._kill_at: float | None = None  # after cancel(wait=False): when settle() kills the command

    def tick(self) -> bool:
        if self.process is not None:
            code = self.process.poll()
            if code is None:
                return False
            self.process = None
            if code != 0:
                self.close()
                raise StepFailed(f"{self.what} failed; see {self.log}.")
        if self.started == len(self.commands):
            self.close()
            return True
        self._launch(self.commands[self.started])
        return False

    def _launch(self, command: list[str]) -> None:
        print("NKSR:", " ".join(command), flush=True)
        if self._out is None:
            self._out = open(self.log, "ab")  # noqa: SIM115 - closed by close(), on every way out
        try:
            self.process = subprocess.Popen(command, stdout=self._out, stderr=subprocess.STDOUT)
        except OSError:
            self.close()
            raise
        self.started += 1

    def run_blocking(self) -> None:
        while not self.tick():
            assert self.process is not None
            self.process.wait()

    def cancel(self, wait: bool = True) -> None:
        """Stop the running command (terminate, then kill after the grace); no later command starts."""
        self.started = len(self.commands)
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self._kill_at = time.monotonic() + self.grace
            if wait:
                try:
                    self.process.wait(self.grace)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        if wait:
            self.settle()

    def settle(self) -> bool:
        if self.process is not None and self.process.poll() is None:
            if self._kill_at is not None and time.monotonic() >= self._kill_at:
                self.process.kill()
            return False
        self.process = None
        self.close()
        return True

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
