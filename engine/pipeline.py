"""The pipeline: clean -> resolution -> normals -> hierarchy -> system -> solve -> mesh -> trim -> colours.

Each stage lives in its own module; this one only sequences them, times them,
reports progress and checks for cancellation between and inside stages.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from . import __version__
from .cloud import MIN_POINTS, Cloud, prepare_cloud
from .colors import interpolate_colors
from .device import select_device
from .errors import Cancelled, TooFewPointsError
from .hierarchy import Level, build_levels, evaluate, evaluate_level
from .knn import PointTree
from .memory import available_bytes, check_memory
from .mesh import Mesh, vertex_normals
from .meshing import candidate_cells, marching_cubes
from .normals import check_k, estimate_oriented, sensor_rows
from .resolution import Resolution, choose_voxel_size
from .solver import pcg
from .system import Weights, assemble, point_weight
from .trimming import compact, trim_distance, trim_far

ProgressFn = Callable[[str, float, str], None]
CancelFn = Callable[[], bool]

# The design brief suggests 4 levels.  Measured on the bunny (100k points, clean
# and 0.5% noise): 2, 3 and 4 levels give the same Chamfer and normal
# consistency (0.0445e-3 / 0.370e-3), while the 4th level costs 20% more time.
# Three keep a coarsest voxel of 4h, which still bridges gaps of several voxels.
DEFAULT_DEPTH = 3
COARSE_TOL = 1e-3
WEIGHTS = Weights(point=1.0, normal=1.0, smooth=0.1)


class _Run:
    """Progress, cancellation and per-stage timing of one reconstruction."""

    def __init__(self, progress: ProgressFn | None, cancel: CancelFn | None) -> None:
        self.progress = progress
        self.cancel = cancel
        self.seconds: dict[str, float] = {}

    def check(self) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled()

    def report(self, stage: str, fraction: float, text: str = "") -> None:
        if self.progress is not None:
            self.progress(stage, float(min(max(fraction, 0.0), 1.0)), text)
        self.check()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.report(name, 0.0)
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        self.report(name, 1.0)


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

    def to_voxels(self, world: np.ndarray) -> torch.Tensor:
        """Caller coordinates (M, 3) -> finest-voxel units on the engine's device."""
        canon = (np.asarray(world, dtype=np.float64) - self.cloud.center) / self.cloud.scale
        return torch.from_numpy(canon / self.voxel_size).to(self.device, torch.float32)


# Estimated normals are the points' own planes, smoothed over k neighbours: they add direction but
# no independent information, so positions get 10x the weight they get beside given normals.
# Measured on the bunny (100k points, Chamfer-L1 x1e-3 with estimated normals at 1x / 3x / 10x /
# 30x): clean 0.060 / 0.050 / 0.043 / 0.039 (true normals: 0.044); 0.25% noise 0.64 / 0.55 /
# 0.51 / 0.57; 0.5% noise 1.75 / 1.46 / 1.18 / 1.07 (two pieces at 30x).
ESTIMATED_POINT_SCALE = 10.0
DOUBTFUL_WARNING = 0.01  # share of points with doubtful orientation above which the stats carry a warning


def ensure_normals(cloud: Cloud, res: Resolution, dev: torch.device, run: _Run, k: int | None,
                   sensor: np.ndarray | None) -> tuple[Cloud, dict[str, Any]]:
    """The cloud with oriented normals (step 10): estimated when missing, doubtful points dropped; and stats.

    ``sensor`` (3,) or (rows of the caller's arrays, 3), caller's coordinates.
    """
    if cloud.normals is not None:
        return cloud, {"normals_estimated": False, "normals_source": "given", "normal_k": None,
                       "normals_orientation": "given", "normals_doubtful": 0}
    sens = None
    if sensor is not None:
        s = sensor[cloud.kept] if sensor.ndim == 2 else sensor
        sens = torch.from_numpy((s - cloud.center) / cloud.scale).to(dev, torch.float32)
    est = estimate_oriented(torch.from_numpy(cloud.points).to(dev), k, sens,
                            lambda f, t: run.report("normals", f, t), density=res.density, noise=res.noise)
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


