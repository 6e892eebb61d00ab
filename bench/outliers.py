"""Which filters stop stray points from becoming fragments: a probe on the scan simulator's scans.

Research for the real-scans work (not an engine feature yet): each candidate
pre-filter (drop points before the solve) and post-filter (drop pieces of the
output) is scored on ``scanner+outliers`` scans of procedural shapes, against
the true mesh: which share of true outliers, flying pixels and surface points a
pre-filter removes (the scans carry labels), and the Chamfer-L1 (1e-3 of the
diagonal, sampled: 100k points each way), pieces and faces of the result.

    .venv/bin/python bench/outliers.py [--shapes torus dumbbell sphere] [--points 100k]
                                       [--candidates base sor2 mad3 rc8x3 vis base+area1 base+sup50 sor2+area1]

Numpy, scipy and the engine only (runs in .venv).  Results: bench/README.md, "Outliers on simulated scans".
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from geom import bbox_diagonal, count_components, face_geometry, sample_surface
from scanner import FLYING, OUTLIER, PRESETS, SURFACE, Scan, dumbbell_mesh, scan, sphere_mesh, torus_mesh
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine import reconstruct  # noqa: E402

MESHES = {"sphere": sphere_mesh, "torus": torus_mesh, "dumbbell": dumbbell_mesh}
SEEDS = {"sphere": 2, "torus": 3, "dumbbell": 4}  # the simulator's case seeds (bench/README.md)
Mesh = tuple[np.ndarray, np.ndarray]


# -- metrics ------------------------------------------------------------------------------------------------------

def chamfer(out: Mesh, truth: Mesh, n: int = 100_000, seed: int = 0) -> float:
    """Chamfer-L1 (mean of both directions) between area samples, in 1e-3 of the true diagonal."""
    rng = np.random.default_rng(seed)
    a, b = sample_surface(*out, n, rng)[0], sample_surface(*truth, n, rng)[0]
    d = 0.5 * (cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())
    return 1e3 * d / bbox_diagonal(truth[0])


def face_pieces(nv: int, faces: np.ndarray) -> np.ndarray:
    """The piece (connected through shared vertices) of each face, numbered from 0."""
    f = faces.astype(np.int64)
    g = coo_matrix((np.ones(2 * len(f), np.int8), (np.r_[f[:, 0], f[:, 1]], np.r_[f[:, 1], f[:, 2]])),
                   shape=(nv, nv))
    _, vertex_piece = connected_components(g, directed=False)
    return np.unique(vertex_piece[f[:, 0]], return_inverse=True)[1].ravel()


def keep_faces(mesh: Mesh, keep: np.ndarray) -> Mesh:
    v, f = mesh
    used = np.unique(f[keep])
    remap = np.full(len(v), -1, np.int64)
    remap[used] = np.arange(len(used))
    return v[used], remap[f[keep]]


# -- pre-filters: a mask of the points to keep ------------------------------------------------------------------

def spacing(tree: cKDTree, points: np.ndarray) -> float:
    return float(np.median(tree.query(points, k=2)[0][:, 1]))


def statistical(points: np.ndarray, k: int = 16, t: float = 2.0, robust: bool = False) -> np.ndarray:
    """Mean distance to k neighbours: keep up to mean + t std (or median + t MAD with ``robust``)."""
    d = cKDTree(points).query(points, k=k + 1)[0][:, 1:].mean(axis=1)
    if robust:
        med = np.median(d)
        return d <= med + t * 1.4826 * np.median(np.abs(d - med))
    return d <= d.mean() + t * d.std()


def radius_count(points: np.ndarray, m: int = 8, mult: float = 3.0) -> np.ndarray:
    """Keep points with at least m neighbours within ``mult`` median spacings."""
    tree = cKDTree(points)
    return tree.query_ball_point(points, mult * spacing(tree, points), return_length=True) - 1 >= m


def seen_through(points: np.ndarray, sensors: np.ndarray, mult: float = 2.0, min_rays: int = 2,
                 fractions: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)) -> np.ndarray:
    """Visibility: drop points within ``mult`` spacings of the segment from another point's sensor to it, for
    ``min_rays`` rays (a point floating where a sensor saw through to a farther surface)."""
    tree = cKDTree(points)
    r = mult * spacing(tree, points)
    fr = np.asarray(fractions)
    samples = (sensors[:, None] + fr[None, :, None] * (points - sensors)[:, None]).reshape(-1, 3)
    hits = tree.query_ball_point(samples, r)
    lengths = np.fromiter((len(h) for h in hits), np.int64, len(hits))
    if lengths.sum() == 0:
        return np.ones(len(points), bool)
    hit = np.concatenate([np.asarray(h, np.int64) for h in hits if h])
    ray = np.repeat(np.repeat(np.arange(len(points)), len(fr)), lengths)
    pairs = np.unique(hit * len(points) + ray)
    return np.bincount(pairs // len(points), minlength=len(points)) < min_rays


PRE: dict[str, Callable[[Scan], np.ndarray]] = {
    "sor2": lambda s: statistical(s.points, t=2.0),
    "sor3": lambda s: statistical(s.points, t=3.0),
    "mad3": lambda s: statistical(s.points, t=3.0, robust=True),
    "rc8x3": lambda s: radius_count(s.points, 8, 3.0),
    "vis": lambda s: seen_through(s.points, s.sensors),
}


# -- post-filters: pieces of the output to keep -------------------------------------------------------------------

def by_area(mesh: Mesh, share: float) -> Mesh:
    """Keep the pieces whose area is at least ``share`` of the largest piece's."""
    piece = face_pieces(len(mesh[0]), mesh[1])
    area = np.bincount(piece, weights=face_geometry(*mesh)[1])
    return keep_faces(mesh, (area >= share * area.max())[piece])


