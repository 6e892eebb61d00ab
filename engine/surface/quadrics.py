"""Quadric edge collapse in numba: the mesh's flat regions merged, its bent ones kept, borders pinned.

Every vertex carries the quadric of the planes of its faces (the sum of squared
distances to them); collapsing an edge puts the merged vertex where the two
quadrics together are least, and costs their value there.  Passes run over the
faces with a threshold that grows to the caller's bound (the cheapest
collapses first), as long as more faces than ``target`` remain.

A collapse is refused when it would fold a face over (its normal turning by
more than about 78 degrees), fold two neighbouring faces against each other
(a face of the merged vertex and its neighbour across any of its edges, their
normals with a negative dot), make a sliver (two edges from the moved vertex
within 2.6 degrees), or break the surface's topology: the two ends may share
no neighbours but the corners of the faces on the edge (the link condition),
so no edge ever joins more than two faces.  Border vertices (on an edge of one
face, or of more than two) stay bit for bit where they were: a collapse may
pull an inner vertex onto one, never move one, unless ``move_border`` allows
collapses along border edges (a budget the pinned border alone exceeds).

Why not pyfqmr (which did this before): its wrapper converts the arrays to
vectors of vectors and back, which cost more than the collapse on the meshes
the engine makes (fresh process, 557k faces: 0.4-0.5 s in and 0.2 s out
against 0.4 s of collapse), and it holds the GIL, so pieces needed processes.
These kernels release the GIL: pieces run on threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit

FOLD_COSINE = 0.2  # a face whose new normal has a cosine below this with its old one folds over
SLIVER_COSINE = 0.999  # two edges of a moved face this parallel make a sliver
FAN_LIMIT = 64  # faces around a merged vertex: a collapse that would make more is refused
_NEXT = (1, 2, 0)  # the corner after each corner of a face
_PREV = (2, 0, 1)
_U = np.uint32  # ref ranges as unsigned: indexing with them needs no wraparound test (engine.solver.kernels)


@njit(cache=True, nogil=True)
def _plane_quadrics(v: np.ndarray, f: np.ndarray, q: np.ndarray) -> None:
    """Per vertex, into ``q`` (V, 10) zeros: the sum of its faces' plane quadrics (unit normals, unweighted),
    packed as a11 a12 a13 b1 a22 a23 b2 a33 b3 c for x^T A x + 2 b.x + c."""
    for t in range(f.shape[0]):
        a, b, c = f[t, 0], f[t, 1], f[t, 2]
        ux, uy, uz = v[b, 0] - v[a, 0], v[b, 1] - v[a, 1], v[b, 2] - v[a, 2]
        wx, wy, wz = v[c, 0] - v[a, 0], v[c, 1] - v[a, 1], v[c, 2] - v[a, 2]
        nx, ny, nz = uy * wz - uz * wy, uz * wx - ux * wz, ux * wy - uy * wx
        length = np.sqrt(nx * nx + ny * ny + nz * nz)
        if length == 0.0:
            continue
        nx, ny, nz = nx / length, ny / length, nz / length
        d = -(nx * v[a, 0] + ny * v[a, 1] + nz * v[a, 2])
        for corner in range(3):
            i = f[t, corner]
            q[i, 0] += nx * nx
            q[i, 1] += nx * ny
            q[i, 2] += nx * nz
            q[i, 3] += nx * d
            q[i, 4] += ny * ny
            q[i, 5] += ny * nz
            q[i, 6] += ny * d
            q[i, 7] += nz * nz
            q[i, 8] += nz * d
            q[i, 9] += d * d


@njit(cache=True, nogil=True, inline="always")
def _value(q: np.ndarray, a: int, b: int, x: float, y: float, z: float) -> float:
    """The quadrics of a and b together at (x, y, z)."""
    return ((q[a, 0] + q[b, 0]) * x * x + 2.0 * (q[a, 1] + q[b, 1]) * x * y + 2.0 * (q[a, 2] + q[b, 2]) * x * z
            + 2.0 * (q[a, 3] + q[b, 3]) * x + (q[a, 4] + q[b, 4]) * y * y + 2.0 * (q[a, 5] + q[b, 5]) * y * z
            + 2.0 * (q[a, 6] + q[b, 6]) * y + (q[a, 7] + q[b, 7]) * z * z + 2.0 * (q[a, 8] + q[b, 8]) * z
            + (q[a, 9] + q[b, 9]))


@njit(cache=True, nogil=True, inline="always")
def _placement(q: np.ndarray, v: np.ndarray, a: int, b: int, keep_a: bool, free: bool
               ) -> tuple[float, float, float, float]:
    """The quadric cost of collapsing a-b and where it puts the merged vertex (cost, x, y, z).

    ``keep_a``: at a (b is pulled onto it).  ``free``: where the summed quadric is least, if that point is
    well defined and within the edge's length of its midpoint; otherwise (and when not free) the best of
    the two ends and the midpoint.
    """
    if keep_a:
        return _value(q, a, b, v[a, 0], v[a, 1], v[a, 2]), v[a, 0], v[a, 1], v[a, 2]
    mx, my, mz = 0.5 * (v[a, 0] + v[b, 0]), 0.5 * (v[a, 1] + v[b, 1]), 0.5 * (v[a, 2] + v[b, 2])
    if free:
        a11, a12, a13 = q[a, 0] + q[b, 0], q[a, 1] + q[b, 1], q[a, 2] + q[b, 2]
        a22, a23, a33 = q[a, 4] + q[b, 4], q[a, 5] + q[b, 5], q[a, 7] + q[b, 7]
        c11, c12, c13 = a22 * a33 - a23 * a23, a13 * a23 - a12 * a33, a12 * a23 - a13 * a22
        det = a11 * c11 + a12 * c12 + a13 * c13
        trace = a11 + a22 + a33
        if det > 1e-9 * trace * trace * trace:
            c22, c23, c33 = a11 * a33 - a13 * a13, a12 * a13 - a11 * a23, a11 * a22 - a12 * a12
            bx, by, bz = -(q[a, 3] + q[b, 3]), -(q[a, 6] + q[b, 6]), -(q[a, 8] + q[b, 8])
            x = (c11 * bx + c12 * by + c13 * bz) / det
            y = (c12 * bx + c22 * by + c23 * bz) / det
            z = (c13 * bx + c23 * by + c33 * bz) / det
            ex, ey, ez = v[a, 0] - v[b, 0], v[a, 1] - v[b, 1], v[a, 2] - v[b, 2]
            if (x - mx) ** 2 + (y - my) ** 2 + (z - mz) ** 2 <= ex * ex + ey * ey + ez * ez:
                return _value(q, a, b, x, y, z), x, y, z
    best, bx, by, bz = _value(q, a, b, mx, my, mz), mx, my, mz
    for i in (a, b):
        cost = _value(q, a, b, v[i, 0], v[i, 1], v[i, 2])
        if cost < best:
            best, bx, by, bz = cost, v[i, 0], v[i, 1], v[i, 2]
    return best, bx, by, bz


@njit(cache=True, nogil=True, inline="always")
def _edge_cost(q: np.ndarray, v: np.ndarray, border: np.ndarray, move_border: bool, a: int, b: int
               ) -> tuple[float, float, float, float]:
    """The cost of collapsing edge a-b (the same both ways) and its placement: a border end stays put; an
    edge between two border vertices is infinite unless ``move_border`` (then it is judged when tried)."""
    if border[a] and border[b]:
        if move_border:
            return _placement(q, v, a, b, False, False)
        return np.inf, 0.0, 0.0, 0.0
    if border[b]:
        return _placement(q, v, b, a, True, False)
    return _placement(q, v, a, b, border[a], not border[a])


@njit(cache=True, nogil=True)
def _edge_costs(q: np.ndarray, v: np.ndarray, f: np.ndarray, border: np.ndarray, move_border: bool,
                cost: np.ndarray) -> None:
    """Every face's three edge costs (edge j from corner j to j + 1) and their least, into ``cost``."""
    for t in range(f.shape[0]):
        for j in range(3):
            cost[t, j] = _edge_cost(q, v, border, move_border, f[t, j], f[t, _NEXT[j]])[0]
        cost[t, 3] = min(cost[t, 0], cost[t, 1], cost[t, 2])


