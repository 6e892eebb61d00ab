"""The pipeline: clean -> resolution -> normals -> hierarchy -> system -> solve -> mesh -> trim -> simplify -> colours.

Each stage lives in its own module; this one only sequences them, times them,
reports progress and checks for cancellation between and inside stages.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from . import __version__
from .cloud import MIN_POINTS, Cloud, prepare_cloud
from .device import select_device
from .errors import TooFewPointsError
from .frames import Frame
from .large.blend import key_frame, mesh_block, weld
from .large.executors import Executor, make_executor
from .large.memory import MemoryPlan, available_bytes, footprint_on, plan_memory, round_more_bytes
from .large.partition import ChunkedCloud, ChunkGrid
from .large.tasks import ChunkField, tasks
from .mesh import Mesh, vertex_normals
from .options import Options
from .prior.features import Context, cell_features
from .prior.model import WEIGHTS_PATH as PRIOR_WEIGHTS
from .prior.model import level_scales, point_log2_factors
from .prior.model import load_cached as load_prior
from .progress import CancelFn, ProgressFn, Run
from .solver.fitting import solve_levels
from .solver.hierarchy import Level, build_levels, evaluate, evaluate_grid
from .solver.knn import PointTree
from .solver.normals import DOUBT_DEGREES, NormalEstimate, estimate_oriented, given_normals_tilt, sensor_rows
from .solver.outliers import drop_outliers
from .solver.registration import find_views, register_views
from .solver.resolution import Resolution, choose_voxel_size
from .solver.system import Weights, point_weight
from .solver.trust import incidence_trust
from .surface.colors import interpolate_colors
from .surface.fragments import drop_fragments
from .surface.meshing import candidate_cells, marching_cubes
from .surface.refine import refine_where_bent
from .surface.simplify import simplify
from .surface.trimming import compact, points_within, trim_distance, trim_far
from .surface.watertight import close_level, closed_piece, outside_beyond, refuse_chunks
from .warm import warm_kernels

WEIGHTS = Weights(point=1.0, normal=1.0, smooth=0.1)


@dataclass
class Fit:
    """The fitted field: the cleaned cloud, the solved hierarchy and the run's figures."""

    cloud: Cloud
    levels: list[Level]
    voxel_size: float  # canonical units
    noise: float  # measured noise, canonical units
    device: torch.device
    stats: dict[str, Any]

    def field(self, x: torch.Tensor) -> torch.Tensor:
        """The field at x (M, 3) in finest-voxel units (negative inside, about a distance in voxels)."""
        return evaluate(self.levels, x)[0]

    @property
    def frame(self) -> Frame:
        return self.cloud.frame.with_voxel(self.voxel_size)

    def to_voxels(self, world: np.ndarray) -> torch.Tensor:
        """Caller coordinates (M, 3) -> finest-voxel units on the engine's device."""
        frame = self.frame
        canon = frame.to_canonical(np.asarray(world, dtype=np.float64))
        return torch.from_numpy(frame.to_voxels(canon)).to(self.device, torch.float32)


# Estimated normals are the points' own planes, smoothed over k neighbours: they add direction but
# no independent information, so positions get 10x the weight they get beside given normals.
# Measured on the bunny (100k points, Chamfer-L1 x1e-3 with estimated normals at 1x / 3x / 10x /
# 30x): clean 0.060 / 0.050 / 0.043 / 0.039 (true normals: 0.044); 0.25% noise 0.64 / 0.55 /
# 0.51 / 0.57; 0.5% noise 1.75 / 1.46 / 1.18 / 1.07 (two pieces at 30x).
ESTIMATED_POINT_SCALE = 10.0
# A scan from several sensors is the exception: after registration its views still disagree by a fraction of
# the noise, and positions that follow each view's sheet at 10x cost more than smoothed normals give.  Measured
# 2026-12-02 on the bench scans without normals (bunny / torus / sphere, 8 views, Chamfer-L1 x1e-3) at 1x / 2x /
# 3x / 5x / 10x / 30x: 0.381 / 0.372 / 0.370 / 0.369 / 0.374 / 0.391, 0.396 / 0.402 / 0.407 / 0.415 / 0.433 /
# 0.472, 0.465 / 0.471 / 0.471 / 0.474 / 0.478 / 0.479; normal consistency rises as the scale falls.  3x is
# better than 10x on all three.
ESTIMATED_POINT_SCALE_VIEWS = 3.0
DOUBTFUL_WARNING = 0.01  # share of points with doubtful orientation above which the stats carry a warning
# Normals estimated in a scan from several sensors, from noisy views that still disagree a little, want a smoother
# fit: the smoothness weight grows as 1 + (9 noise / voxel)^2 (the noise measured for the resolution), 3-5x on the
# simulated scans (noise 0.16-0.23 voxel), 1.0-1.2x on noiseless ones.  Measured 2026-12-02 on the bench scans
# without normals (8 views, views registered at once; Chamfer-L1 x1e-3, bunny / torus / sphere): smoothness x1
# 0.334 / 0.367 / 0.385, x2 0.328 / 0.355 / 0.371, x4 0.324 / 0.342 / 0.350, x8 0.331 / 0.330 / 0.355, x16 0.358 /
# 0.319 / 0.325, this rule 0.326 / 0.346 / 0.351; the noiseless 8-view scans (`clean` preset) 0.1515 / 0.0528 /
# 0.0814 at x1, 0.1690 / 0.0522 / 0.0818 at x4, 0.1527 / 0.0528 / 0.0814 with this rule.  With the scanner's normals
# the same rule cost the bunny 6% (0.336 -> 0.356) for 2% on the torus and the sphere: not applied there.
ESTIMATED_SMOOTH_NOISE_VIEWS = 9.0


