"""Marching-cubes case table, derived at import time from the cube's geometry.

Corner k of a cell sits at (k & 1, k >> 1 & 1, k >> 2 & 1); a corner is
"inside" when the field there is negative.  On each face, viewed from outside,
we walk the corners counter-clockwise and draw one directed segment per run of
inside corners, from the edge where the walk enters the run to the edge where
it leaves.  Two cells that share a face see it from opposite sides, so they
draw the same segments in opposite directions: the surface is crack-free and
consistently oriented, and a face with two diagonal inside corners is resolved
the same way from both sides (the inside corners are separated).  Segments
chain into closed loops, which are fan-triangulated.  Triangles wind
counter-clockwise seen from the positive (outside) side.
"""

from __future__ import annotations

import numpy as np

CORNERS = np.array([[k & 1, k >> 1 & 1, k >> 2 & 1] for k in range(8)], dtype=np.int64)


def _edges() -> np.ndarray:
    """(12, 2) corner pairs, grouped by axis (x edges, then y, then z)."""
    edges = []
    for axis in range(3):
        for k in range(8):
            if not k >> axis & 1:
                edges.append((k, k | 1 << axis))
    return np.array(edges, dtype=np.int64)


EDGES = _edges()
EDGE_AXIS = np.repeat(np.arange(3), 4)


def _faces() -> list[list[int]]:
    """Corner cycles of the 6 faces, counter-clockwise seen from outside the cube."""
    faces = []
    for axis in range(3):
        u, v = (axis + 1) % 3, (axis + 2) % 3
        for side in (0, 1):
            corners = [k for k in range(8) if (k >> axis & 1) == side]
            angle = [np.arctan2(CORNERS[k, v] - 0.5, CORNERS[k, u] - 0.5) for k in corners]
            cycle = [corners[i] for i in np.argsort(angle)]
            faces.append(cycle if side == 1 else cycle[::-1])
    return faces


FACES = _faces()


def _edge_id(a: int, b: int) -> int:
    pair = (min(a, b), max(a, b))
    return int(np.flatnonzero((EDGES[:, 0] == pair[0]) & (EDGES[:, 1] == pair[1]))[0])


def _loops(case: int) -> list[list[int]]:
    inside = [(case >> k) & 1 for k in range(8)]
    follow: dict[int, int] = {}
    for cycle in FACES:
        entries, exits = [], []
        for i in range(4):
            a, b = cycle[i], cycle[(i + 1) % 4]
            if not inside[a] and inside[b]:
                entries.append(i)
            elif inside[a] and not inside[b]:
                exits.append(i)
        for i in entries:
            # the run entered at step i ends at the first exit after it, walking the cycle
            j = min(exits, key=lambda e: (e - i) % 4)
            start = _edge_id(cycle[i], cycle[(i + 1) % 4])
            end = _edge_id(cycle[j], cycle[(j + 1) % 4])
            assert start not in follow, "each crossing edge starts exactly one segment"
            follow[start] = end
    loops = []
    while follow:
        start, nxt = follow.popitem()
        loop = [start]
        while nxt != start:
            loop.append(nxt)
            nxt = follow.pop(nxt)
        loops.append(loop)
    return loops


def _table() -> np.ndarray:
    """(256, T, 3) edge ids of each case's triangles, padded with -1."""
    tris = []
    for case in range(256):
        t = []
        for loop in _loops(case):
            t += [(loop[0], loop[i], loop[i + 1]) for i in range(1, len(loop) - 1)]
        tris.append(t)
    width = max(len(t) for t in tris)
    table = -np.ones((256, width, 3), dtype=np.int64)
    for case, t in enumerate(tris):
        if t:
            table[case, : len(t)] = np.array(t)
    return table


def _orient(table: np.ndarray) -> np.ndarray:
    """Flip all triangles if case 1 (corner 0 inside) does not face away from corner 0."""
    mid = (CORNERS[EDGES[:, 0]] + CORNERS[EDGES[:, 1]]) / 2.0
    a, b, c = mid[table[1, 0]]
    if np.dot(np.cross(b - a, c - a), np.ones(3)) < 0:
        table = table[:, :, ::-1].copy()
    return table


TRIANGLES = _orient(_table())
