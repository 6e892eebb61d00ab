"""Memory guard: refuse resolutions that would not fit, before allocating them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import MemoryLimitError
from ..solver.threads import compiled_on
from ..solver.voxels import unique_voxels
from ..vectors import column_bounds
from .partition import ChunkedCloud, ChunkGrid, make_grid


@dataclass(frozen=True)
class Footprint:
    """What a job's peak memory grows with, on one solver path: a base, and bytes per unknown and per point
    (the unknowns of :func:`estimate_unknowns`, at one refinement round) and per face past that round."""

    base: int  # the interpreter, torch (and numba) and the input; also each worker process of a pool
    per_unknown: int  # the matrix, its structure, the solver's vectors, meshing's cells and the mesh
    per_point: int  # sorted and cell-split copies of the points, targets, trimming and colour queries
    per_face: int  # each face that refinement rounds past the first add, with its temporaries


# The compiled CPU path (numba assembly of the matrix's upper triangle straight into CSR, swept solve), fitted by
# bench/memory.py (peak RSS of fresh processes, default options, whole jobs; this machine's CPU, 2026-12-04): over
# the 16 runs at one refinement round or none, 405 MiB + 444 B per estimated unknown + 241 B per point, within 7% of
# every run (MiB measured: bunny 10k 416, 100k 591, 300k 915, 1M 2018, 4M 6782; bunny 100k and 1M with 0.5% noise
# 497, 678; bunny and torus scans 553, 557; city 300k and 2M 843, 3249; sphere and blob 100k 572-614).  Past one
# round (sphere and blob 100k, rounds 2 and 3: 1009-1031 and 2857-2895 MiB) each estimated face added 198-225 B.
# The variable terms carry a 1.5x margin (faces 1.35x), the base 100 MiB (in the run above, with 280 B per point:
# every run peaked at 0.66-0.82 of the estimate).
COMPILED = Footprint(base=512 << 20, per_unknown=670, per_point=360, per_face=300)
# The torch path (the reference, and CUDA, on the device's memory), fitted to CLI runs (2026-11): bunny 100k 1071 /
# 1123, sphere 100k 1018 / 1130, bunny 1M 3863 / 3930, city 300k 1518 / 1510, city 2M 5601 / 5910 MiB (800 MiB +
# 800 B per unknown + 500 B per point, then a 1.5x margin on both); 340 B per face past one round, with a 1.3x margin.
# Still above it on the CPU (2026-12-04): bunny 100k 1025 MiB against 1269 estimated, 300k 1606 / 2240, city 300k
# 1727 / 1992.
REFERENCE = Footprint(base=800 << 20, per_unknown=1200, per_point=750, per_face=450)
MAX_AXIS_VOXELS = 1 << 20
# What a chunked run keeps in the engine's own process besides the chunks being solved: the cleaned
# cloud, its sorted copy in voxel units, every chunk's compact field, and the welded output mesh
# (about 4 triangles per point at the default refinement) with its temporaries.  Simplifying the welded mesh
# needs more (engine/surface/simplify.py checks that itself and skips what would not fit).
MAIN_BYTES_PER_POINT = 900
FACES_PER_UNKNOWN = 0.5  # at no refinement
FACES_PER_POINT = 1.5  # at no refinement, for the mesh a chunked run gathers in the engine's own process
SAMPLED_CHUNKS = 3  # the most populated chunks whose memory is estimated when choosing a chunk size


def available_bytes(device: torch.device) -> int:
    """Free memory on ``device``: CUDA's free memory, or MemAvailable from /proc/meminfo (8 GiB if unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def estimate_unknowns(points: torch.Tensor, voxel_size: float, depth: int) -> int:
    """Unknowns of the whole hierarchy, from occupied cells at each level's size and twice it.

    A densely sampled surface fills about 4x fewer cells at twice the size and
    dilates to a few voxels per cell; isolated points fill as many cells and
    dilate fully (27 voxels per cell at the finest level, 125 at the coarse
    ones, which are dilated twice).  ``full * r**-k`` with r = cells(s) /
    cells(2s) follows the measured ratio, never below it, from dense to
    isolated on the bunny and a sphere (k = 1.55 once dilated, 2.2 twice).
    Trimmed runs build the coarse levels once dilated (no bridging ring,
    :func:`engine.solver.hierarchy.build_levels`): for them it is an upper bound
    (1M-point clean bunny: 3.54M estimated, 2.98M with the ring, 2.54M built without).
    """
    counts = [unique_voxels(torch.floor(points / (voxel_size * 2**d)).to(torch.int64)).shape[0]
              for d in range(depth + 1)]
    total = 0.0
    for d in range(depth):
        full, k, least = (27.0, 1.55, 3.0) if d == 0 else (125.0, 2.2, 5.0)
        ratio = counts[d] / counts[d + 1]
        total += counts[d] * min(full, max(least, full * ratio**-k))
    return int(total)


