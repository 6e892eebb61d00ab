"""Procedural closed shapes: training data that the pipeline generates itself (numpy, scipy and the engine).

Why: a learned prior needs many thousands of varied, closed, known surfaces, and
it must be reproducible and free of licence questions.  Meshes taken from
packages or data sets (the Stanford models, ShapeNet, Thingi10k, ...) each come
with their own terms and are not ours to redistribute inside model weights;
shapes built here from a seed are.  ``make_shape(seed)`` builds one: an analytic
signed distance function (SDF) and the mesh of its zero level, which the scan
simulator (``bench/scanner.py``, ``scan((v, f), params, seed)``) turns into a
scanner-like point cloud, with the SDF as ground truth for every point.

Kinds (``KINDS``; ``seed % len(KINDS)`` picks one when none is given):
- ``csg``: 2-5 primitives (spheres, boxes, rounded boxes, cylinders, tori,
  capsules; exact SDFs) joined by union (sometimes smooth), difference and
  intersection (min / max: a bound of the distance, exact outside unions).
- ``superquadric``: superellipsoid with sharp (0.2-0.6) or rounded (0.7-1.9)
  exponents and random axes.
- ``tube``: a tube of slowly varying radius swept along a Catmull-Rom curve
  through a few random control points, capped by half spheres.
- ``blob``: an ellipsoid displaced by low-frequency sinusoids and Gaussian
  bumps (at most a fifth of its smallest radius: it stays one blob).
- ``plate``: a thin bent plate (a smooth height sheet over a rounded rectangle),
  thickness 2-5% of the bounding-box diagonal: two close sheets.
- ``terrain``: a rectangular block whose top is a random heightfield.
- ``room``: a floor slab with tables, cabinets, a low wall, columns and stools
  standing on it (a scene seen from outside).
The SDF is exact (spheres, boxes, ... and their unions seen from outside, the
tube near its surface, up to its polyline), a bound (other CSG, the tube far
from it), or a first-order distance
``f / |grad f|`` (superquadric, blob, plate, terrain), accurate near the
surface; it is negative inside, everywhere.

Each shape gets a random rotation, then is moved and scaled so that its mesh's
bounding box is centred at the origin with diagonal 1; the returned ``sdf``
describes that frame.  The mesh is the zero level of the SDF sampled on a grid
of ``resolution`` cells across the longest side (plus a margin of 2 cells, so it
is always closed), by the engine's own marching cubes
(:func:`engine.surface.meshing.marching_cubes`): closed, manifold, outward
facing.

Split (fixed, never to be reshuffled): seeds 0-9,999 are training shapes
(``TRAIN_SEEDS``), 10,000-10,099 validation (``VALIDATION_SEEDS``); both cycle
through all kinds.  ``split("train" | "validation", n)`` gives a split's first n seeds.

Time (this machine: 2 cores shared with other work, ``OMP_NUM_THREADS=1``,
resolution 96; mean (max) of 7 seeds per kind, ``python bench/procedural.py
--per-kind 7``): csg 0.33 s (0.49), superquadric 0.36 (0.40), tube 0.68 (1.01),
blob 0.45 (0.69), plate 0.32 (0.55), terrain 0.33 (0.48), room 0.38 (0.60); the
first call in a process also imports torch and the engine (about 1.5 s).  The
grid ends up with about 91-98% of ``resolution`` cells across the mesh's
longest side (the box comes from two coarse passes and is a little loose).
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

KINDS = ("csg", "superquadric", "tube", "blob", "plate", "terrain", "room")
TRAIN_SEEDS = range(0, 10_000)
VALIDATION_SEEDS = range(10_000, 10_100)
SPLITS = {"train": TRAIN_SEEDS, "validation": VALIDATION_SEEDS}

MARGIN = 2  # grid cells between the shape's (conservative) bounding box and the grid's border
COARSE = 48  # nodes per side of the coarse grid that finds the bounding box
SLOPE = 1.5  # assumed largest |grad sdf| when bounding from the coarse grid (first-order SDFs may exceed 1)
CHUNK = 1 << 18  # points per SDF evaluation batch: bounded memory
MIN_FACES = 200  # a shape whose mesh has fewer is drawn again

SDF = Callable[[np.ndarray], np.ndarray]


@dataclass
class Shape:
    """One procedural shape: its SDF (points (N,3) -> (N,), negative inside) and mesh, in one frame.

    ``cell`` is the marching-cubes grid step in that frame: the mesh lies within
    about one cell of the SDF's zero level.
    """

    kind: str
    seed: int
    sdf: SDF
    vertices: np.ndarray
    faces: np.ndarray
    cell: float = 0.0


def split(name: str, count: int) -> list[int]:
    """The first ``count`` seeds of the "train" or "validation" split."""
    seeds = SPLITS[name]
    if count > len(seeds):
        raise ValueError(f"split {name!r} has {len(seeds)} seeds, {count} asked")
    return list(seeds[:count])


# ---------------------------------------------------------------------------------------------------- primitives
def _length(p: np.ndarray) -> np.ndarray:
    """Row norms of (N, 2) or (N, 3) (column by column: much faster than a reduction over a short axis)."""
    return np.sqrt(_dot(p, p))


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row dot products of (N, d) arrays, d small."""
    out = a[:, 0] * b[:, 0]
    for i in range(1, a.shape[1]):
        out += a[:, i] * b[:, i]
    return out


