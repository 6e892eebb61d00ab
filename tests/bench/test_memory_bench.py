"""bench/memory.py's reading of the guard, and the worker's extra options (bench/run_method.py)."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import memory  # noqa: E402
import run_method  # noqa: E402

from engine.large.memory import COMPILED, FACES_PER_UNKNOWN, estimate_unknowns, job_bytes  # noqa: E402
from tests.shapes import sphere  # noqa: E402


@pytest.mark.parametrize("rounds", [0, 1, 3])
def test_the_guards_unknowns_are_recovered_from_its_estimate(rounds: int) -> None:
    """The fit is made against the unknowns the guard estimated; the bench recovers them from the estimate, so
    its inverse must follow job_bytes (a term added there and not here would skew every fitted figure)."""
    p, _ = sphere(20_000)
    x = torch.from_numpy(p / np.linalg.norm(p.max(0) - p.min(0))).float()
    estimate = job_bytes(x, 0.01, 3, COMPILED, mise_iter=rounds)
    fp = {**dataclasses.asdict(COMPILED), "faces_per_unknown": FACES_PER_UNKNOWN}
    stats = {"memory_estimate_bytes": estimate, "points_used": x.shape[0], "mise_iter": rounds}
    assert memory.estimated_unknowns(stats, fp) == pytest.approx(estimate_unknowns(x, 0.01, 3), rel=1e-6)


def test_worker_options_are_python_literals_or_words() -> None:
    assert run_method.option("mise_iter=2") == ("mise_iter", 2)
    assert run_method.option("memory_limit_gb=64.5") == ("memory_limit_gb", 64.5)
    assert run_method.option("trim=False") == ("trim", False)
    assert run_method.option("device=cpu") == ("device", "cpu")
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        run_method.option("mise_iter")
