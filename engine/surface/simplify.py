"""Step 8b: error-bounded simplification of the extracted mesh (quadric edge collapse).

Marching cubes puts a vertex on every cell edge the surface crosses, so a flat
wall gets as many triangles as a sharp ear; refining one round below the finest
voxel (``mise_iter`` 1) quadruples that everywhere.  Collapsing edges whose
quadric error (the sum of squared distances to the planes of the faces around
the collapse) stays under ``(SIMPLIFY_TOLERANCE * voxel)^2`` merges the flat
regions and keeps the bent ones, with no cracks (one indexed mesh in, one out).

Why quadric edge collapse after uniform meshing rather than refining only where
the surface bends: the collapse is crack-free by construction, it gives
``max_faces`` for free (the same collapses, continued to a face budget), and
on a sphere (20k points) mise 1 simplified to 8.9k faces stays as close to the
true surface (0.0063 voxel mean) as mise 0 unsimplified with 29k (0.0064).
The collapse (:mod:`engine.surface.quadrics`, numba) keeps open boundaries
exactly where they were, refuses collapses that would fold a face over, and
checks the link condition, so closed manifold meshes stay closed and manifold
and no edge ever joins more than two faces (tests/engine/test_simplify.py).
A mesh of at least 150k faces per kernel thread is collapsed in slabs, two per
thread (:mod:`engine.surface.collapse`; ``simplify_pieces`` in the stats).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..solver.threads import thread_count
from ..vectors import column_bounds
from .collapse import MIN_FACES, collapse, collapse_in_pieces, piece_count

# Quadric error bound per collapse, in finest voxels (as a distance).  Measured on the sphere (20k points,
# mise 1, 115k faces; mean distance of the surface to the true sphere, in voxels): unsimplified 0.0016;
# bound 0.03 -> 21k faces at 0.0032, 0.1 -> 8.9k at 0.0063, 0.3 -> 4.1k at 0.0125 (mise 0 unsimplified: 29k
# faces at 0.0064; mise 0 with 0.03: 16k at 0.0076).  0.1 would lose the clean sphere's lead over Open3D Poisson
# depth 8 (Chamfer 0.018e-3 of the diagonal).  The bench inputs at 0.03 -> 0.035 (2026-12-04; faces, Chamfer x1e-3):
# 1M clean bunny 780,816 -> 695,516 (2.10x -> 1.87x Open3D depth 8's; issue 12 wants at most 2x), 0.00924 ->
# 0.00921; 100k clean bunny 147,784 -> 133,918, 0.0458 -> 0.0461; the noisy bunny, tilted normals and simulated
# scans 5-10% fewer faces, Chamfer within 0.06%; the clean sphere and torus (100k) 11% fewer, 0.0121 -> 0.0130
# and 0.0147 -> 0.0154 (depth 8: 0.018 and 0.019).
SIMPLIFY_TOLERANCE = 0.035
# The collapse's peak memory per input face: the copies of the mesh that cutting it in slabs makes, and each slab's
# collapse, of which as many run at once as there are kernel threads.  Peak RSS added, per input face, collapsing the
# welded mesh of the 2M-point city in 8 chunks (8.65M faces, 2 threads; 2026-12-04): 207 B in 2 slabs, 145 in 4,
# 118 in 8, 104 in 16 (83 B + 124 B x 2 / slabs fits them within 4%), 138 whole on one thread; the 100k clean bunny's
# 557k faces in 2 slabs 236 B.  With a margin:
COPY_BYTES_PER_FACE = 110
SLAB_BYTES_PER_FACE = 190
BYTES_PER_FACE = COPY_BYTES_PER_FACE + SLAB_BYTES_PER_FACE  # two slabs on two threads, or one whole
MAX_SLABS = 64  # under a tight memory limit, the most slabs a mesh is cut in to make each thread's share fit
MIN_SLAB_VOXELS = 16.0  # and each slab at least this wide (the bands collapsed again around the cuts stay apart)


def simplify(vertices: np.ndarray, faces: np.ndarray, voxel_size: float, max_faces: int | None,
             memory_limit: int | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Vertices (V, 3) and faces (F, 3) after error-bounded collapse, then down to ``max_faces`` if set; and stats.

    The bound is ``SIMPLIFY_TOLERANCE`` finest voxels; a ``max_faces`` budget below
    what the bound leaves is met by further collapses (cheapest first), within 10%.
    A mesh whose collapse would need more than ``memory_limit`` leaves (less what the
    process holds now, where /proc says) is cut in more, narrower slabs, a thread's
    share at a time (:func:`slabs_within`; a chunked scene of millions of faces under a
    tight limit: the solve fits it chunk by chunk, the collapse of the welded whole
    might not); when even those would not fit it is left as it is, and
    ``simplify_skipped`` in the stats says so.
    """
    before = int(faces.shape[0])
    stats: dict[str, Any] = {"faces_before_simplify": before, "simplify_tolerance_voxels": SIMPLIFY_TOLERANCE}
    if before <= MIN_FACES:
        return vertices, faces, stats
    pieces = piece_count(before)
    if memory_limit is not None:
        room = memory_limit - _resident_bytes()
        low, high = column_bounds(vertices)
        span = float((high - low).max()) / voxel_size
        pieces = slabs_within(before, pieces, room, max(1, min(MAX_SLABS, int(span / MIN_SLAB_VOXELS))))
        if pieces == 0:
            stats["simplify_skipped"] = (
                f"{before:,} faces would need about {before * BYTES_PER_FACE / 2**30:.1f} GiB to simplify (in "
                f"slabs at least {before * COPY_BYTES_PER_FACE / 2**30:.1f} GiB), more than the memory limit of "
                f"{memory_limit / 2**30:.1f} GiB leaves; raise the memory limit or use a larger voxel size")
            return vertices, faces, stats
    origin = vertices.mean(axis=0)
    scaled = (np.asarray(vertices, np.float64) - origin) / voxel_size  # errors in voxels^2
    f0 = np.asarray(faces, np.int64)
    bound = SIMPLIFY_TOLERANCE ** 2
    stats["simplify_pieces"] = pieces
    if pieces > 1:  # the bound in slabs on threads, then the budget (if any) on the whole
        v, f = collapse(*collapse_in_pieces(scaled, f0, bound, pieces), None, max_faces, move_border=True)
    else:
        v, f = collapse(scaled, f0, bound, max_faces, move_border=True)
    if max_faces is not None and f.shape[0] > 1.1 * max_faces:
        stats["simplify_note"] = (f"max_faces {max_faces:,} left {f.shape[0]:,}: collapsing further would fold "
                                  "faces over or join sheets of thin parts")
    out_v = (v * voxel_size + origin).astype(vertices.dtype)
    return out_v, f.astype(faces.dtype), stats


def slabs_within(faces: int, pieces: int, room: float, most: int) -> int:
    """The slabs to collapse ``faces`` in: ``pieces`` when that fits ``room`` bytes, else the fewest of up to
    ``most`` (doubling) whose threads' shares fit beside the copies; 0 when none does.

    More slabs than threads run a thread's share at a time, so each slab's collapse needs less; the copies of
    the mesh stay (:data:`COPY_BYTES_PER_FACE`).
    """
    def need(slabs: int) -> float:
        if slabs <= 1:
            return faces * BYTES_PER_FACE
        return faces * (COPY_BYTES_PER_FACE + SLAB_BYTES_PER_FACE * min(slabs, thread_count()) / slabs)

    candidates = [pieces]
    while candidates[-1] * 2 <= most:
        candidates.append(candidates[-1] * 2)
    return next((slabs for slabs in candidates if need(slabs) <= room), 0)


def _resident_bytes() -> int:
    """This process's resident memory now (Linux); 0 where /proc does not say."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