@njit(cache=True, nogil=True, inline="always")
def _folds(v: np.ndarray, f: np.ndarray, ref_face: np.ndarray, ref_corner: np.ndarray, first: int, count: int,
           dead: np.ndarray, other: int, x: float, y: float, z: float) -> bool:
    """Whether moving the vertex whose faces are refs [first, first + count) to (x, y, z) folds or slivers one
    of them (faces that also hold ``other`` go away with the collapse and are not judged)."""
    for r in range(_U(first), _U(first + count)):
        t = ref_face[r]
        if dead[t]:
            continue
        corner = ref_corner[r]
        i, j, k = f[t, corner], f[t, _NEXT[corner]], f[t, _PREV[corner]]
        if j == other or k == other:
            continue
        ux, uy, uz = v[j, 0] - x, v[j, 1] - y, v[j, 2] - z
        wx, wy, wz = v[k, 0] - x, v[k, 1] - y, v[k, 2] - z
        lu, lw, uw = ux * ux + uy * uy + uz * uz, wx * wx + wy * wy + wz * wz, ux * wx + uy * wy + uz * wz
        if lu == 0.0 or lw == 0.0 or uw * uw > SLIVER_COSINE * SLIVER_COSINE * lu * lw:
            return True
        nx, ny, nz = uy * wz - uz * wy, uz * wx - ux * wz, ux * wy - uy * wx
        ox, oy, oz = v[j, 0] - v[i, 0], v[j, 1] - v[i, 1], v[j, 2] - v[i, 2]
        px, py, pz = v[k, 0] - v[i, 0], v[k, 1] - v[i, 1], v[k, 2] - v[i, 2]
        mx, my, mz = oy * pz - oz * py, oz * px - ox * pz, ox * py - oy * px
        nm = nx * mx + ny * my + nz * mz
        mm = mx * mx + my * my + mz * mz
        if mm > 0.0 and (nm < 0.0 or nm * nm < FOLD_COSINE * FOLD_COSINE * (nx * nx + ny * ny + nz * nz) * mm):
            return True
    return False


