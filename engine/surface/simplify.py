"""Step 8b: error-bounded simplification of the extracted mesh (quadric edge collapse, pyfqmr).

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
pyfqmr (MIT, wheels for CPython 3.11 to 3.13 on Linux, macOS and Windows, numpy
only) does it in C++; ``preserve_border`` keeps open boundaries exactly where
they were (its lossless mode moves them by up to 1.4 voxels, so it is not used:
the same bound comes from its threshold schedule, see :func:`engine.surface.collapse.schedule`).
Collapses that would flip a face are refused, so closed manifold meshes stay
closed and manifold (tests/engine/test_simplify.py checks it).  Meshes of
a million faces and more are collapsed in slabs on several processes
(:mod:`engine.surface.collapse`; ``simplify_processes`` in the stats).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..mesh import edge_use
from .collapse import MIN_FACES, WorkerError, collapse, collapse_in_pieces, piece_count
from .trimming import compact

# Quadric error bound per collapse, in finest voxels (as a distance).  Measured on the sphere (20k points,
# mise 1, 115k faces; mean distance of the surface to the true sphere, in voxels): unsimplified 0.0016;
# bound 0.03 -> 21k faces at 0.0032, 0.1 -> 8.9k at 0.0063, 0.3 -> 4.1k at 0.0125 (mise 0 unsimplified: 29k
# faces at 0.0064; mise 0 with 0.03: 16k at 0.0076).  0.03 keeps the clean sphere's Chamfer below Open3D
# Poisson depth 8's (0.018e-3 of the diagonal; 0.0032 voxel is about 0.015e-3), 0.1 would not.
SIMPLIFY_TOLERANCE = 0.03
# pyfqmr's peak memory per input face: 465 bytes measured on the scan of bench/README.md (1.02M faces, +453 MiB).
BYTES_PER_FACE = 500
REPAIR_RADIUS = 3.0  # voxels around a pinch whose input faces are kept as they were
REPAIR_ROUNDS = 4  # each keeps the input around the pinches found so far and collapses the rest again


def simplify(vertices: np.ndarray, faces: np.ndarray, voxel_size: float, max_faces: int | None,
             memory_limit: int | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Vertices (V, 3) and faces (F, 3) after error-bounded collapse, then down to ``max_faces`` if set; and stats.

    The bound is ``SIMPLIFY_TOLERANCE`` finest voxels; a ``max_faces`` budget below
    what the bound leaves is met by further collapses (cheapest first), within 10%.
    A mesh whose collapse would need more than ``memory_limit`` leaves (less what the
    process holds now, where /proc says) is left as it is, and ``simplify_skipped`` in
    the stats says so (a chunked scene of millions of faces under a tight limit: the
    solve fits it chunk by chunk, the collapse of the welded whole would not).
    """
    before = int(faces.shape[0])
    stats: dict[str, Any] = {"faces_before_simplify": before, "simplify_tolerance_voxels": SIMPLIFY_TOLERANCE}
    if before <= MIN_FACES:
        return vertices, faces, stats
    if memory_limit is not None and before * BYTES_PER_FACE > memory_limit - _resident_bytes():
        stats["simplify_skipped"] = (f"{before:,} faces would need about {before * BYTES_PER_FACE / 2**30:.1f} GiB "
                                     f"to simplify, more than the memory limit of {memory_limit / 2**30:.1f} GiB "
                                     "leaves; raise the memory limit or use a larger voxel size")
        return vertices, faces, stats
    origin = vertices.mean(axis=0)
    scaled = (np.asarray(vertices, np.float64) - origin) / voxel_size  # errors in voxels^2
    f0 = np.asarray(faces, np.int64)
    v, f, stats["simplify_processes"] = _collapse(scaled, f0, max_faces, move_border=True,
                                                  pieces=piece_count(before))
    if _pinched(f).size and not _pinched(f0).size:
        v, f = _repair(scaled, f0, v, f, max_faces)
        if _pinched(f).size and max_faces is not None:  # the budget pinches thin parts: the bound alone
            v, f = _repair(scaled, f0, *_collapse(scaled, f0, None, move_border=True)[:2], None)
            stats["simplify_note"] = (f"max_faces {max_faces:,} would pinch thin parts of the surface; "
                                      "simplified to the error bound only")
        if _pinched(f).size:
            stats["simplify_skipped"] = "the collapse pinched the surface (an edge of more than two faces)"
            return vertices, faces, stats
    if max_faces is not None and f.shape[0] > 1.1 * max_faces and "simplify_note" not in stats:
        stats["simplify_note"] = (f"max_faces {max_faces:,} left {f.shape[0]:,}: thin parts were kept as meshed "
                                  "so that no edge joins more than two faces")
    out_v = (v * voxel_size + origin).astype(vertices.dtype)
    return out_v, f.astype(faces.dtype), stats