def estimated_smooth_scale(noise: float, voxel_size: float) -> float:
    """The factor on the smoothness weight for normals estimated in a scan from several sensors."""
    return 1.0 + (ESTIMATED_SMOOTH_NOISE_VIEWS * noise / voxel_size) ** 2


def ensure_normals(cloud: Cloud, res: Resolution, dev: torch.device, run: Run, k: int | None,
                   sensor: np.ndarray | None, keep_given: bool = False) -> tuple[Cloud, dict[str, Any]]:
    """The cloud with oriented normals (step 10): estimated when missing, doubtful points dropped; and stats.

    Given normals far off the points' planes are estimated again unless ``keep_given`` (option ``keep_normals``).
    ``sensor`` (3,) or (rows of the caller's arrays, 3), caller's coordinates.
    """
    tilt = None
    if cloud.normals is not None:
        tilt = None if keep_given else given_normals_tilt(cloud.points, cloud.normals)
        if tilt is None or tilt <= DOUBT_DEGREES:
            return cloud, {"normals_estimated": False, "normals_source": "given", "normal_k": None,
                           "normals_orientation": "given", "normals_doubtful": 0}
    sens = None
    if sensor is not None:
        s = sensor[cloud.kept] if sensor.ndim == 2 else sensor
        sens = torch.from_numpy(cloud.frame.to_canonical(s)).to(dev, torch.float32)
    est = estimate_oriented(torch.from_numpy(cloud.points).to(dev), k, sens,
                            lambda f, t: run.report("normals", f, t), density=res.density, noise=res.noise)
    if cloud.normals is not None and tilt is not None:
        return _turned_like_given(cloud, est, tilt)
    keep = (~est.doubtful).cpu().numpy()
    if int(keep.sum()) < MIN_POINTS:
        raise TooFewPointsError(
            f"Normal orientation is doubtful for {int((~keep).sum())} of {keep.size} points; "
            f"fewer than {MIN_POINTS} are left.",
            "Give oriented normals, or a sensor position that sees the surface.")
    cloud = cloud.subset(keep, est.normals.cpu().numpy()[keep])
    stats = {**est.stats(), "normals_source": cloud.normals_source}
    if est.doubtful.float().mean() > DOUBTFUL_WARNING:
        stats["warnings"] = [f"{stats['normals_doubtful']} points ({100 * float(est.doubtful.float().mean()):.1f}%)"
                             " had a doubtful normal orientation and were left out; give normals or a sensor "
                             "position (viewpoint) for a better result."]
    return cloud, stats


def _turned_like_given(cloud: Cloud, est: NormalEstimate, tilt: float) -> tuple[Cloud, dict[str, Any]]:
    """The cloud with the estimated normals where given ones lay far off its planes (``tilt`` degrees, median),
    each turned the way its given normal faces; a point the estimate left doubtful keeps its given normal."""
    given = np.asarray(cloud.normals)
    normals = est.normals.cpu().numpy()
    facing = np.where((normals * given).sum(axis=1) < 0, -1.0, 1.0).astype(normals.dtype)
    normals = np.where(est.doubtful.cpu().numpy()[:, None], given, normals * facing[:, None])
    stats = {**est.stats(), "normals_source": "given, re-estimated", "normals_orientation": "given",
             "normals_doubtful": 0, "normals_given_tilt_deg": round(tilt, 1),
             "warnings": [f"the given normals lie a median {tilt:.1f} degrees off the planes of their points; normals "
                          "estimated from the points, turned the way the given ones face, were used instead "
                          "(keep_normals uses the given ones)"]}
    return replace(cloud, normals=normals.astype(np.float32)), stats