@njit(cache=True, nogil=True, inline="always")
def _creases(v: np.ndarray, f: np.ndarray, ref_face: np.ndarray, ref_corner: np.ndarray, first: np.ndarray,
             count: np.ndarray, dead: np.ndarray, a: int, b: int, x: float, y: float, z: float, fan: np.ndarray,
             fan_normal: np.ndarray) -> bool:
    """Whether merging a and b at (x, y, z) folds two neighbouring faces against each other (their normals with a
    negative dot): two faces of the merged vertex's fan, or one of them and the face beyond its outer edge.

    :func:`_folds` judges each face against its own old normal, which lets two slivers side by side turn opposite
    ways (each by less than its limit) and fold against each other.  ``fan`` (n, 3) and ``fan_normal`` (n, 3)
    are scratch; a fan of more than n faces is refused."""
    m = 0
    for i, other in ((a, b), (b, a)):
        for r in range(_U(first[i]), _U(first[i] + count[i])):
            t = ref_face[r]
            if dead[t]:
                continue
            corner = ref_corner[r]
            j, k = f[t, _NEXT[corner]], f[t, _PREV[corner]]
            if j == other or k == other:
                continue  # on the edge: goes away
            if m == fan.shape[0]:
                return True
            fan[m, 0], fan[m, 1], fan[m, 2] = t, j, k
            ux, uy, uz = v[j, 0] - x, v[j, 1] - y, v[j, 2] - z
            wx, wy, wz = v[k, 0] - x, v[k, 1] - y, v[k, 2] - z
            fan_normal[m, 0] = uy * wz - uz * wy
            fan_normal[m, 1] = uz * wx - ux * wz
            fan_normal[m, 2] = ux * wy - uy * wx
            m += 1
    for s in range(m):
        j, k = fan[s, 1], fan[s, 2]
        for u in range(m):  # across the edge (merged, k): the fan's face that leaves the merged vertex towards k
            if fan[u, 1] == k:
                if (fan_normal[s, 0] * fan_normal[u, 0] + fan_normal[s, 1] * fan_normal[u, 1]
                        + fan_normal[s, 2] * fan_normal[u, 2]) < 0.0:
                    return True
                break
        for r in range(_U(first[j]), _U(first[j] + count[j])):  # across the edge (j, k): a face beyond the fan
            t = ref_face[r]
            if dead[t] or t == fan[s, 0]:
                continue
            corner = ref_corner[r]
            if f[t, _PREV[corner]] != k:
                continue
            q = f[t, _NEXT[corner]]  # t is (j, q, k)
            ox, oy, oz = v[q, 0] - v[j, 0], v[q, 1] - v[j, 1], v[q, 2] - v[j, 2]
            px, py, pz = v[k, 0] - v[j, 0], v[k, 1] - v[j, 1], v[k, 2] - v[j, 2]
            if (fan_normal[s, 0] * (oy * pz - oz * py) + fan_normal[s, 1] * (oz * px - ox * pz)
                    + fan_normal[s, 2] * (ox * py - oy * px)) < 0.0:
                return True
            break
    return False


