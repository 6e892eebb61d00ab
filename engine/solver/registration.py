"""Step 10b: undo small misregistration between the views of a scan before the fit.

Points that share a sensor position form one view.  Views registered a little
off (a tenth of a degree, a thousandth of the diagonal: what registration
software leaves) carry each surface two or three times, offset by about the
noise; any fit averages those sheets and keeps their offset as error.  Here
each view is moved rigidly towards the other views, seen through a consensus:
a coarse field fitted to all views at once (the same solver, :data:`COARSE`
times the finest voxel, on at most :data:`FIT_POINTS` points).  Gauss-Newton
steps, linearised with the field's gradient and Huber-weighted so that stray
points and flying pixels have little say, bring the field at the view's points
to the mean field value of the other views' points near them
(:class:`_Others`), and :data:`STEP_SHARE` of that motion is applied.  The
consensus is fitted again for a further round only while some view's motion
removed most of its residual (:data:`REFIT_GAIN`).  A view is moved only when
that makes its residuals clearly smaller (:data:`MIN_GAIN`), and never farther
than :data:`MAX_SHIFT` or :data:`MAX_ROTATION_DEG`: larger errors are not the
small ones this step is for.

Measured on the simulated scans (100k points, 8 views, each misregistered by
0.1 degree and 0.001 of the diagonal, ``scan:scanner+outliers``), Chamfer-L1
x1e-3, bunny / torus / sphere: 0.387 / 0.392 / 0.466 with views aligned to the
field's zero level (the first version), 0.363 / 0.365 / 0.433 aligned to the
other views; the same scans made without misregistration give 0.304 / 0.235 /
0.288 (no view moved, either way).  The zero level of a smoothed field lies
inside curved parts, and views aligned to it all move with that bias: it
moved two views of the bunny's noiseless scan (Chamfer 0.1987 -> 0.1967 when
none moves) and took the torus scan as a whole away from the truth (the
views' mean offset along the normal 0.180e-3 -> 0.239e-3; 0.191e-3 now).
Aligned to the others at full steps, views that overlap in pairs swap places
(sphere 0.514); aligned to the others by Gauss-Seidel (each to the views
already moved), the scan drifts to the last views' placement (0.479 / 0.439 /
0.621).  An earlier variant, a field fitted to the other views only (two groups
in turn), did worse: that field is an open surface whose edges pull views
astray.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..progress import Run
from .fitting import solve_levels
from .hierarchy import build_levels, evaluate
from .system import Weights

MIN_VIEW_POINTS = 200  # a view with fewer points is not moved (too few to pin six degrees of freedom)
MAX_VIEWS = 256  # more distinct sensor positions: a moving sensor's trajectory, not separate views
COARSE = 2.0  # consensus voxel, in finest voxels (3: Chamfer 0.373e-3 on the bunny scan against 0.352e-3)
DEPTH = 1  # levels of the consensus hierarchy (2: Chamfer 0.352e-3 against 0.356e-3, 1.5x the time)
FIT_POINTS = 60_000  # the consensus is fitted to at most this many points
VIEW_POINTS = 5_000  # each view's Gauss-Newton steps use at most this many of its points
# Rounds of consensus fit and alignment, at most.  A further round refits the consensus to the moved views; it is
# worth it only where the last consensus was shaped by misregistration more than by noise, that is where a view's
# motion removed more than REFIT_GAIN of its robust residual scale.  Measured: on the simulated scans (bunny, torus;
# 0.1 degree, 0.1% of the diagonal) the first round's gains are 0.06-0.41, and one round is all they get; the
# sphere's reach 0.55 and its second round's stay under 0.06 (Chamfer the same with one round or two); on the
# 0.3-degree blob of tests/engine/test_registration.py they are 0.33-0.84, then 0.27-0.71, and three rounds leave
# it at 0.90x the unregistered distance from the surface (two: 0.92x).
ROUNDS = 3
REFIT_GAIN = 0.5
STEPS = 5  # residual measurements per view and round (four Gauss-Newton steps between them)
BAND = 1.5  # points farther than this from the consensus (coarse voxels) are not used
MAX_SHIFT = 2.0  # the largest correction applied, in coarse voxels
MAX_ROTATION_DEG = 2.0
# A motion that makes the view's robust residual scale less than 5% smaller is left out: it is noise, not
# misregistration (the simulated scans made without misregistration move no view; at 2% the sphere's misregistered
# scan got worse, 0.433e-3 -> 0.451e-3).
MIN_GAIN = 0.05
# Each view is aligned to the other views' points, seen through the consensus field (:class:`_Others`): the mean
# field value of their points in each cell of CELL coarse voxels where at least MIN_OTHERS of them lie.
CELL = 2.0
MIN_OTHERS = 3
# Share of the motion found that is applied.  Every view moves at once towards where the others were; where two
# views overlap, whole motions would make them swap places, half motions meet in the middle, and over k views
# half motions leave 1/2 - 1/(2(k - 1)) of each view's offset from the others (a quarter for three).
STEP_SHARE = 0.5
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


def _rotation_vector(rot: np.ndarray) -> np.ndarray:
    """Axis times angle (radians) of a rotation matrix (angles below 180 degrees)."""
    angle = _angle(rot)
    skew = np.array([rot[2, 1] - rot[1, 2], rot[0, 2] - rot[2, 0], rot[1, 0] - rot[0, 1]])
    return skew * (0.5 if angle < 1e-9 else angle / (2.0 * np.sin(angle)))


def _degrees(rot: np.ndarray) -> float:
    """The angle of a rotation matrix, in degrees."""
    return float(np.degrees(_angle(rot)))


def _field(levels: list, x: np.ndarray, device: torch.device) -> np.ndarray:
    """The consensus field at x (N, 3, coarse units), float64 on the CPU."""
    f, _ = evaluate(levels, torch.from_numpy(x.astype(np.float32)).to(device))
    return f.double().cpu().numpy()


class _Others:
    """Where the views' points lie, seen through the consensus field: per cell, the sum and count of field values.

    The consensus field's zero level is biased (smoothing moves it inwards on curved parts), and views aligned to
    it all move with that bias.  Aligned to the mean field value of the other views' points near its own, a view
    moves only relative to them.
    """

    def __init__(self, x: np.ndarray, f: np.ndarray, view: np.ndarray) -> None:
        near = np.abs(f) < BAND  # stray points have no say
        self.keys, self.cell = np.unique(self._keys(x[near]), return_inverse=True)
        self.f, self.view = f[near], view[near]
        self.total = np.bincount(self.cell, weights=self.f, minlength=self.keys.size)
        self.count = np.bincount(self.cell, minlength=self.keys.size)

    @staticmethod
    def _keys(x: np.ndarray) -> np.ndarray:
        c = np.floor(x / CELL).astype(np.int64) + (1 << 20)
        return (c[:, 0] << 42) | (c[:, 1] << 21) | c[:, 2]

    def target(self, q: np.ndarray, v: int) -> tuple[np.ndarray, np.ndarray]:
        """At points q (M, 3) of view v: the mean field value of the other views' points in their cells, and
        whether at least MIN_OTHERS of those are there."""
        mine = self.view == v
        total = self.total - np.bincount(self.cell[mine], weights=self.f[mine], minlength=self.keys.size)
        count = self.count - np.bincount(self.cell[mine], minlength=self.keys.size)
        if self.keys.size == 0:  # no point near the consensus: nothing to align to
            return np.zeros(q.shape[0]), np.zeros(q.shape[0], dtype=bool)
        keys = self._keys(q)
        at = np.minimum(np.searchsorted(self.keys, keys), self.keys.size - 1)
        usable = (self.keys[at] == keys) & (count[at] >= MIN_OTHERS)
        return np.where(usable, total[at] / np.maximum(count[at], 1), 0.0), usable


def _align(levels: list, p: np.ndarray, target: np.ndarray, usable: np.ndarray, device: torch.device
           ) -> tuple[np.ndarray, np.ndarray, float]:
    """Rotation R and shift t (coarse units) that best put the field at the view's points p (M, 3) on ``target``.

    The targets are held per point, not looked up again as the points move: a lookup that moved with them would
    let the motion shop among the cells' noisy means.  Points not ``usable`` have no say.  Also returns the share
    of the view's robust residual scale that the motion removed (0 when it could not be fitted).
    """
    c = p.mean(axis=0)
    rot, shift = np.eye(3), np.zeros(3)
    scales: list[float] = []
    for _ in range(STEPS):
        q = (p - c) @ rot.T + c + shift
        f, g = evaluate(levels, torch.from_numpy(q.astype(np.float32)).to(device), with_grad=True)
        assert g is not None
        f64, g64 = f.double().cpu().numpy(), g.double().cpu().numpy()
        f64 -= target
        ok = usable & (np.abs(f64) < BAND) & (np.linalg.norm(g64, axis=1) > 0.5)
        if int(ok.sum()) < MIN_VIEW_POINTS // 2:
            return np.eye(3), np.zeros(3), 0.0
        r, gq = f64[ok], g64[ok]
        scale = 1.4826 * float(np.median(np.abs(r))) + 1e-9
        scales.append(scale)
        if len(scales) == STEPS:  # the last scale is measured at the motion found so far
            break
        w = 1.0 / np.maximum(1.0, np.abs(r) / (2.0 * scale))  # Huber
        jac = np.concatenate((np.cross(q[ok] - c - shift, gq), gq), axis=1)  # d f / d (omega, t)
        normal = (jac * w[:, None]).T @ jac
        normal += DAMPING * np.diag(np.diag(normal)) + 1e-12 * np.eye(6)
        step = np.linalg.solve(normal, -(jac * w[:, None]).T @ r)
        rot, shift = _rotation(step[:3]) @ rot, shift + step[3:]
    return rot, shift, 1.0 - scales[-1] / scales[0]


def register_views(points: np.ndarray, normals: np.ndarray, views: Views, voxel_size: float, weights: Weights,
                   run: Run, device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray, dict]:
    """Points and normals (canonical, (N, 3)) with each view moved onto the consensus; and the stats.

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
    total_rot = [np.eye(3) for _ in members]
    total_shift = [np.zeros(3) for _ in members]
    moved = [False] * views.count
    quiet = Run(None, run.cancel)  # the consensus solve's own stages are part of this one
    rounds, best_gain = 0, 0.0
    for r in range(ROUNDS):
        if r > 0 and best_gain <= REFIT_GAIN:  # noise, not misregistration, shaped the last consensus
            break
        rounds, best_gain = r + 1, 0.0
        fit_rows = rng.choice(pts.shape[0], size=min(pts.shape[0], FIT_POINTS), replace=False)
        x = torch.from_numpy((pts[fit_rows] / coarse).astype(np.float32)).to(device)
        levels = build_levels(x, DEPTH)
        solve_levels(levels, x, torch.from_numpy(nrm[fit_rows].astype(np.float32)).to(device), weights, TOL,
                     MAX_ITER, quiet)
        others = _Others(pts / coarse, _field(levels, pts / coarse, device), views.index)
        for v, rows in enumerate(members):
            run.report("register", (r + v / views.count) / ROUNDS, f"round {r + 1}: view {v + 1}/{views.count}")
            if rows.size < MIN_VIEW_POINTS:
                continue
            sample = rows if rows.size <= VIEW_POINTS else rng.choice(rows, size=VIEW_POINTS, replace=False)
            target, usable = others.target(pts[sample] / coarse, v)
            rot, shift, gain = _align(levels, pts[sample] / coarse, target, usable, device)
            if gain < MIN_GAIN:
                continue
            rot, shift = _rotation(STEP_SHARE * _rotation_vector(rot)), STEP_SHARE * shift
            c = pts[sample].mean(axis=0)
            new_rot = rot @ total_rot[v]
            angle = _degrees(new_rot)
            if np.linalg.norm(total_shift[v] / coarse + shift) > MAX_SHIFT or angle > MAX_ROTATION_DEG:
                continue
            pts[rows] = (pts[rows] - c) @ rot.T + c + shift * coarse
            nrm[rows] = nrm[rows] @ rot.T
            total_rot[v], total_shift[v] = new_rot, total_shift[v] + shift * coarse
            moved[v] = True
            best_gain = max(best_gain, gain)  # of the motions applied
    # The shift of each view's centroid, and the rotation, as the stats report them.
    shifts = [float(np.linalg.norm(s)) for s, m in zip(total_shift, moved, strict=True) if m]
    angles = [_degrees(q) for q, m in zip(total_rot, moved, strict=True) if m]
    stats = {"views": views.count, "views_registered": int(sum(moved)), "registration_rounds": rounds,
             "registration_shift_max": max(shifts, default=0.0),
             "registration_rotation_max_deg": max(angles, default=0.0)}
    return pts.astype(points.dtype), nrm.astype(normals.dtype), stats
