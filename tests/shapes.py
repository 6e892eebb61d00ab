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
