"""Step 10b: undo small misregistration between the views of a scan before the fit.

Points that share a sensor position form one view.  Views registered a little
off (a tenth of a degree, a thousandth of the diagonal: what registration
software leaves) carry each surface two or three times, offset by about the
noise; any fit averages those sheets and keeps their offset as error.  Here
all views are moved rigidly onto one another at once, seen through a
consensus: a coarse field fitted to all views (the same solver, :data:`COARSE`
times the finest voxel, on at most :data:`FIT_POINTS` points).  In each cell of
:data:`CELL` coarse voxels, the field at a view's points should equal the mean
field at the other views' points there; Gauss-Newton steps on all views'
motions together (6 unknowns per view, :func:`_joint_motions`), Huber-weighted,
bring them there.  The scan as a whole keeps its place: the sum of the motions
is held at zero, and so, softly, is their mean motion along the normals (a
shrinking or swelling of the whole scan, which overlaps barely see).  Points
far from the consensus (stray points, flying pixels) have no say: each pulls
its own view one way.  The consensus is fitted again for a further round only
while the views' motions removed most of their residual (the median view's
share, :data:`REFIT_GAIN`).  A view is moved only when that makes its
residuals clearly smaller (:data:`MIN_GAIN`), and never farther than :data:`MAX_SHIFT` or
:data:`MAX_ROTATION_DEG`: larger errors are not the small ones this step is for.

Measured on the simulated scans (100k points, 8 views, each misregistered by
0.1 degree and 0.001 of the diagonal, ``scan:scanner+outliers``, scanner
normals), Chamfer-L1 x1e-3, bunny / torus / sphere: 0.387 / 0.392 / 0.466 with
views aligned one at a time to the field's zero level (the first version),
0.361 / 0.358 / 0.407 aligned one at a time to the other views, half of each
motion applied (the second: whole motions made overlapping views swap places),
0.336 / 0.321 / 0.321 all at once (this one); the same scans made without
misregistration give 0.299 / 0.221 / 0.266 (no view moved, any way).  The
mean gap between two views' placements went 0.72 / 0.68 / 0.73 -> 0.35 / 0.32
/ 0.42 (one at a time) -> 0.16 / 0.13 / 0.13 (at once), x1e-3.  Without normals the
Chamfer went 0.370 / 0.407 / 0.471 -> 0.334 / 0.367 / 0.385.  The zero level
of a smoothed field lies inside curved parts, and views aligned to it all move
with that bias; aligned to each other, they do not.  Without the stray-point
cut the joint motions shrank the registered sphere scan by 0.23e-3 (its flying
pixels, all on the outside of the surface they fly off), and the misregistered
one scored 0.495.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp
import torch

from ..progress import Run
from ..vectors import row_norms
from .fitting import solve_levels
from .hierarchy import build_levels, evaluate
from .system import Weights

MIN_VIEW_POINTS = 200  # a view with fewer points is not moved (too few to pin six degrees of freedom)
MAX_VIEWS = 256  # more distinct sensor positions: a moving sensor's trajectory, not separate views
COARSE = 2.0  # consensus voxel, in finest voxels (3: Chamfer 0.373e-3 on the bunny scan against 0.352e-3)
DEPTH = 1  # levels of the consensus hierarchy (2: Chamfer 0.352e-3 against 0.356e-3, 1.5x the time)
FIT_POINTS = 60_000  # the consensus is fitted to at most this many points
VIEW_POINTS = 20_000  # each view's points in the Gauss-Newton steps, at most
DENSE_ENTRIES = 1 << 24  # (cells x 6 views) at most for the normal equations' dense products (128 MB)
# Rounds of consensus fit and alignment, at most.  A further round refits the consensus to the moved views; it is
# worth it only where the last consensus was shaped by misregistration more than by noise, that is where the
# views' motions removed more than REFIT_GAIN of their robust residual scales (the median view's share: one view
# can gain much where the others gain little).  The share each view's motion removed in the first round: the
# 0.3-degree blob of tests/engine/test_registration.py 0.87-0.96 (its second round moves the views again, gains
# 0.09-0.22, and leaves their disagreement 0.75e-3 against 0.91e-3 after one); the simulated scans (0.1 degree,
# with noise) bunny 0.08-0.38, torus 0.20-0.43, sphere 0.22-0.62, median 0.41.  The sphere's second round
# (taken while any view's share over 0.5 called for it) moved no view (shares 0.00-0.01) and cost 0.5 s of its
# 2.5.  Always two rounds changed nothing (0.340 / 0.326 / 0.312e-3 either way, measured with the per-step hold).
ROUNDS = 3
REFIT_GAIN = 0.5
# Residual measurements per round: two Gauss-Newton steps between them.  The steps converge by the second: with
# four (5 measurements) the views' mean gap after registration was 0.157 / 0.132 / 0.126e-3 on the bunny / torus /
# sphere scans (bench/registration.py) and 0.156 / 0.133 / 0.125e-3 without normals, with two 0.158 / 0.134 /
# 0.126e-3 and 0.156 / 0.135 / 0.126e-3, Chamfer-L1 within 0.002e-3 (the sphere's 0.3250 -> 0.3268e-3 the most); the
# register stage 0.41 -> 0.33 s (median over the six scans, warm).  10 steps gave the same Chamfer within 0.001.
STEPS = 3
BAND = 1.5  # points farther than this from the consensus (coarse voxels) are not used
# Points farther from the consensus than STRAY times the robust spread of all points' distances are left out too:
# a stray point or flying pixel lies on one side of the surface (flying pixels beyond the silhouette it flies off,
# outside), so each pulls its view one way, and the joint motions shrank the registered sphere scan by 0.23e-3
# (0.03e-3 with the cut).  Cut at 2 / 3 / 4 spreads, Chamfer-L1 x1e-3 of the misregistered scans: bunny 0.338 /
# 0.336 / 0.335, torus 0.325 / 0.321 / 0.319, sphere 0.317 / 0.321 / 0.345.
STRAY = 3.0
MAX_SHIFT = 2.0  # the largest correction applied, in coarse voxels
MAX_ROTATION_DEG = 2.0
# A motion that makes the view's robust residual scale less than 5% smaller is left out: it is noise, not
# misregistration (the simulated scans made without misregistration move no view; at 2% the sphere's misregistered
# scan got worse, 0.433e-3 -> 0.451e-3 when views moved one at a time).
MIN_GAIN = 0.05
# A view's points are compared with the mean field value of the other views' points in the same cell of CELL coarse
# voxels, where at least MIN_OTHERS of them lie.  Cells of 1 / 2 / 3 coarse voxels: bunny 0.341 / 0.340 / 0.345,
# torus 0.325 / 0.326 / 0.326, sphere 0.301 / 0.312 / 0.319 (Chamfer-L1 x1e-3, measured with an earlier
# hold on each step's mean normal motion instead of the motion so far).
CELL = 2.0
MIN_OTHERS = 3
# How firmly the scan's mean motion along its normals is held at zero (a penalty on the motion so far, in units of
# the mean diagonal of the normal equations; the sum of the motions is held 1000 times as firmly: no method can see
# where the whole scan belongs).  The mean normal motion is what all views moving inwards (or outwards) together
# do; overlaps see it weakly, and on a sphere not at all, so any bias left drives it.  Measured (bunny / torus /
# sphere, Chamfer-L1 x1e-3): 0.03 0.333 / 0.318 / 0.336, 0.1 0.336 / 0.321 / 0.321, 0.3 0.342 / 0.329 / 0.308,
# 1 0.345 / 0.335 / 0.299 (10 steps instead of 5 gave the same).
SWELL_HOLD = 0.1
GAUGE_HOLD = 1000.0
TOL, MAX_ITER = 1e-3, 400  # the consensus solve (1e-4 gave the same alignment)
DAMPING = 1e-3  # Levenberg-Marquardt: keeps the step finite where the surface leaves a motion free (a sphere turning)


@dataclass
class Views:
    """Each point's view (N,) and the number of views."""

    index: np.ndarray
    count: int