def by_support(mesh: Mesh, points: np.ndarray, voxel: float, least: int) -> Mesh:
    """Keep the pieces with at least ``least`` input points within one voxel of their vertices."""
    v, f = mesh
    piece = face_pieces(len(v), f)
    vertex_piece = np.full(len(v), -1)
    vertex_piece[f.ravel()] = np.repeat(piece, 3)
    d, i = cKDTree(v).query(points)
    near = vertex_piece[i[d <= voxel]]
    support = np.bincount(near[near >= 0], minlength=piece.max() + 1)
    return keep_faces(mesh, (support >= least)[piece])


def post(mesh: Mesh, step: str, points: np.ndarray, voxel: float) -> Mesh:
    if step.startswith("area"):
        return by_area(mesh, float(step[4:]) / 100)
    return by_support(mesh, points, voxel, int(step[3:]))


# -- the probe ----------------------------------------------------------------------------------------------------

def removed(keep: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Percent of each kind of point a mask drops."""
    return {name: 100.0 * float((~keep[labels == k]).mean()) if (labels == k).any() else 0.0
            for name, k in (("outliers", OUTLIER), ("flying", FLYING), ("surface", SURFACE))}


def run(shape: str, candidates: list[str], points: int) -> list[dict[str, object]]:
    truth = MESHES[shape]()
    s = scan(truth, dataclasses.replace(PRESETS["scanner+outliers"], points=points), SEEDS[shape])
    meshes: dict[str, tuple[Mesh, float, float]] = {}  # pre-filter -> (mesh, voxel, seconds)
    rows = []
    for cand in candidates:
        steps = cand.split("+")
        pre = [p for p in steps if p in PRE]
        keep = np.ones(len(s.points), bool)
        t = time.perf_counter()
        for p in pre:
            keep &= PRE[p](s)
        t_filter = time.perf_counter() - t
        tag = "+".join(pre) or "base"
        if tag not in meshes:
            m = reconstruct(s.points[keep], s.normals[keep] if s.normals is not None else None, device="cpu")
            meshes[tag] = ((m.vertices64, m.faces.astype(np.int64)), m.stats["voxel_size"], m.stats["total_seconds"])
        mesh, voxel, t_rec = meshes[tag]
        t = time.perf_counter()
        for step in steps:
            if step.startswith(("area", "sup")):
                mesh = post(mesh, step, s.points[keep], voxel)
        t_filter += time.perf_counter() - t
        rows.append({"shape": shape, "candidate": cand, **removed(keep, s.labels), "chamfer": chamfer(mesh, truth),
                     "pieces": count_components(mesh[1], len(mesh[0])), "faces": len(mesh[1]),
                     "filter_s": t_filter, "reconstruct_s": t_rec})
        r = rows[-1]
        print(f"| {shape} | {cand} | {r['outliers']:.1f} | {r['flying']:.1f} | {r['surface']:.2f} | "
              f"{r['chamfer']:.2f} | {r['pieces']} | {r['faces']:,} | {t_filter:.1f} + {t_rec:.1f} |", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=["torus", "dumbbell", "sphere"], choices=sorted(MESHES))
    p.add_argument("--points", type=lambda t: int(float(t.lower().replace("k", "e3").replace("m", "e6"))),
                   default=100_000)
    p.add_argument("--candidates", nargs="+",
                   default=["base", "sor2", "mad3", "base+area1", "base+sup50", "sor2+area1"])
    a = p.parse_args(argv)
    print("| shape | candidate | outliers removed % | flying removed % | surface lost % | Chamfer (1e-3) | pieces "
          "| faces | seconds (filter + reconstruct) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for shape in a.shapes:
        run(shape, a.candidates, a.points)
    return 0


if __name__ == "__main__":
    sys.exit(main())
