"""A virtual turntable scanner: scanner-like point clouds from a closed triangle mesh (numpy and scipy only).

Real inputs are scans, not clean area samples: several views, each seeing only
what its sensor hits first, with depth noise along the rays, views slightly
misregistered, stray outliers, "flying pixels" at depth edges, fewer points at
grazing angles, and normals that scanner software estimated per view and turned
toward that view's sensor.  ``scan(mesh, params, seed)`` makes such a cloud in
memory (a training pipeline calls it directly); the command line writes it as a
PLY that the engine reads as it is (x y z nx ny nz; the extra properties are the
sensor position ``sx sy sz``, ``label`` and ``view``).

Model, per view (a pinhole camera on a ring around the object's centre):
1. Rays through the pixel centres; the first hit is exact (ray-triangle
   intersection), found by binning each triangle's projected bounding box in the
   image (candidate pixel, triangle pairs) and keeping the nearest hit per pixel.
2. Dropout: a hit is kept with probability ``cos(incidence)**grazing_power *
   (r0 / range)**range_power`` (capped at 1), and never beyond ``max_incidence``
   degrees; r0 is the distance from the sensor to the object's centre.
3. Flying pixels: hits next to a depth edge (a 4-neighbour that is background or
   whose depth differs by more than ``edge_jump`` of the diagonal) moved away from
   the sensor along their ray by U(``flying_min``, ``flying_max``) of the diagonal.
4. Depth noise along the ray, Gaussian, sigma = ``depth_noise`` * diagonal *
   (range / r0)**2: the share at the nominal distance, growing with range squared
   as with triangulation and structured-light sensors.
5. Uniform outliers in the mesh's bounding box, each assigned to a random view.
6. Misregistration: the view's points and its sensor turned by exactly
   ``misregister_deg`` about a random axis through the object's centre and moved
   by exactly ``misregister_shift`` of the diagonal in a random direction.
7. Normals by PCA over the ``normal_k`` nearest points of the same view, turned
   toward that view's (recorded) sensor position.
Shares (outliers, flying) are of the final point count.  Everything is drawn from
one ``numpy.random.Generator`` seeded by ``seed``: the same seed, the same scan.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parent))
from geom import bbox_diagonal, face_geometry  # noqa: E402

SURFACE, OUTLIER, FLYING = 0, 1, 2  # values of Scan.labels
LABEL_NAMES = {SURFACE: "surface", OUTLIER: "outlier", FLYING: "flying"}
PAIR_CHUNK = 2_000_000  # (pixel, triangle) candidate pairs tested per batch: bounded memory
HIT_TOL = 1e-9  # barycentric slack, so that rays through a shared edge never fall through the crack


@dataclass(frozen=True)
class ScanParams:
    """Sensor and trajectory settings; lengths are shares of the mesh's bounding-box diagonal."""

    views: int = 8  # views on the turntable ring, evenly spaced in azimuth
    elevations: tuple[float, ...] = (25.0, -15.0)  # degrees; view i uses elevations[i % len]
    up: str = "z"  # turntable axis: x, y or z
    resolution: int = 160  # image width and height in pixels (sets the point count) ...
    points: int = 0  # ... unless this is > 0: then the resolution is chosen to give about this many points
    distance: float = 3.0  # sensor distance from the centre, in bounding-sphere radii (the sphere fills the view)
    depth_noise: float = 0.0  # sigma along the ray at distance r0, share of the diagonal
    misregister_deg: float = 0.0  # rotation of each view, degrees
    misregister_shift: float = 0.0  # translation of each view, share of the diagonal
    outliers: float = 0.0  # share of all points, uniform in the bounding box
    flying: float = 0.0  # share of all points, taken from hits next to depth edges
    flying_min: float = 0.01  # flying-pixel shift along the ray, share of the diagonal
    flying_max: float = 0.05
    edge_jump: float = 0.01  # depth difference to a neighbour that makes a depth edge, share of the diagonal
    grazing_power: float = 0.0  # keep probability cos(incidence)**grazing_power ...
    range_power: float = 0.0  # ... * (r0 / range)**range_power
    max_incidence: float = 90.0  # degrees; hits beyond are never returned
    normal_k: int = 16  # neighbours of the per-view PCA normal; 0: no normals


