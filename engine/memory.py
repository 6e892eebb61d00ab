"""Memory guard: refuse resolutions that would not fit, before allocating them."""

from __future__ import annotations

import torch

from .errors import MemoryLimitError

BYTES_PER_UNKNOWN = 1600  # CSR (125 x int32 + float32), stencil, CG vectors, lookups
BYTES_PER_POINT = 700  # tap weights and indices in assembly chunks, targets
VOXELS_PER_CELL = 6.0  # measured: a surface band 3 voxels thick, plus coarse levels
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


def check_memory(points: torch.Tensor, voxel_size: float, limit_bytes: int, voxel_size_world: float) -> int:
    """Estimated peak bytes of the job; raises :class:`MemoryLimitError` when above ``limit_bytes``.

    ``points`` are canonical (diagonal 1); ``voxel_size`` canonical, ``voxel_size_world`` for the message.
    """
    hint = "Use a larger voxel size or a lower detail level, or raise the memory limit."
    if 1.0 / voxel_size > MAX_AXIS_VOXELS:
        raise MemoryLimitError(
            f"voxel size {voxel_size_world:.4g} would need over {MAX_AXIS_VOXELS} voxels along the cloud's diagonal.",
            hint)
    cells = torch.unique(torch.floor(points / voxel_size).to(torch.int64), dim=0).shape[0]
    estimate = int(cells * VOXELS_PER_CELL * BYTES_PER_UNKNOWN + points.shape[0] * BYTES_PER_POINT)
    if estimate > limit_bytes:
        raise MemoryLimitError(
            f"voxel size {voxel_size_world:.4g} would need about {estimate / 2**30:.1f} GiB, "
            f"more than the limit of {limit_bytes / 2**30:.1f} GiB.", hint)
    return estimate
