"""Step 10: normals for clouds that have none: estimate, then orient.

Estimation: the normal of a point is the direction of least spread of its k
nearest neighbours (the smallest eigenvector of their covariance), in torch on
the engine's device, or on the CPU in a numba kernel
(:func:`engine.solver.kernels.plane_normals`: the same closed form, row by
row).  Neighbours come from :mod:`engine.solver.knn`: on the CPU its compiled
all-points search; the voxel-hash search on CUDA.  On the CPU the estimate
waits for numba's kernels to load (:func:`engine.warm.await_kernels`): the
k-d tree and SciPy's spanning tree, which the passes take where numba has
not loaded (:func:`engine.warm.compiled_pays`), pick differently among
equal distances, so a run's normals depended on numba's start.

Orientation gives each unoriented normal a sign:

* **From sensors** (one viewpoint (3,) or one per point (N, 3)): the normal
  faces its sensor.  Where the view ray is nearly tangent (``|cos| <
  GRAZING_COS``) the sign is a guess; such points take the sign their
  confidently oriented neighbours vote for, or are doubtful.
* **By propagation** otherwise: signs are passed along a minimum spanning
  tree of the neighbour graph whose edge cost is low between neighbours with
  parallel normals (SciPy's, or Kruskal's compiled where that pays), so they
  follow smooth surface rather than creases; a vote of each point's
  neighbours then fixes single points the tree got wrong.  Points whose
  neighbours lie on a line (:data:`LINE_RATIO`) stay out of the tree and the
  vote and take their neighbours' sign at the end.  Each connected
  piece finally gets its global sign from :func:`outward_signs`: outward for
  closed or curved pieces, up (+Z) for open, mostly horizontal ones.

Points whose orientation stays doubtful (weak or split neighbour vote,
grazing view with no confident neighbours) get a zero normal: the pipeline
drops them and counts them in the stats.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

from ..cloud import MIN_POINTS, _as_rows
from ..device import select_device
from ..errors import Cancelled, InputError, ShapeMismatchError, TooFewPointsError
from ..frames import Frame
from ..options import SPECS
from ..warm import await_kernels, compiled_pays, warm_kernels
from .knn import PointTree, grid_knn, self_knn
from .resolution import measure
from .threads import chunks, run_parts

Report = Callable[[float, str], None]

# Neighbours per plane fit, the point itself included.  On clean scans small neighbourhoods are best
# (less rounding of curved surface); on noisy ones, where the noise sets the radius, more points per
# fit are.  Measured on the bunny at 100k points (mesh Chamfer-L1 x1e-3 from estimated normals, k =
# 8 / 12 / 16 / 24 / 32): clean 0.041 / 0.042 / 0.043 / 0.045 / 0.047 (true normals 0.044), 0.25%
# noise 0.65 / 0.55 / 0.51 / 0.48 / 0.46; k = 8 orients less reliably on noisy scans (99.7% correct).
DEFAULT_K = 12
NOISY_K = 32  # the default when the noise sets the neighbourhood (see :func:`noise_fraction`)
GRAPH_K = 8  # neighbours per point in the orientation graph and vote (the nearest ones of the k)
VOTE_MIN = 0.5  # a point is doubtful when its neighbours' weighted vote is below this (1 = unanimous)
VOTE_ROUNDS = 3
GRAZING_COS = 0.1  # |cos| between normal and view ray below which a sensor's sign is a guess (84 degrees)
OPEN_FLAT = 0.7  # |mean normal| above which a piece counts as an open, roughly flat patch
# A point whose neighbours' middle spread is under this share of their largest lies on a line (a wire, a chain of
# stray points), where any direction across the line fits as a normal: signs passed along such points are a coin
# toss, and a chain of them between two objects turned one inside out (two spheres joined by 40 noisy points in a
# line, `tests/engine/test_normals.py`).  They stay out of the spanning forest and take the sign their clear
# neighbours vote for.  Share of points under 0.1 (k = 12): such a chain 80-100%, the 100k bunny 0.17% (thin ear
# edges), a LiDAR tile 0.47%, a stereo table scene 0.03%, a noisy scan 0.01%.
LINE_RATIO = 0.1
NOISE_RADIUS = 6.0  # neighbourhoods span at least this many times the measured noise (measured: README)
MIN_SUBSAMPLE = 2000
SUBSAMPLE_FROM = 0.7  # fit on all points when the subsample would hold more than this share of them
BATCH = 1 << 18  # points per batch of neighbour queries and fits

# Given normals far from the planes their points lie in (tilted by an exporter, or a noisy estimate) set the fit's
# gradient wrong everywhere; planes fitted to the points, turned the way the given normals face, do not.  The test:
# the median angle between given normals and the planes of their points' 12 nearest neighbours, at DOUBT_SAMPLE
# points of a subsample of at most DOUBT_POINTS, counted where the neighbours lie in a plane (the smallest
# eigenvalue of their spread under PLANAR of the sum) and only when over PLANAR_SHARE of them do: a cloud with
# noise in its positions has no such planes, and its given normals stand.  Measured (median angle; share planar):
# true normals on the bunny at 10k, 100k and 1M points 3.5 / 2.0 / 0.7 degrees, the sphere and torus 0.4 / 0.9,
# the box 0.0 (66-100% planar); normals tilted 10 degrees at random 10.2 (95%); 0.25-1% noise in the positions
# 0%, the simulated scans 1-3%.  The bunny at 100k with tilted normals (Chamfer-L1 x1e-3): 0.0999 as given, 0.0429
# re-estimated (its true normals 0.0454; Poisson depth 8 on the tilted ones 0.057).
DOUBT_DEGREES = 6.0
PLANAR = 0.005
PLANAR_SHARE = 0.25
DOUBT_SAMPLE = 2000
DOUBT_POINTS = 50_000


def given_normals_tilt(points: np.ndarray, normals: np.ndarray) -> float | None:
    """The median angle in degrees between ``normals`` (N, 3) and the planes of their ``points``' (N, 3)
    neighbours, where the neighbours lie in planes; None where too few do to tell (:data:`PLANAR_SHARE`)."""
    n = points.shape[0]
    if n < 2 * DEFAULT_K:
        return None
    base = points[::max(1, n // DOUBT_POINTS)].astype(np.float64)
    rows = np.linspace(0, n - 1, min(n, DOUBT_SAMPLE)).astype(np.int64)
    _, idx = PointTree(base).query(points[rows], DEFAULT_K)
    near = base[idx]
    near -= near.mean(axis=1, keepdims=True)
    spread, axes = np.linalg.eigh(np.einsum("nki,nkj->nij", near, near))
    planar = spread[:, 0] < PLANAR * spread.sum(axis=1)
    if planar.mean() <= PLANAR_SHARE:
        return None
    given = normals[rows][planar].astype(np.float64)
    length = np.linalg.norm(given, axis=1)
    usable = np.isfinite(length) & (length > 0)
    if not usable.any():
        return None
    cos = np.abs((axes[planar, :, 0][usable] * given[usable]).sum(axis=1)) / length[usable]
    return float(np.degrees(np.arccos(np.clip(np.median(cos), 0.0, 1.0))))


@dataclass
class NormalEstimate:
    """Oriented unit normals (N, 3) float32 (zero where doubtful) and what the estimate found."""

    normals: torch.Tensor
    doubtful: torch.Tensor  # (N,) bool
    k: int
    orientation: str  # "sensor" or "propagation"
    pieces: int  # connected pieces of the neighbour graph (propagation only, else 0)
    grazing: int  # points seen at a grazing angle (sensor only, else 0)
    fraction: float  # share of the points the planes were fitted on (below 1 on noisy scans)

    def stats(self) -> dict[str, Any]:
        return {"normals_estimated": True, "normal_k": self.k, "normals_orientation": self.orientation,
                "normals_doubtful": int(self.doubtful.sum()), "normals_pieces": self.pieces,
                "normals_grazing": self.grazing, "normals_fit_fraction": self.fraction}


def check_k(k: int | None) -> int:
    """The neighbour count to use; ``None`` means the measured default."""
    if k is None:
        return DEFAULT_K
    return int(SPECS["normal_k"].check(int(k) if isinstance(k, np.integer) else k))


def smallest_eigenvectors(cov: torch.Tensor, angles: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
    """Unit eigenvectors (M, 3) of the smallest eigenvalue of symmetric 3 x 3 matrices (M, 3, 3), float64.

    Closed form: the eigenvalue from the trigonometric solution of the
    characteristic cubic, the vector as the largest cross product of two rows
    of cov - lambda I.  At 1M points this took 0.3 s against 2.3 s for the
    batched ``torch.linalg.eigh``; it is as accurate wherever the normal is
    defined at all (the smallest eigenvalue is simple).
    """
    q, p, phi = _eigen_angles(cov) if angles is None else angles
    lam = q + 2 * p * torch.cos(phi + 2 * np.pi / 3)
    rows = cov - lam[:, None, None] * torch.eye(3, dtype=cov.dtype, device=cov.device)
    cands = torch.stack((torch.linalg.cross(rows[:, 0], rows[:, 1]), torch.linalg.cross(rows[:, 0], rows[:, 2]),
                         torch.linalg.cross(rows[:, 1], rows[:, 2])), dim=1)  # (M, 3 pairs, 3)
    length = cands.norm(dim=2)
    best = torch.gather(cands, 1, length.argmax(dim=1)[:, None, None].expand(-1, 1, 3))[:, 0]
    return best / best.norm(dim=1, keepdim=True).clamp_min(1e-300)


def _eigen_angles(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, p, phi) (M,) of symmetric 3 x 3 matrices (M, 3, 3): their eigenvalues are q + 2 p cos(phi + 2 pi j / 3),
    the largest for j = 0, the smallest for j = 1, the middle one for j = 2 (the characteristic cubic's
    trigonometric solution)."""
    q = cov.diagonal(dim1=1, dim2=2).sum(dim=1) / 3
    shifted = cov - q[:, None, None] * torch.eye(3, dtype=cov.dtype, device=cov.device)
    p = torch.sqrt((shifted**2).sum(dim=(1, 2)) / 6).clamp_min(1e-300)
    b = shifted / p[:, None, None]
    det = (b[:, 0, 0] * (b[:, 1, 1] * b[:, 2, 2] - b[:, 1, 2] * b[:, 2, 1])
           - b[:, 0, 1] * (b[:, 1, 0] * b[:, 2, 2] - b[:, 1, 2] * b[:, 2, 0])
           + b[:, 0, 2] * (b[:, 1, 0] * b[:, 2, 1] - b[:, 1, 1] * b[:, 2, 0]))
    return q, p, torch.acos((det / 2).clamp(-1.0, 1.0)) / 3


