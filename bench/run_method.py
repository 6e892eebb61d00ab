"""Worker: reconstruct one input with one method in a fresh process.

    python run_method.py METHOD IN.npz OUT.ply [--depth D] [--detail auto] [--normals given|none|FILE.npz]
                         [--option KEY=VALUE ...]

METHOD is ours | open3d | pymeshlab. Inputs without normals: ours estimates them,
open3d estimates and orients its own (pymeshlab needs them). Only the reconstruction call (including the
conversion of the numpy input into the library's own structures) is timed. Peak
memory is VmHWM of this process, read right after the reconstruction. Prints one
JSON line on stdout (the last line). `ours` never imports open3d. `--normals none`
drops the input's normals (ours then estimates them); `--normals FILE.npz` uses the
`normals` array of that file instead (e.g. normals another method estimated).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plyio import write_ply  # noqa: E402


def proc_status_mb(key: str) -> float:
    """A memory field of /proc/self/status (e.g. VmHWM) in MiB; -1 if unavailable."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return -1.0


def run_ours(pts: np.ndarray, nrm: np.ndarray | None, a: argparse.Namespace) -> tuple:
    sys.path.insert(0, os.getcwd())
    from engine import reconstruct

    t0, c0 = time.perf_counter(), time.process_time()
    mesh = reconstruct(pts, nrm, colors=None, detail_level=a.detail, device="cpu", sensor=a.sensors, prior=a.prior,
                       **dict(a.option))
    t1, c1 = time.perf_counter(), time.process_time()
    stats = dict(getattr(mesh, "stats", {}) or {})
    return np.asarray(mesh.vertices), np.asarray(mesh.faces), t1 - t0, c1 - c0, stats


def run_open3d(pts: np.ndarray, nrm: np.ndarray, a: argparse.Namespace) -> tuple:
    import open3d as o3d

    t0, c0 = time.perf_counter(), time.process_time()
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts.astype(np.float64)))
    if nrm is None:  # Poisson needs normals: Open3D's own estimate, oriented by its tangent-plane propagation
        pcd.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(30))
        if a.sensors is None:
            pcd.orient_normals_consistent_tangent_plane(30)
        else:  # each normal turned toward its point's sensor, as ours does with the same input
            est = np.asarray(pcd.normals)
            away = ((a.sensors - pts) * est).sum(axis=1) < 0
            est[away] *= -1
            pcd.normals = o3d.utility.Vector3dVector(est)
    else:
        pcd.normals = o3d.utility.Vector3dVector(nrm.astype(np.float64))
    mesh, dens = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(pcd, depth=a.depth)
    d = np.asarray(dens)
    if a.density_trim > 0 and len(d):  # the common recipe: drop the least supported vertices
        mesh.remove_vertices_by_mask(d < np.quantile(d, a.density_trim))
    t1, c1 = time.perf_counter(), time.process_time()
    stats = {"depth": a.depth, "density_trim": a.density_trim,
             "density_q": np.quantile(d, [0, 0.01, 0.5, 1]).tolist() if len(d) else []}
    return np.asarray(mesh.vertices), np.asarray(mesh.triangles), t1 - t0, c1 - c0, stats


def run_pymeshlab(pts: np.ndarray, nrm: np.ndarray, a: argparse.Namespace) -> tuple:
    import pymeshlab

    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    t0, c0 = time.perf_counter(), time.process_time()
    ms = pymeshlab.MeshSet()
    ms.add_mesh(pymeshlab.Mesh(vertex_matrix=pts.astype(np.float64),
                               v_normals_matrix=nrm.astype(np.float64)))
    ms.generate_surface_reconstruction_screened_poisson(depth=a.depth, threads=threads)
    m = ms.current_mesh()
    v, f = m.vertex_matrix(), m.face_matrix()
    t1, c1 = time.perf_counter(), time.process_time()
    return v, f, t1 - t0, c1 - c0, {"depth": a.depth, "threads": threads}


def option(text: str) -> tuple[str, Any]:
    """'key=value' -> (key, value), the value a Python literal (a bare word stays a string)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


RUNNERS = {"ours": run_ours, "open3d": run_open3d, "pymeshlab": run_pymeshlab}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("method", choices=sorted(RUNNERS))
    ap.add_argument("inp")
    ap.add_argument("out")
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--detail", default="auto", type=lambda s: s if s == "auto" else float(s),
                    help="detail_level for ours: auto, or 0 to 1")
    ap.add_argument("--normals", default="given", help="given | none | FILE.npz with a `normals` array")
    ap.add_argument("--prior", default="none", help="ours: the kernel prior, learned | none")
    ap.add_argument("--option", type=option, action="append", default=[], metavar="KEY=VALUE",
                    help="ours: one more reconstruct option, VALUE a Python literal (mise_iter=2, memory_limit_gb=64)")
    ap.add_argument("--density-trim", type=float, default=0.0,
                    help="open3d: drop vertices below this quantile of Poisson's density (0.05 = 5%%)")
    a = ap.parse_args()
    data = np.load(a.inp)
    pts, nrm = data["points"], (data["normals"] if "normals" in data.files else None)
    if a.normals == "none":
        nrm = None
    elif a.normals != "given":
        nrm = np.load(a.normals)["normals"]
    a.sensors = data["sensors"].astype(np.float64) if "sensors" in data.files else None  # simulated scans
    hwm_before = proc_status_mb("VmHWM")
    v, f, sec, cpu, stats = RUNNERS[a.method](pts, nrm, a)
    peak = proc_status_mb("VmHWM")
    write_ply(a.out, v, f)
    print(json.dumps({
        "method": a.method, "seconds": sec, "cpu_seconds": cpu, "peak_rss_mb": peak,
        "rss_before_mb": hwm_before, "vertices": int(len(v)), "faces": int(len(f)),
        "input_points": int(len(pts)), "stats": stats,
    }, default=str), flush=True)


if __name__ == "__main__":
    main()