def find_views(sensors: np.ndarray | None) -> Views | None:
    """Views from each point's sensor (N, 3), or None when the points do not come from several fixed sensors."""
    if sensors is None or sensors.ndim != 2 or sensors.shape[0] < 2 * MIN_VIEW_POINTS:
        return None
    probe = sensors[np.random.default_rng(0).choice(sensors.shape[0], size=min(sensors.shape[0], 4096),
                                                    replace=False)]
    if np.unique(probe, axis=0).shape[0] > MAX_VIEWS:  # cheap test before the full unique
        return None
    positions, index = _unique_rows(sensors)
    if not 2 <= positions.shape[0] <= MAX_VIEWS:
        return None
    return Views(index, int(positions.shape[0]))


def _unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique rows of (N, 3) float64 and each row's index among them, through one 1-D hash of the three bit
    patterns (np.unique over rows took 20 s on 5M sensors; this 0.5 s); exact, checked, rows again on a collision."""
    bits = np.ascontiguousarray(rows, dtype=np.float64).view(np.uint64)
    with np.errstate(over="ignore"):
        key = bits[:, 0] * np.uint64(0x9E3779B97F4A7C15) ^ bits[:, 1] * np.uint64(0xC2B2AE3D27D4EB4F) ^ bits[:, 2]
    _, first, index = np.unique(key, return_index=True, return_inverse=True)
    positions = rows[first]
    if not np.array_equal(positions[index], rows):  # two positions share a hash: the slow exact way
        positions, index = np.unique(rows, axis=0, return_inverse=True)
    return positions, index.reshape(-1).astype(np.int64)


def _rotation(omega: np.ndarray) -> np.ndarray:
    """The rotation by the vector ``omega`` (axis times angle, radians)."""
    theta = float(np.linalg.norm(omega))
    k = np.array([[0.0, -omega[2], omega[1]], [omega[2], 0.0, -omega[0]], [-omega[1], omega[0], 0.0]])
    if theta < 1e-12:
        return np.eye(3) + k
    return np.eye(3) + np.sin(theta) / theta * k + (1.0 - np.cos(theta)) / theta**2 * (k @ k)


def _angle(rot: np.ndarray) -> float:
    """The angle of a rotation matrix, in radians."""
    return float(np.arccos(np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0)))


def _degrees(rot: np.ndarray) -> float:
    """The angle of a rotation matrix, in degrees."""
    return float(np.degrees(_angle(rot)))


def _cell_keys(x: np.ndarray) -> np.ndarray:
    """One int64 key per point (M, 3, coarse units): its cell of CELL coarse voxels."""
    c = np.floor(x / CELL).astype(np.int64) + (1 << 20)
    return (c[:, 0] << 42) | (c[:, 1] << 21) | c[:, 2]


@dataclass
class _Cells:
    """Which cell each point lies in, and which (cell, view) pair it belongs to: fixed while the views move (a
    grouping that moved with them would let the motions shop among the cells' noisy means)."""

    cell: np.ndarray  # (M,) the point's cell
    pair: np.ndarray  # (M,) the point's (cell, view) pair
    pair_cell: np.ndarray  # (P,) each pair's cell
    pair_view: np.ndarray  # (P,) each pair's view
    count: int  # views

    @classmethod
    def of(cls, x: np.ndarray, view: np.ndarray, count: int) -> _Cells:
        _, cell = np.unique(_cell_keys(x), return_inverse=True)
        cell = cell.reshape(-1)
        keys, pair = np.unique(cell * count + view, return_inverse=True)
        return cls(cell, pair.reshape(-1), keys // count, keys % count, count)

    @property
    def cells(self) -> int:
        return int(self.pair_cell[-1]) + 1 if self.pair_cell.size else 0

    @cached_property
    def n_others(self) -> np.ndarray:
        """(M,) how many of the other views' points share each point's cell."""
        return self.others(self.per_pair(np.ones(self.cell.size)))

    def per_pair(self, values: np.ndarray) -> np.ndarray:
        """Sums over each (cell, view) pair of (M,) or (M, k) values."""
        if values.ndim == 1:
            return np.bincount(self.pair, weights=values, minlength=self.pair_cell.size)
        return np.stack([self.per_pair(values[:, k]) for k in range(values.shape[1])], axis=1)

    def others(self, per_pair: np.ndarray) -> np.ndarray:
        """At each point, the sum of a per-pair quantity over the other views' pairs in its cell."""
        per_cell = np.bincount(self.pair_cell, weights=per_pair, minlength=self.cells)
        return per_cell[self.cell] - per_pair[self.pair]

    def blocks(self, per_pair: np.ndarray) -> sp.csr_matrix:
        """(cells, 6 x views) sparse: each pair's 6-vector in its cell's row, at its view's six columns."""
        rows = np.repeat(self.pair_cell, 6)
        cols = (6 * self.pair_view[:, None] + np.arange(6)).reshape(-1)
        return sp.csr_matrix((per_pair.reshape(-1), (rows, cols)), shape=(self.cells, 6 * self.count))


def _residuals(cells: _Cells, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each point's field value less the mean of the other views' points in its cell; and where that mean exists
    (at least MIN_OTHERS of them)."""
    usable = cells.n_others >= MIN_OTHERS
    mean = cells.others(cells.per_pair(f)) / np.maximum(cells.n_others, 1.0)
    return np.where(usable, f - mean, 0.0), usable


def _normal_equations(cells: _Cells, view: np.ndarray, jac: np.ndarray, r: np.ndarray, w: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """H (6V, 6V) and b (6V,) of the weighted least squares sum_i w_i (r_i + g_i . xi)^2 over all views' motions xi.

    Point i of view a in cell k has residual r_i = f_i - (mean of f over the other views' points in k), so its row
    g_i holds its own Jacobian J_i (d f / d motion, 6) at view a's columns and minus the mean of the other points'
    Jacobians at theirs.  Summed per view, per (cell, view) pair and per cell, never per point and view, so the
    cost grows with the points and the pairs, not with points times views.  ``w`` is 0 where r has no mean.
    """
    count = cells.count
    n_others = np.maximum(cells.n_others, 1.0)
    sj = cells.per_pair(jac)  # (P, 6)
    # g_i = e_a (x) d_i - u_k / n_i with d_i = J_i + (view a's Jacobian sum in k) / n_i and u_k all views' sums in k
    d = jac + sj[cells.pair] / n_others[:, None]
    wd = w[:, None] * d
    h = np.zeros((6 * count, 6 * count))
    b = np.zeros(6 * count)
    for v in range(count):  # the points are sorted by view
        lo, hi = np.searchsorted(view, [v, v + 1])
        h[6 * v:6 * v + 6, 6 * v:6 * v + 6] = wd[lo:hi].T @ d[lo:hi]
        b[6 * v:6 * v + 6] = wd[lo:hi].T @ r[lo:hi]
    u = cells.blocks(sj)
    dk = cells.blocks(cells.per_pair(wd / n_others[:, None]))
    scale = np.bincount(cells.cell, weights=w / n_others**2, minlength=cells.cells)
    b -= u.T @ np.bincount(cells.cell, weights=w * r / n_others, minlength=cells.cells)
    if u.shape[0] * u.shape[1] <= DENSE_ENTRIES:  # BLAS on dense blocks (256 views of one blob: 14 s -> 5.4 s)
        ud, dd = u.toarray(), dk.toarray()
        cross = dd.T @ ud
        h += (ud * scale[:, None]).T @ ud - cross - cross.T
    else:
        cross = (dk.T @ u).toarray()
        h += (u.T @ sp.diags(scale) @ u).toarray() - cross - cross.T
    return h, b


def _joint_motions(levels: list, x: np.ndarray, view: np.ndarray, count: int, device: torch.device
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All views' rotations (V, 3, 3) and shifts (V, 3) about the centre c (coarse units) found together, so that
    each view's points meet the other views' points in their cells (:func:`_normal_equations`); c; and each view's
    share of its robust residual scale that the motions removed (0 where it has too few points to tell).

    ``x`` (M, 3) coarse units, sorted by ``view``.
    """
    c = x.mean(axis=0)
    f0, g0 = evaluate(levels, torch.from_numpy(x.astype(np.float32)).to(device), with_grad=True)
    assert g0 is not None
    dist = np.abs(f0.double().cpu().numpy())
    near = dist < BAND
    spread = 1.4826 * float(np.median(dist[near])) if near.any() else 0.0
    near &= dist < STRAY * spread
    x, view = x[near], view[near]
    # the first step's field and slope: the views have not moved yet (one evaluation fewer, the same meshes)
    f_at, g_at = f0.double().cpu().numpy()[near], g0.double().cpu().numpy()[near]
    bounds = np.searchsorted(view, np.arange(count + 1))
    cells = _Cells.of(x, view, count)
    rots, shifts = np.tile(np.eye(3), (count, 1, 1)), np.zeros((count, 3))
    first = scales = np.zeros(count)
    swelled = 0.0  # the mean normal motion so far (along the last step's direction)
    for step in range(STEPS):
        q = np.concatenate([(x[lo:hi] - c) @ rots[v].T + c + shifts[v]
                            for v, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))])
        if step == 0:
            f64, g64 = f_at, g_at
        else:
            f, g = evaluate(levels, torch.from_numpy(q.astype(np.float32)).to(device), with_grad=True)
            assert g is not None
            f64, g64 = f.double().cpu().numpy(), g.double().cpu().numpy()
        r, usable = _residuals(cells, f64)
        scales = np.array([1.4826 * float(np.median(np.abs(r[lo:hi][usable[lo:hi]])))
                           if int(usable[lo:hi].sum()) >= MIN_VIEW_POINTS // 2 else np.nan
                           for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)])
        if step == 0:
            first = scales
        if step == STEPS - 1 or not usable.any():
            break
        scale = 1.4826 * float(np.median(np.abs(r[usable]))) + 1e-12
        w = np.where(usable, 1.0 / np.maximum(1.0, np.abs(r) / (2.0 * scale)), 0.0)  # Huber
        jac = np.concatenate((np.cross(q - c, g64), g64), axis=1)  # d f / d (omega, t), rotation about c
        h, b = _normal_equations(cells, view, jac, r, w)
        # Held: the sum of the motions (6 rows) and their mean motion along the normals (1 row).
        tie = np.tile(np.eye(6), (1, count)) / np.sqrt(count)
        unit_normal = g64 / np.maximum(row_norms(g64, keepdims=True), 1e-9)
        along = np.concatenate((np.cross(q - c, unit_normal), unit_normal), axis=1)
        swell = np.concatenate([along[lo:hi].sum(axis=0) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)])
        swell /= np.linalg.norm(swell) + 1e-12
        unit = np.trace(h) / (6 * count) + 1e-12
        h += DAMPING * np.diag(np.diag(h)) + 1e-12 * np.eye(6 * count)
        h += unit * (GAUGE_HOLD * tie.T @ tie + SWELL_HOLD * np.outer(swell, swell))
        b += unit * SWELL_HOLD * swelled * swell  # held is the motion so far, not only this step's
        delta = np.linalg.solve(h, -b).reshape(count, 6)
        swelled += float(swell @ delta.reshape(-1))
        for v in range(count):
            turn = _rotation(delta[v, :3])
            rots[v], shifts[v] = turn @ rots[v], turn @ shifts[v] + delta[v, 3:]
    with np.errstate(invalid="ignore"):
        gains = np.nan_to_num(1.0 - scales / (first + 1e-12), nan=0.0)
    return rots, shifts, c, gains