def footprint_on(device: torch.device) -> Footprint:
    """The footprint of the path a job takes on ``device``: compiled on the CPU, torch elsewhere."""
    return COMPILED if compiled_on(device, None) else REFERENCE


def refinement_bytes(unrefined_faces: float, mise_iter: int, footprint: Footprint) -> int:
    """What refinement rounds past the first add to a job's peak: the finer mesh and its temporaries."""
    return int(unrefined_faces * max(0, 4**mise_iter - 4) * footprint.per_face)


def round_more_bytes(unknowns: int, mise_iter: int, footprint: Footprint) -> int:
    """What one more refinement round than ``mise_iter`` adds to the peak of a job fitted with ``unknowns``."""
    faces = unknowns * FACES_PER_UNKNOWN
    return refinement_bytes(faces, mise_iter + 1, footprint) - refinement_bytes(faces, mise_iter, footprint)


def job_bytes(points: torch.Tensor, voxel_size: float, depth: int, footprint: Footprint, base: int | None = None,
              mise_iter: int = 1) -> int:
    """Estimated peak bytes of solving and meshing ``points`` (canonical units) in one piece, plus ``base``
    (default: the footprint's)."""
    unknowns = estimate_unknowns(points, voxel_size, depth)
    return int((footprint.base if base is None else base) + unknowns * footprint.per_unknown
               + points.shape[0] * footprint.per_point
               + refinement_bytes(unknowns * FACES_PER_UNKNOWN, mise_iter, footprint))


@dataclass
class MemoryPlan:
    """How a job fits its memory budget: in one piece (``grid`` None) or in chunks, and the estimates."""

    estimate: int  # peak bytes of the whole job as planned
    grid: ChunkGrid | None
    chunk_estimate: int = 0  # peak bytes of the largest sampled chunk
    automatic: bool = False  # chunking chosen by the guard, not asked for


