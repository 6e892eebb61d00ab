"""Step 7b: refine the mesh where the surface bends, instead of a whole round of cells below the voxel.

Marching cubes at the finest voxel places each vertex by linear interpolation along a cell edge and spans each
triangle flat across a cell: on a curved surface both leave error that one round of cells half a voxel wide
(``mise_iter`` 1) cuts, at four times the triangles everywhere, flat or not, which the simplifying collapse then
merges again (the 1M-point clean bunny: 5.6M triangles meshed, 0.69M kept).  Here the mesh of the finest voxel
is refined only where it needs it:

1. each vertex moves onto the field's zero level along its gradient (one Newton step, at most
   :data:`STEP_LIMIT` cell), which the interpolation missed;
2. each edge whose middle lies more than :data:`SPLIT_TOLERANCE` voxel off the zero level is halved, its new
   vertex placed on the zero level the same way; each face is cut into two, three or four along its halved
   edges (red-green refinement).  The decision is the edge's, shared by both its faces, so the mesh stays
   closed: no crack, no T-junction;
3. where a piece leans over 37 degrees from the field's gradient (:data:`LEAN_COSINE`), its face's corners go
   back where marching cubes placed them and the middles of their edges onto the straight edges: the steps can
   stand a sliver of marching cubes up or turn it over, and its neighbours then fold against it.

Where the field is rough at the voxel's scale (:data:`ROUGH_SHARE`), the voxel's mesh folds (the surface bends
within a cell), or it cuts creases (:data:`CREASE_TAIL`), the refinement is not made: the caller keeps the uniform
round, which samples the bumps, bends and creases finer.

Why this tolerance (100k points, Chamfer-L1 x1e-3 after simplification, one thread; against one uniform round):
0.0015 voxel gave bunny 0.0453 (0.0461), bunny with 0.5% noise 0.3671 (0.3712), torus 0.0155 (0.0153), sphere
0.0135 (0.0129) with 19-27% fewer triangles meshed; 0.002 and 0.003 kept the bunny's figure with fewer still but
cost the sphere 10% and 28%, whose error is the meshing's alone.  Without the halving (the vertices' step only)
the bunny gave 0.0643, at the voxel as it was 0.0776.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from ..solver.threads import chunks, run_parts
from ..vectors import any_in_row, row_norms
from . import kernels

SPLIT_TOLERANCE = 0.0015  # voxels: an edge whose middle lies farther than this off the zero level is halved
STEP_LIMIT = 0.5  # of the cell edge: the longest step a vertex takes onto the zero level
EVAL_BATCH = 1 << 20  # points evaluated at once
LEAN_COSINE = 0.8  # a piece whose normal leans over 37 degrees from the field's gradient is put back
MAX_UNFOLDS = 3  # rounds of putting leaning faces back as marching cubes placed them
# Where more of the voxel's faces than this lean from the gradient, the field is rough at the voxel's scale
# (vegetation in a LiDAR tile) and the refinement follows its bumps: the Autzen tile's trees came out faceted and
# folded (3,411 folded edges against 1,220 with a uniform round).  Shares measured (marching cubes at the voxel):
# that tile 5.2%; the 100k bunny clean, 0.25%, 0.5% and 1% noise, tilted normals, the sphere, torus and trefoil
# 0-0.05%.
ROUGH_SHARE = 0.01
# Where the voxel's own mesh folds (two neighbouring faces facing apart), the surface bends within a cell: the
# refinement keeps that mesh's layout and so its folds, which the round below samples away.  The 10k-point clean
# bunny (voxel 1/73 of its diagonal): 15 folded edges at the voxel, 22 after refinement and the collapse against 0
# for the round; Chamfer-L1 x1e-3 0.354 against 0.321, normal consistency 0.9893 against 0.9927.  None on the 30k to
# 1M bunnies, the 100k sphere and torus, tilted normals.  Faces under NEEDLE_AREA of a cell's face are left out.
NEEDLE_AREA = 1e-4
# Creases and corners (a box's edges), which the fit rounds within a cell: marching cubes at the voxel cuts them with
# faces whose centre, where the corner is, no edge middle samples, and the refinement left them cut (area samples of
# bench/scanner.py's box, Chamfer-L1 x1e-3 against the uniform round: 10k points 0.428 against 0.298, 30k 0.1133
# against 0.1033, 100k 0.0324 against 0.0302, 300k 0.0112 against 0.0103).  What tells them: among the edges whose
# middle lies over BENT_SAG voxel off the zero level, a heavy share over CREASE_SAG, where a smooth bend's sags fall
# off quickly.  Shares measured (over 0.2 of over 0.05): the box 0.10-0.41 at 5k-300k points; the clean bunny 0.030
# at 30k, 0.013 at 100k, 0.005 at 1M, tilted normals 0.010; the dumbbell 0.026 at 5k; the sphere, torus and rounded
# box 0.  Over CREASE_TAIL of them, and over CREASE_MIN edges, the caller meshes a uniform round.  (Tried: a vertex
# at the centre of each such face, moved onto the zero level: the box at 10k 0.358, 100k 0.0307, but the new pieces
# folded against their neighbours, 4,766 folded edges at 30k.)
BENT_SAG = 0.05
CREASE_SAG = 0.2
CREASE_TAIL = 0.06
CREASE_MIN = 20

# points (M, 3) float64, finest-voxel units -> the field there (M,) and its gradient (M, 3), float64
FieldWithGradient = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def onto_surface(points: np.ndarray, field: FieldWithGradient, limit: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The points moved onto the zero level by one Newton step along the gradient (at most ``limit`` long), how
    far each lay from it before (|f| / |grad f|, in the field's units), and the gradient there."""
    moved = np.empty_like(points)
    off = np.empty(points.shape[0])
    slope = np.empty_like(points)
    for start in range(0, points.shape[0], EVAL_BATCH):
        rows = slice(start, start + EVAL_BATCH)
        f, g = field(points[rows])
        norm2 = np.maximum(np.einsum("ij,ij->i", g, g), 1e-24)
        step = (f / norm2)[:, None] * g
        step *= (np.minimum(1.0, limit / np.maximum(row_norms(step), 1e-300)))[:, None]
        moved[rows] = points[rows] - step
        off[rows] = np.abs(f) / np.sqrt(norm2)
        slope[rows] = g
    return moved, off, slope