@njit(cache=True, nogil=True, inline="always")
def _link(f: np.ndarray, ref_face: np.ndarray, first: np.ndarray, count: np.ndarray, dead: np.ndarray, a: int,
          b: int, stamp: np.ndarray, tick: int) -> int:
    """The faces on edge a-b (one or two) where its collapse keeps the surface's topology, else 0: the ends
    must share as many neighbours as faces hold the edge (the link condition: every edge stays on at most two
    faces), and the merged vertex keep three faces (one on a border)."""
    on_edge = 0
    faces_a = 0
    for r in range(_U(first[a]), _U(first[a] + count[a])):
        t = ref_face[r]
        if dead[t]:
            continue
        faces_a += 1
        for c in range(3):
            stamp[f[t, c]] = tick
        if f[t, 0] == b or f[t, 1] == b or f[t, 2] == b:
            on_edge += 1
    if on_edge < 1 or on_edge > 2:
        return 0
    shared = 0
    faces_b = 0
    for r in range(_U(first[b]), _U(first[b] + count[b])):
        t = ref_face[r]
        if dead[t]:
            continue
        faces_b += 1
        for c in range(3):
            w = f[t, c]
            if w != a and w != b and stamp[w] == tick:
                stamp[w] = tick + 1  # counted once
                shared += 1
    keeps = faces_a + faces_b - 2 * on_edge >= (3 if on_edge == 2 else 1)
    return on_edge if shared == on_edge and keeps else 0