@dataclass
class Prepared:
    """Steps 1, 2 and 10 done: the cleaned cloud with oriented normals, its resolution and memory plan."""

    cloud: Cloud
    res: Resolution
    weights: Weights
    device: torch.device
    plan: MemoryPlan
    stats: dict[str, Any]
    mise_iter: int  # refinement rounds, "auto" resolved (refinement_rounds)
    trust: np.ndarray | None = None  # (N,) mean 1: each point's weight in the fit (incidence_trust), None: all 1
    sensed: bool = False  # sensor positions known (one or per point)

    @property
    def voxel_size(self) -> float:
        return self.res.voxel_size

    def prior_context(self) -> Context:
        """The learned prior's scan-wide inputs (engine/prior/features.py)."""
        return Context(noise_voxels=self.res.noise / self.res.voxel_size, point_weight=self.weights.point,
                       smooth_weight=self.weights.smooth, sensed=self.sensed,
                       estimated=bool(self.stats["normals_estimated"]))

    @property
    def frame(self) -> Frame:
        return self.cloud.frame.with_voxel(self.voxel_size)


# Meshing one round below the finest voxel places vertices more exactly (clean sphere: 0.0016 voxel from the truth
# against 0.0064 at the voxel) and simplification then merges what is flat.  A noisy scan gains nothing from it:
# its depth noise, not the meshing, sets the error, and the finer cells only follow the noise.  What tells such a
# scan: sensor positions (one or several) and a measured noise of at least NOISY_SCAN voxel.  Measured on the
# simulator's scans (noise / voxel: 0.001-0.054 without depth noise, 0.16-0.41 with it), rounds 1 / 0:
# - one view with noise (60k points, outliers; accuracy, mesh to truth, x1e-3): bunny 0.367 / 0.337, torus 0.306 /
#   0.285, sphere 0.158 / 0.155, with 55-60% fewer faces and 30-50% less time;
# - one view without noise: bunny 0.053 / 0.056, torus 0.016 / 0.021, sphere 0.0065 / 0.0103;
# - 8 views without noise (Chamfer-L1 x1e-3): bunny 0.132 / 0.196, torus 0.026 / 0.055, sphere 0.059 / 0.081;
# - 8 views with noise (misregistered, scanner normals): bunny 0.379 / 0.387, torus 0.401 / 0.392, sphere 0.467 /
#   0.466; without normals 0.412 / 0.393, 0.493 / 0.458, 0.526 / 0.532; 8.4-9.6 s against 5.9-7.2 s.
# Noise alone does not tell: the bunny with 0.5% Gaussian noise and no sensors (noise 0.5 voxel) loses with 0 rounds,
# 0.462 against 0.372.  (Until 2026-12-02 the rule was "several views": it meshed noiseless multi-view scans at the
# voxel, the 8-view lines above, and noisy single-view ones a round below.)
AUTO_MISE_ITER = 1
NOISY_SCAN = 0.1
# Voxels of measured noise under which "auto" refines the voxel's mesh where the surface bends (engine.surface.refine)
# instead of a uniform round.  Above it the noise, not the meshing, sets the error, and the refinement's guard
# against folds (pieces put back as marching cubes placed them) costs more than it gains: the 100k bunny with 0.5%
# and 1% noise (0.5 voxel) gave Chamfer-L1 x1e-3 0.3725 and 1.0923 (NC 0.9831) against the round's 0.3713 and 1.0878
# (0.9852), with as many faces; clean (0.08 voxel) 0.0454 against 0.0462, the 1M clean bunny (0.24) 0.0091 against
# 0.0092 from 3.5M triangles meshed instead of 5.6M.
REFINE_NOISE = 0.35


# Where "auto" finds creases (a box's edges and corners: engine/surface/refine.py) it meshes two uniform rounds below
# the voxel instead of one, which cut them less: area samples of bench/scanner.py's box, Chamfer-L1 x1e-3 / normal
# consistency, one round against two: 10k points 0.294 / 0.9831 against 0.237 / 0.9897 (Poisson depth 8: 0.376 /
# 0.9882), 100k 0.0293 / 0.9964 against 0.0237 / 0.9967 (0.075 / 0.9968), at 1.4-1.9x the time (100k: 1.35 ->
# 2.62 s, Poisson 3.57).  Only where the finer mesh stays under CREASE_MESH_FACES (the time) and the memory plan
# has room for it.
CREASE_MESH_FACES = 4_000_000