def fit(points: Any, normals: Any = None, colors: Any = None, *, detail_level: float | str = "auto",
        voxel_size: float | None = None, solver_tol: float = 1e-5, solver_max_iter: int = 2000,
        device: str = "auto", depth: int = DEFAULT_DEPTH, memory_limit_gb: float | None = None,
        estimate_normals: bool = False, sensor: Any = None, normal_k: int | None = None,
        run: _Run | None = None) -> Fit:
    """Clean, choose the resolution, estimate normals if needed, build the hierarchy and solve it (steps 1-6)."""
    run = run or _Run(None, None)
    dev = select_device(device)
    with run.stage("clean"):
        cloud = prepare_cloud(points, None if estimate_normals else normals, colors)
        if estimate_normals:
            cloud.normals_source = "forced"
        sensor = None if sensor is None else sensor_rows(sensor, int(np.asarray(points).shape[0]))
        if normal_k is not None:
            check_k(normal_k)
    with run.stage("resolution"):
        res = choose_voxel_size(cloud.points, detail_level, voxel_size, cloud.scale)
        weights = replace(WEIGHTS, point=point_weight(res.noise, res.voxel_size))
        h = res.voxel_size
        limit = int(memory_limit_gb * 2**30) if memory_limit_gb is not None else int(0.75 * available_bytes(dev))
        estimate = check_memory(torch.from_numpy(cloud.points).to(dev), h, limit, h * cloud.scale,
                                max(1, int(depth)))
    with run.stage("normals"):
        cloud, normal_stats = ensure_normals(cloud, res, dev, run, normal_k, sensor)
        if normal_stats["normals_estimated"]:
            weights = replace(weights, point=weights.point * ESTIMATED_POINT_SCALE)
        assert cloud.normals is not None
        pts = torch.from_numpy(cloud.points).to(dev)
    with run.stage("hierarchy"):
        x = pts / h  # finest-voxel units
        nrm = torch.from_numpy(cloud.normals).to(dev)
        levels = build_levels(x, max(1, int(depth)))
    fit_value = torch.zeros(x.shape[0], device=dev)
    fit_grad = torch.zeros(x.shape[0], 3, device=dev)
    iterations: list[int] = []
    residuals: list[float] = []
    for i, level in enumerate(reversed(levels)):
        with run.stage("system"):
            system = assemble(level, x, -fit_value, nrm - fit_grad, weights)
        with run.stage("solve"):
            def check(it: int, rel: float, i: int = i, depth: int = level.depth) -> None:
                run.report("solve", (i + min(1.0, it / max(1, solver_max_iter))) / len(levels),
                           f"level {depth}: iteration {it}, residual {rel:.2e}")

            # Coarse levels only give the finer ones a start (they fit what is left), so a loose
            # tolerance there costs no accuracy; the finest level is solved to solver_tol.
            tol = solver_tol if level.depth == 0 else max(solver_tol, COARSE_TOL)
            result = pcg(system.matvec, system.rhs, 1.0 / system.diagonal, tol, solver_max_iter, check)
            level.set_coeffs(result.x)
            iterations.append(result.iterations)
            residuals.append(result.residual)
            del system
            value, grad = evaluate_level(level, x, with_grad=True)
            fit_value += value
            assert grad is not None
            fit_grad += grad
    stats: dict[str, Any] = {
        "engine_version": __version__,
        "device": str(dev),
        "points_in": int(np.asarray(points).shape[0]),
        "points_used": int(cloud.points.shape[0]),
        "points_dropped": cloud.dropped,
        **normal_stats,
        "voxel_size": h * cloud.scale,
        "detail_level": res.detail_level if res.detail_level is not None else str(detail_level),
        "noise": res.noise * cloud.scale,
        "point_weight": weights.point,
        "density": res.density / cloud.scale**2,
        "levels": [len(lv) for lv in levels],
        "unknowns": int(sum(len(lv) for lv in levels)),
        "solver_iterations": iterations,
        "solver_residual": residuals,
        "memory_estimate_bytes": estimate,
    }
    return Fit(cloud, levels, h, res.noise, dev, stats)