PRESETS: dict[str, ScanParams] = {
    "clean": ScanParams(points=150_000),
    # The real-scans issue's scanner-like input, plus a mild dropout at grazing angles.
    "scanner": ScanParams(points=150_000, depth_noise=0.002, misregister_deg=0.1, misregister_shift=0.001,
                          outliers=0.005, flying=0.005, grazing_power=0.5, range_power=2.0, max_incidence=85.0),
}
PRESETS["scanner+outliers"] = dataclasses.replace(PRESETS["scanner"], outliers=0.01, flying=0.01)

# Bench cases: name -> (shape, preset, seed).  The bunny needs .venv-bench (or its OBJ path).
CASES: dict[str, tuple[str, str, int]] = {
    f"{shape}-{preset}": (shape, preset, seed)
    for seed, shape in enumerate(("bunny", "sphere", "torus", "dumbbell", "rounded_box"), start=1)
    for preset in PRESETS
}


@dataclass
class Scan:
    """One simulated scan; N points, V views.

    points (N,3) float64 and normals (N,3) float32 (None when normal_k is 0) in the
    mesh's frame, after misregistration; sensors (N,3) float64: the recorded sensor
    position of each point's view; labels (N,) uint8 (SURFACE, OUTLIER, FLYING);
    views (N,) int16; faces (N,) int64: the triangle each ray hit (-1 for outliers);
    clean (N,3) float64: that hit without noise, shift or misregistration (NaN for
    outliers), the ground truth for denoising; view_sensors (V,3) as recorded;
    view_rotations (V,3,3) and view_shifts (V,3): each view's misregistration,
    x -> R (x - centre) + centre + shift.
    """

    points: np.ndarray
    normals: np.ndarray | None
    sensors: np.ndarray
    labels: np.ndarray
    views: np.ndarray
    faces: np.ndarray
    clean: np.ndarray
    view_sensors: np.ndarray
    view_rotations: np.ndarray
    view_shifts: np.ndarray
    centre: np.ndarray
    diagonal: float
    params: ScanParams = field(default_factory=ScanParams)

    def stats(self) -> str:
        """Points per view and the share of each label, one line each (a render-free sanity check)."""
        n = len(self.points)
        lines = [f"{n} points, {len(self.view_sensors)} views of {self.params.resolution}x{self.params.resolution} "
                 f"pixels, diagonal {self.diagonal:.4g}"]
        per_view = np.bincount(self.views, minlength=len(self.view_sensors))
        lines.append("points per view: " + " ".join(str(c) for c in per_view))
        lines.append("shares: " + ", ".join(f"{name} {np.mean(self.labels == k):.4%}"
                                            for k, name in LABEL_NAMES.items()))
        return "\n".join(lines)


# ---------------------------------------------------------------- meshes


def _revolve(z: np.ndarray, rho: np.ndarray, segments: int) -> tuple[np.ndarray, np.ndarray]:
    """Closed surface of revolution about z from a profile (z, rho) with rho = 0 at both ends (the poles)."""
    ring = rho[1:-1]
    ang = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)
    rings = np.stack([ring[:, None] * np.cos(ang), ring[:, None] * np.sin(ang),
                      np.broadcast_to(z[1:-1, None], (len(ring), segments))], axis=-1).reshape(-1, 3)
    v = np.vstack([[0.0, 0.0, z[0]], rings, [0.0, 0.0, z[-1]]])
    top = len(v) - 1
    j = np.arange(segments)
    jn = (j + 1) % segments
    f = [np.stack([np.zeros(segments, np.int64), 1 + jn, 1 + j], axis=1)]  # bottom cap, facing -z
    for i in range(len(ring) - 1):
        a, b = 1 + i * segments, 1 + (i + 1) * segments
        f += [np.stack([a + j, a + jn, b + jn], axis=1), np.stack([a + j, b + jn, b + j], axis=1)]
    last = 1 + (len(ring) - 1) * segments
    f.append(np.stack([np.full(segments, top), last + j, last + jn], axis=1))
    return v, np.vstack(f).astype(np.int64)


