"""Quadric edge collapse (:mod:`engine.surface.quadrics`), whole or in spatial pieces on threads.

The collapse runs in one thread; its kernel releases the GIL, so a large mesh
is cut in slabs along its longest axis and each slab collapsed on a thread of
its own with its cut border pinned (border vertices stay bit for bit where they
were, so the slabs weld back on them).  The strips along the cuts, where
nothing could collapse, are then collapsed again, each a band around its cut
with the band's own border pinned.

Measured on the 1M-point clean bunny's mesh (5.6M faces, 2 cores, 12 passes):
pyfqmr in worker processes 10.65 s whole -> 7.2 s in two pieces; this kernel in
two slabs on threads 4.6-5.7 s (each half takes 4.3 s beside the other, 3.9 s
alone: they share the memory bandwidth), 780,186 faces, closed and manifold.
"""

from __future__ import annotations

import numpy as np

from ..solver.threads import run_parts, thread_count
from ..vectors import column_bounds

# Collapse passes; the error threshold grows over them to the bound.  Whole collapses in a fresh process, 20 -> 12
# passes (pyfqmr then): the 100k clean bunny's 557k faces 1.21 -> 1.08 s (149,398 -> 149,188 faces, the same
# Chamfer and NC on the bunny and the sphere), the 1M bunny's 5.6M faces 11.95 -> 10.65 s (778,476 -> 780,678).
ITERATIONS = 12
BUDGET_ITERATIONS = 20  # passes toward a max_faces budget (12 left a small ellipsoid at 618 faces for 500)
BUDGET_ALPHA = 1e-9  # the budget's threshold schedule starts this low: the cheapest collapses first
AGGRESSIVENESS = 7.0  # threshold ~ (pass + 3)^7, so the cheapest collapses go first
MIN_FACES = 4  # a tetrahedron: the smallest closed mesh, the smallest budget max_faces accepts
PIECE_FACES = 150_000  # the smallest piece worth a thread of its own (cutting and welding cost 0.05-0.1 s)
MAX_PIECES = 8
# Slabs per thread once every thread has one of PIECE_FACES (so each of at least half that): a thread that
# finishes its first takes the next, so no thread waits on the slowest slab.  On two threads, the 1M-point bunny's
# 5.6M faces in 2 / 4 / 8 slabs took 3.79-3.84 / 3.19-3.22 / 3.23-3.70 s (three alternating runs), the 100k one's
# 557k in 2 / 3 / 4 0.31-0.37 / 0.33-0.38 / 0.26-0.32 s (five); Chamfer-L1 x1e-3 at 1M 0.00921 / 0.00923 (4) /
# 0.00924 (8), at 100k 0.04613 / 0.04617 (3); 1-2% fewer faces.  More slabs cost accuracy: 16 at 1M 0.00929.
SLABS_PER_THREAD = 2
BAND = 2.0  # half-width, in voxels, of the band around each cut collapsed again after the weld (4: 8% fewer
# faces than the whole collapse on a small ellipsoid, re-collapsing collapsed faces; 1: 2% more; 2: within 2.5%)


def schedule(bound: float) -> float:
    """The ``alpha`` for which the threshold alpha * (pass + 3)^aggressiveness reaches ``bound`` at the end."""
    return bound / (ITERATIONS - 1 + 3) ** AGGRESSIVENESS


def collapse(v: np.ndarray, f: np.ndarray, bound: float | None, max_faces: int | None, move_border: bool
             ) -> tuple[np.ndarray, np.ndarray]:
    """Collapse to the quadric error ``bound`` (squared distance; None: skip), then to ``max_faces``.

    Open borders stay where they are, unless ``move_border`` and the budget cannot be met without moving them.
    """
    from .quadrics import collapse_mesh

    v, f = np.ascontiguousarray(v, np.float64), np.ascontiguousarray(f, np.int64)
    if bound is not None:
        v, f = collapse_mesh(v, f, schedule(bound), AGGRESSIVENESS, ITERATIONS, MIN_FACES, False)
    if max_faces is not None and f.shape[0] > max_faces:
        v, f = collapse_mesh(v, f, BUDGET_ALPHA, AGGRESSIVENESS, BUDGET_ITERATIONS, max_faces, False)
        if move_border and f.shape[0] > max_faces * 1.1:  # the open border alone is over the budget
            v, f = collapse_mesh(v, f, BUDGET_ALPHA, AGGRESSIVENESS, BUDGET_ITERATIONS, max_faces, True)
    return v, f