def line_ratios(cov: torch.Tensor, angles: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
    """The middle eigenvalue over the largest (M,) of covariances (M, 3, 3): near 0 where the points lie on a line
    (:data:`LINE_RATIO`), near 1 where they spread evenly in a plane; 1 where the matrix is zero.  ``angles``:
    :func:`_eigen_angles` of ``cov`` when the caller has them (:func:`smallest_eigenvectors` takes them too)."""
    q, p, phi = _eigen_angles(cov) if angles is None else angles
    largest = q + 2 * p * torch.cos(phi)
    middle = (q + 2 * p * torch.cos(phi + 4 * np.pi / 3)).clamp_min(0.0)
    return torch.where(q > 0, middle / largest.clamp_min(1e-300), 1.0)  # q: a third of the trace


def pca_normals(points: torch.Tensor, idx: torch.Tensor, check: Callable[[], None] | None = None,
                line: torch.Tensor | None = None) -> torch.Tensor:
    """Unoriented unit normals (M, 3): the direction of least spread of each row's neighbours points[idx] (M, k).

    ``check`` is called between chunks, for cancellation.  ``line`` (M,), if given, receives each row's
    :func:`line_ratios`.
    """
    out = torch.empty((idx.shape[0], 3), dtype=points.dtype, device=points.device)
    compiled = None
    if points.device.type == "cpu" and points.dtype == torch.float32 and compiled_pays(idx.shape[0]):
        from . import kernels  # the same closed form row by row, without the (C, k, 3) gathers

        ratios = np.empty(0, np.float32) if line is None else line.numpy()
        compiled = partial(kernels.plane_normals, np.ascontiguousarray(points.numpy()),
                           np.ascontiguousarray(idx.numpy()), out=out.numpy(), line=ratios)
    for start in range(0, idx.shape[0], BATCH):
        if check is not None:
            check()
        if compiled is not None:
            run_parts(compiled, chunks(start, min(start + BATCH, idx.shape[0])))
            continue
        nb = points[idx[start:start + BATCH]]  # (C, k, 3); offsets from the mean lose nothing in float32
        nb = nb - nb.mean(dim=1, keepdim=True)
        cov = (nb.transpose(1, 2) @ nb).double()
        angles = _eigen_angles(cov)  # the cubic's solution, once for the normal and the line ratio
        out[start:start + BATCH] = smallest_eigenvectors(cov, angles).to(points.dtype)
        if line is not None:
            line[start:start + BATCH] = line_ratios(cov, angles).to(line.dtype)
    return out


@dataclass
class Edges:
    """The neighbour graph i -> j (N, g) and n_i . n_j of its unoriented normals (N, g)."""

    idx: torch.Tensor  # (N, g) int64
    dot: torch.Tensor  # (N, g)

    @classmethod
    def build(cls, normals: torch.Tensor, idx: torch.Tensor) -> Edges:
        """The edges to the ``GRAPH_K`` nearest neighbours of each point (idx (N, k), itself first)."""
        nbr = idx[:, 1:GRAPH_K + 1]
        dot = torch.empty(nbr.shape, dtype=normals.dtype, device=normals.device)
        for start in range(0, nbr.shape[0], BATCH):
            rows = slice(start, start + BATCH)
            dot[rows] = (normals[rows, None, :] * normals[nbr[rows]]).sum(dim=2)
        self_loop = nbr == torch.arange(nbr.shape[0], device=nbr.device)[:, None]  # duplicates of a point
        return cls(nbr, torch.where(self_loop, 0.0, dot))

    def vote(self, sign: torch.Tensor, trusted: torch.Tensor | None = None) -> torch.Tensor:
        """Each point's neighbour vote (N,) in [-1, 1] for normals ``sign`` (N,) x the unoriented ones.

        The sum of n_i . n_j over the sum of |n_i . n_j| over the neighbours
        (``trusted`` ones only, if given): 1 means every neighbour agrees with
        the point's sign, -1 that every one disagrees, 0 no evidence.
        """
        weight = self.dot if trusted is None else torch.where(trusted[self.idx], self.dot, 0.0)
        total = (weight * sign[self.idx]).sum(dim=1) * sign
        return total / weight.abs().sum(dim=1).clamp_min(1e-12)


def tree_signs(edges: Edges, normals: torch.Tensor, clear: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, np.ndarray]:
    """Signs (N,) that make normals agree along a minimum spanning tree, and each point's piece label (N,).

    With ``clear`` (N,), edges from or to a point that is not clear are left out: such a point is a piece of
    its own here (:func:`orient_by_propagation` then gives it its neighbours' sign).

    Edge cost 1 - |n_i . n_j| is low between neighbours with parallel normals,
    so signs pass through smooth surface rather than across creases.  (A cost
    on the offset's angle to the tangent planes, meant to keep the tree off
    the far side of thin sheets, changed nothing measurable on slabs 3-5
    point spacings thick, the bunny or noisy spheres, and is not used: below
    about 4 spacings no neighbour graph tells the sides apart; sensors can.)
    The tree's edges say "same sign" or "opposite sign"; a
    graph with two nodes per point (+ and -) links the matching pairs, and its
    connected components give every point its sign relative to its piece in
    one SciPy call instead of a traversal per piece.
    """
    n, g = edges.idx.shape
    cost = 1.0 - edges.dot.abs() + 1e-6  # SciPy drops zero-cost edges
    kept = None if clear is None else (clear[:, None] & clear[edges.idx]).reshape(-1).cpu().numpy()
    if edges.idx.device.type == "cpu" and compiled_pays(n):
        return _compiled_tree_signs(edges, cost, kept)
    cols = edges.idx.reshape(-1).cpu().numpy()
    weights = cost.reshape(-1).double().cpu().numpy()
    graph = sp.csr_matrix((weights if kept is None else np.where(kept, weights, 0.0), cols,
                           np.arange(0, n * g + 1, g)), shape=(n, n))
    graph.eliminate_zeros()  # the edges left out
    tree = minimum_spanning_tree(graph).tocoo()
    a, b = tree.row.astype(np.int64), tree.col.astype(np.int64)
    ia, ib = torch.from_numpy(a).to(normals.device), torch.from_numpy(b).to(normals.device)
    same = ((normals[ia] * normals[ib]).sum(dim=1) >= 0).cpu().numpy()
    # node i is "i keeps its sign", node n + i "i flips"; a same-sign edge joins (a, b) and (a', b')
    src = np.concatenate([a, a + n])
    dst = np.concatenate([np.where(same, b, b + n), np.where(same, b + n, b)])
    doubled = sp.csr_matrix((np.ones(src.size), (src, dst)), shape=(2 * n, 2 * n))
    _, label = connected_components(doubled, directed=False)
    keep_label, flip_label = label[:n], label[n:]
    signs = torch.from_numpy(np.where(keep_label < flip_label, 1.0, -1.0)).to(edges.dot)
    _, piece = np.unique(np.minimum(keep_label, flip_label), return_inverse=True)
    return signs, piece


def ascending(keys: np.ndarray) -> np.ndarray:
    """The order (N,) of 32-bit unsigned keys (N,), ties by position (:func:`engine.solver.kernels.radix_order`);
    int32 below 2^31 keys, which halves what its two passes hold (1.28 GB for a 10M-point cloud's 80M edges)."""
    from . import kernels

    kind = np.int32 if keys.shape[0] < 2**31 else np.int64
    low, out = np.empty(keys.shape[0], kind), np.empty(keys.shape[0], kind)
    kernels.radix_order(keys, low, out)
    return out


def _compiled_tree_signs(edges: Edges, cost: torch.Tensor, kept: np.ndarray | None = None
                         ) -> tuple[torch.Tensor, np.ndarray]:
    """:func:`tree_signs` by Kruskal's algorithm compiled (:func:`engine.solver.kernels.spanning_signs`).

    The same spanning forest as SciPy's wherever no two edges cost the same, so the same signs up to one sign
    per piece, which the vote ignores and :func:`outward_signs` sets (pieces are numbered in another order).
    The 1M-point bunny's 8M edges: 0.73-0.75 s against SciPy's 1.5-2.7 s (NumPy's sort of their costs alone took
    1.3 s; :func:`engine.solver.kernels.radix_order` 0.15-0.3 s).
    """
    from . import kernels

    n = edges.idx.shape[0]
    order = ascending(np.ascontiguousarray(cost.reshape(-1).to(torch.float32).numpy()).view(np.uint32))
    if kept is not None:
        order = order[kept[order]]  # ``kept`` (N g,): the edges that stay in the graph
    same = np.ascontiguousarray((edges.dot >= 0).reshape(-1).numpy())
    roots = np.empty(n, np.int64)
    flips = np.empty(n, np.uint8)
    kernels.spanning_signs(order, np.ascontiguousarray(edges.idx.numpy()), same, roots, flips)
    signs = torch.from_numpy(np.where(flips == 0, 1.0, -1.0)).to(edges.dot)
    label = np.cumsum(roots == np.arange(n)) - 1  # pieces numbered in the order of their roots
    return signs, label[roots]


def outward_signs(points: torch.Tensor, normals: torch.Tensor, area: torch.Tensor, piece: torch.Tensor,
                  pieces: int) -> torch.Tensor:
    """Per piece, +1 or -1 (pieces,): the sign that makes it face outward (closed) or up (open and flat).

    For a closed surface, sum a n . (p - c) = 3 x enclosed volume > 0 with
    outward normals whatever the shape and the point c (the divergence
    theorem); with c the piece's centroid it also turns curved open pieces
    (a bowl, half a scan) to their convex side.  An open, roughly flat patch
    (terrain, a floor: a mean normal longer than ``OPEN_FLAT``) has no inside;
    it faces up (+Z, Blender's up) unless it stands more vertical than
    horizontal.  ``area`` (N,) weights points by the surface they stand for;
    ``piece`` (N,) int64 labels the consistently oriented pieces.
    """
    def per_piece(values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((pieces, *values.shape[1:]), dtype=values.dtype, device=values.device)
        return out.index_add_(0, piece, values)

    total = per_piece(area).clamp_min(1e-300)
    centre = per_piece(area[:, None] * points) / total[:, None]
    flux = per_piece(area * (normals * (points - centre[piece])).sum(dim=1))
    mean = per_piece(area[:, None] * normals) / total[:, None]
    length = mean.norm(dim=1)
    flat = (length > OPEN_FLAT) & (mean[:, 2].abs() > 0.5 * length)
    decide = torch.where(flat, mean[:, 2], flux)
    return torch.where(decide >= 0, 1.0, -1.0).to(normals.dtype)


def orient_by_propagation(points: torch.Tensor, normals: torch.Tensor, dist: torch.Tensor, edges: Edges,
                          report: Report, clear: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Signs (N,) for consistently oriented, outward normals; the doubtful mask; the number of pieces.

    Points not ``clear`` (N,) (on a line: :data:`LINE_RATIO`) neither pass signs along the tree nor vote; they
    take the sign their clear neighbours vote for, and are doubtful where that vote is weak; so do clear points
    they cut off in pieces of fewer than :data:`GRAPH_K`, which are not counted.
    """
    sign, piece = tree_signs(edges, normals, clear)
    report(0.8, "orienting: vote")
    v = edges.vote(sign, clear)
    for _ in range(VOTE_ROUNDS):
        wrong = v < 0
        if not bool(wrong.any()):
            break
        sign = torch.where(wrong, -sign, sign)
        v = edges.vote(sign, clear)
    report(0.9, "orienting: outward")
    area = dist[:, -1].double() ** 2  # the k-th neighbour's distance squared: area per point up to a constant
    pieces = int(piece.max()) + 1 if piece.size else 0
    piece_t = torch.from_numpy(piece).to(points.device)
    outward = outward_signs(points.double(), (sign[:, None] * normals).double(), area, piece_t, pieces)
    sign = sign * outward[piece_t].to(sign)
    if clear is None or bool(clear.all()):
        return sign, v < VOTE_MIN, pieces
    # The pieces turned outward, the points on lines follow their clear neighbours' vote, and so do the few clear
    # points that the points on lines cut off (pieces of fewer than GRAPH_K: two of the terrain's 20k points).
    size = np.bincount(piece[clear.cpu().numpy()], minlength=pieces)
    anchor = clear & torch.from_numpy(size >= GRAPH_K).to(points.device)[piece_t]
    v = edges.vote(sign, anchor)
    sign = torch.where(~anchor & (v < 0), -sign, sign)
    return sign, edges.vote(sign, anchor) < VOTE_MIN, int((size >= GRAPH_K).sum())


def orient_to_sensor(points: torch.Tensor, normals: torch.Tensor, edges: Edges, sensor: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Signs (N,) facing each normal to its sensor (3,) or (N, 3); the doubtful mask; the grazing count.

    Grazing views take the sign their confidently oriented neighbours vote for.
    """
    ray = sensor.to(points) - points
    cos = (normals * ray).sum(dim=1) / ray.norm(dim=1).clamp_min(1e-12)
    sign = torch.where(cos < 0, -1.0, 1.0).to(points.dtype)
    grazing = cos.abs() < GRAZING_COS
    v = edges.vote(sign, trusted=~grazing)
    sign = torch.where(grazing & (v < 0), -sign, sign)
    return sign, grazing & (v.abs() < VOTE_MIN), int(grazing.sum())


def sensor_rows(sensor: Any, n: int) -> np.ndarray:
    """The sensor as float64 (3,) or (n, 3), validated."""
    s = np.asarray(sensor, dtype=np.float64)
    if s.shape not in ((3,), (n, 3)):
        raise ShapeMismatchError(f"sensor must have shape (3,) or ({n}, 3); got {s.shape}.",
                                 "Give one viewpoint for the whole cloud, or one sensor position per point.")
    if not np.isfinite(s).all():
        raise InputError("sensor has NaN or Inf values.", "Give finite sensor positions.")
    return s


def noise_fraction(k: int, density: float, noise: float) -> float:
    """The fraction of the points to fit normals on, so that k neighbours span ``NOISE_RADIUS`` x the noise.

    k neighbours of a surface with density rho span r = sqrt(k / (pi rho)); on
    noisy scans that is soon comparable to the noise and the planes fit the
    noise (the bunny with 0.5% noise: 38 degrees mean error, a quarter of the
    signs wrong at k = 16).  Fitting on a random subsample of fraction f
    widens r by 1 / sqrt(f) at the same cost per point.
    """
    if not (density > 0 and noise > 0):
        return 1.0
    return float(min(1.0, k / (np.pi * density * (NOISE_RADIUS * noise) ** 2)))


def _spread_bits(v: torch.Tensor) -> torch.Tensor:
    """Insert two zero bits between the low 21 bits of v (int64), for 3-D Morton codes."""
    v = v & 0x1FFFFF
    v = (v | v << 32) & 0x1F00000000FFFF
    v = (v | v << 16) & 0x1F0000FF0000FF
    v = (v | v << 8) & 0x100F00F00F00F00F
    v = (v | v << 4) & 0x10C30C30C30C30C3
    return (v | v << 2) & 0x1249249249249249


def morton_order(points: torch.Tensor) -> torch.Tensor:
    """A permutation (N,) that sorts points (N, 3) along a Z-order curve.

    Neighbours then sit close in memory: at 1M points the gathers of the plane
    fits and the graph ran 2-3x faster than in the input's (random) order.
    """
    lo = points.min(dim=0).values
    extent = float((points.max(dim=0).values - lo).max())
    q = ((points - lo) / max(extent, 1e-30) * (2**21 - 1)).to(torch.int64)
    code = _spread_bits(q[:, 0]) | _spread_bits(q[:, 1]) << 1 | _spread_bits(q[:, 2]) << 2
    return torch.argsort(code)


def sorted_neighbours(points: torch.Tensor, k: int, check: Callable[[], None] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A spatial order of the points (N, 3) (N,), and their distances and indices (N, k) of the k nearest among
    themselves, both in that order (indices are positions in it).

    On the CPU :func:`engine.solver.knn.self_knn`: the compiled search where it pays (1M points, k = 12: 0.9-1.0 s
    against the k-d tree's 1.45-1.7 s), else the k-d tree, each in its own order; one search, so cancellation is
    checked before and after it.  Elsewhere the voxel-hash search (:func:`engine.solver.knn.grid_knn`, vectorised
    torch for CUDA; on the CPU the k-d tree beat it 5-9x: bunny, k = 12, 0.20 against 1.8 s at 100k points) on the
    points in Morton order.
    """
    if points.device.type == "cpu":
        if check is not None:
            check()
        rows, near, pos = self_knn(points.double().numpy(), k)
        if check is not None:
            check()
        return torch.from_numpy(rows), torch.from_numpy(near).to(points.dtype), torch.from_numpy(pos.astype(np.int64))
    order = morton_order(points)
    dist, idx = grid_knn(points[order], k, check)
    return order, dist, idx


def _fit_and_orient(points: torch.Tensor, k: int, sensor: torch.Tensor | None, report: Report) -> NormalEstimate:
    """Estimate and orient the normals of all the points (N, 3) from their own k neighbours."""
    report(0.05, f"neighbours (k={k})")
    order, dist, idx = sorted_neighbours(points, k, lambda: report(0.05, f"neighbours (k={k})"))
    points = points[order]
    if sensor is not None and sensor.ndim == 2:
        sensor = sensor[order]
    report(0.4, "fitting planes")
    line = torch.empty(points.shape[0], dtype=points.dtype, device=points.device)
    normals = pca_normals(points, idx, lambda: report(0.4, "fitting planes"), line)
    report(0.5, "orienting")
    edges = Edges.build(normals, idx)
    if sensor is not None:
        sign, doubtful, grazing = orient_to_sensor(points, normals, edges, sensor)
        pieces, orientation = 0, "sensor"
    else:
        sign, doubtful, pieces = orient_by_propagation(points, normals, dist, edges, report, line >= LINE_RATIO)
        grazing, orientation = 0, "propagation"
    doubtful |= normals.norm(dim=1) < 0.5  # no plane at all: k duplicates of one position
    normals = torch.where(doubtful[:, None], 0.0, sign[:, None] * normals)
    out_normals, out_doubtful = torch.empty_like(normals), torch.empty_like(doubtful)
    out_normals[order], out_doubtful[order] = normals, doubtful
    return NormalEstimate(out_normals, out_doubtful, k, orientation, pieces, grazing, 1.0)


TRANSFER_BATCH = 1 << 15  # points per batch of :func:`_transfer` on the CPU


def _transfer(points: torch.Tensor, base: torch.Tensor, est: NormalEstimate, sensor: torch.Tensor | None,
              report: Report) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Normals of all points (N, 3) from planes through their k nearest ``base`` points; doubtful mask; grazing count.

    Each normal faces its sensor when one is given and the view is not
    grazing; otherwise it takes the sign the oriented base normals around it
    vote for (doubtful base normals are zero and do not vote), and is doubtful
    when that vote is split or empty (:func:`_oriented_planes`).

    On the CPU the points go in Morton order, :data:`TRANSFER_BATCH` at a time, each batch's search and planes
    done before the next: whole (N, k) results were 1 GB of fresh memory at 1M points (k = 32, SciPy's float64
    distances and int64 indices, then their copies in the points' order), whose first touch took most of the step
    on this VM; a batch's few MB are reused.
    """
    report(0.85, "normals of all points")

    def check() -> None:
        report(0.85, "normals of all points")

    if points.device.type != "cpu":
        _, idx = grid_knn(base, est.k, check, points)
        return _oriented_planes(points, base, est, sensor, idx)
    tree = PointTree(base.double().numpy())
    order = morton_order(points)
    normals, doubtful = torch.empty_like(points), torch.empty(points.shape[0], dtype=torch.bool)
    grazing = 0
    for start in range(0, points.shape[0], TRANSFER_BATCH):
        check()
        rows = order[start:start + TRANSFER_BATCH]
        _, near = tree.query(points[rows].double().numpy(), est.k)
        part = sensor[rows] if sensor is not None and sensor.ndim == 2 else sensor
        normals[rows], doubtful[rows], seen = _oriented_planes(points[rows], base, est, part, torch.from_numpy(near))
        grazing += seen
    return normals, doubtful, grazing


def _oriented_planes(points: torch.Tensor, base: torch.Tensor, est: NormalEstimate, sensor: torch.Tensor | None,
                     idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """:func:`_transfer` for points (M, 3) whose k nearest ``base`` points are ``idx`` (M, k)."""
    normals = pca_normals(base, idx)
    dots = (est.normals[idx] * normals[:, None, :]).sum(dim=-1)
    v = dots.sum(dim=1) / dots.abs().sum(dim=1).clamp_min(1e-12)
    by_vote = torch.ones_like(v, dtype=torch.bool)
    if sensor is not None:
        ray = sensor.to(points) - points
        cos = (normals * ray).sum(dim=1) / ray.norm(dim=1).clamp_min(1e-12)
        by_vote = cos.abs() < GRAZING_COS
        v = torch.where(by_vote, v, torch.sign(cos))
    normals = torch.where((v < 0)[:, None], -normals, normals)
    doubtful = (by_vote & (v.abs() < VOTE_MIN)) | (normals.norm(dim=1) < 0.5)
    grazing = int(by_vote.sum()) if sensor is not None else 0
    return torch.where(doubtful[:, None], 0.0, normals), doubtful, grazing


def estimate_oriented(points: torch.Tensor, k: int | None = None, sensor: torch.Tensor | None = None,
                      report: Report | None = None, density: float = 0.0, noise: float = 0.0,
                      seed: int = 0) -> NormalEstimate:
    """Estimate and orient normals of finite points (N, 3) (any frame; the engine passes its canonical one).

    ``k`` neighbours per fit, by default ``DEFAULT_K``.  ``sensor`` (3,) or
    (N, 3) in the same frame.  ``density`` (points per unit area) and
    ``noise`` (RMS, same units) as :func:`engine.solver.resolution.measure` gives
    them: on noisy scans normals are fitted on a subsample
    (:func:`noise_fraction`), by default with ``NOISY_K`` neighbours, and
    carried to every point.  ``report(fraction, text)`` is called between
    steps and may raise to cancel.
    """
    report = report or (lambda fraction, text: None)
    if points.device.type == "cpu":  # the compiled passes, every run (engine.warm.await_kernels)
        warm_kernels()
        await_kernels()
    n = points.shape[0]
    noisy_k = min(NOISY_K if k is None else check_k(k), n)
    size = max(int(round(noise_fraction(noisy_k, density, noise) * n)), MIN_SUBSAMPLE)
    if size >= SUBSAMPLE_FROM * n:
        return _fit_and_orient(points, min(check_k(k), n), sensor, report)
    k = noisy_k
    rng = np.random.default_rng(seed)
    rows = torch.from_numpy(np.sort(rng.choice(n, size=size, replace=False))).to(points.device)
    base_sensor = sensor[rows] if sensor is not None and sensor.ndim == 2 else sensor
    base = points[rows]
    est = _fit_and_orient(base, k, base_sensor, lambda f, t: report(0.8 * f, f"{t} ({size} of {n} points)"))
    normals, doubtful, grazing = _transfer(points, base, est, sensor, report)
    return NormalEstimate(normals, doubtful, k, est.orientation, est.pieces, grazing, size / n)


def estimate_normals(points: Any, k: int | None = None, sensor: Any = None, *, device: str = "auto",
                     progress: Callable[[str, float, str], None] | None = None,
                     cancel: Callable[[], bool] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Oriented unit normals (N, 3) float32 for points (N, 3), and the estimate's stats.

    ``k`` neighbours per fit (default 12, 32 on noisy scans); ``sensor`` (3,) or (N, 3)
    in the points' coordinates orients normals towards it, else they are
    oriented by propagation and face outward (closed shapes) or up (open,
    flat patches).  Rows that are not finite, and points whose orientation
    stays doubtful, get a zero normal (``reconstruct`` drops such rows).
    ``progress(stage, fraction, text)`` and ``cancel()`` as for ``reconstruct``.
    """
    p = _as_rows("points", points, (3,)).astype(np.float64)
    finite = np.isfinite(p).all(axis=1)
    rows = np.flatnonzero(finite)
    if rows.size < MIN_POINTS:
        raise TooFewPointsError(f"The cloud has {rows.size} finite points; normals need at least {MIN_POINTS}.",
                                "Give a cloud that samples a surface.")
    frame = Frame.around(p[rows], least=1e-300)
    dev = select_device(device)
    canon = torch.from_numpy(frame.to_canonical(p[rows])).to(dev, torch.float32)
    sens = None
    if sensor is not None:
        s = sensor_rows(sensor, p.shape[0])
        sens = torch.from_numpy(frame.to_canonical(s if s.ndim == 1 else s[rows])).to(dev, torch.float32)

    def report(fraction: float, text: str) -> None:
        if progress is not None:
            progress("normals", fraction, text)
        if cancel is not None and cancel():
            raise Cancelled()

    density, noise = measure(canon.cpu().numpy())
    est = estimate_oriented(canon, k, sens, report, density, noise)
    report(1.0, "done")
    out = np.zeros(p.shape, dtype=np.float32)
    out[rows] = est.normals.cpu().numpy()
    return out, {**est.stats(), "points_not_finite": int(p.shape[0] - rows.size)}


def orient_axes(axes: Any, points: Any, k: int | None = None, sensor: Any = None, *, device: str = "auto"
                ) -> tuple[np.ndarray, dict[str, Any]]:
    """Unoriented unit directions (N, 3) (a splat's shortest axis) given their side; and the orientation's stats.

    Each direction keeps its own line, which is sharper than a plane fitted to
    noisy neighbours, and takes the sign of the normal :func:`estimate_normals`
    gives there (towards ``sensor`` when given, else by propagation); where
    that one is doubtful the row gets a zero normal, which ``reconstruct`` drops.
    """
    a = _as_rows("axes", axes, (3,)).astype(np.float32)
    reference, stats = estimate_normals(points, k, sensor, device=device)
    side = np.einsum("ij,ij->i", a, reference)
    out = np.where((side < 0)[:, None], -a, a)
    out[~(np.abs(reference).sum(axis=1) > 0)] = 0.0
    return out, stats
