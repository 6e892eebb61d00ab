"""Worker: estimate oriented normals of one input with one method in a fresh process.

    python run_normals.py METHOD IN.npz OUT.npz [--k K] [--orient-k K]

METHOD is ours (engine.estimate_normals, from .venv) or open3d (estimate_normals then
orient_normals_consistent_tangent_plane, from .venv-bench). Only the estimation and
orientation (including the numpy -> library conversion) are timed, not imports or I/O.
Writes the normals (N, 3) float32 to OUT.npz (zero rows: left out as doubtful) and
prints one JSON line on stdout (the last line).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_method import proc_status_mb  # noqa: E402

Estimator = Callable[[np.ndarray], tuple[np.ndarray, dict]]


def ours(a: argparse.Namespace) -> Estimator:
    sys.path.insert(0, os.getcwd())
    from engine import estimate_normals

    return lambda pts: estimate_normals(pts, k=a.k, device="cpu")


def open3d(a: argparse.Namespace) -> Estimator:
    import open3d as o3d

    def run(pts: np.ndarray) -> tuple[np.ndarray, dict]:
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts.astype(np.float64)))
        pcd.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(a.k or 30))
        pcd.orient_normals_consistent_tangent_plane(a.orient_k)
        return np.asarray(pcd.normals, dtype=np.float32), {"k": a.k or 30, "orient_k": a.orient_k}

    return run


RUNNERS = {"ours": ours, "open3d": open3d}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("method", choices=sorted(RUNNERS))
    ap.add_argument("inp")
    ap.add_argument("out")
    ap.add_argument("--k", type=int, default=None, help="neighbours per plane fit (default: the method's own)")
    ap.add_argument("--orient-k", type=int, default=10, help="open3d: neighbours in the orientation graph")
    a = ap.parse_args()
    pts = np.load(a.inp)["points"]
    estimate = RUNNERS[a.method](a)  # imports, untimed
    t0, c0 = time.perf_counter(), time.process_time()
    normals, stats = estimate(pts)
    t1, c1 = time.perf_counter(), time.process_time()
    np.savez(a.out, normals=normals.astype(np.float32))
    print(json.dumps({"method": a.method, "seconds": t1 - t0, "cpu_seconds": c1 - c0,
                      "peak_rss_mb": proc_status_mb("VmHWM"), "stats": stats}, default=str), flush=True)


if __name__ == "__main__":
    main()
