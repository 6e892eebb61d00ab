"""Watertight mode against the truth: scanner-preset scans of closed shapes, with their unseen regions.

For each shape: Chamfer-L1 (mean of both directions), the largest distance from the result to the true
surface (ballooning shows here), the volume ratio to the truth, boundary edges, pieces, faces and seconds;
default (trimmed) and watertight.  Distances are shares of the true mesh's bounding-box diagonal, measured
against 400k area samples of it (so about 1e-3 of sampling error at most).

    .venv/bin/python bench/watertight.py [--points 150000] [--shapes sphere torus] [--modes default watertight]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from geom import bbox_diagonal, sample_surface  # noqa: E402
from scanner import PRESETS, PROCEDURAL, scan  # noqa: E402

from engine import reconstruct  # noqa: E402
from engine.mesh import edge_use  # noqa: E402
from engine.surface.fragments import face_pieces  # noqa: E402

SHAPES = ("sphere", "torus", "dumbbell", "rounded_box")
MODES = {"default": {}, "watertight": {"watertight": True}}


def volume(v: np.ndarray, f: np.ndarray) -> float:
    t = v[f].astype(np.float64)
    return float(np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6.0)


def measure(shape: str, mode: str, points: int, seed: int) -> dict[str, float | int | str]:
    tv, tf = PROCEDURAL[shape]()
    s = scan((tv, tf), dataclasses.replace(PRESETS["scanner"], points=points), seed=seed)
    t0 = time.perf_counter()
    mesh = reconstruct(s.points, s.normals, sensor=s.sensors, device="cpu", **MODES[mode])
    seconds = time.perf_counter() - t0
    v, f = mesh.vertices64, mesh.faces
    rng = np.random.default_rng(0)
    diag = bbox_diagonal(tv)
    truth, _, _ = sample_surface(tv, tf, 400_000, rng)
    mine, _, _ = sample_surface(v, f, 200_000, rng)
    acc = cKDTree(truth).query(mine)[0] / diag
    comp = cKDTree(mine).query(truth[:200_000])[0] / diag
    _, counts = edge_use(f)
    return {"shape": shape, "mode": mode, "chamfer": 0.5 * (acc.mean() + comp.mean()), "max": float(acc.max()),
            "volume_ratio": volume(v, f) / volume(tv, tf), "boundary_edges": int((counts == 1).sum()),
            "bad_edges": int((counts > 2).sum()), "pieces": face_pieces(len(v), f)[0],
            "faces": int(len(f)), "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=PRESETS["scanner"].points)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES))
    ap.add_argument("--modes", nargs="+", default=list(MODES))
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    print("| shape | mode | Chamfer-L1 | max distance | volume ratio | boundary edges | edges in >2 faces | pieces | "
          "faces | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for shape in args.shapes:
        for mode in args.modes:
            r = measure(shape, mode, args.points, args.seed)
            print(f"| {shape} | {mode} | {r['chamfer']:.2e} | {r['max']:.2e} | {r['volume_ratio']:.3f} | "
                  f"{r['boundary_edges']} | {r['bad_edges']} | {r['pieces']} | {r['faces']:,} | {r['seconds']:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