def fit_field(points: Any, normals: Any = None, **options: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The fitted implicit function in the caller's coordinates: (M, 3) -> (M,) float32, negative inside.

    Values are roughly signed distances in units of the finest voxel.  Normals
    and options as for :func:`reconstruct`.
    """
    f = fit(points, normals, **options)
    return lambda world: f.field(f.to_voxels(world)).cpu().numpy()


def reconstruct(points: Any, normals: Any = None, colors: Any = None, *, detail_level: float | str = "auto",
                voxel_size: float | None = None, mise_iter: int = 1, trim: bool = True,
                solver_tol: float = 1e-5, solver_max_iter: int = 2000, device: str = "auto",
                progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                depth: int = DEFAULT_DEPTH, memory_limit_gb: float | None = None,
                estimate_normals: bool = False, sensor: Any = None, normal_k: int | None = None) -> Mesh:
    """Reconstruct a triangle mesh from a point cloud.

    points (N, 3); normals (N, 3) oriented (any length > 0; faces wind
    counter-clockwise seen from the side they point to), or None; colors
    (N, 3|4) optional; any float or integer dtype.  Without normals (or with
    ``estimate_normals``, or when every given normal is zero) they are
    estimated from ``normal_k`` neighbours and oriented towards ``sensor``
    ((3,) one viewpoint, or (N, 3) one per point, caller's coordinates), else
    by propagation: outward on closed shapes, up (+Z) on open flat patches.
    Points whose orientation stays doubtful are left out and counted
    (``stats["normals_doubtful"]``).  ``detail_level`` "auto" or 0..1,
    ``voxel_size`` (caller's units) overrides it.  ``mise_iter`` refinement
    rounds below the finest voxel; ``trim`` removes surface farther than 1.5
    voxels plus twice the measured noise from every point.  ``progress(stage, fraction, text)`` is called
    often; ``cancel()`` returning True stops the run with
    :class:`engine.errors.Cancelled`.  Raises :class:`engine.errors.InputError`
    subclasses for bad input, each naming the problem and the fix.
    """
    run = _Run(progress, cancel)
    t0 = time.perf_counter()
    f = fit(points, normals, colors, detail_level=detail_level, voxel_size=voxel_size, solver_tol=solver_tol,
            solver_max_iter=solver_max_iter, device=device, depth=depth, memory_limit_gb=memory_limit_gb,
            estimate_normals=estimate_normals, sensor=sensor, normal_k=normal_k, run=run)
    levels, h, cloud = f.levels, f.voxel_size, f.cloud
    with run.stage("mesh"):
        def field(p: torch.Tensor) -> torch.Tensor:
            run.check()
            return f.field(p)

        # Trimmed surface lies within the finest band, so refinement can start there;
        # untrimmed surface may run wherever the coarsest level reaches.
        start = levels[0] if trim else levels[-1]
        cells, size, corner_values = candidate_cells(start.ijk, start.scale, start.depth + max(0, int(mise_iter)),
                                                     field)
        verts_t, faces_t = marching_cubes(cells, size, corner_values)
        verts = (verts_t.double() * h).cpu().numpy()  # canonical
        faces = faces_t.cpu().numpy()
    with run.stage("trim"):
        tree = PointTree(cloud.points)  # only trimming and colours need it, not fit_field's callers
        if trim:
            verts, faces, _ = trim_far(verts, faces, tree, trim_distance(h, f.noise))
        else:
            verts, faces, _ = compact(verts, faces)
    with run.stage("colors"):
        vcolors = interpolate_colors(verts, tree, cloud.colors) if cloud.colors is not None else None
        vnormals = vertex_normals(verts, faces)
    stats = {**f.stats, "vertices": int(verts.shape[0]), "faces": int(faces.shape[0]), "seconds": run.seconds,
             "total_seconds": time.perf_counter() - t0}
    return Mesh(local_vertices=(verts * cloud.scale).astype(np.float32), faces=faces.astype(np.int32),
                origin=cloud.center.copy(), colors=vcolors, normals=vnormals, stats=stats)
