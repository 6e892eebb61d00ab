"""Memory guard: refuse resolutions that would not fit, before allocating them."""

from __future__ import annotations

import torch

from .errors import MemoryLimitError
from .voxels import unique_voxels

BYTES_PER_UNKNOWN = 3000  # measured peak (bunny, 100k points, 300k unknowns): CSR, stencil, column table, meshing
BYTES_PER_POINT = 700  # tap weights and indices in assembly chunks, targets
BASE_BYTES = 400 << 20  # the interpreter, torch and the input
MAX_AXIS_VOXELS = 1 << 20


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
    """
    counts = [unique_voxels(torch.floor(points / (voxel_size * 2**d)).to(torch.int64)).shape[0]
              for d in range(depth + 1)]
    total = 0.0
    for d in range(depth):
        full, k, least = (27.0, 1.55, 3.0) if d == 0 else (125.0, 2.2, 5.0)
        ratio = counts[d] / counts[d + 1]
        total += counts[d] * min(full, max(least, full * ratio**-k))
    return int(total)


def check_memory(points: torch.Tensor, voxel_size: float, limit_bytes: int, voxel_size_world: float,
                 depth: int) -> int:
    """Estimated peak bytes of the job; raises :class:`MemoryLimitError` when above ``limit_bytes``.

    ``points`` are canonical (diagonal 1); ``voxel_size`` canonical, ``voxel_size_world`` for the message.
    """
    hint = "Use a larger voxel size or a lower detail level, or raise the memory limit."
    if 1.0 / voxel_size > MAX_AXIS_VOXELS:
        raise MemoryLimitError(
            f"voxel size {voxel_size_world:.4g} would need over {MAX_AXIS_VOXELS} voxels along the cloud's diagonal.",
            hint)
    unknowns = estimate_unknowns(points, voxel_size, depth)
    estimate = int(BASE_BYTES + unknowns * BYTES_PER_UNKNOWN + points.shape[0] * BYTES_PER_POINT)
    if estimate > limit_bytes:
        raise MemoryLimitError(
            f"voxel size {voxel_size_world:.4g} would need about {estimate / 2**30:.1f} GiB, "
            f"more than the limit of {limit_bytes / 2**30:.1f} GiB.", hint)
    return estimate