def crease_round_pays(voxel_faces: int, prep: Prepared, fitted: Fit) -> bool:
    """Whether a surface with creases, whose mesh at the voxel has ``voxel_faces``, gets a second uniform round."""
    finer = voxel_faces * 4 ** (prep.mise_iter + 1)
    more = round_more_bytes(fitted.stats["unknowns"], prep.mise_iter, footprint_on(fitted.device))
    return finer <= CREASE_MESH_FACES and prep.plan.estimate + more <= prep.stats["memory_limit_bytes"]


def refinement_rounds(mise_iter: int | str, sensed: bool, noise_voxels: float) -> int:
    """The ``mise_iter`` option with "auto" resolved: no round below the voxel for a noisy scan from known sensors."""
    if mise_iter == "auto":
        return 0 if sensed and noise_voxels >= NOISY_SCAN else AUTO_MISE_ITER
    return int(mise_iter)


def prepare(points: Any, normals: Any, colors: Any, opts: Options, run: Run, *, sensor: Any = None,
            concurrent: int = 1, worker_processes: bool = False) -> Prepared:
    """Clean, choose the resolution and the memory plan, estimate normals if needed (steps 1, 2, 10).

    ``concurrent`` chunks at once, each in a process of its own with ``worker_processes``: the memory plan's.
    """
    dev = select_device(opts.device)
    # numba's 0.5 s of loading overlaps cleaning, which waits mostly in scipy and numpy; on every device, since
    # the simplifying collapse, trimming's cell test and the mesh's pieces run on the CPU whatever the device
    warm_kernels()
    with run.stage("clean"):
        cloud = prepare_cloud(points, None if opts.estimate_normals else normals, colors)
        if opts.estimate_normals:
            cloud.normals_source = "forced"
        cloud, outliers = drop_outliers(cloud, dev)
        sensor = None if sensor is None else sensor_rows(sensor, int(np.asarray(points).shape[0]))
    with run.stage("resolution"):
        views = find_views(sensor[cloud.kept]) if sensor is not None and sensor.ndim == 2 else None
        res = choose_voxel_size(cloud.points, opts.detail_level, opts.voxel_size, cloud.frame.diagonal,
                                views=None if views is None else views.index)
        weights = replace(WEIGHTS, point=point_weight(res.noise, res.voxel_size))
        limit = (int(opts.memory_limit_gb * 2**30) if opts.memory_limit_gb is not None
                 else int(0.75 * available_bytes(dev)))
        mise_iter = refinement_rounds(opts.mise_iter, sensor is not None, res.noise / res.voxel_size)
        plan = plan_memory(cloud.points, res.voxel_size, opts.depth, limit, cloud.frame.diagonal,
                           mise_iter=mise_iter,
                           chunk_size=opts.chunk_size, overlap_ratio=opts.overlap_ratio, auto_chunk=opts.auto_chunk,
                           concurrent=concurrent, worker_processes=worker_processes, footprint=footprint_on(dev))
    with run.stage("normals"):
        cloud, normal_stats = ensure_normals(cloud, res, dev, run, opts.normal_k, sensor, opts.keep_normals)
        if normal_stats["normals_estimated"]:
            scale = ESTIMATED_POINT_SCALE if views is None else ESTIMATED_POINT_SCALE_VIEWS
            weights = replace(weights, point=weights.point * scale)
            if views is not None:
                weights = replace(weights, smooth=weights.smooth * estimated_smooth_scale(res.noise, res.voxel_size))
    if views is not None and normal_stats["normals_doubtful"]:  # points left out: the views' index must follow
        views = find_views(sensor[cloud.kept])
    if views is not None and opts.register_views:
        assert cloud.normals is not None
        with run.stage("register"):
            moved, turned, registration = register_views(cloud.points, cloud.normals, views, res.voxel_size, weights,
                                                         run, dev)
            cloud = replace(cloud, points=moved, normals=turned)
            registration["registration_shift_max"] = cloud.frame.from_canonical(registration["registration_shift_max"])
            normal_stats = {**normal_stats, **registration}
    frame = cloud.frame
    stats: dict[str, Any] = {
        "engine_version": __version__,
        "device": str(dev),
        "threads": torch.get_num_threads(),  # CPU threads of torch's parallel operations (OMP_NUM_THREADS sets it)
        "points_in": int(np.asarray(points).shape[0]),
        "points_used": int(cloud.points.shape[0]),
        "points_dropped": cloud.dropped,
        "outliers_removed": outliers,
        **normal_stats,
        "voxel_size": frame.from_canonical(res.voxel_size),
        "detail_level": res.detail_level if res.detail_level is not None else str(opts.detail_level),
        "noise": frame.from_canonical(res.noise),
        "point_weight": weights.point,
        "smooth_weight": weights.smooth,
        "density": res.density / frame.diagonal**2,  # points per canonical area -> per caller's area
        "view_overlap": res.view_overlap,
        "mise_iter": mise_iter,
        "memory_limit_bytes": limit,
        "memory_estimate_bytes": plan.estimate,
    }
    trust = None
    if views is not None:  # points seen edge-on give way to a better view over them (solver/trust.py)
        assert cloud.normals is not None and sensor is not None
        trust, stats["points_grazing"] = incidence_trust(cloud.points, cloud.normals,
                                                         cloud.frame.to_canonical(sensor[cloud.kept]))
    return Prepared(cloud, res, weights, dev, plan, stats, mise_iter, trust, sensed=sensor is not None)


