"""Ground-truth shapes for tests: exact samples, exact normals and exact signed distances."""

from __future__ import annotations

import numpy as np


def sphere(n: int, radius: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return radius * d, d


def sphere_sdf(x: np.ndarray, radius: float = 1.0) -> np.ndarray:
    return np.linalg.norm(x, axis=1) - radius


def torus(n: int, major: float = 1.0, minor: float = 0.35, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Uniform by area: the area element is proportional to (major + minor cos v)."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(0, 2 * np.pi, 4 * n)
    v = rng.uniform(0, 2 * np.pi, 4 * n)
    keep = rng.uniform(0, major + minor, 4 * n) < major + minor * np.cos(v)
    u, v = u[keep][:n], v[keep][:n]
    normal = np.stack([np.cos(v) * np.cos(u), np.cos(v) * np.sin(u), np.sin(v)], axis=1)
    centre = np.stack([major * np.cos(u), major * np.sin(u), np.zeros_like(u)], axis=1)
    return centre + minor * normal, normal


def torus_sdf(x: np.ndarray, major: float = 1.0, minor: float = 0.35) -> np.ndarray:
    q = np.hypot(x[:, 0], x[:, 1]) - major
    return np.hypot(q, x[:, 2]) - minor


def box(n: int, half: tuple[float, float, float] = (1.0, 0.7, 0.5), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Uniform by area over the six faces of an axis-aligned box."""
    rng = np.random.default_rng(seed)
    h = np.asarray(half)
    areas = np.array([h[1] * h[2], h[0] * h[2], h[0] * h[1]]).repeat(2)
    face = rng.choice(6, size=n, p=areas / areas.sum())
    axis, sign = face // 2, np.where(face % 2 == 0, -1.0, 1.0)
    p = rng.uniform(-1, 1, size=(n, 3)) * h
    p[np.arange(n), axis] = sign * h[axis]
    normal = np.zeros((n, 3))
    normal[np.arange(n), axis] = sign
    return p, normal


def box_sdf(x: np.ndarray, half: tuple[float, float, float] = (1.0, 0.7, 0.5)) -> np.ndarray:
    q = np.abs(x) - np.asarray(half)
    outside = np.linalg.norm(np.maximum(q, 0.0), axis=1)
    return outside + np.minimum(q.max(axis=1), 0.0)


def hemisphere(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The upper half (z >= 0) of the unit sphere: an open surface."""
    p, nrm = sphere(2 * n, seed=seed)
    keep = p[:, 2] >= 0
    return p[keep][:n], nrm[keep][:n]


def blob(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bunny-like closed shape: a sphere with bumps, a dent and two lobes (star-shaped, not convex).

    The surface is r = R(d) along unit directions d; samples are uniform by
    area (directions drawn uniformly, then kept with probability proportional
    to the area element r^2 / (d . n)); normals are the exact gradient.
    """
    rng = np.random.default_rng(seed)
    out_p, out_n = [], []
    count = 0
    while count < n:
        d = rng.normal(size=(8 * n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        r, grad = _blob_radius(d)
        normal = d - (grad - (grad * d).sum(1, keepdims=True) * d) / r[:, None]  # gradient of |x| - R(x/|x|)
        normal /= np.linalg.norm(normal, axis=1, keepdims=True)
        element = r**2 / (d * normal).sum(1)
        keep = rng.uniform(0, 1, len(d)) < element / element.max() / 1.05
        out_p.append(r[keep, None] * d[keep])
        out_n.append(normal[keep])
        count += int(keep.sum())
    return np.concatenate(out_p)[:n], np.concatenate(out_n)[:n]


def _blob_radius(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R(d) and its gradient with respect to d (as a function on R^3, projected by the caller)."""
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    lobes = np.exp(-8 * ((x - 0.3) ** 2 + (y - 0.5) ** 2 + (z - 0.8) ** 2)) + np.exp(
        -8 * ((x + 0.3) ** 2 + (y - 0.5) ** 2 + (z - 0.8) ** 2))
    dent = np.exp(-6 * ((x - 0.9) ** 2 + y**2 + z**2))
    r = 1.0 + 0.1 * np.sin(3 * x) * np.cos(2 * y) + 0.35 * lobes - 0.2 * dent
    g_lobes = np.zeros_like(d)
    for sx in (0.3, -0.3):
        e = np.exp(-8 * ((x - sx) ** 2 + (y - 0.5) ** 2 + (z - 0.8) ** 2))
        g_lobes += -16 * e[:, None] * np.stack([x - sx, y - 0.5, z - 0.8], 1)
    g_dent = -12 * dent[:, None] * np.stack([x - 0.9, y, z], 1)
    g_wave = np.stack([0.3 * np.cos(3 * x) * np.cos(2 * y), -0.2 * np.sin(3 * x) * np.sin(2 * y), 0 * z], 1)
    return r, g_wave + 0.35 * g_lobes - 0.2 * g_dent


def terrain(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An open height field z = h(x, y) over [-1, 1]^2 (hills and a valley), normals facing up."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)
    z = 0.15 * np.sin(2 * x) * np.cos(3 * y) + 0.1 * np.exp(-4 * (x**2 + y**2))
    hx = 0.3 * np.cos(2 * x) * np.cos(3 * y) - 0.8 * x * np.exp(-4 * (x**2 + y**2))
    hy = -0.45 * np.sin(2 * x) * np.sin(3 * y) - 0.8 * y * np.exp(-4 * (x**2 + y**2))
    normal = np.stack([-hx, -hy, np.ones(n)], axis=1)
    return np.stack([x, y, z], axis=1), normal / np.linalg.norm(normal, axis=1, keepdims=True)