def _max_col(q: np.ndarray) -> np.ndarray:
    """Row maxima of (N, d), d small."""
    return np.maximum.reduce([q[:, i] for i in range(q.shape[1])])


def _sphere(p: np.ndarray, r: float) -> np.ndarray:
    return _length(p) - r


def _box(p: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact SDF of the box with half extents b, centred at the origin."""
    q = np.abs(p) - b
    return _length(np.maximum(q, 0.0)) + np.minimum(_max_col(q), 0.0)


def _rect(p: np.ndarray, b: np.ndarray, r: float) -> np.ndarray:
    """Exact 2D SDF of a rectangle of half extents b with corners rounded by r, in the xy-plane (p (N,2))."""
    q = np.abs(p) - (b - r)
    return _length(np.maximum(q, 0.0)) + np.minimum(_max_col(q), 0.0) - r


def _cylinder(p: np.ndarray, r: float, h: float) -> np.ndarray:
    """Exact SDF of the cylinder of radius r along z, half height h."""
    dr, dz = _length(p[:, :2]) - r, np.abs(p[:, 2]) - h
    return np.hypot(np.maximum(dr, 0.0), np.maximum(dz, 0.0)) + np.minimum(np.maximum(dr, dz), 0.0)


def _torus(p: np.ndarray, big: float, r: float) -> np.ndarray:
    """Exact SDF of the torus around z with radii big (centre line) and r (tube)."""
    return np.hypot(_length(p[:, :2]) - big, p[:, 2]) - r


def _capsule(p: np.ndarray, h: float, r: float) -> np.ndarray:
    """Exact SDF of the capsule around the segment z in [-h, h], radius r."""
    q = p.copy()
    q[:, 2] -= np.clip(p[:, 2], -h, h)
    return _length(q) - r


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rotation matrix (from a random unit quaternion)."""
    w, x, y, z = (q := rng.normal(size=4)) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _yaw(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _placed(f: SDF, rot: np.ndarray, at: np.ndarray) -> SDF:
    """``f`` rotated by ``rot`` and moved to ``at`` (rigid: still a distance)."""
    return lambda p: f((p - at) @ rot)


def _union(a: SDF, b: SDF, k: float = 0.0) -> SDF:
    """min(a, b); with k > 0 the polynomial smooth minimum of blend width k."""
    def f(p: np.ndarray) -> np.ndarray:
        da, db = a(p), b(p)
        if k <= 0:
            return np.minimum(da, db)
        h = np.clip(0.5 + 0.5 * (db - da) / k, 0.0, 1.0)
        return db + (da - db) * h - k * h * (1.0 - h)
    return f


def _difference(a: SDF, b: SDF) -> SDF:
    """a minus b: max(a, -b)."""
    return lambda p: np.maximum(a(p), -b(p))


def _intersection(a: SDF, b: SDF) -> SDF:
    """a and b: max(a, b)."""
    return lambda p: np.maximum(a(p), b(p))


# ---------------------------------------------------------------------------------------------------- kinds
# each returns (sdf in its own frame, radius of a ball around the origin that holds the shape)
def _primitive(rng: np.random.Generator, size: float) -> tuple[SDF, float]:
    """A random primitive of about ``size`` (centred at the origin, unrotated) and its bounding radius."""
    name = rng.choice(["sphere", "box", "rounded_box", "cylinder", "torus", "capsule"])
    if name == "sphere":
        return (lambda p: _sphere(p, size)), size
    if name in ("box", "rounded_box"):
        b = size * rng.uniform(0.4, 1.0, 3)
        if name == "box":
            return (lambda p: _box(p, b)), float(np.linalg.norm(b))
        r = float(rng.uniform(0.1, 0.4) * b.min())
        return (lambda p: _box(p, b - r) - r), float(np.linalg.norm(b))
    if name == "cylinder":
        r, h = size * rng.uniform(0.3, 0.8), size * rng.uniform(0.3, 1.0)
        return (lambda p: _cylinder(p, r, h)), float(np.hypot(r, h))
    if name == "torus":
        big = size * rng.uniform(0.5, 0.8)
        r = big * rng.uniform(0.2, 0.45)
        return (lambda p: _torus(p, big, r)), big + r
    h, r = size * rng.uniform(0.3, 0.8), size * rng.uniform(0.15, 0.4)
    return (lambda p: _capsule(p, h, r)), h + r


def _count_inside(f: SDF, radius: float, n: int = 20) -> int:
    """Nodes of an n^3 lattice over the ball's cube where f < 0."""
    t = np.linspace(-radius, radius, n)
    return int((f(np.stack(np.meshgrid(t, t, t, indexing="ij"), -1).reshape(-1, 3)) < 0).sum())


def _csg(rng: np.random.Generator) -> tuple[SDF, float]:
    """2-5 primitives: a base at the origin, then unions, differences and intersections near its surface."""
    for _ in range(50):
        base, radius = _primitive(rng, rng.uniform(0.6, 1.0))
        f = _placed(base, _rotation(rng), np.zeros(3))
        parts = [f]
        for _ in range(int(rng.integers(1, 5))):
            op = rng.choice(["union", "difference", "intersection"], p=[0.5, 0.35, 0.15])
            if op == "intersection":
                g, r = _primitive(rng, rng.uniform(0.6, 1.0))
                at = rng.normal(size=3) * 0.15
            else:
                g, r = _primitive(rng, rng.uniform(0.25, 0.6))
                d = rng.normal(size=3)
                at = d / np.linalg.norm(d) * rng.uniform(0.3, 0.9)
            g = _placed(g, _rotation(rng), at)
            if op == "union":
                radius = max(radius, r + float(np.linalg.norm(at)))
                f = _union(f, g, rng.uniform(0.05, 0.15) if rng.random() < 0.3 else 0.0)
            elif op == "difference":
                f = _difference(f, g)
            else:
                f = _intersection(f, g)
        # not carved or intersected (almost) away
        if _count_inside(f, radius) >= max(20, 0.3 * _count_inside(parts[0], radius)):
            return f, radius
    return parts[0], radius


def _superquadric(rng: np.random.Generator) -> tuple[SDF, float]:
    """Superellipsoid: G = ((|x/a|^(2/e2) + |y/b|^(2/e2))^(e2/e1) + |z/c|^(2/e1))^(e1/2), sdf ~ (G - 1) / |grad G|."""
    e1, e2 = (rng.uniform(0.2, 0.6) if rng.random() < 0.5 else rng.uniform(0.7, 1.9) for _ in range(2))
    axes = rng.uniform(0.4, 1.0, 3)
    axes /= axes.max()
    tiny = 1e-300

    def f(p: np.ndarray) -> np.ndarray:
        s = np.abs(p) / axes
        sx, sy, sz = s[:, 0] ** (2 / e2), s[:, 1] ** (2 / e2), s[:, 2] ** (2 / e1)
        u = np.maximum(sx + sy, tiny)
        big = np.maximum(u ** (e2 / e1) + sz, tiny)
        g = big ** (e1 / 2)
        # grad G (G is homogeneous of degree 1, so its gradient is bounded); s_i^(2/e - 1) written as s_i^(2/e) / s_i
        common = big ** (e1 / 2 - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            gx = np.where(s[:, 0] > 0, common * u ** (e2 / e1 - 1) * sx / s[:, 0], 0.0) / axes[0]
            gy = np.where(s[:, 1] > 0, common * u ** (e2 / e1 - 1) * sy / s[:, 1], 0.0) / axes[1]
            gz = np.where(s[:, 2] > 0, common * sz / s[:, 2], 0.0) / axes[2]
        grad = np.sqrt(gx * gx + gy * gy + gz * gz)
        return (g - 1.0) / np.maximum(grad, 1e-9)

    return f, float(np.linalg.norm(axes))


def _catmull_rom(points: np.ndarray, per_segment: int) -> np.ndarray:
    """Samples of the uniform Catmull-Rom curve through ``points`` (end tangents from extrapolated points)."""
    pts = np.vstack([2 * points[0] - points[1], points, 2 * points[-1] - points[-2]])
    t = np.linspace(0.0, 1.0, per_segment, endpoint=False)[:, None]
    out = []
    for i in range(1, len(pts) - 2):
        p0, p1, p2, p3 = pts[i - 1], pts[i], pts[i + 1], pts[i + 2]
        out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3))
    out.append(points[-1:])
    return np.vstack(out)


def _tube(rng: np.random.Generator) -> tuple[SDF, float]:
    """A tube along a smooth random curve; distance to the curve's polyline minus the local radius."""
    k = int(rng.integers(4, 8))
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    ctrl = [np.zeros(3)]
    for _ in range(k - 1):  # a random walk that turns by at most about 80 degrees per step
        turn = rng.normal(size=3) * 0.8
        direction = direction + turn - (turn @ direction) * direction
        direction /= np.linalg.norm(direction)
        ctrl.append(ctrl[-1] + direction * rng.uniform(0.4, 0.7))
    curve = _catmull_rom(np.array(ctrl), 24)
    curve -= curve.mean(axis=0)
    seg = np.linalg.norm(np.diff(curve, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)]) / seg.sum()
    r0 = rng.uniform(0.08, 0.18)
    radius = r0 * (1 + rng.uniform(0.0, 0.35) * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * arc + rng.uniform(0, 6.3)))
    tree = cKDTree(curve)
    every = 8  # far from the tube, distances to every 8th sample give a bound, much sooner
    sparse = cKDTree(curve[::every])
    gap = every * seg.max() / 2  # no point of the polyline is farther than this from a sparse sample
    band = radius.max() + 0.15  # exact within this distance of the curve
    a, b = curve[:-1], curve[1:]
    ab = b - a
    ab2 = _dot(ab, ab)

    def f(p: np.ndarray) -> np.ndarray:
        # near: exact distance to the segments next to the 3 nearest samples (the polyline is dense: the nearest
        # point lies on one of them), minus the radius interpolated along that segment (a round cone per segment)
        dist, idx = tree.query(p, k=6, distance_upper_bound=band)
        near = np.isfinite(dist[:, 0])
        out = np.empty(len(p))
        q = p[near]
        best = np.full(len(q), np.inf)
        for j in range(idx.shape[1]):
            ids = np.where(np.isfinite(dist[near, j]), idx[near, j], idx[near, 0])
            for s in (np.maximum(ids - 1, 0), np.minimum(ids, len(ab) - 1)):
                t = np.clip(_dot(q - a[s], ab[s]) / ab2[s], 0.0, 1.0)
                d = _length(q - a[s] - t[:, None] * ab[s]) - ((1 - t) * radius[s] + t * radius[s + 1])
                best = np.minimum(best, d)
        out[near] = best
        # far (beyond band, so outside): a lower bound of the distance, still > 0
        out[~near] = np.maximum(sparse.query(p[~near])[0] - gap, band - seg.max()) - radius.max()
        return out

    return f, float(_length(curve).max() + radius.max())


