"""Step 11: one chunk as a task: its points, solved with bounded memory and no knowledge of its neighbours.

:func:`solve_chunk` is a picklable task for any :mod:`engine.large.executors`
executor; it returns a compact :class:`ChunkField` per chunk.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..device import select_device
from ..prior.model import level_scales
from ..progress import CancelFn, ProgressFn, Run
from ..solver.fitting import solve_levels
from ..solver.hierarchy import Level, build_levels
from ..solver.system import Weights
from ..solver.voxels import VoxelIndex
from .partition import ChunkedCloud


@dataclass
class ChunkTask:
    """One chunk to solve: its points relative to its core's lower corner (keeps float32 exact)."""

    index: int
    count: int
    cell: tuple[int, int, int]
    lo: tuple[int, int, int]  # core's lower corner, global voxel units
    points: np.ndarray  # (n, 3) float32, voxel units relative to lo
    normals: np.ndarray  # (n, 3) float32 unit
    depth: int
    weights: Weights
    solver_tol: float
    solver_max_iter: int
    device: str
    cancel_token: Any = None  # an executors token with ``is_set()``, for executors in other processes
    trust: np.ndarray | None = None  # (n,) float32 each point's weight in the fit (solver/trust.py)
    prior_log2: np.ndarray | None = None  # (n,) float32 each point's log2 smoothness factor (engine/prior)
    bridge: bool = True  # coarse levels span gaps in the data (solver/hierarchy.py build_levels)

    @property
    def label(self) -> str:
        return f"chunk {self.index + 1}/{self.count}: "


@dataclass
class ChunkField:
    """A solved chunk, compact enough to keep every chunk of a scene: per level voxels and coefficients."""

    index: int
    cell: tuple[int, int, int]
    lo: tuple[int, int, int]
    levels: list[tuple[float, np.ndarray, np.ndarray]]  # (size, ijk (M, 3) int32 relative to lo, coeffs (M,) f4)
    points: int
    iterations: list[int]
    residuals: list[float]
    seconds: float

    @property
    def unknowns(self) -> int:
        return sum(ijk.shape[0] for _, ijk, _ in self.levels)

    def materialise(self, device: torch.device, box_lo: np.ndarray, box_hi: np.ndarray) -> list[Level]:
        """Evaluable levels holding only the voxels whose support reaches the box (global voxel units)."""
        out = []
        lo = np.asarray(self.lo, dtype=np.int64)
        for depth, (size, ijk, coeffs) in enumerate(self.levels):
            rel_lo, rel_hi = (box_lo - lo) / size, (box_hi - lo) / size
            # a voxel v touches points whose cell at this size is v-1, v or v+1: [v-1, v+2) voxels; an axis at a
            # time (no (M, 3) temporaries and no reduction along rows: 5x quicker on 3M voxels)
            keep = np.ones(ijk.shape[0], dtype=bool)
            for axis in range(3):
                column = ijk[:, axis]
                keep &= (column <= rel_hi[axis] + 1) & (column >= rel_lo[axis] - 2)
            if not keep.any():
                continue
            level = Level(depth=depth, size=size,
                          index=VoxelIndex(torch.from_numpy(ijk[keep].astype(np.int64)).to(device)))
            level.set_coeffs(torch.from_numpy(coeffs[keep]).to(device))
            out.append(level)
        return out


def solve_chunk(task: ChunkTask, progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> ChunkField:
    """Build and solve one chunk's hierarchy; runs in any process (imports nothing of the caller's)."""
    start = time.perf_counter()
    token = task.cancel_token
    if cancel is None and token is not None:
        cancel = token.is_set
    run = Run(progress, cancel)
    dev = select_device(task.device)
    x = torch.from_numpy(task.points).to(dev)
    nrm = torch.from_numpy(task.normals).to(dev)
    trust = None if task.trust is None else torch.from_numpy(task.trust).to(dev)
    levels = build_levels(x, task.depth, task.bridge)
    scales = (None if task.prior_log2 is None
              else level_scales(levels, x, torch.from_numpy(task.prior_log2).to(dev)))
    iterations, residuals = solve_levels(levels, x, nrm, task.weights, task.solver_tol, task.solver_max_iter, run,
                                         task.label, trust=trust, smooth_scales=scales)
    packed = []
    for lv in levels:
        assert lv.coeffs is not None
        packed.append((lv.size, lv.ijk.to(torch.int32).cpu().numpy(), lv.coeffs.float().cpu().numpy()))
    return ChunkField(task.index, task.cell, task.lo, packed, int(x.shape[0]), iterations, residuals,
                      time.perf_counter() - start)


def tasks(cc: ChunkedCloud, normals: np.ndarray, *, depth: int, weights: Weights, solver_tol: float,
          solver_max_iter: int, device: str, bridge: bool = True, cancel_token: Any = None,
          trust: np.ndarray | None = None, prior_log2: np.ndarray | None = None) -> Iterator[ChunkTask]:
    """One task per core with points in or near it, built lazily (each holds a copy of its points)."""
    count = cc.cells.shape[0]
    for i, cell in enumerate(cc.cells):
        rows = cc.rows(cell, cc.grid.margin)
        lo, _ = cc.grid.bounds(cell)
        yield ChunkTask(i, count, tuple(int(v) for v in cell), tuple(int(v) for v in lo),  # type: ignore[arg-type]
                        (cc.x[rows] - lo).astype(np.float32), normals[rows], depth, weights, solver_tol,
                        solver_max_iter, device, cancel_token, None if trust is None else trust[rows],
                        None if prior_log2 is None else prior_log2[rows], bridge)
