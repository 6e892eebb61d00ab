"""The cancel callback stops a running solve within one iteration."""

from __future__ import annotations

import pytest

from engine import Cancelled, reconstruct
from tests import shapes


@pytest.mark.parametrize("stop_after", [1, 7])
def test_cancel_stops_the_solver_within_one_iteration(stop_after: int) -> None:
    p, n = shapes.sphere(5000)
    seen: list[str] = []

    def progress(stage: str, fraction: float, text: str) -> None:
        if stage == "solve" and "iteration" in text:
            seen.append(text)

    with pytest.raises(Cancelled):
        reconstruct(p, n, device="cpu", progress=progress, cancel=lambda: len(seen) >= stop_after)
    assert len(seen) == stop_after  # no iteration ran after the one that saw the request


def test_cancel_before_start() -> None:
    p, n = shapes.sphere(500)
    with pytest.raises(Cancelled):
        reconstruct(p, n, device="cpu", cancel=lambda: True)
