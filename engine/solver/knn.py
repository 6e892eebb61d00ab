"""k-nearest-neighbour queries: a k-d tree on the CPU, a compiled all-points search and a voxel-hash search in torch.

SciPy's cKDTree is a well-kept, multi-threaded k-d tree; the engine uses it for
the few queries that are not on the solver's hot path (density and noise
probes on a subsample, vertex colours, trimming distances on the CPU), so it runs on the
CPU whatever the compute device is.  Its build on 1M points takes ~0.3 s here.

:func:`grid_knn` is the all-points search of the CUDA path (normal estimation, the outlier test), and
:func:`grid_within` its nearness test (trimming there): points are bucketed in cubic cells (a
:class:`~engine.solver.voxels.VoxelIndex` over the occupied cells, points sorted by cell), each query scans
the 27 cells around its own, and a result is accepted only where it is provably exact (the k-th distance is at
most one cell, so nothing outside the 27 cells can be closer).  The rest are searched again with cells twice
as large.

:func:`cell_knn` is the same idea compiled (numba), for the all-points searches of the outlier test and of
normal estimation on the CPU: points sorted by cell, each query scanning the occupied cells around its own,
nearest cells first, skipping those beyond the k-th distance so far.  On the 1M-point bunny (k = 17, 2 threads)
it takes 1.0 s where the k-d tree took 1.55-1.9 s in its own order (the kernel itself 0.65 s; 1.6 against
2.0-2.2 s with 0.5% noise).  :func:`self_knn` chooses between it and the tree
(:func:`engine.warm.compiled_pays`), for both.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from scipy.spatial import cKDTree

from ..vectors import column_bounds
from .basis import TAP_OFFSETS
from .threads import chunks, run_parts, thread_count
from .voxels import VoxelIndex, unique_voxels_inverse


class PointTree:
    """A k-d tree over (N, 3) points for repeated queries."""

    def __init__(self, points: np.ndarray) -> None:
        self.tree = cKDTree(np.asarray(points, dtype=np.float64), balanced_tree=False, compact_nodes=False)

    def query(self, queries: np.ndarray, k: int, bound: float | None = None, workers: int | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """Distances and indices (M, k) of the k nearest points to each query (M, 3); with ``bound``, only those
        at most that far (the rest: distance inf, index the point count), which the tree finds sooner.
        ``workers`` threads (default :func:`search_threads`)."""
        upper = np.inf if bound is None else float(np.nextafter(bound, np.inf))  # the tree's bound is strict
        dist, idx = self.tree.query(np.asarray(queries, dtype=np.float64), k=k,
                                    workers=search_threads() if workers is None else workers,
                                    distance_upper_bound=upper)
        if k == 1:
            dist, idx = dist[:, None], idx[:, None]
        return dist, idx

    def within(self, queries: np.ndarray, radius: float) -> np.ndarray:
        """Mask (M,) of the queries (M, 3) with a point at most ``radius`` away.

        A query whose cell, in a grid of cells whose diagonal is ``radius``, holds a point is within it
        without a search (:func:`_occupied`); the others are searched, the search stopping at ``radius``
        (the tree prunes what lies beyond; a query with no point that near gets infinity).  The 2.8M
        vertices of the 1M-point bunny's mesh: 1.86 s searched, 1.08-1.44 s bounded, 0.32-0.35 s with the cells
        first (89% of the vertices decided there; 80% at 100k points).
        """
        q = np.asarray(queries, dtype=np.float64)
        near = _occupied(self.tree.data, q, radius)
        rest = np.flatnonzero(~near)
        near[rest] = self.query(q[rest], 1, bound=radius)[0][:, 0] <= radius
        return near

    @property
    def order(self) -> np.ndarray:
        """The tree's own points in its (spatial) order (N,)."""
        return self.tree.indices


OCCUPIED_MIN = 1 << 16  # queries from which :meth:`PointTree.within` tests cells first (below, the search alone)
OCCUPIED_BITS = 1 << 31  # cells of that test's bit grid at most (256 MiB); beyond, the search alone


