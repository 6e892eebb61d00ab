"""Compiled CPU loops (numba) of the surface stages: marching cubes; the mesh's connected pieces.

:func:`engine.surface.meshing.marching_cubes` in torch makes about twelve passes
over arrays of millions of items (cases, triangle table rows, crossed edges,
their keys, the unique sort, the edge table, the faces, the vertices): on the
1M-point clean bunny, 2.8 s of the mesh stage.  Here the per-cell steps are
loops over cells that keep a cell's case and its twelve edges in registers;
only the edge keys' sort stays a pass of its own.  The result is the torch
version's, bit for bit: the same vertex order (by edge key), faces and
positions (the same float32 arithmetic), which tests/engine/test_meshing.py
checks.  torch stays the reference and the CUDA path.

The per-cell loops are serial and release the GIL (``nogil``), so
:func:`marching_cubes` runs them on the solver's threads (:mod:`engine.solver.threads`)
over disjoint cell ranges; the sort is NumPy's.

:func:`vertex_roots` finds the mesh's pieces by union-find over the faces' edges, each piece
named by its lowest vertex, which is the order SciPy's ``connected_components`` numbers them
in: the 1M bunny's 5.6M faces 0.62 -> 0.10 s, the same pieces in the same order
(:func:`engine.surface.fragments.face_pieces`).
"""

from __future__ import annotations

from functools import partial

import numpy as np
from numba import njit

from ..solver.threads import chunks, run_parts
from ..vectors import column_bounds
from .mc_table import CORNERS, EDGE_AXIS, EDGES, TRIANGLES

_TRIANGLES = TRIANGLES.astype(np.int8)  # (256, 5, 3) local edge ids, -1 after the case's last triangle
_EDGES = EDGES.astype(np.int8)
_CORNERS = CORNERS.astype(np.int8)
_EDGE_AXIS = EDGE_AXIS.astype(np.int8)


@njit(cache=True, nogil=True)
def cell_case(v: np.ndarray, c: int) -> int:
    """Cell c's case: bit j set where corner j is inside (value below 0)."""
    case = 0
    for j in range(8):
        if v[c, j] < 0:
            case |= 1 << j
    return case


@njit(cache=True, nogil=True)
def count_cells(v: np.ndarray, edges: np.ndarray, triangles: np.ndarray, lo: int, hi: int,
                crossed: np.ndarray, tris: np.ndarray) -> None:
    """Crossed edges and triangles of cells lo:hi (``crossed[c]``, ``tris[c]``)."""
    for c in range(lo, hi):
        case = cell_case(v, c)
        n = 0
        for e in range(12):
            if ((case >> edges[e, 0]) & 1) != ((case >> edges[e, 1]) & 1):
                n += 1
        crossed[c] = n
        t = 0
        while t < triangles.shape[1] and triangles[case, t, 0] >= 0:
            t += 1
        tris[c] = t


@njit(cache=True, nogil=True)
def edge_keys(cells: np.ndarray, v: np.ndarray, corners: np.ndarray, edges: np.ndarray, axes: np.ndarray,
              origin: np.ndarray, dims: np.ndarray, offsets: np.ndarray, lo: int, hi: int,
              keys: np.ndarray, edge_of: np.ndarray) -> None:
    """The crossed edges of cells lo:hi, cell by cell and edge by edge from ``offsets[c]``: each one's key
    (its lower corner relative to ``origin`` in a ``dims`` box, then its axis) and its edge id."""
    for c in range(lo, hi):
        case = cell_case(v, c)
        k = offsets[c]
        for e in range(12):
            a, b = edges[e, 0], edges[e, 1]
            if ((case >> a) & 1) != ((case >> b) & 1):
                x = cells[c, 0] - origin[0] + corners[a, 0]
                y = cells[c, 1] - origin[1] + corners[a, 1]
                z = cells[c, 2] - origin[2] + corners[a, 2]
                keys[k] = ((z * dims[1] + y) * dims[0] + x) * 3 + axes[e]
                edge_of[k] = e
                k += 1