def _waves(rng: np.random.Generator, count: int, dims: int, freq: tuple[float, float], amplitude: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random plane waves: wave vectors (count, dims), phases and amplitudes summing to ``amplitude``."""
    k = rng.normal(size=(count, dims))
    k *= (rng.uniform(*freq, count) / np.linalg.norm(k, axis=1))[:, None]
    amp = rng.uniform(0.2, 1.0, count)
    return k, rng.uniform(0, 2 * np.pi, count), amp / amp.sum() * amplitude


def _relief(p: np.ndarray, k: np.ndarray, phase: np.ndarray, amp: np.ndarray, centres: np.ndarray,
            sigma: np.ndarray, height: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plane waves plus Gaussian bumps at p (N, dims), and their gradient (N, dims): blobs' and terrain's relief."""
    arg = p @ k.T + phase
    value = np.sin(arg) @ amp
    grad = (np.cos(arg) * amp) @ k
    for c, s, h in zip(centres, sigma, height, strict=True):
        q = p - c
        w = h * np.exp(-_dot(q, q) / (2 * s * s))
        value += w
        grad -= (w / (s * s))[:, None] * q
    return value, grad


def _blob(rng: np.random.Generator) -> tuple[SDF, float]:
    """Ellipsoid plus sinusoids and Gaussian bumps; sdf ~ (e - d) / |grad e - grad d| (first order)."""
    r = rng.permutation(np.array([1.0, rng.uniform(0.6, 1.0), rng.uniform(0.5, 1.0)]))
    total = rng.uniform(0.08, 0.2) * r.min()  # largest displacement: the blob stays star-shaped
    share = rng.uniform(0.3, 0.8)
    k, phase, amp = _waves(rng, int(rng.integers(3, 8)), 3, (1.5, 5.0), total * share)
    nb = int(rng.integers(1, 5))
    centres = rng.normal(size=(nb, 3))
    centres = centres / np.linalg.norm(centres, axis=1)[:, None] * r
    sigma = rng.uniform(0.15, 0.4, nb)
    height = rng.uniform(-1.0, 1.0, nb)
    height *= total * (1 - share) / np.abs(height).sum()

    def f(p: np.ndarray) -> np.ndarray:
        k0 = _length(p / r)
        g = p / r ** 2
        k1 = np.maximum(_length(g), 1e-12)
        e = k0 * (k0 - 1) / k1  # ellipsoid, first order: (|p/r| - 1) / |grad|p/r||
        n = g / k1[:, None]  # its unit normal
        disp, grad = _relief(p, k, phase, amp, centres, sigma, height)
        return (e - disp) / np.maximum(_length(n - grad), 1e-6)

    return f, float(r.max() + total)


def _heightfield(rng: np.random.Generator, amplitude: float, freq: tuple[float, float]
                 ) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A random smooth height h(x, y) (sum of waves and Gaussian bumps) with its gradient; |h| <= amplitude."""
    k, phase, amp = _waves(rng, int(rng.integers(2, 6)), 2, freq, amplitude * 0.6)
    nb = int(rng.integers(1, 4))
    centres = rng.uniform(-1.0, 1.0, (nb, 2))
    sigma = rng.uniform(0.15, 0.4, nb)
    height = rng.uniform(-1.0, 1.0, nb)
    height *= amplitude * 0.4 / np.abs(height).sum()

    def h(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _relief(xy, k, phase, amp, centres, sigma, height)

    return h


def _plate(rng: np.random.Generator) -> tuple[SDF, float]:
    """A thin plate around the sheet z = g(x, y) (a quadratic bend plus waves) over a rounded rectangle."""
    w = rng.uniform(0.4, 1.0)
    corner = rng.uniform(0.02, 0.9) * w
    cx, cy, cxy = rng.uniform(-0.5, 0.5), rng.uniform(-0.6, 0.6), rng.uniform(-0.3, 0.3)
    waves = _heightfield(rng, rng.uniform(0.0, 0.12), (1.5, 4.0))
    zmax = abs(cx) + abs(cy) * w * w + abs(cxy) * w + 0.12
    thickness = rng.uniform(0.02, 0.05) * np.sqrt(4 + 4 * w * w + zmax * zmax)  # of about the diagonal
    half = np.array([1.0, w])

    def f(p: np.ndarray) -> np.ndarray:
        x, y = p[:, 0], p[:, 1]
        z, grad = waves(p[:, :2])
        z += cx * x * x + cy * y * y + cxy * x * y
        grad[:, 0] += 2 * cx * x + cxy * y
        grad[:, 1] += 2 * cy * y + cxy * x
        sheet = np.abs(p[:, 2] - z) / np.sqrt(1 + _dot(grad, grad)) - thickness / 2
        return np.maximum(sheet, _rect(p[:, :2], half, corner))

    return f, float(np.sqrt(1 + w * w + (zmax + thickness) ** 2))


def _terrain(rng: np.random.Generator) -> tuple[SDF, float]:
    """A block [-1, 1] x [-w, w] x [bottom, h(x, y)]: box sides and bottom, heightfield top (first order)."""
    w = rng.uniform(0.5, 1.0)
    amplitude = rng.uniform(0.08, 0.3)
    h = _heightfield(rng, amplitude, (1.5, 6.0))
    bottom = -amplitude - rng.uniform(0.1, 0.4)
    top = amplitude + 1.0  # the box reaches above the terrain, which cuts it
    centre = np.array([0.0, 0.0, (bottom + top) / 2])
    half = np.array([1.0, w, (top - bottom) / 2])

    def f(p: np.ndarray) -> np.ndarray:
        z, grad = h(p[:, :2])
        surface = (p[:, 2] - z) / np.sqrt(1 + _dot(grad, grad))
        return np.maximum(surface, _box(p - centre, half))

    return f, float(np.sqrt(1 + w * w + max(amplitude, -bottom) ** 2))


def _room(rng: np.random.Generator) -> tuple[SDF, float]:
    """A floor slab (top at z = 0) with tables, cabinets, a low wall, columns and stools on it; their union."""
    fx, fy, ft = 1.0, rng.uniform(0.6, 1.0), rng.uniform(0.03, 0.06)
    parts: list[SDF] = [_placed(lambda p: _box(p, np.array([fx, fy, ft])), np.eye(3), np.array([0, 0, -ft]))]
    sink = 0.01  # furniture starts a little below the floor's top: one solid
    tallest = 0.0

    def spot(margin: float) -> np.ndarray:
        return np.array([rng.uniform(-fx + margin, fx - margin), rng.uniform(-fy + margin, fy - margin), 0.0])

    def box_on_floor(at: np.ndarray, rot: np.ndarray, half: np.ndarray, z0: float = 0.0) -> SDF:
        return _placed(lambda p: _box(p, half), rot, at + rot @ np.array([0, 0, z0 + half[2] - sink]))

    items = ["low_wall"] * int(rng.random() < 0.7) + list(
        rng.choice(["table", "cabinet", "column", "stool"], size=int(rng.integers(2, 6))))
    for item in items:
        rot = _yaw(rng.uniform(0, 2 * np.pi))
        if item == "table":
            hx, hy, height = rng.uniform(0.15, 0.35), rng.uniform(0.1, 0.25), rng.uniform(0.25, 0.4)
            leg = rng.uniform(0.02, 0.035)
            at = spot(0.3)
            parts.append(box_on_floor(at, rot, np.array([hx, hy, 0.025]), height - 0.04))
            for sx, sy in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
                foot = at + rot @ np.array([sx * (hx - 1.5 * leg), sy * (hy - 1.5 * leg), 0.0])
                parts.append(box_on_floor(foot, rot, np.array([leg, leg, (height - 0.03) / 2])))
            tallest = max(tallest, height)
        elif item == "cabinet":
            half = np.array([rng.uniform(0.1, 0.3), rng.uniform(0.08, 0.2), rng.uniform(0.1, 0.3)])
            parts.append(box_on_floor(spot(0.3), rot, half))
            tallest = max(tallest, 2 * half[2])
        elif item == "low_wall":
            length, height = rng.uniform(0.5, 0.95), rng.uniform(0.12, 0.3)
            thick = rng.uniform(0.025, 0.04)
            side = rng.integers(4)
            rot = _yaw(np.pi / 2 * side)
            reach = fx if side % 2 == 0 else fy  # along the wall's normal, the floor's half extent
            span = fy if side % 2 == 0 else fx
            at = rot @ np.array([reach - thick - 0.02, rng.uniform(-1, 1) * max(span - length, 0.0), 0.0])
            parts.append(box_on_floor(at, rot, np.array([thick, min(length, span), height / 2])))
            tallest = max(tallest, height)
        else:
            r = rng.uniform(0.04, 0.1) if item == "column" else rng.uniform(0.08, 0.15)
            height = rng.uniform(0.5, 0.9) if item == "column" else rng.uniform(0.12, 0.25)
            at = spot(r + 0.05) + np.array([0.0, 0.0, height / 2 - sink])
            parts.append(_placed(functools.partial(_cylinder, r=r, h=height / 2), np.eye(3), at))
            tallest = max(tallest, height)

    def f(p: np.ndarray) -> np.ndarray:
        d = parts[0](p)
        for g in parts[1:]:
            d = np.minimum(d, g(p))
        return d

    return f, float(np.sqrt(fx * fx + fy * fy + max(tallest, 2 * ft) ** 2))


GENERATORS: dict[str, Callable[[np.random.Generator], tuple[SDF, float]]] = {
    "csg": _csg, "superquadric": _superquadric, "tube": _tube, "blob": _blob, "plate": _plate,
    "terrain": _terrain, "room": _room,
}


# ---------------------------------------------------------------------------------------------------- meshing
def _evaluate(f: SDF, points: np.ndarray) -> np.ndarray:
    """f over points (N,3) in batches of CHUNK."""
    out = np.empty(len(points))
    for i in range(0, len(points), CHUNK):
        out[i:i + CHUNK] = f(points[i:i + CHUNK])
    return out


def _lattice(lo: np.ndarray, step: float, counts: np.ndarray) -> np.ndarray:
    """Nodes lo + step * (i, j, k), i < counts[0] ..., as (N,3) in [i, j, k] order (k fastest)."""
    axes = [lo[a] + step * np.arange(counts[a]) for a in range(3)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def _bounds(f: SDF, radius: float) -> tuple[np.ndarray, np.ndarray, float]:
    """A box that holds f's zero level, and an estimate of the zero level's longest side.

    From a COARSE^3 grid over the ball's cube, then one over the box that gives.  A surface point lies
    within h*sqrt(3)/2 of a node (h the grid step), where |f| is then at most SLOPE*h*sqrt(3)/2: the nodes
    with f below that, widened by h*sqrt(3)/2, hold the surface.  Those nodes' own box (not widened) is
    within about h of the surface's on each side: the estimate.
    """
    lo, hi = np.full(3, -1.1 * radius), np.full(3, 1.1 * radius)
    for _ in range(2):
        h = float((hi - lo).max()) / (COARSE - 1)
        nodes = _lattice(lo, h, np.ceil((hi - lo) / h).astype(np.int64) + 1)
        near = nodes[_evaluate(f, nodes) <= SLOPE * h * 0.8660254]
        if len(near) == 0:
            raise ValueError("empty shape")
        lo, hi = near.min(axis=0) - h * 0.8660254, near.max(axis=0) + h * 0.8660254
    return lo, hi, float((near.max(axis=0) - near.min(axis=0)).max())


def _mesh(f: SDF, lo: np.ndarray, hi: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Marching cubes of f's zero level on a grid of step h over the box lo-hi (plus MARGIN cells)."""
    import torch

    from engine.surface.mc_table import CORNERS
    from engine.surface.meshing import marching_cubes

    cells = np.ceil((hi - lo) / h).astype(np.int64) + 2 * MARGIN
    origin = lo - MARGIN * h
    g = _evaluate(f, _lattice(origin, h, cells + 1)).reshape(tuple(cells + 1))
    g[g == 0.0] = 1e-12  # no vertex exactly at a node: no zero-length edges
    nx, ny, nz = cells
    corner = [g[c[0]:c[0] + nx, c[1]:c[1] + ny, c[2]:c[2] + nz] for c in CORNERS]
    lo_v = np.minimum.reduce(corner)
    hi_v = np.maximum.reduce(corner)
    idx = np.nonzero((lo_v < 0) & (hi_v >= 0))
    values = np.stack([c[idx] for c in corner], axis=1)
    v, faces, _ = marching_cubes(torch.from_numpy(np.stack(idx, axis=1).astype(np.int64)), 1.0,
                                 torch.from_numpy(values))
    return origin + v.double().numpy() * h, faces.numpy().astype(np.int64), h


def _detailed(f: SDF, amplitude: float, size: float, seed: int) -> SDF:
    """f with fine relief: six plane waves of wavelength 5-12% of ``size`` (the shape's bounding diameter) and a
    summed amplitude ``amplitude`` times it, so that training sees curvature at a few voxels, not only smooth
    primitives.  The result is no longer a distance (its gradient reaches about 1 + 2 pi amplitude / 0.05)."""
    rng = np.random.default_rng(seed + 1_000_003)
    k = rng.normal(size=(6, 3))
    k *= (2 * np.pi / (size * rng.uniform(0.05, 0.12, size=6)) / np.linalg.norm(k, axis=1))[:, None]
    phase = rng.uniform(0, 2 * np.pi, size=6)

    def g(p: np.ndarray) -> np.ndarray:
        return f(p) + amplitude * size / 6 * np.sin(p @ k.T + phase).sum(axis=1)

    return g


def make_shape(seed: int, kind: str | None = None, resolution: int = 96, detail: float = 0.0) -> Shape:
    """Shape ``seed`` (deterministic): a random ``kind`` shape, randomly turned, bounding box centred, diagonal 1.

    ``detail`` > 0 adds fine relief of that amplitude (share of the shape's size; :func:`_detailed`).
    """
    kind = KINDS[seed % len(KINDS)] if kind is None else kind
    if kind not in GENERATORS:
        raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")
    rng = np.random.default_rng(seed)
    for _ in range(20):
        local, radius = GENERATORS[kind](rng)
        rot = _rotation(rng)
        turned = _placed(local, rot, np.zeros(3))  # the shape turned by rot
        if detail > 0:
            turned = _detailed(turned, detail, 2 * radius, seed)
        try:
            lo, hi, longest = _bounds(turned, radius)
        except ValueError:  # empty: draw again
            continue
        v, faces, h = _mesh(turned, lo, hi, longest / resolution)
        if len(faces) >= MIN_FACES:
            break
    else:
        raise RuntimeError(f"shape {seed} ({kind}): no usable draw")
    used = v[np.unique(faces)]
    centre = (used.min(axis=0) + used.max(axis=0)) / 2
    scale = 1.0 / float(np.linalg.norm(used.max(axis=0) - used.min(axis=0)))
    final = turned

    def sdf(p: np.ndarray) -> np.ndarray:
        return scale * final(np.asarray(p, np.float64) / scale + centre)

    return Shape(kind, seed, sdf, (v - centre) * scale, faces, h * scale)


def main() -> None:
    """Time make_shape per kind (and optionally write the meshes as PLY)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-kind", type=int, default=3, help="seeds per kind")
    ap.add_argument("--resolution", type=int, default=96)
    ap.add_argument("--out", type=Path, help="folder for <kind>_<seed>.ply")
    args = ap.parse_args()
    make_shape(0, resolution=16)  # the first call imports torch and the engine (about 1.5 s): not timed
    for i, kind in enumerate(KINDS):
        times = []
        for seed in range(i, i + len(KINDS) * args.per_kind, len(KINDS)):
            t0 = time.perf_counter()
            s = make_shape(seed, resolution=args.resolution)
            times.append(time.perf_counter() - t0)
            if args.out is not None:
                from plyio import write_ply

                args.out.mkdir(parents=True, exist_ok=True)
                write_ply(args.out / f"{kind}_{seed}.ply", s.vertices, s.faces)
        print(f"{kind:13s} mean {np.mean(times):.2f} s  max {np.max(times):.2f} s  "
              f"({len(s.vertices)} vertices, {len(s.faces)} faces last)")


if __name__ == "__main__":
    main()