def _resident_bytes() -> int:
    """This process's resident memory now (Linux); 0 where /proc does not say."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _collapse(v: np.ndarray, f: np.ndarray, max_faces: int | None, move_border: bool, pieces: int = 1
              ) -> tuple[np.ndarray, np.ndarray, int]:
    """Collapse to the error bound, then to ``max_faces``; and the processes that did it.

    With ``pieces`` > 1 the bound's collapse runs in that many slabs on as many worker processes
    (:func:`engine.surface.collapse.collapse_in_pieces`), or whole here where workers cannot start.
    """
    bound = SIMPLIFY_TOLERANCE ** 2
    if pieces > 1:
        try:
            v, f = collapse_in_pieces(v, f, bound, pieces)
        except WorkerError:
            pass  # no workers (no process creation allowed, an interpreter that is not Python): the whole mesh here
        else:
            return (*collapse(v, f, None, max_faces, move_border), pieces) if max_faces is not None else (v, f, pieces)
    return (*collapse(v, f, bound, max_faces, move_border), 1)


def _pinched(f: np.ndarray) -> np.ndarray:
    """Edges (E, 2) shared by more than two faces: pyfqmr checks flips, not the link condition, so thin
    parts (a pole a voxel wide) can collapse into two sheets that meet along an edge."""
    edges, count = edge_use(f)
    return edges[count > 2]


def _repair(v0: np.ndarray, f0: np.ndarray, v: np.ndarray, f: np.ndarray, max_faces: int | None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Collapse again with the input's faces near each pinch left as they were (their border pinned), round
    after round; the kept faces and the collapsed rest share the pinned cut vertices bit for bit, so they weld."""
    from scipy.spatial import cKDTree

    centres = v0[f0].mean(axis=1)
    near = np.zeros(f0.shape[0], bool)
    for _ in range(REPAIR_ROUNDS):
        pinches = v[_pinched(f)].mean(axis=1)
        if not pinches.size:
            break
        near |= cKDTree(pinches).query(centres, distance_upper_bound=REPAIR_RADIUS)[0] <= REPAIR_RADIUS
        budget = None if max_faces is None else max(max_faces - int(near.sum()), MIN_FACES)
        rv, rf, _ = _collapse(v0, f0[~near], budget, move_border=False)
        kept = np.unique(f0[near])
        shared = np.intersect1d(kept, np.unique(f0[~near]))  # the cut: pinned, so bit-equal in rv
        _, ids = np.unique(np.concatenate([v0[shared], rv]), axis=0, return_inverse=True)
        ids = ids.reshape(-1)
        owner = np.full(int(ids.max()) + 1, -1, np.int64)
        owner[ids[:shared.shape[0]]] = shared
        source = owner[ids[shared.shape[0]:]]  # each collapsed vertex's input row where it is a cut vertex
        remap = np.zeros(v0.shape[0], np.int64)
        remap[kept] = rv.shape[0] + np.arange(kept.shape[0])
        remap[source[source >= 0]] = np.nonzero(source >= 0)[0]  # kept faces use the rest's copy of the cut
        v, f, _ = compact(np.concatenate([rv, v0[kept]]), np.concatenate([rf, remap[f0[near]]]))
    return v, f