@njit(cache=True, nogil=True)
def number_vertices(keys: np.ndarray, order: np.ndarray, vertex: np.ndarray, first: np.ndarray) -> int:
    """Each crossed edge's vertex (the rank of its key among the distinct keys) and each vertex's first crossed
    edge (the lowest index with its key); ``order`` sorts ``keys``.  Returns the vertex count."""
    count = 0
    i = 0
    n = keys.shape[0]
    while i < n:
        key = keys[order[i]]
        lowest = order[i]
        j = i
        while j < n and keys[order[j]] == key:
            vertex[order[j]] = count
            lowest = min(lowest, order[j])
            j += 1
        first[count] = lowest
        count += 1
        i = j
    return count


@njit(cache=True, nogil=True)
def cell_faces(v: np.ndarray, edges: np.ndarray, triangles: np.ndarray, offsets: np.ndarray,
               face_offsets: np.ndarray, edge_of: np.ndarray, vertex: np.ndarray, lo: int, hi: int,
               faces: np.ndarray) -> None:
    """The triangles of cells lo:hi, from ``face_offsets[c]``, as vertex ids."""
    local = np.empty(12, np.int64)
    for c in range(lo, hi):
        for k in range(offsets[c], offsets[c + 1]):
            local[edge_of[k]] = vertex[k]
        case = cell_case(v, c)
        f = face_offsets[c]
        t = 0
        while t < triangles.shape[1] and triangles[case, t, 0] >= 0:
            for j in range(3):
                faces[f, j] = local[triangles[case, t, j]]
            f += 1
            t += 1


@njit(cache=True, nogil=True)
def place_vertices(cells: np.ndarray, v: np.ndarray, size: float, corners: np.ndarray, edges: np.ndarray,
                   axes: np.ndarray, owner: np.ndarray, edge_of: np.ndarray, first: np.ndarray, lo: int, hi: int,
                   verts: np.ndarray, lower: np.ndarray) -> None:
    """Vertices lo:hi on their edges (float32, as the torch version rounds them) and their edges (lower corner,
    axis); ``owner`` is each crossed edge's cell."""
    s = np.float32(size)
    for i in range(lo, hi):
        k = first[i]
        c = owner[k]
        e = edge_of[k]
        a, b = edges[e, 0], edges[e, 1]
        fa, fb = v[c, a], v[c, b]
        t = fa / (fa - fb)
        t = min(max(t, np.float32(0.0)), np.float32(1.0))
        axis = axes[e]
        for d in range(3):
            q = cells[c, d] + corners[a, d]
            lower[i, d] = q
            p = np.float32(q) * s
            step = s if d == axis else np.float32(0.0)
            verts[i, d] = p + t * step
        lower[i, 3] = axis