def _profile_by_arclength(z_lo: float, z_hi: float, radius: Callable[[np.ndarray], np.ndarray],
                          rings: int) -> tuple[np.ndarray, np.ndarray]:
    """Resample the profile rho = radius(z) evenly by arc length (even triangles, including near the poles)."""
    zs = z_lo + (z_hi - z_lo) * (0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, 20001)))
    rs = radius(zs)
    s = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(zs), np.diff(rs)))])
    u = np.linspace(0.0, s[-1], rings + 1)
    z = np.interp(u, s, zs)
    rho = radius(z)
    rho[0] = rho[-1] = 0.0
    return z, rho


def sphere_mesh(radius: float = 1.0, rings: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """UV sphere (the bench's sphere: radius 1), outward-facing triangles."""
    z, rho = _profile_by_arclength(-radius, radius, lambda z: np.sqrt(np.maximum(radius**2 - z**2, 0.0)), rings)
    return _revolve(z, rho, 2 * rings)


def dumbbell_mesh(ball: float = 0.6, bar: float = 0.25, half_length: float = 0.9,
                  rings: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """Two balls at z = +-half_length joined by a bar: the union of three solids, as one closed surface."""

    def radius(z: np.ndarray) -> np.ndarray:
        balls = np.maximum(ball**2 - (np.abs(z) - half_length) ** 2, 0.0)
        return np.maximum(np.sqrt(balls), np.where(np.abs(z) <= half_length, bar, 0.0))

    top = half_length + ball
    return _revolve(*_profile_by_arclength(-top, top, radius, rings), 2 * rings)


def torus_mesh(major: float = 1.0, minor: float = 0.35, segments: int = 240,
               tube: int = 90) -> tuple[np.ndarray, np.ndarray]:
    """Torus about z (the bench's torus: R 1, r 0.35)."""
    a = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)
    b = np.linspace(0.0, 2 * np.pi, tube, endpoint=False)
    aa, bb = np.meshgrid(a, b, indexing="ij")
    r = major + minor * np.cos(bb)
    v = np.stack([r * np.cos(aa), r * np.sin(aa), minor * np.sin(bb)], axis=-1).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(segments), np.arange(tube), indexing="ij")
    p00, p10 = i * tube + j, ((i + 1) % segments) * tube + j
    p01, p11 = i * tube + (j + 1) % tube, ((i + 1) % segments) * tube + (j + 1) % tube
    f = np.concatenate([np.stack([p00, p10, p11], -1).reshape(-1, 3), np.stack([p00, p11, p01], -1).reshape(-1, 3)])
    return v, f.astype(np.int64)