def learned_factors(prepared: Prepared, opts: Options, x: torch.Tensor, nrm: torch.Tensor, run: Run
                    ) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """Each point's log2 smoothness factor from the learned prior (None with ``prior`` "none"), and its stats.

    ``x`` (N, 3) in finest-voxel units, ``nrm`` (N, 3).  Without the weights file the fit runs as with
    "none" and the stats say so.  The "prior" stage (progress, seconds) exists only with ``prior`` "learned".
    """
    if opts.prior != "learned":
        return None, {"prior": "none"}
    with run.stage("prior"):
        net = load_prior(prepared.device)
        if net is None:
            return None, {"prior": "none", "warnings": [
                f"The learned prior's weights ({PRIOR_WEIGHTS}) are missing or do not fit this engine, so the fit "
                "used prior 'none'; reinstall the engine, or train them with bench/train_prior.py."]}
        point_log2 = point_log2_factors(net, cell_features(x, nrm, prepared.prior_context()))
    q = torch.quantile(point_log2[:: max(1, point_log2.numel() // 100_000)].float(),
                       torch.tensor([0.1, 0.5, 0.9], device=point_log2.device)).exp2()
    return point_log2, {"prior": "learned", "prior_smoothness_p10_p50_p90": [round(float(v), 3) for v in q]}


def _with_warnings(stats: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``stats`` updated by ``extra``, the two lists of warnings joined."""
    out = {**stats, **extra}
    if "warnings" in stats and "warnings" in extra:
        out["warnings"] = [*stats["warnings"], *extra["warnings"]]
    return out


def band_only(opts: Options) -> bool:
    """Whether the mesh is kept only within the finest level's band (trimmed), so that the coarse levels need not
    span gaps in the data (:data:`engine.solver.hierarchy.BRIDGE_RINGS`) nor meshing start beyond the band."""
    return opts.trim and not opts.watertight


def fit(prepared: Prepared, opts: Options, run: Run, bridge: bool = True) -> Fit:
    """Build the hierarchy of a prepared cloud and solve it, in one piece (steps 3-6); ``bridge``: the coarse
    levels span gaps in the data (:func:`engine.solver.hierarchy.build_levels`)."""
    cloud, dev = prepared.cloud, prepared.device
    assert cloud.normals is not None
    with run.stage("hierarchy"):
        x = prepared.frame.to_voxels(torch.from_numpy(cloud.points).to(dev))
        nrm = torch.from_numpy(cloud.normals).to(dev)
        levels = build_levels(x, opts.depth, bridge)
        if opts.watertight:  # the coarsest level spans the gaps and the inside (surface/watertight.py)
            levels[-1] = close_level(levels[-1])
    trust = None if prepared.trust is None else torch.from_numpy(prepared.trust).to(dev)
    point_log2, prior_stats = learned_factors(prepared, opts, x, nrm, run)
    scales = None
    if point_log2 is not None:
        with run.stage("prior"):
            scales = level_scales(levels, x, point_log2)
    iterations, residuals = solve_levels(levels, x, nrm, prepared.weights, opts.solver_tol, opts.solver_max_iter,
                                         run, trust=trust, smooth_scales=scales)
    stats = {**_with_warnings(prepared.stats, prior_stats), "levels": [len(lv) for lv in levels],
             "unknowns": int(sum(len(lv) for lv in levels)), "solver_iterations": iterations,
             "solver_residual": residuals}
    return Fit(cloud, levels, prepared.voxel_size, prepared.res.noise, dev, stats)


def fit_field(points: Any, normals: Any = None, options: Options | Mapping[str, Any] | None = None, *,
              sensor: Any = None, **overrides: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The fitted implicit function in the caller's coordinates: (M, 3) -> (M,) float32, negative inside.

    Values are roughly signed distances in units of the finest voxel.  Normals
    and options as for :func:`reconstruct`; the scene is fitted whole, never in
    chunks (:class:`MemoryLimitError` if it does not fit the memory limit).
    """
    opts = Options.of(options, **overrides).replace(auto_chunk=False, chunk_size=None)
    run = Run(None, None)
    f = fit(prepare(points, normals, None, opts, run, sensor=sensor), opts, run)
    return lambda world: f.field(f.to_voxels(world)).cpu().numpy()


def reconstruct(points: Any, normals: Any = None, colors: Any = None,
                options: Options | Mapping[str, Any] | None = None, *, sensor: Any = None,
                progress: ProgressFn | None = None, cancel: CancelFn | None = None, **overrides: Any) -> Mesh:
    """Reconstruct a triangle mesh from a point cloud.

    ``options`` (an :class:`engine.options.Options` or a mapping) and keyword
    ``overrides`` are the options of :mod:`engine.options`, validated before any
    work (:class:`engine.options.OptionError` names a bad one).
    points (N, 3); normals (N, 3) oriented (any length > 0; faces wind
    counter-clockwise seen from the side they point to), or None; colors
    (N, 3|4) optional; any float or integer dtype.  Without normals (or with
    ``estimate_normals``, or when every given normal is zero) they are
    estimated from ``normal_k`` neighbours and oriented towards ``sensor``
    ((3,) one viewpoint, or (N, 3) one per point, caller's coordinates), else
    by propagation: outward on closed shapes, up (+Z) on open flat patches.
    Points whose orientation stays doubtful are left out and counted
    (``stats["normals_doubtful"]``).  Given normals a median of over 6 degrees
    off the planes their points lie in are estimated again, each turned the way
    its given one faces (a warning says so), unless ``keep_normals``.
    ``detail_level`` "auto" or 0..1,
    ``voxel_size`` (caller's units) overrides it.  ``mise_iter`` refinement
    rounds below the finest voxel ("auto": 1, or 0 when ``sensor`` holds 2 to
    256 positions); ``trim`` removes surface farther than 1.5
    voxels plus twice the measured noise from every point.

    Large scenes: ``chunk_size`` (caller's units) solves cubes of that edge
    independently, each with ``overlap_ratio`` of its size of data around it,
    and blends their fields before meshing once (no seams).  Unset, the scene
    is chunked only when it would not fit ``memory_limit_gb`` (default: 3/4
    of the free memory of the device), unless ``auto_chunk`` is False, which
    raises :class:`engine.errors.MemoryLimitError` instead.  Chunks run on
    ``executor``: "inprocess", "processes" (a local pool of ``workers``),
    "dask" or "dask://host:port" (Dask distributed), or an
    :class:`engine.large.executors.Executor`.

    ``progress(stage, fraction, text)`` is called often; ``cancel()``
    returning True stops the run with :class:`engine.errors.Cancelled`.
    Raises :class:`engine.errors.InputError` subclasses for bad input, each
    naming the problem and the fix.
    """
    # An Executor object runs chunks as it is; a name or address is an option, checked with the others.
    pool_spec = overrides.pop("executor") if not isinstance(overrides.get("executor", ""), str) else None
    opts = Options.of(options, **overrides)
    run = Run(progress, cancel)
    t0 = time.perf_counter()
    pool = pool_spec if pool_spec is not None else make_executor(opts.executor, opts.workers)
    prep = prepare(points, normals, colors, opts, run, sensor=sensor, concurrent=pool.concurrent,
                   worker_processes=pool.worker_processes)
    if prep.plan.grid is not None and opts.watertight:
        raise refuse_chunks()
    if prep.plan.grid is not None:
        verts, faces, vcolors, stats = reconstruct_chunked(prep, prep.plan.grid, pool, opts, run)
    else:
        verts, faces, vcolors, stats = reconstruct_whole(prep, opts, run)
    cloud = prep.cloud
    with run.stage("vertex_normals"):
        vnormals = vertex_normals(verts, faces)
    stats = {**stats, "vertices": int(verts.shape[0]), "faces": int(faces.shape[0]), "seconds": run.seconds,
             "total_seconds": time.perf_counter() - t0}
    return Mesh(local_vertices=cloud.frame.from_canonical(verts).astype(np.float32), faces=faces.astype(np.int32),
                origin=cloud.frame.center.copy(), colors=vcolors, normals=vnormals, stats=stats)


MeshArrays = tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]


def reconstruct_whole(prep: Prepared, opts: Options, run: Run) -> MeshArrays:
    """The scene in one piece: fit, mesh, trim, colour; canonical vertices, faces, colours, stats."""
    f = fit(prep, opts, run, bridge=not band_only(opts))
    levels, frame, cloud = f.levels, f.frame, f.cloud
    with run.stage("mesh"):
        def field(p: torch.Tensor) -> torch.Tensor:
            run.check()
            return f.field(p)

        def grid(cells: torch.Tensor, size: float, n: int) -> torch.Tensor:
            run.check()
            return evaluate_grid(levels, cells, size, n)

        # Trimmed surface lies within the finest band, so refinement can start there;
        # untrimmed surface may run wherever the coarsest level reaches.
        start = levels[0] if band_only(opts) else levels[-1]
        meshed = outside_beyond(start, field) if opts.watertight else field
        # "auto" that took the round below the voxel refines where the surface bends instead, unless the noise sets
        # the error (REFINE_NOISE); a closed surface's outside is meshed on the cells' lattice, so it keeps the round
        adaptive = (opts.mise_iter == "auto" and prep.mise_iter == AUTO_MISE_ITER and not opts.watertight
                    and prep.res.noise < REFINE_NOISE * prep.voxel_size)
        refined: tuple[np.ndarray, np.ndarray, int] | str | None = None
        voxel_faces = 0
        if adaptive:
            def bent(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                run.check()
                value, slope = evaluate(levels, torch.from_numpy(x).to(f.device, torch.float32), with_grad=True)
                assert slope is not None
                return value.double().cpu().numpy(), slope.double().cpu().numpy()

            cells, size, corner_values = candidate_cells(start.ijk, start.size, start.depth, meshed, grid)
            verts_t, faces_t, _ = marching_cubes(cells, size, corner_values)
            voxel_faces = int(faces_t.shape[0])
            refined = refine_where_bent(verts_t.double().cpu().numpy(), faces_t.cpu().numpy(), bent, size)
        if isinstance(refined, tuple):
            voxels, faces, halved = refined
            verts = frame.from_voxels(voxels)
            f.stats.update(mise_iter=0, refinement="adaptive", edges_halved=halved)
        else:  # the uniform rounds, also where the refinement declines (refine.py): its reason goes in the stats
            rounds = prep.mise_iter
            if refined == "creases" and crease_round_pays(voxel_faces, prep, f):
                rounds += 1
                f.stats["mise_iter"] = rounds
            cells, size, corner_values = candidate_cells(start.ijk, start.size, start.depth + rounds, meshed,
                                                         None if opts.watertight else grid)
            verts_t, faces_t, _ = marching_cubes(cells, size, corner_values)
            verts = frame.from_voxels(verts_t.double()).cpu().numpy()
            faces = faces_t.cpu().numpy()
            f.stats["refinement"] = "uniform"
            if isinstance(refined, str):
                f.stats["refinement_declined"] = refined
        # Nothing past meshing reads the field: its tables (coefficients, neighbour and tap tables) and the cells
        # go before trimming and simplification, which set the peak (1M-point clean bunny: 4.4 -> 3.8 GB).
        del meshed, field, grid, start, cells, corner_values, verts_t, faces_t
        levels.clear()
    with run.stage("trim"):
        # only trimming (on the CPU) and colours need the tree, not fit_field's callers; a GPU tests nearness itself
        on_cpu = f.device.type == "cpu"
        tree = PointTree(cloud.points) if on_cpu or cloud.colors is not None else None
        if opts.watertight:
            verts, faces, closed = closed_piece(verts, faces, cloud.points, f.voxel_size)
            f.stats.update(closed)
        elif opts.trim:
            within = tree.within if on_cpu and tree is not None else points_within(cloud.points, f.device)
            verts, faces, _ = trim_far(verts, faces, within, trim_distance(f.voxel_size, f.noise))
        else:
            verts, faces, _ = compact(verts, faces)
        verts, faces, _, pieces = drop_fragments(verts, faces, cloud.points, f.voxel_size, keep=opts.keep_fragments)
    with run.stage("simplify"):
        verts, faces, simplified = simplify(verts, faces, f.voxel_size, opts.max_faces,
                                            prep.stats["memory_limit_bytes"])
    with run.stage("colors"):
        vcolors = None if tree is None or cloud.colors is None else interpolate_colors(verts, tree, cloud.colors)
    return verts, faces, vcolors, {**f.stats, **pieces.stats(), **simplified}


def reconstruct_chunked(prep: Prepared, grid: ChunkGrid, pool: Executor, opts: Options, run: Run) -> MeshArrays:
    """The scene in overlapping chunks (step 11): solve each on ``pool``, blend, mesh core by core, weld."""
    cloud, frame, dev = prep.cloud, prep.frame, prep.device
    assert cloud.normals is not None
    depth, mise_iter = opts.depth, prep.mise_iter
    with run.stage("hierarchy"):
        cc = ChunkedCloud(frame.to_voxels(cloud.points.astype(np.float64)), grid)
    # the prior's features need each point's whole neighbourhood: found once, before the chunks
    point_log2, prior_stats = learned_factors(prep, opts, torch.from_numpy(cc.x).to(dev, torch.float32),
                                              torch.from_numpy(cloud.normals).to(dev), run)
    count = cc.cells.shape[0]
    fields: dict[tuple[int, int, int], ChunkField] = {}
    with run.stage("chunks"):
        size = frame.from_canonical(frame.from_voxels(grid.size))  # caller's units
        run.report("chunks", 0.0, f"{count} chunks of {size:.4g} on {pool.name}")
        todo = tasks(cc, cloud.normals, depth=depth, weights=prep.weights, solver_tol=opts.solver_tol,
                     solver_max_iter=opts.solver_max_iter, device=str(dev), bridge=not band_only(opts),
                     trust=prep.trust, prior_log2=None if point_log2 is None else point_log2.cpu().numpy())
        for done in pool.map(todo, count, run):
            fields[done.cell] = done
            run.report("chunks", len(fields) / count,
                       f"chunk {done.index + 1}/{count} solved: {done.points:,} points, {done.unknowns:,} unknowns, "
                       f"{done.seconds:.1f} s")
    edges = key_frame(cc, mise_iter)
    blocks = []
    with run.stage("mesh"):
        for i, cell in enumerate(cc.cells):
            blocks.append(mesh_block(cc, fields, cell, frame=frame, mise_iter=mise_iter, trim=opts.trim,
                                     trim_distance=trim_distance(prep.voxel_size, prep.res.noise),
                                     cloud_points=cloud.points, colors=cloud.colors, device=dev, run=run,
                                     key_frame=edges))
            run.report("mesh", (i + 1) / count, f"chunk {i + 1}/{count} meshed")
    with run.stage("weld"):
        verts, faces, vcolors = weld(blocks)
        # pieces cross chunks, so fragments are found on the welded mesh
        verts, faces, rows, pieces = drop_fragments(verts, faces, cloud.points, prep.voxel_size,
                                                    keep=opts.keep_fragments)
        vcolors = None if vcolors is None else vcolors[rows]
    with run.stage("simplify"):  # the blocks' colours were the welded vertices': interpolate again
        welded = verts
        verts, faces, simplified = simplify(verts, faces, prep.voxel_size, opts.max_faces,
                                            prep.stats["memory_limit_bytes"])
        if vcolors is not None and cloud.colors is not None and verts is not welded:
            vcolors = interpolate_colors(verts, PointTree(cloud.points), cloud.colors)
    ordered = [fields[k] for k in sorted(fields, key=lambda k: fields[k].index)]
    stats = {**_with_warnings(prep.stats, prior_stats), "chunks": count, "chunk_size": size,
             "chunk_origin": frame.center.tolist(),  # chunk cores are chunk_origin + chunk_size * (i, j, k)
             "chunk_overlap": frame.from_canonical(frame.from_voxels(grid.margin)),
             "chunking": "auto" if prep.plan.automatic else "set",
             "refinement": "uniform",
             "executor": pool.name, "chunk_memory_estimate_bytes": prep.plan.chunk_estimate,
             "levels": [sum(f.levels[d][1].shape[0] for f in ordered) for d in range(depth)],
             "unknowns": sum(f.unknowns for f in ordered),
             "solver_iterations": [max(f.iterations[d] for f in ordered) for d in range(depth)],
             "solver_residual": [max(f.residuals[d] for f in ordered) for d in range(depth)],
             "chunk_seconds": [round(f.seconds, 3) for f in ordered], **pieces.stats(), **simplified}
    return verts, faces, vcolors, stats