def _occupied(points: np.ndarray, queries: np.ndarray, radius: float) -> np.ndarray:
    """Mask (M,) of the queries whose cell holds one of ``points``, in cells of diagonal just under
    ``radius`` over the points' bounding box, so that each marked query has a point within ``radius``;
    all False where there are few queries or the grid would be too large."""
    near = np.zeros(queries.shape[0], dtype=bool)
    if queries.shape[0] < OCCUPIED_MIN or points.shape[0] == 0:
        return near
    # A point's or a query's cell may be off by the rounding of its coordinates (a few units in the last place
    # of the largest one): the cells' diagonal stays that much under the radius.
    largest = max(float(np.abs(points).max()), float(np.abs(queries).max()))
    cell = (radius - 8.0 * np.sqrt(3.0) * float(np.spacing(largest))) / np.sqrt(3.0)
    if not cell > 0.0:
        return near
    origin, top = column_bounds(points)
    extent = (top - origin) / cell
    if not np.all(np.isfinite(extent)) or float(np.prod(np.floor(extent) + 1.0)) > OCCUPIED_BITS:
        return near
    from . import kernels

    dims = (np.floor(extent) + 1).astype(np.int64)
    grid = np.zeros((int(np.prod(dims)) + 63) // 64, np.uint64)
    kernels.mark_cells(points, origin, 1.0 / cell, dims, grid)
    run_parts(partial(kernels.cells_marked, queries, origin, 1.0 / cell, dims, grid, out=near),
              chunks(0, queries.shape[0]))
    return near


def search_threads() -> int:
    """Threads for a k-d tree search: every core (-1), but one fewer while numba's kernels load in the background
    (:mod:`engine.warm`), which takes a core's worth of CPU beside the first stages: on 2 cores the outlier test
    on one thread then left the 100k torus scan 0.02-0.23 s quicker in 9 of 9 alternating fresh pairs (the other
    scans and the bunny within the noise, -0.1 to +0.2 s)."""
    from ..warm import kernels_loading

    return max(1, thread_count() - 1) if kernels_loading() else -1


def self_knn(points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`cell_knn`'s results (order, distances, indices as positions in order), by the compiled search
    where it pays (:func:`engine.warm.compiled_pays`), else by the k-d tree in its own order.

    Why both: in a fresh process the compiled search waits for numba's start (0.3-0.5 s, beside the clean
    stage), which the k-d tree does not.  The outlier test on 100k points took 0.15-0.17 s either way, so the
    wait was the clean stage's added 0.15-0.3 s; at 1M the compiled search saves 0.6 s (1.26 against 1.9 s).
    """
    from ..warm import compiled_pays

    if compiled_pays(points.shape[0]):
        return cell_knn(points, k)
    tree = PointTree(points)
    order = tree.order
    position = np.empty(order.shape[0], np.int64)
    position[order] = np.arange(order.shape[0])
    dist, idx = tree.query(tree.tree.data[order], min(k, order.shape[0]))
    return order, dist.astype(np.float32), position[idx].astype(np.int32 if order.shape[0] < 2**31 else np.int64)


def _cell_keys(points: np.ndarray, origin: np.ndarray, size: float) -> tuple[np.ndarray, np.ndarray]:
    """Each point's cell key (x dims[1] + y) dims[2] + z (N,), in cubes of edge ``size`` from ``origin``, and the
    cells' count along each axis (3,).  The caller keeps ``size`` coarse enough for the keys to fit int64."""
    cells = np.floor((points - origin) / size).astype(np.int64)
    dims = column_bounds(cells)[1] + 1
    return (cells[:, 0] * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2], dims


def cell_order(points: np.ndarray, size: float) -> np.ndarray:
    """The points' rows (N,) sorted by cubic cells of edge ``size`` (at least 2^-20 of their extent): a spatial
    order, for queries that a k-d tree answers several times faster in one (its caches stay warm)."""
    if points.shape[0] == 0:
        return np.zeros(0, np.int64)
    origin, top = column_bounds(points)
    size = max(size, float(np.max(top - origin)) * 2.0**-20, 1e-300)
    return np.argsort(_cell_keys(points, origin, size)[0])


KNN_FILL = 1.5  # :func:`cell_knn`: an occupied cell holds about k / KNN_FILL points
KNN_REACH = 2  # :func:`cell_knn`: cells out to this many around a query before the k-d tree takes the rest


def cell_knn(points: np.ndarray, k: int, fill: float = KNN_FILL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of every point (N, 3) among the points (each its own first, up to duplicates),
    with the compiled search (:func:`engine.solver.kernels.cell_knn`) on points sorted by cell.

    Returns ``order`` (N,), the points' rows in the order of the results, and distances (N, k) float32 and
    indices (N, k) (int32 below 2^31 points) nearest first, the indices being positions in ``order``: results
    stay in the spatial order in which a caller's own gathers are cheap.  A point whose k-th neighbour may lie
    beyond the cells around its own is searched again in the cells out to :data:`KNN_REACH`, then (isolated
    points) by the k-d tree.
    """
    from . import kernels

    pts = np.ascontiguousarray(points, dtype=np.float64)
    n = pts.shape[0]
    k = min(k, n)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)
    origin, top = column_bounds(pts)
    span = top - origin
    smallest = float(np.max(span)) * 2.0**-20  # cells no finer: keys of 21 bits an axis stay within int64
    size = max(float(np.linalg.norm(span)) * float(np.sqrt(k / fill / n)), smallest, 1e-300)  # a surface's
    for attempt in range(3):  # the guess corrected from the cells' measured fill
        keys, dims = _cell_keys(pts, origin, size)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        starts = np.flatnonzero(np.diff(keys)) + 1
        change = float(np.sqrt(k / fill / (n / (starts.shape[0] + 1))))
        if attempt == 2 or 0.7 < change < 1.4 or (change < 1.0 and size <= smallest):
            break
        size = max(size * float(np.clip(change, 0.25, 4.0)), smallest)
    cell_start = np.concatenate(([0], starts, [n])).astype(np.int64)
    cell_keys = keys[cell_start[:-1]]
    sorted_pts = pts[order]
    dist = np.empty((n, k), np.float32)
    idx = np.empty((n, k), np.int32 if n < 2**31 else np.int64)
    todo = np.arange(n, dtype=np.int64)
    for reach in range(1, KNN_REACH + 1):
        whole = todo.shape[0] == n  # the first pass writes the results in place
        d = dist if whole else np.empty((todo.shape[0], k), np.float32)
        i = idx if whole else np.empty((todo.shape[0], k), idx.dtype)
        exact = np.empty(todo.shape[0], np.bool_)
        run_parts(partial(kernels.cell_knn, sorted_pts, keys, cell_keys, cell_start, dims, origin, size, reach,
                          todo, dist=d, idx=i, exact=exact), chunks(0, todo.shape[0]))
        if not whole:
            dist[todo], idx[todo] = d, i
        todo = todo[~exact]
        if todo.shape[0] == 0:
            break
    if todo.shape[0]:
        far, near = cKDTree(sorted_pts).query(sorted_pts[todo], k=k, workers=-1)
        dist[todo], idx[todo] = far.reshape(-1, k), near.reshape(-1, k)
    return order, dist, idx


# A cell should hold about k / CELL_FILL points: then the 27 cells around a query hold
# a few k candidates and the k-th neighbour lies within one cell for most queries
# (bunny, 100k points, k = 16: 68 candidates on average, 91% exact in the first pass).
CELL_FILL = 3.0
CANDIDATE_BUDGET = 1 << 22  # distances computed per chunk of queries (48 MiB of float32 offsets)


def points_per_cell(points: torch.Tensor, size: float) -> float:
    """The points (N, 3) per occupied cube of edge ``size``: what each query of the cell search scans, / 27."""
    if points.shape[0] == 0:
        return 0.0
    return points.shape[0] / unique_voxels_inverse(torch.floor(points / size).to(torch.int64))[0].shape[0]


def _cell_size(points: torch.Tensor, k: int) -> float:
    """A cell edge at which occupied cells hold about k / CELL_FILL points, by two rescalings.

    Occupancy grows with the square of the edge on a surface (the cube for a
    volume), so the guess from the bounding box is corrected from the measured
    occupancy; the exactness check in :func:`grid_knn` covers what is left.
    """
    n = points.shape[0]
    extent = float((points.max(dim=0).values - points.min(dim=0).values).norm())
    size = max(extent, 1e-30) * float(np.sqrt(k / CELL_FILL / max(n, 1)))
    for _ in range(3):
        size *= float(np.clip(np.sqrt(k / CELL_FILL / points_per_cell(points, size)), 0.25, 4.0))
    return size


QUERY_BATCH = 1 << 18  # queries whose 27 cells are looked up at once in :func:`_search` (about 2 kB of tables each)


def _search(points: torch.Tensor, queries: torch.Tensor, k: int, size: float,
            check: Callable[[], None] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distances and indices (Q, k) of the k nearest among the 27 cells around each query's cell.

    Rows with fewer than k candidates are padded with +inf and index 0.  The points are bucketed once; the
    queries' tables of their 27 cells (their rows, counts and starts: int64 each) are made
    :data:`QUERY_BATCH` queries at a time, so that the memory the search takes beyond its results stays
    bounded whatever the cloud's size (all at once they were most of the outlier test's 2.6 GB on the GPU at
    1M points).
    """
    device = points.device
    cells, inverse = unique_voxels_inverse(torch.floor(points / size).to(torch.int64))
    order = torch.argsort(inverse, stable=True)  # points grouped by cell
    count = torch.bincount(inverse, minlength=cells.shape[0])
    start = torch.cumsum(count, 0) - count
    index = VoxelIndex(cells)
    count_pad = torch.cat((count, count.new_zeros(1)))  # row -1 (absent cell) -> 0 points
    start_pad = torch.cat((start, start.new_zeros(1)))
    offsets = torch.from_numpy(TAP_OFFSETS).to(device)  # the 27 cells around the query's
    dist = torch.full((queries.shape[0], k), float("inf"), dtype=points.dtype, device=device)
    idx = torch.zeros((queries.shape[0], k), dtype=torch.int64, device=device)
    for first in range(0, queries.shape[0], QUERY_BATCH):
        batch = queries[first:first + QUERY_BATCH]
        qcell = torch.floor(batch / size).to(torch.int64)
        rows = index.lookup(qcell[:, None, :] + offsets)  # (B, 27), -1 where absent
        qcount = count_pad[rows]
        qstart = start_pad[rows]
        del rows
        total = qcount.sum(dim=1)
        # queries in cell order, so a chunk's widest row is close to its typical one
        qorder = torch.argsort(index.lookup(qcell), stable=True)
        pos = 0
        while pos < qorder.shape[0]:
            if check is not None:
                check()
            width = int(total[qorder[pos:pos + 1024]].max())
            chunk = qorder[pos:pos + max(1, CANDIDATE_BUDGET // max(width, 1))]
            pos += chunk.shape[0]
            width = max(int(total[chunk].max()), k)
            ends = torch.cumsum(qcount[chunk], dim=1)  # (C, 27)
            slot = torch.arange(width, device=device).expand(chunk.shape[0], width)
            which = torch.searchsorted(ends, slot.contiguous(), right=True).clamp_max(26)  # cell of each slot
            before = torch.gather(ends - qcount[chunk], 1, which)
            cand = torch.gather(qstart[chunk], 1, which) + slot - before
            valid = slot < total[chunk, None]
            cand = order[torch.where(valid, cand, 0)]
            d2 = ((points[cand] - batch[chunk, None, :]) ** 2).sum(dim=-1)
            d2 = torch.where(valid, d2, float("inf"))
            best, arg = torch.topk(d2, k, dim=1, largest=False, sorted=True)
            dist[first + chunk] = best
            idx[first + chunk] = torch.gather(cand, 1, arg)
    return dist, idx


def grid_within(points: torch.Tensor, queries: torch.Tensor, radius: float) -> torch.Tensor:
    """Mask (M,) of the queries (M, 3) with one of the points (N, 3) at most ``radius`` away, on the points'
    device: :meth:`PointTree.within` for a GPU (trimming's test there).

    In cells of edge ``radius`` every point that near a query lies in the 27 cells around the query's own, so one
    pass of the cell search with k = 1 decides each query exactly (in the points' precision).
    """
    if points.shape[0] == 0 or not radius > 0.0:
        return torch.zeros(queries.shape[0], dtype=torch.bool, device=points.device)
    return _search(points, queries, 1, radius, None)[0][:, 0] <= radius * radius


def grid_knn(points: torch.Tensor, k: int, check: Callable[[], None] | None = None,
             queries: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest neighbours among the points (N, 3) of each query (M, 3), on the points' device.

    ``queries`` defaults to the points themselves (then each point is its own
    first neighbour, up to duplicates).  Returns distances (M, k) and indices
    (M, k) int64, nearest first.  ``check`` is called between chunks, for
    cancellation.  The search runs on copies sorted by cell: gathers from a
    random order cost 5x more on the CPU.
    """
    k = min(k, points.shape[0])
    size = _cell_size(points, k)

    def cell_order(x: torch.Tensor) -> torch.Tensor:
        return torch.argsort(unique_voxels_inverse(torch.floor(x / size).to(torch.int64))[1], stable=True)

    spatial = cell_order(points)
    sorted_points = points[spatial]
    q = sorted_points if queries is None else queries
    q_order = spatial if queries is None else cell_order(queries)
    sorted_q = q[q_order] if queries is not None else sorted_points
    m = sorted_q.shape[0]
    dist = torch.empty((m, k), dtype=points.dtype, device=points.device)
    idx = torch.empty((m, k), dtype=torch.int64, device=points.device)
    todo = torch.arange(m, device=points.device)
    while todo.numel() > 0:
        d2, i = _search(sorted_points, sorted_q[todo], k, size, check)
        exact = d2[:, -1] <= size * size
        done = todo[exact]
        dist[done] = d2[exact].sqrt()
        idx[done] = i[exact]
        todo = todo[~exact]
        size *= 2.0
    out_dist = torch.empty_like(dist)
    out_idx = torch.empty_like(idx)
    out_dist[q_order] = dist
    out_idx[q_order] = spatial[idx]
    return out_dist, out_idx
