"""Progress, cancellation and per-stage timing of one run, shared by every stage and chunk."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .errors import Cancelled

ProgressFn = Callable[[str, float, str], None]
CancelFn = Callable[[], bool]


class Run:
    """Progress, cancellation and per-stage timing of one reconstruction."""

    def __init__(self, progress: ProgressFn | None, cancel: CancelFn | None) -> None:
        self.progress = progress
        self.cancel = cancel
        self.seconds: dict[str, float] = {}

    def check(self) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled()

    def report(self, stage: str, fraction: float, text: str = "") -> None:
        if self.progress is not None:
            self.progress(stage, float(min(max(fraction, 0.0), 1.0)), text)
        self.check()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.report(name, 0.0)
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        self.report(name, 1.0)