def register_views(points: np.ndarray, normals: np.ndarray, views: Views, voxel_size: float, weights: Weights,
                   run: Run, device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray, dict]:
    """Points and normals (canonical, (N, 3)) with the views moved onto one another; and the stats.

    ``voxel_size`` is the finest voxel (canonical units).  The consensus is
    fitted and evaluated on ``device``; the motions are found and applied in
    float64 on the CPU.  Progress and cancellation go through ``run`` under
    the stage "register".
    """
    device = torch.device(device)
    coarse = COARSE * voxel_size
    pts = points.astype(np.float64)
    nrm = normals.astype(np.float64)
    rng = np.random.default_rng(1)
    members = [np.flatnonzero(views.index == v) for v in range(views.count)]
    start = np.array([pts[rows].mean(axis=0) if rows.size else np.zeros(3) for rows in members])
    total_rot = np.tile(np.eye(3), (views.count, 1, 1))
    moved = np.zeros(views.count, dtype=bool)
    quiet = Run(None, run.cancel)  # the consensus solve's own stages are part of this one
    rounds, gained = 0, 0.0
    sized = np.array([rows.size >= MIN_VIEW_POINTS for rows in members])  # views with enough points to move
    for r in range(ROUNDS):
        if r > 0 and gained <= REFIT_GAIN:  # noise, not misregistration, shaped the last consensus
            break
        rounds = r + 1
        run.report("register", r / ROUNDS, f"round {r + 1}: fitting the consensus of {views.count} views")
        fit_rows = rng.choice(pts.shape[0], size=min(pts.shape[0], FIT_POINTS), replace=False)
        x = torch.from_numpy((pts[fit_rows] / coarse).astype(np.float32)).to(device)
        levels = build_levels(x, DEPTH)
        solve_levels(levels, x, torch.from_numpy(nrm[fit_rows].astype(np.float32)).to(device), weights, TOL,
                     MAX_ITER, quiet)
        run.report("register", (r + 0.5) / ROUNDS, f"round {r + 1}: moving {views.count} views together")
        sample = np.concatenate([rows if rows.size <= VIEW_POINTS else np.sort(rng.choice(rows, VIEW_POINTS, False))
                                 for rows in members])
        rots, shifts, c, gains = _joint_motions(levels, pts[sample] / coarse, views.index[sample], views.count,
                                                device)
        centre = c * coarse
        applied = np.zeros(views.count)  # each view's share of its residual removed by a motion applied
        for v, rows in enumerate(members):
            if not sized[v] or gains[v] < MIN_GAIN:
                continue
            new_rot = rots[v] @ total_rot[v]
            centroid = (pts[rows].mean(axis=0) - centre) @ rots[v].T + centre + shifts[v] * coarse
            if np.linalg.norm(centroid - start[v]) > MAX_SHIFT * coarse or _degrees(new_rot) > MAX_ROTATION_DEG:
                continue
            pts[rows] = (pts[rows] - centre) @ rots[v].T + centre + shifts[v] * coarse
            nrm[rows] = nrm[rows] @ rots[v].T
            total_rot[v] = new_rot
            moved[v] = True
            applied[v] = gains[v]
        gained = float(np.median(applied[sized])) if sized.any() else 0.0
    # The shift of each view's centroid, and the rotation, as the stats report them.
    shifts_done = [float(np.linalg.norm(pts[rows].mean(axis=0) - start[v]))
                   for v, rows in enumerate(members) if moved[v]]
    angles = [_degrees(total_rot[v]) for v in range(views.count) if moved[v]]
    stats = {"views": views.count, "views_registered": int(moved.sum()), "registration_rounds": rounds,
             "registration_shift_max": max(shifts_done, default=0.0),
             "registration_rotation_max_deg": max(angles, default=0.0)}
    return pts.astype(points.dtype), nrm.astype(normals.dtype), stats
