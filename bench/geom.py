"""Numpy-only mesh helpers: area sampling, welding and topology counts."""
from __future__ import annotations

import numpy as np


def face_geometry(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return per-face unit normals (F,3) and areas (F,)."""
    tri = np.asarray(v, np.float64)[f]
    cr = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    dbl = np.linalg.norm(cr, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        nrm = np.where(dbl[:, None] > 0, cr / dbl[:, None], 0.0)
    return nrm, 0.5 * dbl


def sample_surface(
    v: np.ndarray, f: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample n points uniformly by area; returns points, exact face normals, face ids."""
    nrm, area = face_geometry(v, f)
    fid = rng.choice(len(f), size=n, p=area / area.sum())
    r1 = np.sqrt(rng.random(n))[:, None]
    r2 = rng.random(n)[:, None]
    tri = np.asarray(v, np.float64)[f[fid]]
    pts = (1 - r1) * tri[:, 0] + r1 * (1 - r2) * tri[:, 1] + r1 * r2 * tri[:, 2]
    return pts, nrm[fid], fid


def bbox_diagonal(v: np.ndarray) -> float:
    """Length of the axis-aligned bounding-box diagonal."""
    v = np.asarray(v, np.float64)
    return float(np.linalg.norm(v.max(0) - v.min(0)))


def weld(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Merge exactly coincident vertices; drop faces made degenerate by index.

    Returns (welded vertex count, remapped faces, number of dropped faces).
    """
    if len(f) == 0:
        return np.zeros((0, 3)), f, 0
    _, inv = np.unique(np.ascontiguousarray(v), axis=0, return_inverse=True)
    g = inv.reshape(-1)[f]
    ok = (g[:, 0] != g[:, 1]) & (g[:, 1] != g[:, 2]) & (g[:, 0] != g[:, 2])
    return inv.max() + 1, g[ok], int((~ok).sum())


def edge_counts(f: np.ndarray, nv: int) -> tuple[int, int, int]:
    """Return (#boundary edges (1 face), #non-manifold edges (>2 faces), #edges)."""
    if len(f) == 0:
        return 0, 0, 0
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]).astype(np.int64)
    e.sort(axis=1)
    _, cnt = np.unique(e[:, 0] * np.int64(nv) + e[:, 1], return_counts=True)
    return int((cnt == 1).sum()), int((cnt > 2).sum()), int(len(cnt))


def count_components(f: np.ndarray, nv: int) -> int:
    """Number of connected face groups (faces linked through shared vertices)."""
    if len(f) == 0:
        return 0
    u = np.concatenate([f[:, 0], f[:, 1]])
    w = np.concatenate([f[:, 1], f[:, 2]])
    parent = np.arange(nv, dtype=np.int64)
    while True:
        pu, pw = parent[u], parent[w]
        lo, hi = np.minimum(pu, pw), np.maximum(pu, pw)
        m = lo != hi
        if not m.any():
            break
        parent[hi[m]] = lo[m]  # hi is a root: hook it to a smaller label
        while True:  # pointer jumping until every vertex points at its root
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
    return int(np.unique(parent[f[:, 0]]).size)