def collapse_mesh(v: np.ndarray, f: np.ndarray, alpha: float, aggressiveness: float, passes: int, target: int,
                  move_border: bool) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (float64) and faces (int64) after collapsing, pass p allowing costs up to
    alpha * (p + 3) ** aggressiveness, until ``target`` faces or ``passes`` passes.  ``v`` (V, 3) and
    ``f`` (F, 3) are left as they are.  Unused vertices are dropped, the rest keep their order.

    The working arrays are made here, by numpy, which asks the system for huge pages for large ones: the
    kernel's scattered reads then miss the address cache less (half of the 1M bunny's mesh, 2.8M faces:
    3.9 s with huge pages, 4.0-4.6 s without).  Faces and refs are uint32 and corners uint8, costs float32:
    less to read, and unsigned indices need no wraparound test (:mod:`engine.solver.kernels`; the 100k clean
    bunny's half mesh, 279k faces: 0.28 -> 0.25-0.26 s, fastest of five).
    """
    nv, nf = v.shape[0], f.shape[0]
    capacity = 6 * nf + 64
    if max(nv, capacity) >= 2**31:
        raise ValueError(f"{nf:,} faces on {nv:,} vertices are more than the collapse's int32 indices hold")
    return _collapse(np.array(v, np.float64), np.array(f, np.uint32), np.zeros((nv, 10)), np.zeros(nf, np.bool_),
                     np.zeros(nf, np.bool_), np.empty((nf, 4), np.float32), np.empty(capacity, np.uint32),
                     np.empty(capacity, np.uint8), np.zeros(nv, np.int64), np.zeros(nv, np.int64),
                     np.zeros(nv, np.int64), np.empty(nv), np.zeros(nv, np.bool_), alpha, aggressiveness, passes,
                     target, move_border)


@njit(cache=True, nogil=True)
def _collapse(v: np.ndarray, f: np.ndarray, q: np.ndarray, dead: np.ndarray, dirty: np.ndarray, cost: np.ndarray,
              ref_face: np.ndarray, ref_corner: np.ndarray, first: np.ndarray, count: np.ndarray, stamp: np.ndarray,
              near: np.ndarray, border: np.ndarray, alpha: float, aggressiveness: float, passes: int, target: int,
              move_border: bool) -> tuple[np.ndarray, np.ndarray]:
    """:func:`collapse_mesh` on its working arrays: ``v`` and ``f`` (changed in place), quadrics, dead and
    dirty faces, costs (F, 4), refs (each vertex's faces and its corner in each, from ``first`` for
    ``count``), stamps, a collapse's costs to the merged vertex's neighbours (``near``), border vertices."""
    nv, nf = v.shape[0], f.shape[0]
    capacity = ref_face.shape[0]
    _plane_quadrics(v, f, q)
    end = _build_refs(f, dead, ref_face, ref_corner, first, count)
    _borders(f, ref_face, ref_corner, first, count, stamp, near.view(np.int64), border)  # stamp, near: scratch
    stamp[:] = 0
    _edge_costs(q, v, f, border, move_border, cost)
    fan = np.empty((FAN_LIMIT, 3), np.int64)
    fan_normal = np.empty((FAN_LIMIT, 3))
    tick = 0
    alive = nf
    for p in range(passes):
        if alive <= target:
            break
        dirty[:] = False
        if p > 0 and end > capacity // 2:  # the refs, rebuilt from the live faces while they fit twice
            end = _build_refs(f, dead, ref_face, ref_corner, first, count)
        threshold = alpha * (p + 3.0) ** aggressiveness
        for t in range(nf):
            if dead[t] or dirty[t] or cost[t, 3] > threshold:
                continue
            for j in range(3):
                if cost[t, j] > threshold:
                    continue
                a, b = f[t, j], f[t, _NEXT[j]]
                if border[b] and not border[a]:
                    a, b = b, a  # a is kept: a border vertex stays where it is
                both = border[a] and border[b]
                _, x, y, z = _placement(q, v, a, b, border[a] and not both, not border[a])
                tick += 3  # fresh stamps: the link test's two (tick, tick + 1), the neighbour costs' one (tick + 2)
                on_edge = _link(f, ref_face, first, count, dead, a, b, stamp, tick)
                if on_edge == 0 or (both and on_edge != 1):
                    continue  # two border vertices merge only along their border edge
                if _folds(v, f, ref_face, ref_corner, first[a], count[a], dead, b, x, y, z) or \
                        _folds(v, f, ref_face, ref_corner, first[b], count[b], dead, a, x, y, z) or \
                        _creases(v, f, ref_face, ref_corner, first, count, dead, a, b, x, y, z, fan, fan_normal):
                    continue
                if end + count[a] + count[b] > capacity:
                    break  # no room for the merged vertex's faces: the next pass starts afresh
                v[a, 0], v[a, 1], v[a, 2] = x, y, z
                for k in range(10):
                    q[a, k] += q[b, k]
                start = end
                for i in (a, b):
                    for r in range(_U(first[i]), _U(first[i] + count[i])):
                        u = ref_face[r]
                        if dead[u]:
                            continue
                        if i == b and (f[u, 0] == a or f[u, 1] == a or f[u, 2] == a):
                            dead[u] = True  # a face on the edge: gone
                            alive -= 1
                            continue
                        corner = ref_corner[r]
                        f[u, corner] = a
                        dirty[u] = True
                        ref_face[end] = u
                        ref_corner[end] = corner
                        end += 1
                first[a], count[a] = start, end - start
                count[b] = 0
                # the edges at a changed; each is on two of its faces, so each neighbour's cost is computed once
                for r in range(_U(start), _U(end)):
                    u = ref_face[r]
                    at = np.int64(ref_corner[r])  # a's corner: edges at -> next and previous -> at
                    for e in (at, _PREV[at]):
                        w = f[u, _NEXT[e]] if e == at else f[u, e]
                        if stamp[w] != tick + 2:
                            stamp[w] = tick + 2
                            near[w] = _edge_cost(q, v, border, move_border, a, w)[0]
                        cost[u, e] = near[w]
                    cost[u, 3] = min(cost[u, 0], cost[u, 1], cost[u, 2])
                break
            if alive <= target:
                break
    used = np.zeros(nv, np.bool_)
    nf_out = 0
    for t in range(nf):
        if not dead[t]:
            nf_out += 1
            for c in range(3):
                used[f[t, c]] = True
    index = np.full(nv, -1, np.int64)
    nv_out = 0
    for i in range(nv):
        if used[i]:
            index[i] = nv_out
            nv_out += 1
    v_out = np.empty((nv_out, 3))
    for i in range(nv):
        if used[i]:
            v_out[index[i]] = v[i]
    f_out = np.empty((nf_out, 3), np.int64)
    row = 0
    for t in range(nf):
        if not dead[t]:
            for c in range(3):
                f_out[row, c] = index[f[t, c]]
            row += 1
    return v_out, f_out


@njit(cache=True, nogil=True)
def _build_refs(f: np.ndarray, dead: np.ndarray, ref_face: np.ndarray, ref_corner: np.ndarray, first: np.ndarray,
                count: np.ndarray) -> int:
    """Each vertex's live faces and its corner in each, as refs [first, first + count); the refs' end."""
    count[:] = 0
    for t in range(f.shape[0]):
        if not dead[t]:
            for c in range(3):
                count[f[t, c]] += 1
    end = 0
    for i in range(first.shape[0]):
        first[i] = end
        end += count[i]
    count[:] = 0
    for t in range(f.shape[0]):
        if not dead[t]:
            for c in range(3):
                i = f[t, c]
                ref_face[first[i] + count[i]] = t
                ref_corner[first[i] + count[i]] = c
                count[i] += 1
    return end


@njit(cache=True, nogil=True)
def _borders(f: np.ndarray, ref_face: np.ndarray, ref_corner: np.ndarray, first: np.ndarray, count: np.ndarray,
             seen: np.ndarray, times: np.ndarray, border: np.ndarray) -> None:
    """Marks in ``border`` (V,) the vertices on an edge of one face or of more than two: around such a vertex
    some neighbour is not met exactly twice (once after it, once before it, in its faces).  ``seen`` and
    ``times`` (V,) are scratch."""
    nv = first.shape[0]
    seen[:] = -1
    for i in range(nv):
        for sweep in range(2):  # count, then judge
            for r in range(_U(first[i]), _U(first[i] + count[i])):
                t, c = ref_face[r], ref_corner[r]
                for w in (f[t, _NEXT[c]], f[t, _PREV[c]]):
                    if sweep == 0:
                        if seen[w] != i:
                            seen[w], times[w] = i, 0
                        times[w] += 1
                    elif times[w] != 2:
                        border[i] = True


def warm() -> None:
    """Compile (or load from numba's cache) every kernel here, on a tetrahedron."""
    v = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    f = np.array([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]], np.int64)
    collapse_mesh(v, f, 1e-9, 7.0, 1, 4, False)
