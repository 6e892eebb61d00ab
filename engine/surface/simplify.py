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
the same bound comes from its threshold schedule, see :func:`_schedule`).
Collapses that would flip a face are refused, so closed manifold meshes stay
closed and manifold (tests/engine/test_simplify.py checks it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Quadric error bound per collapse, in finest voxels (as a distance).  Measured on the sphere (20k points,
# mise 1, 115k faces; mean distance of the surface to the true sphere, in voxels): unsimplified 0.0016;
# bound 0.03 -> 21k faces at 0.0032, 0.1 -> 8.9k at 0.0063, 0.3 -> 4.1k at 0.0125 (mise 0 unsimplified: 29k
# faces at 0.0064; mise 0 with 0.03: 16k at 0.0076).  0.03 keeps the clean sphere's Chamfer below Open3D
# Poisson depth 8's (0.018e-3 of the diagonal; 0.0032 voxel is about 0.015e-3), 0.1 would not.
SIMPLIFY_TOLERANCE = 0.03
ITERATIONS = 20  # collapse passes; the error threshold grows over them to the bound (100: same faces, 2x time)
AGGRESSIVENESS = 7.0  # threshold ~ (pass + 3)^7, so the cheapest collapses go first
MIN_FACES = 4  # a tetrahedron: the smallest closed mesh, the smallest budget max_faces accepts
# pyfqmr's peak memory per input face: 465 bytes measured on the scan of bench/README.md (1.02M faces, +453 MiB).
BYTES_PER_FACE = 500


def _schedule(bound: float) -> float:
    """pyfqmr's ``alpha`` for which the threshold alpha * (pass + K)^aggressiveness reaches ``bound`` at the end."""
    return bound / (ITERATIONS - 1 + 3) ** AGGRESSIVENESS


def simplify(vertices: np.ndarray, faces: np.ndarray, voxel_size: float, max_faces: int | None,
             memory_limit: int | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Vertices (V, 3) and faces (F, 3) after error-bounded collapse, then down to ``max_faces`` if set; and stats.

    The bound is ``SIMPLIFY_TOLERANCE`` finest voxels; a ``max_faces`` budget below
    what the bound leaves is met by further collapses (cheapest first), within 10%.
    A mesh whose collapse would need more than ``memory_limit`` bytes is left as it
    is, and ``simplify_skipped`` in the stats says so (a chunked scene of tens of
    millions of faces: the solve fits its limit chunk by chunk, the collapse would not).
    """
    before = int(faces.shape[0])
    stats: dict[str, Any] = {"faces_before_simplify": before, "simplify_tolerance_voxels": SIMPLIFY_TOLERANCE}
    if before <= MIN_FACES:
        return vertices, faces, stats
    if memory_limit is not None and before * BYTES_PER_FACE > memory_limit:
        stats["simplify_skipped"] = (f"{before:,} faces would need about {before * BYTES_PER_FACE / 2**30:.1f} GiB "
                                     f"to simplify, over the memory limit of {memory_limit / 2**30:.1f} GiB; "
                                     "raise the memory limit or use a larger voxel size")
        return vertices, faces, stats
    import pyfqmr

    origin = vertices.mean(axis=0)
    scaled = (np.asarray(vertices, np.float64) - origin) / voxel_size  # errors in voxels^2
    s = pyfqmr.Simplify()
    s.setMesh(scaled, np.asarray(faces, np.int32))
    s.simplify_mesh(target_count=MIN_FACES, aggressiveness=AGGRESSIVENESS, max_iterations=ITERATIONS,
                    alpha=_schedule(SIMPLIFY_TOLERANCE ** 2), K=3, preserve_border=True, verbose=False)
    if max_faces is not None and s.getMesh()[1].shape[0] > max_faces:
        s.simplify_mesh(target_count=max_faces, aggressiveness=AGGRESSIVENESS, max_iterations=ITERATIONS,
                        preserve_border=True, verbose=False)
        if s.getMesh()[1].shape[0] > max_faces * 1.1:  # the open boundary alone is over the budget: move it too
            s.simplify_mesh(target_count=max_faces, aggressiveness=AGGRESSIVENESS, max_iterations=ITERATIONS,
                            preserve_border=False, verbose=False)
    v, f, _ = s.getMesh()
    out_v = (np.asarray(v, np.float64) * voxel_size + origin).astype(vertices.dtype)
    return out_v, np.asarray(f, faces.dtype), stats
