"""Figures the stats promise (README, "mesh.stats reports") that no other test reads."""

from __future__ import annotations

import torch

from engine import reconstruct
from tests import shapes


def test_stats_report_the_threads_the_run_used() -> None:
    """The CPU thread count is in the stats, so timings can be read against it."""
    before = torch.get_num_threads()
    p, n = shapes.sphere(2000)
    try:
        torch.set_num_threads(1)
        assert reconstruct(p, n, device="cpu", voxel_size=0.2).stats["threads"] == 1
    finally:
        torch.set_num_threads(before)
    assert reconstruct(p, n, device="cpu", voxel_size=0.2).stats["threads"] == before