def marching_cubes(cells: np.ndarray, size: float, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`engine.surface.meshing.marching_cubes` on NumPy arrays: cells (M, 3) int64, corner values (M, 8)
    float32; vertices (V, 3) float32, faces (F, 3) int64 and vertex edges (V, 4) int64."""
    m = cells.shape[0]
    crossed = np.empty(m, np.int64)
    tris = np.empty(m, np.int64)
    ranges = chunks(0, m)
    run_parts(partial(count_cells, v, _EDGES, _TRIANGLES, crossed=crossed, tris=tris), ranges)
    offsets = np.zeros(m + 1, np.int64)
    np.cumsum(crossed, out=offsets[1:])
    face_offsets = np.zeros(m + 1, np.int64)
    np.cumsum(tris, out=face_offsets[1:])
    origin, top = column_bounds(cells)
    dims = top - origin + 2
    keys = np.empty(int(offsets[-1]), np.int64)
    edge_of = np.empty(keys.shape[0], np.int8)
    run_parts(partial(edge_keys, cells, v, _CORNERS, _EDGES, _EDGE_AXIS, origin, dims, offsets,
                      keys=keys, edge_of=edge_of), ranges)
    vertex = np.empty(keys.shape[0], np.int64)
    first = np.empty(keys.shape[0], np.int64)
    count = number_vertices(keys, np.argsort(keys, kind="stable"), vertex, first)  # stable: 0.33 s, not 0.41, at 1M
    first = first[:count]
    faces = np.empty((int(face_offsets[-1]), 3), np.int64)
    run_parts(partial(cell_faces, v, _EDGES, _TRIANGLES, offsets, face_offsets, edge_of, vertex, faces=faces),
              ranges)
    owner = np.repeat(np.arange(m, dtype=np.int64), crossed)
    verts = np.empty((count, 3), np.float32)
    lower = np.empty((count, 4), np.int64)
    run_parts(partial(place_vertices, cells, v, float(size), _CORNERS, _EDGES, _EDGE_AXIS, owner, edge_of, first,
                      verts=verts, lower=lower), chunks(0, count))
    return verts, faces, lower


@njit(cache=True, nogil=True)
def _root(parent: np.ndarray, v: int) -> int:
    while parent[v] != v:
        parent[v] = parent[parent[v]]  # path halving
        v = parent[v]
    return v


@njit(cache=True, nogil=True)
def vertex_roots(vertex_count: int, faces: np.ndarray) -> np.ndarray:
    """Each vertex's piece (V,), named by the piece's lowest vertex; faces (F, 3) join their vertices."""
    parent = np.arange(vertex_count)
    for f in range(faces.shape[0]):
        for j in range(2):
            a = _root(parent, faces[f, j])
            b = _root(parent, faces[f, j + 1])
            if a < b:
                parent[b] = a
            elif b < a:
                parent[a] = b
    for v in range(vertex_count):
        parent[v] = parent[parent[v]]  # roots are lower than their vertices: one pass in order finishes
    return parent


@njit(cache=True, nogil=True)
def number_edges(faces: np.ndarray, vertex_count: int, edge_of: np.ndarray, ends: np.ndarray) -> int:
    """Each face's edges numbered (``edge_of`` (F, 3): edge k runs from corner k to corner k + 1), each edge once,
    in the order of its lower vertex; ``ends`` (E, 2) their vertices, lower first.  Returns E.

    The edges are bucketed by their lower vertex (a counting sort) and matched within each bucket, which holds
    the few edges around one vertex: one pass over the faces, no sort of all edges."""
    count = np.zeros(vertex_count + 1, np.int64)
    for f in range(faces.shape[0]):
        for k in range(3):
            a, b = faces[f, k], faces[f, (k + 1) % 3]
            count[min(a, b) + 1] += 1
    for v in range(vertex_count):
        count[v + 1] += count[v]
    fill = count[:-1].copy()
    other = np.empty(3 * faces.shape[0], np.int64)
    slot = np.empty(3 * faces.shape[0], np.int64)
    for f in range(faces.shape[0]):
        for k in range(3):
            a, b = faces[f, k], faces[f, (k + 1) % 3]
            lo = min(a, b)
            i = fill[lo]
            fill[lo] += 1
            other[i] = max(a, b)
            slot[i] = 3 * f + k
    edges = 0
    for v in range(vertex_count):
        for i in range(count[v], count[v + 1]):
            e = -1
            for j in range(count[v], i):
                if other[j] == other[i]:
                    e = edge_of[slot[j] // 3, slot[j] % 3]
                    break
            if e < 0:
                e = edges
                ends[e, 0] = v
                ends[e, 1] = other[i]
                edges += 1
            edge_of[slot[i] // 3, slot[i] % 3] = e
    return edges


@njit(cache=True, nogil=True)
def _dist2(verts: np.ndarray, a: int, b: int) -> float:
    d = 0.0
    for k in range(3):
        t = verts[a, k] - verts[b, k]
        d += t * t
    return d


@njit(cache=True, nogil=True)
def _leaning(verts: np.ndarray, a: int, b: int, c: int, p: np.ndarray, cosine: float) -> bool:
    """Whether triangle (a, b, c) of ``verts`` faces away from the direction ``p`` (3,): the cosine of the angle
    between its normal and ``p`` under ``cosine`` (a triangle of no area is not leaning)."""
    dot = 0.0
    nn = 0.0
    pp = 0.0
    for k in range(3):
        k1, k2 = (k + 1) % 3, (k + 2) % 3
        u1, u2 = verts[b, k1] - verts[a, k1], verts[b, k2] - verts[a, k2]
        w1, w2 = verts[c, k1] - verts[a, k1], verts[c, k2] - verts[a, k2]
        n = u1 * w2 - u2 * w1
        dot += n * p[k]
        nn += n * n
        pp += p[k] * p[k]
    return nn > 0.0 and dot < cosine * np.sqrt(nn * pp)


@njit(cache=True, nogil=True)
def leaning_share(verts: np.ndarray, faces: np.ndarray, slope: np.ndarray, cosine: float) -> float:
    """The share of the faces (of some area) that lean from the field's gradient (``slope``, per vertex) summed
    over their corners by an angle whose cosine is under ``cosine`` (:func:`_leaning`)."""
    outward = np.empty(3)
    leaning = 0
    judged = 0
    for f in range(faces.shape[0]):
        a, b, c = faces[f, 0], faces[f, 1], faces[f, 2]
        if _dist2(verts, a, b) == 0.0 or _dist2(verts, b, c) == 0.0 or _dist2(verts, c, a) == 0.0:
            continue
        for k in range(3):
            outward[k] = slope[a, k] + slope[b, k] + slope[c, k]
        judged += 1
        if _leaning(verts, a, b, c, outward, cosine):
            leaning += 1
    return leaning / judged if judged > 0 else 0.0


@njit(cache=True, nogil=True)
def folded_edges(verts: np.ndarray, faces: np.ndarray, edge_of: np.ndarray, edge_count: int, least: float) -> int:
    """Edges (numbered by :func:`number_edges` in ``edge_of``) whose two faces face apart: normals with a negative
    dot, a fold a render shows as a dark speck.  Faces of area (twice it, as the cross product's length) under
    ``least`` are left out: a needle's normal is rounding.  tests/meshcheck.py's ``folded_edges`` is the
    reference."""
    normals = np.empty((faces.shape[0], 3))
    first = np.full(edge_count, -1, np.int64)
    folds = 0
    for f in range(faces.shape[0]):
        a, b, c = faces[f, 0], faces[f, 1], faces[f, 2]
        nn = 0.0
        for k in range(3):
            k1, k2 = (k + 1) % 3, (k + 2) % 3
            n = ((verts[b, k1] - verts[a, k1]) * (verts[c, k2] - verts[a, k2])
                 - (verts[b, k2] - verts[a, k2]) * (verts[c, k1] - verts[a, k1]))
            normals[f, k] = n
            nn += n * n
        if nn < least * least:
            continue
        for j in range(3):
            e = edge_of[f, j]
            g = first[e]
            if g < 0:
                first[e] = f
            elif (normals[f, 0] * normals[g, 0] + normals[f, 1] * normals[g, 1]
                  + normals[f, 2] * normals[g, 2]) < 0.0:
                folds += 1
    return folds


@njit(cache=True, nogil=True)
def split_faces(faces: np.ndarray, edge_of: np.ndarray, middle: np.ndarray, verts: np.ndarray, slope: np.ndarray,
                cosine: float, offsets: np.ndarray, rows: np.ndarray, lo: int, hi: int, out: np.ndarray,
                folded: np.ndarray) -> None:
    """Faces ``rows[lo:hi]`` cut at their split edges' middle vertices (``middle[e]``, -1 where edge e stays
    whole) into ``out`` from ``offsets[f]``: one triangle for no split edge, two for one, three for two (the quad
    cut along its shorter diagonal in ``verts``), four for three; each with the face's orientation.

    ``folded[f]`` is set where a piece leans from the outward direction, the field's gradient (``slope``, per
    vertex) summed over the face's corners, by an angle whose cosine is under ``cosine``: the steps onto the
    zero level can stand a sliver of marching cubes (corners a hair apart, or nearly in a line) up or turn it
    over, and its neighbours then fold against it."""
    outward = np.empty(3)
    for i in range(lo, hi):
        f = rows[i]
        split = 0
        for k in range(3):
            if middle[edge_of[f, k]] >= 0:
                split += 1
        # turn the face so that the pattern starts at corner r: one split on edge r (r -> r + 1), two with edge
        # r + 2 whole, three (or none) at r = 0
        r = 0
        for k in range(3):
            m = middle[edge_of[f, k]] >= 0
            if (split == 1 and m) or (split == 2 and not m):
                r = k if split == 1 else (k + 1) % 3
        a, b, c = faces[f, r], faces[f, (r + 1) % 3], faces[f, (r + 2) % 3]
        m0 = middle[edge_of[f, r]]
        m1 = middle[edge_of[f, (r + 1) % 3]]
        m2 = middle[edge_of[f, (r + 2) % 3]]
        o = offsets[f]
        if split == 0:
            out[o, 0], out[o, 1], out[o, 2] = a, b, c
        elif split == 1:
            out[o, 0], out[o, 1], out[o, 2] = a, m0, c
            out[o + 1, 0], out[o + 1, 1], out[o + 1, 2] = m0, b, c
        elif split == 2:
            out[o, 0], out[o, 1], out[o, 2] = m0, b, m1
            if _dist2(verts, a, m1) <= _dist2(verts, m0, c):
                out[o + 1, 0], out[o + 1, 1], out[o + 1, 2] = a, m0, m1
                out[o + 2, 0], out[o + 2, 1], out[o + 2, 2] = a, m1, c
            else:
                out[o + 1, 0], out[o + 1, 1], out[o + 1, 2] = a, m0, c
                out[o + 2, 0], out[o + 2, 1], out[o + 2, 2] = m0, m1, c
        else:
            out[o, 0], out[o, 1], out[o, 2] = a, m0, m2
            out[o + 1, 0], out[o + 1, 1], out[o + 1, 2] = m0, b, m1
            out[o + 2, 0], out[o + 2, 1], out[o + 2, 2] = m2, m1, c
            out[o + 3, 0], out[o + 3, 1], out[o + 3, 2] = m0, m1, m2
        for k in range(3):
            outward[k] = slope[a, k] + slope[b, k] + slope[c, k]
        for t in range(o, o + split + 1):
            if _leaning(verts, out[t, 0], out[t, 1], out[t, 2], outward, cosine):
                folded[f] = True


def warm() -> None:
    """Load (compile, the first time after an install) each kernel, with the argument types of a real run."""
    values = np.array([[-1, 1, 1, 1, 1, 1, 1, 1]], np.float32)
    marching_cubes(np.zeros((1, 3), np.int64), 1.0, values)
    cell_case(values, 0)  # compiled into the kernels that call it; called here so that it is not left cold
    vertex_roots(3, np.array([[0, 1, 2]], np.int64))
    _root(np.zeros(1, np.int64), 0)
    tri = np.array([[0, 1, 2]], np.int64)
    edge_of = np.empty((1, 3), np.int64)
    ends = np.empty((3, 2), np.int64)
    number_edges(tri, 3, edge_of, ends)
    split_faces(tri, edge_of, np.full(3, -1, np.int64), np.zeros((3, 3)), np.zeros((3, 3)), 0.0,
                np.zeros(2, np.int64), np.zeros(1, np.int64), 0, 1, np.empty((1, 3), np.int64), np.zeros(1, np.bool_))
    _dist2(np.zeros((3, 3)), 0, 1)
    _leaning(np.zeros((3, 3)), 0, 1, 2, np.zeros(3), 0.0)
    leaning_share(np.zeros((3, 3)), tri, np.zeros((3, 3)), 0.0)
    folded_edges(np.zeros((3, 3)), tri, edge_of, 3, 0.0)