def box_mesh(half: tuple[float, float, float] = (1.0, 0.7, 0.5), round_radius: float = 0.0,
             cells: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box (half extents), its edges rounded by ``round_radius``; a grid of cells per face side."""
    h = np.asarray(half, np.float64)
    t = np.linspace(-1.0, 1.0, cells + 1)
    uu, vv = np.meshgrid(t, t, indexing="ij")
    verts: list[np.ndarray] = []
    faces: list[np.ndarray] = []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            p = np.empty(uu.shape + (3,))
            p[..., axis] = sign
            p[..., (axis + 1) % 3], p[..., (axis + 2) % 3] = uu, vv
            i, j = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
            a = len(verts) * (cells + 1) ** 2 + i * (cells + 1) + j
            quad = [a, a + cells + 1, a + cells + 2, a + 1]
            tri = np.concatenate([np.stack([quad[0], quad[1], quad[2]], -1).reshape(-1, 3),
                                  np.stack([quad[0], quad[2], quad[3]], -1).reshape(-1, 3)])
            faces.append(tri if sign > 0 else tri[:, ::-1])
            verts.append(p.reshape(-1, 3))
    v, f = np.vstack(verts) * h, np.vstack(faces)
    if round_radius > 0:
        inner = np.clip(v, -(h - round_radius), h - round_radius)
        d = v - inner
        n = np.linalg.norm(d, axis=1, keepdims=True)
        v = np.where(n > 0, inner + round_radius * d / np.maximum(n, 1e-300), v)
    # weld the shared face borders so the surface is one closed piece
    _, first, inv = np.unique(np.round(v, 12), axis=0, return_index=True, return_inverse=True)
    return v[first], inv.reshape(-1)[f].astype(np.int64)


PROCEDURAL: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "sphere": sphere_mesh,
    "torus": torus_mesh,
    "dumbbell": dumbbell_mesh,
    "rounded_box": lambda: box_mesh(round_radius=0.15),
    "box": box_mesh,
}


def read_obj(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices and triangles of a Wavefront OBJ (``v`` and ``f`` lines; polygons fanned; ``a/b/c`` and negative
    indices)."""
    verts: list[list[float]] = []
    faces: list[list[int]] = []
    with open(path, encoding="utf-8", errors="replace") as src:
        for line in src:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "v":
                verts.append([float(x) for x in parts[1:4]])
            elif parts[0] == "f":
                idx = [int(p.split("/")[0]) for p in parts[1:]]
                idx = [i - 1 if i > 0 else len(verts) + i for i in idx]
                faces += [[idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1)]
    return np.asarray(verts, np.float64).reshape(-1, 3), np.asarray(faces, np.int64).reshape(-1, 3)


def load_mesh(name_or_path: str) -> tuple[np.ndarray, np.ndarray]:
    """A procedural shape by name, the bench's bunny, or a PLY/OBJ mesh file: vertices float64, faces int64."""
    if name_or_path in PROCEDURAL:
        return PROCEDURAL[name_or_path]()
    path = Path(name_or_path)
    if name_or_path == "bunny" and not path.exists():
        try:
            from shapes import build_gt  # the bench's ground truth; needs open3d and pymeshlab (.venv-bench)
            return build_gt("bunny")
        except ImportError as exc:
            raise SystemExit(f"bunny: {exc}. Hint: run in .venv-bench, or pass the path of bunny.obj.") from None
    if not path.exists():
        raise SystemExit(f"{name_or_path}: neither a shape ({', '.join(PROCEDURAL)}, bunny) nor a file. "
                         "Hint: give a PLY or OBJ triangle mesh.")
    if path.suffix.lower() == ".obj":
        v, f = read_obj(path)
    else:
        from plyio import read_ply
        v, f = read_ply(path)
    if len(f) == 0:
        raise SystemExit(f"{path}: no triangles. Hint: the simulator needs a closed triangle mesh, not points.")
    return np.asarray(v, np.float64), np.asarray(f, np.int64)


# ---------------------------------------------------------------- cameras and ray casting


@dataclass(frozen=True)
class Camera:
    """Pinhole camera at ``origin`` looking along ``forward``; ``tan_half`` is tan of half the field of view."""

    origin: np.ndarray
    forward: np.ndarray
    right: np.ndarray
    upward: np.ndarray
    tan_half: float
    width: int
    height: int

    def directions(self) -> np.ndarray:
        """Unit ray directions through the pixel centres, (H*W, 3), row-major from the top-left pixel."""
        xs = ((np.arange(self.width) + 0.5) / self.width * 2 - 1) * self.tan_half
        ys = (1 - (np.arange(self.height) + 0.5) / self.height * 2) * self.tan_half
        d = (self.forward + xs[None, :, None] * self.right + ys[:, None, None] * self.upward).reshape(-1, 3)
        return d / np.linalg.norm(d, axis=1, keepdims=True)

    def project(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixel coordinates (column, row; pixel centres at integers) and depth along ``forward`` of points p."""
        q = p - self.origin
        z = q @ self.forward
        col = ((q @ self.right) / z / self.tan_half + 1) * 0.5 * self.width - 0.5
        row = (1 - (q @ self.upward) / z / self.tan_half) * 0.5 * self.height - 0.5
        return col, row, z


def look_at(origin: np.ndarray, target: np.ndarray, up: np.ndarray, tan_half: float, res: int) -> Camera:
    """A square pinhole camera at origin aimed at target."""
    f = target - origin
    f = f / np.linalg.norm(f)
    r = np.cross(f, up)
    if np.linalg.norm(r) < 1e-9:  # looking along the up axis
        r = np.cross(f, np.roll(up, 1))
    r = r / np.linalg.norm(r)
    return Camera(origin, f, r, np.cross(r, f), tan_half, res, res)


def ring_cameras(centre: np.ndarray, radius: float, p: ScanParams) -> list[Camera]:
    """p.views cameras evenly spaced in azimuth about the up axis, each filling its view with the bounding sphere."""
    if p.distance <= 1.0:
        raise ValueError(f"distance {p.distance} must exceed 1 (bounding-sphere radii): the sensor is inside.")
    axis = "xyz".index(p.up)
    up = np.eye(3)[axis]
    a, b = np.eye(3)[(axis + 1) % 3], np.eye(3)[(axis + 2) % 3]
    dist = p.distance * radius
    tan_half = 1.0 / np.sqrt(p.distance**2 - 1.0)  # the bounding sphere's silhouette touches the image border
    cams = []
    for i in range(p.views):
        az = 2 * np.pi * i / p.views
        el = np.deg2rad(p.elevations[i % len(p.elevations)])
        d = np.cos(el) * (np.cos(az) * a + np.sin(az) * b) + np.sin(el) * up
        cams.append(look_at(centre + dist * d, centre, up, tan_half, p.resolution))
    return cams


def first_hits(v: np.ndarray, f: np.ndarray, cam: Camera) -> tuple[np.ndarray, np.ndarray]:
    """Range along each pixel's ray to the nearest triangle (inf: background) and that triangle (-1), (H*W,) each.

    Every triangle in front of the camera projects to a 2D triangle; the pixel centres
    inside its bounding box are its candidate rays.  Each (ray, triangle) pair is
    tested exactly (Moller-Trumbore with the per-triangle terms hoisted, since all
    rays share the origin), and the nearest hit per pixel wins (a z-buffer), so
    occlusion is exact up to floating point.
    """
    col, row, z = cam.project(v)
    if z[f].min() <= 0:
        raise ValueError("part of the mesh is behind the camera; increase the distance.")
    tri_c, tri_r = col[f], row[f]
    c0 = np.maximum(np.ceil(tri_c.min(1) - 1e-7), 0).astype(np.int64)
    c1 = np.minimum(np.floor(tri_c.max(1) + 1e-7), cam.width - 1).astype(np.int64)
    r0 = np.maximum(np.ceil(tri_r.min(1) - 1e-7), 0).astype(np.int64)
    r1 = np.minimum(np.floor(tri_r.max(1) + 1e-7), cam.height - 1).astype(np.int64)
    w = np.maximum(c1 - c0 + 1, 0)
    count = w * np.maximum(r1 - r0 + 1, 0)
    # per-triangle terms of the ray-triangle test: det = d.A, u = d.B / det, v = d.Q / det, t = tnum / det
    v0 = v[f[:, 0]]
    e1, e2 = v[f[:, 1]] - v0, v[f[:, 2]] - v0
    s = cam.origin - v0
    big_a, big_b, big_q = np.cross(e2, e1), np.cross(e2, s), np.cross(s, e1)
    tnum = np.einsum("ij,ij->i", e2, big_q)
    dirs = cam.directions()
    best = np.full(cam.width * cam.height, np.inf)
    best_face = np.full(cam.width * cam.height, -1, np.int64)
    tris = np.nonzero(count)[0]
    ends = np.cumsum(count[tris])
    start = 0
    while start < len(tris):
        stop = max(int(np.searchsorted(ends, ends[start] - count[tris[start]] + PAIR_CHUNK, "right")), start + 1)
        t_idx = tris[start:stop]
        cnt = count[t_idx]
        tri = np.repeat(t_idx, cnt)
        off = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        ww = w[tri]
        pix = (r0[tri] + off // ww) * cam.width + c0[tri] + off % ww
        d = dirs[pix]
        det = np.einsum("ij,ij->i", d, big_a[tri])
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / det
            bu = np.einsum("ij,ij->i", d, big_b[tri]) * inv
            bv = np.einsum("ij,ij->i", d, big_q[tri]) * inv
            t = tnum[tri] * inv
        hit = (np.abs(det) > 1e-300) & (bu >= -HIT_TOL) & (bv >= -HIT_TOL) & (bu + bv <= 1 + HIT_TOL) & (t > 0)
        pix, t, tri = pix[hit], t[hit], tri[hit]
        np.minimum.at(best, pix, t)
        won = t == best[pix]
        best_face[pix[won]] = tri[won]
        start = stop
    return best, best_face


def depth_edges(rng_img: np.ndarray, jump: float) -> np.ndarray:
    """Pixels (H, W) with a 4-neighbour that is background or differs in range by more than jump."""
    pad = np.pad(rng_img, 1, constant_values=np.inf)
    centre = pad[1:-1, 1:-1]
    edge = np.zeros(centre.shape, bool)
    for nb in (pad[:-2, 1:-1], pad[2:, 1:-1], pad[1:-1, :-2], pad[1:-1, 2:]):
        with np.errstate(invalid="ignore"):
            edge |= ~np.isfinite(nb) | (np.abs(nb - centre) > jump)
    return edge & np.isfinite(centre)


# ---------------------------------------------------------------- sensor effects


def rotation(axis: np.ndarray, deg: float) -> np.ndarray:
    """Rotation matrix about a unit axis by deg degrees (Rodrigues)."""
    a = np.deg2rad(deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)


def _unit(rng: np.random.Generator) -> np.ndarray:
    """A random direction, uniform on the unit sphere."""
    g = rng.normal(size=3)
    return g / np.linalg.norm(g)


def pca_normals(points: np.ndarray, sensors: np.ndarray, k: int) -> np.ndarray:
    """Unit normals (N,3) float32: smallest principal direction of the k nearest points, turned toward the sensor."""
    n = np.zeros((len(points), 3), np.float32)
    if len(points) < 3:
        return n
    _, nb = cKDTree(points).query(points, k=min(k, len(points)))
    nbp = points[nb] - points[nb].mean(axis=1, keepdims=True)
    _, vec = np.linalg.eigh(np.einsum("nki,nkj->nij", nbp, nbp))
    nrm = vec[:, :, 0]
    flip = np.einsum("ij,ij->i", nrm, sensors - points) < 0
    nrm[flip] *= -1
    return nrm.astype(np.float32)


def _keep_probability(cos_inc: np.ndarray, rng_: np.ndarray, r_ref: float, p: ScanParams) -> np.ndarray:
    """Chance that a hit is returned: lower at grazing incidence and long range, zero beyond max_incidence."""
    keep = np.minimum(1.0, cos_inc**p.grazing_power * (r_ref / rng_) ** p.range_power)
    return np.where(cos_inc >= np.cos(np.deg2rad(p.max_incidence)) - 1e-12, keep, 0.0)


def _resolution_for(v: np.ndarray, f: np.ndarray, centre: np.ndarray, radius: float, p: ScanParams) -> int:
    """The image size that yields about p.points kept hits, from the expected yield of a 48-pixel pre-pass."""
    low = dataclasses.replace(p, resolution=48)
    face_n, _ = face_geometry(v, f)
    expected = 0.0
    for cam in ring_cameras(centre, radius, low):
        rng_img, face = first_hits(v, f, cam)
        pix = np.nonzero(face >= 0)[0]
        cos_inc = np.abs(np.einsum("ij,ij->i", face_n[face[pix]], cam.directions()[pix]))
        expected += float(_keep_probability(cos_inc, rng_img[pix], p.distance * radius, p).sum())
    return max(8, int(round(48 * np.sqrt(p.points / max(expected, 1.0)))))


def scan(mesh: tuple[np.ndarray, np.ndarray], params: ScanParams = PRESETS["scanner"], seed: int = 0) -> Scan:
    """Simulate a turntable scan of a closed triangle mesh (vertices (V,3), faces (F,3)); see the module docstring."""
    p = params
    v = np.asarray(mesh[0], np.float64)
    f = np.asarray(mesh[1], np.int64)
    rng = np.random.default_rng(seed)
    used = v[np.unique(f)]  # vertices no triangle references play no part
    lo, hi = used.min(0), used.max(0)
    centre = (lo + hi) / 2
    diag = bbox_diagonal(used)
    radius = float(np.linalg.norm(used - centre, axis=1).max())
    if p.points > 0:
        p = dataclasses.replace(p, resolution=_resolution_for(v, f, centre, radius, p))
    cams = ring_cameras(centre, radius, p)
    r_ref = p.distance * radius
    face_n, _ = face_geometry(v, f)

    hits: list[dict[str, np.ndarray]] = []
    for i, cam in enumerate(cams):
        rng_img, face = first_hits(v, f, cam)
        pix = np.nonzero(face >= 0)[0]
        d = cam.directions()[pix]
        t = rng_img[pix]
        cos_inc = np.abs(np.einsum("ij,ij->i", face_n[face[pix]], d))
        keep = rng.random(len(pix)) < _keep_probability(cos_inc, t, r_ref, p)
        edge = depth_edges(rng_img.reshape(cam.height, cam.width), p.edge_jump * diag).reshape(-1)[pix]
        hits.append({"d": d[keep], "t": t[keep], "face": face[pix][keep], "edge": edge[keep],
                     "view": np.full(int(keep.sum()), i, np.int16)})
    d = np.concatenate([h["d"] for h in hits])
    t = np.concatenate([h["t"] for h in hits])
    face = np.concatenate([h["face"] for h in hits])
    view = np.concatenate([h["view"] for h in hits])
    edge_idx = np.nonzero(np.concatenate([h["edge"] for h in hits]))[0]
    origin = np.array([c.origin for c in cams])[view]

    n_rays = len(t)
    n_out = int(round(p.outliers / (1.0 - p.outliers) * n_rays)) if p.outliers > 0 else 0
    n_fly = min(int(round(p.flying * (n_rays + n_out))), len(edge_idx))
    labels = np.full(n_rays, SURFACE, np.uint8)
    fly = rng.choice(edge_idx, size=n_fly, replace=False) if n_fly else np.zeros(0, np.int64)
    labels[fly] = FLYING
    clean = origin + t[:, None] * d
    shift = np.zeros(n_rays)
    shift[fly] = rng.uniform(p.flying_min, p.flying_max, n_fly) * diag
    noise = rng.normal(size=n_rays) * p.depth_noise * diag * (t / r_ref) ** 2
    pts = origin + (t + shift + noise)[:, None] * d

    out_view = rng.integers(0, p.views, n_out).astype(np.int16)
    pts = np.vstack([pts, rng.uniform(lo, hi, (n_out, 3))])
    view = np.concatenate([view, out_view])
    labels = np.concatenate([labels, np.full(n_out, OUTLIER, np.uint8)])
    face = np.concatenate([face, np.full(n_out, -1, np.int64)])
    clean = np.vstack([clean, np.full((n_out, 3), np.nan)])

    view_sensors = np.array([c.origin for c in cams])
    rots = np.array([rotation(_unit(rng), p.misregister_deg) for _ in cams])
    shifts = np.array([_unit(rng) * p.misregister_shift * diag for _ in cams])
    view_sensors = np.einsum("vij,vj->vi", rots, view_sensors - centre) + centre + shifts
    pts = np.einsum("nij,nj->ni", rots[view], pts - centre) + centre + shifts[view]
    sensors = view_sensors[view]

    normals = None
    if p.normal_k > 0:
        normals = np.zeros((len(pts), 3), np.float32)
        for i in range(p.views):
            sel = np.nonzero(view == i)[0]
            normals[sel] = pca_normals(pts[sel], sensors[sel], p.normal_k)
    return Scan(pts, normals, sensors, labels, view, face, clean, view_sensors, rots, shifts, centre, diag, p)


# ---------------------------------------------------------------- files and command line


def write_scan(path: str | Path, s: Scan) -> None:
    """Binary PLY: x y z (double), nx ny nz (float, when present), sx sy sz (double), label and view (uchar)."""
    from plyfile import PlyData, PlyElement

    fields = [(c, "f8") for c in ("x", "y", "z")]
    if s.normals is not None:
        fields += [(c, "f4") for c in ("nx", "ny", "nz")]
    fields += [(c, "f8") for c in ("sx", "sy", "sz")] + [("label", "u1"), ("view", "u1")]
    data = np.empty(len(s.points), dtype=fields)
    for i, c in enumerate("xyz"):
        data[c] = s.points[:, i]
        data["s" + c] = s.sensors[:, i]
        if s.normals is not None:
            data["n" + c] = s.normals[:, i]
    data["label"], data["view"] = s.labels, s.views
    PlyData([PlyElement.describe(data, "vertex")]).write(str(path))


def params_from_args(args: argparse.Namespace) -> ScanParams:
    """The preset, with every option given on the command line replacing its value."""
    base = PRESETS[args.preset]
    changes: dict[str, Any] = {}
    for fld in dataclasses.fields(ScanParams):
        val = getattr(args, fld.name)
        if val is not None:
            changes[fld.name] = tuple(float(x) for x in val.split(",")) if fld.name == "elevations" else val
    if "resolution" in changes and "points" not in changes:
        changes["points"] = 0  # an explicit resolution replaces the preset's point target
    return dataclasses.replace(base, **changes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("mesh", help=f"a shape ({', '.join(PROCEDURAL)}, bunny), a PLY or OBJ mesh path, "
                                 f"or a case ({', '.join(CASES)})")
    ap.add_argument("out", help="output PLY")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="scanner")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: the case's, else 0)")
    from shapes import parse_size  # '150k' -> 150000, as the bench's --sizes

    for fld in dataclasses.fields(ScanParams):
        kind = str if fld.name in ("elevations", "up") else parse_size if fld.name == "points" else type(fld.default)
        ap.add_argument("--" + fld.name.replace("_", "-"), dest=fld.name, type=kind, default=None,
                        help=f"(preset value if not given; clean: {fld.default})")
    args = ap.parse_args(argv)
    seed = 0 if args.seed is None else args.seed
    if args.mesh in CASES:
        shape, args.preset, case_seed = CASES[args.mesh]
        args.mesh, seed = shape, case_seed if args.seed is None else args.seed
    params = params_from_args(args)
    mesh = load_mesh(args.mesh)
    t0 = time.perf_counter()
    result = scan(mesh, params, seed)
    took = time.perf_counter() - t0
    write_scan(args.out, result)
    print(f"{args.mesh}: {len(mesh[1])} triangles, preset {args.preset}, seed {seed}, scan {took:.2f} s")
    print(result.stats())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