def plan_memory(points: np.ndarray, voxel_size: float, depth: int, limit_bytes: int, diagonal: float, *,
                mise_iter: int = 1, chunk_size: float | None = None, overlap_ratio: float = 0.1,
                auto_chunk: bool = True, concurrent: int = 1, worker_processes: bool = False,
                footprint: Footprint = COMPILED) -> MemoryPlan:
    """Decide before allocating anything: solve whole, or in chunks small enough for ``limit_bytes``.

    ``points`` canonical (diagonal 1), ``voxel_size`` canonical; ``diagonal`` maps to
    the caller's units for the messages and ``chunk_size`` (caller's units, None:
    whole when it fits).  With ``auto_chunk`` a job over the limit is split in
    chunks, halving their size until the largest fits next to what the engine
    itself keeps (``concurrent`` chunks at once, each in a process of its own
    with ``worker_processes``); otherwise, or when even the smallest chunks do
    not fit, :class:`MemoryLimitError` names the setting to change.  ``mise_iter``
    refinement rounds grow the mesh, and the estimate with it.  ``footprint``: the solver path's
    (:func:`footprint_on` the device).
    """
    h_world = voxel_size * diagonal
    hint = "Use a larger voxel size or a lower detail level, or raise the memory limit."
    if 1.0 / voxel_size > MAX_AXIS_VOXELS:
        raise MemoryLimitError(
            f"voxel size {h_world:.4g} would need over {MAX_AXIS_VOXELS} voxels along the cloud's diagonal.", hint)
    pts = torch.from_numpy(points)
    if chunk_size is None:
        whole = job_bytes(pts, voxel_size, depth, footprint, mise_iter=mise_iter)
        if whole <= limit_bytes:
            return MemoryPlan(whole, None)
        if not auto_chunk:
            raise MemoryLimitError(
                f"voxel size {h_world:.4g} would need about {whole / 2**30:.1f} GiB, "
                f"more than the limit of {limit_bytes / 2**30:.1f} GiB.",
                "Turn on automatic chunking or set a chunk size, use a larger voxel size, a lower detail level "
                f"{'or fewer refinement rounds (mise_iter) ' if mise_iter > 1 else ''}or raise the memory limit.")
    main = (footprint.base + points.shape[0] * MAIN_BYTES_PER_POINT
            + refinement_bytes(points.shape[0] * FACES_PER_POINT, mise_iter, footprint))
    budget = (limit_bytes - main) // max(1, concurrent)
    base = footprint.base if worker_processes else 0
    if budget <= base:
        raise MemoryLimitError(
            f"{points.shape[0]:,} points need about {main / 2**30:.1f} GiB in the engine besides the chunks, "
            f"more than the limit of {limit_bytes / 2**30:.1f} GiB allows.",
            "Raise the memory limit, or thin the cloud.")
    x = points.astype(np.float64) / voxel_size
    low, high = column_bounds(x)
    extent = float((high - low).max())
    size = None if chunk_size is None else chunk_size / h_world
    automatic = chunk_size is None
    if automatic:  # start from half the scene and halve
        size = 2.0 ** math.floor(math.log2(max(extent, 1.0)))
    while True:
        grid = make_grid(extent, depth, size, overlap_ratio)
        peak = largest_chunk_bytes(x, grid, voxel_size, depth, footprint, base, mise_iter)
        smallest = grid.size == make_grid(extent, depth, 1.0, overlap_ratio).size
        if peak <= budget:
            return MemoryPlan(main + peak * max(1, concurrent), grid, peak, automatic)
        if not automatic or smallest:
            what = "a smaller chunk size" if not automatic and not smallest else "a larger voxel size"
            raise MemoryLimitError(
                f"chunks of {grid.size * h_world:.4g} would need about {peak / 2**30:.1f} GiB each, "
                f"more than the limit of {limit_bytes / 2**30:.1f} GiB allows"
                f"{f' for {concurrent} at once' if concurrent > 1 else ''}.",
                f"Use {what} or a lower detail level, fewer workers, or raise the memory limit.")
        assert size is not None
        size = grid.size / 2.0


def largest_chunk_bytes(x: np.ndarray, grid: ChunkGrid, voxel_size: float, depth: int, footprint: Footprint,
                        base: int, mise_iter: int = 1) -> int:
    """Peak bytes of the largest of the ``SAMPLED_CHUNKS`` most populated chunks (x in voxel units).

    ``base``: what the chunk's process adds besides the chunk (0 in the engine's own process).
    """
    cc = ChunkedCloud(x, grid)
    counts = np.array([cc.core_points(c) for c in cc.cells])
    peak = 0
    for i in np.argsort(counts)[::-1][:SAMPLED_CHUNKS]:
        rows = cc.rows(cc.cells[i], grid.margin)
        pts = torch.from_numpy((x[rows] * voxel_size).astype(np.float32))
        peak = max(peak, job_bytes(pts, voxel_size, depth, footprint, base, mise_iter))
    return peak