def piece_count(faces: int, cores: int | None = None) -> int:
    """Pieces a mesh of ``faces`` is collapsed in: one per kernel thread (``cores``), each of at least
    ``PIECE_FACES`` (1: whole); where every thread has one, :data:`SLABS_PER_THREAD` per thread (of at least half
    that); never more than :data:`MAX_PIECES`."""
    cores = cores if cores is not None else thread_count()
    pieces = max(1, min(cores, MAX_PIECES, faces // PIECE_FACES))
    return min(SLABS_PER_THREAD * cores, MAX_PIECES) if cores > 1 and pieces == cores else pieces


def collapse_in_pieces(v: np.ndarray, f: np.ndarray, bound: float, pieces: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`collapse` to ``bound`` (no budget) of ``pieces`` slabs at once, each on a thread."""
    low, high = column_bounds(v)
    axis = int(np.argmax(high - low))
    centre = _centres(v, f, axis)
    cuts = np.quantile(centre, np.arange(1, pieces) / pieces)
    v1, f1 = _collapse_groups(v, f, _split(np.searchsorted(cuts, centre), pieces), bound, axis)
    # the strips along the cuts, where the pinned borders kept every face: a band of BAND voxels each
    # side of each cut (slabs are far wider, so bands do not meet), with the rest as it is
    centre = _centres(v1, f1, axis)
    near = np.abs(centre[:, None] - cuts[None, :]) <= BAND
    band = np.where(near.any(axis=1), np.argmax(near, axis=1), len(cuts))
    parts = _split(band, len(cuts) + 1)
    return _collapse_groups(v1, f1, parts[:-1], bound, axis, rest=parts[-1])


def _centres(v: np.ndarray, f: np.ndarray, axis: int) -> np.ndarray:
    """Each face's mean ``axis`` coordinate (the same sum and division as ``v[f, axis].mean(axis=1)``, without
    its (F, 3) copy)."""
    column = v[:, axis]
    return (column[f[:, 0]] + column[f[:, 1]] + column[f[:, 2]]) / 3.0


def _split(label: np.ndarray, count: int) -> list[np.ndarray]:
    """Indices of each label 0..count-1."""
    order = np.argsort(label, kind="stable")
    return np.split(order, np.searchsorted(label[order], np.arange(1, count)))


def _collapse_groups(v: np.ndarray, f: np.ndarray, groups: list[np.ndarray], bound: float, axis: int,
                     rest: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Collapse each group of faces (rows of ``f``) on a thread of its own with its border pinned; weld them
    and the faces ``rest`` (as they are).

    Each thread also takes its group's faces, the vertices they use and its submesh, and ``rest``'s submesh
    is a job of its own: done before the threads start, these passes over the whole mesh were a quarter of the
    1M-point bunny's collapse in slabs on two threads, and the collapse stopped gaining past four threads on a
    16-core machine (bench/README.md, session 27).
    """
    rows = [*groups, *([] if rest is None else [rest])]
    used: list[np.ndarray] = [np.empty(0, bool)] * len(rows)
    parts: list[tuple[np.ndarray, np.ndarray]] = [(v, f)] * len(rows)

    def job(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            faces = f[rows[i]]
            used[i] = np.zeros(v.shape[0], bool)
            used[i][faces] = True
            parts[i] = _submesh(v, faces, used[i])
            if i < len(groups):
                parts[i] = collapse(*parts[i], bound, None, False)

    run_parts(job, [(i, i + 1) for i in range(len(rows))])
    uses = np.zeros(v.shape[0], np.int8)
    for mask in used:
        uses += mask
    anchors = np.nonzero(uses > 1)[0]  # vertices of two groups: on a cut, pinned, so bit-equal after the collapse
    return _weld(parts, v[anchors], axis)


def _submesh(v: np.ndarray, f: np.ndarray, used: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The vertices ``f`` uses (``used``, their mask, when known) and ``f`` renumbered to them."""
    if used is None:
        used = np.zeros(v.shape[0], bool)
        used[f] = True
    index = np.cumsum(used) - 1
    return v[used], index[f]


def _weld(parts: list[tuple[np.ndarray, np.ndarray]], anchors: np.ndarray, axis: int
          ) -> tuple[np.ndarray, np.ndarray]:
    """One mesh of ``parts``, each vertex at an ``anchors`` position (the pinned cut) made one vertex.

    A part's vertices are first screened on their ``axis`` coordinate, then matched on all three.
    """
    key = np.ascontiguousarray(anchors).view(np.dtype((np.void, 24))).reshape(-1)
    order = np.argsort(key)
    verts, faces, count = [anchors], [], anchors.shape[0]
    for pv, pf in parts:
        ids = np.full(pv.shape[0], -1, np.int64)
        maybe = np.nonzero(np.isin(pv[:, axis], anchors[:, axis]))[0]
        if maybe.size and anchors.shape[0]:
            k = np.ascontiguousarray(pv[maybe]).view(np.dtype((np.void, 24))).reshape(-1)
            at = np.minimum(np.searchsorted(key, k, sorter=order), order.size - 1)
            hit = key[order[at]] == k
            ids[maybe[hit]] = order[at[hit]]
        own = ids < 0
        ids[own] = count + np.arange(int(own.sum()))
        count += int(own.sum())
        verts.append(pv[own])
        faces.append(ids[pf])
    return _submesh(np.concatenate(verts), np.concatenate(faces))  # anchors no face uses go