def refine_where_bent(verts: np.ndarray, faces: np.ndarray, field: FieldWithGradient, cell: float,
                      tolerance: float = SPLIT_TOLERANCE) -> tuple[np.ndarray, np.ndarray, int] | str:
    """The marching-cubes mesh (vertices (V, 3), finest-voxel units; faces (F, 3)) of cells of edge ``cell``
    with its vertices on the zero level and its edges halved where their middle lies over ``tolerance`` off it;
    and how many edges were halved.  Where the refinement declines, why, for the caller to mesh a uniform round
    instead: "rough" (over :data:`ROUGH_SHARE` of the faces lean from the field's gradient), "folds" (the mesh
    folds: the surface bends within a cell) or "creases" (of the edges whose middle lies over :data:`BENT_SAG`
    off, over :data:`CREASE_TAIL` lie over :data:`CREASE_SAG` off)."""
    faces = np.ascontiguousarray(faces, dtype=np.int64)
    placed = np.asarray(verts, dtype=np.float64)
    verts, _, slope = onto_surface(placed, field, STEP_LIMIT * cell)
    if faces.shape[0] == 0:
        return verts, faces, 0
    if kernels.leaning_share(placed, faces, slope, LEAN_COSINE) > ROUGH_SHARE:
        return "rough"
    edge_of = np.empty(faces.shape, np.int64)
    ends = np.empty((3 * faces.shape[0], 2), np.int64)
    ends = ends[:kernels.number_edges(faces, verts.shape[0], edge_of, ends)]
    if kernels.folded_edges(placed, faces, edge_of, ends.shape[0], 2.0 * NEEDLE_AREA * cell * cell) > 0:
        return "folds"
    middles, off, middle_slope = onto_surface(0.5 * (verts[ends[:, 0]] + verts[ends[:, 1]]), field,
                                              STEP_LIMIT * cell)
    crease = int((off > CREASE_SAG).sum())
    if crease > max(CREASE_MIN, CREASE_TAIL * int((off > BENT_SAG).sum())):
        return "creases"
    split = off > tolerance
    count = int(split.sum())
    middle = np.full(ends.shape[0], -1, np.int64)
    middle[split] = verts.shape[0] + np.arange(count)
    verts = np.concatenate([verts, middles[split]])
    slope = np.concatenate([slope, middle_slope[split]])
    pieces = 1 + (middle[edge_of] >= 0).sum(axis=1)
    offsets = np.zeros(faces.shape[0] + 1, np.int64)
    np.cumsum(pieces, out=offsets[1:])
    out = np.empty((int(offsets[-1]), 3), np.int64)
    folded = np.zeros(faces.shape[0], np.bool_)
    back = np.zeros(placed.shape[0], np.bool_)
    rows = np.arange(faces.shape[0])
    for _ in range(MAX_UNFOLDS + 1):
        run_parts(partial(kernels.split_faces, faces, edge_of, middle, verts, slope, LEAN_COSINE, offsets, rows,
                          out=out, folded=folded), chunks(0, rows.shape[0]))
        if not folded.any():
            break
        # The steps onto the zero level turned a sliver of marching cubes over (corners a hair apart, or nearly in
        # a line, moved across its width): its corners go back where marching cubes placed them and the middles of
        # their edges onto those edges, where every piece has the face's orientation; the faces around are cut again.
        back[faces[folded]] = True
        verts[:placed.shape[0]][back] = placed[back]
        straight = np.flatnonzero((middle >= 0) & (back[ends[:, 0]] | back[ends[:, 1]]))
        verts[middle[straight]] = 0.5 * (verts[ends[straight, 0]] + verts[ends[straight, 1]])
        rows = np.flatnonzero(any_in_row(back[faces]))
        folded[:] = False
    return verts, out, count
