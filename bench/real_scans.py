"""The real scans (tests/data/real) side by side: ours with defaults (and with the learned prior) against Open3D
Poisson depth 8 and 9.

    .venv-bench/bin/python bench/real_scans.py [--scans table,autzen] [--out bench/_work/real]

Ours runs as a user would run it (``python -m engine reconstruct``, default
settings, the table scene with ``--sensor 0 0 0``) in ``.venv``; Poisson runs
here on the same points with Open3D's KNN-30 normals turned toward the sensor
(the table's camera at the origin) or up (airborne LiDAR), then with the 5%
lowest-density vertices removed (the usual recipe).  Seconds are each method's
own: ours the reconstruction's stages (``stats["seconds"]``, normals included),
Poisson the normals, solve and trim; ours' command's wall time (reading, start-up
with torch's import, writing) is printed beside.  Each mesh is rendered with
Blender's Workbench (``.venv-blender``, through ``bench/render_mesh.py``) from a
fixed camera, and a Markdown table with pieces and faces is printed.  There is no ground truth: look at the pictures.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from geom import count_components, weld  # noqa: E402
from plyio import read_ply, write_ply  # noqa: E402

DATA = ROOT / "tests" / "data" / "real"


@dataclass(frozen=True)
class RealScan:
    file: str
    flags: tuple[str, ...]  # ours: what the user gives
    sensor: tuple[float, float, float] | None  # Poisson's normals face it; None: up (+Z)
    view: tuple[str, ...]  # bench/render_mesh.py's view arguments


SCANS = {
    "table": RealScan("table_scene_mug_stereo_textured.pcd", ("--sensor", "0", "0", "0"), (0.0, 0.0, 0.0),
                      ("--eye", "0", "-0.35", "-0.5", "--up=-y")),  # the camera's view (PCL: +Z ahead, +Y down)
    "autzen": RealScan("autzen_trim.laz", (), None, ("--direction", "0.4", "-1", "1.1")),
}


def ours(scan: RealScan, out: Path, extra: tuple[str, ...] = ()) -> dict:
    """The engine's CLI with default settings (and ``extra`` flags); its stats."""
    src = DATA / scan.file
    p = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "engine", "reconstruct", str(src), str(out),
                        "--json", *scan.flags, *extra], cwd=ROOT, capture_output=True, text=True, check=True)
    stats = json.loads(p.stdout.strip().splitlines()[-1])
    # seconds: the reconstruction's own stages, as Poisson's are its own; cli: the command's wall time besides
    # (reading, importing torch, writing)
    return {"seconds": sum(stats["seconds"].values()), "cli": stats["total_seconds"], "faces": stats["faces"]}


def points(scan: RealScan, npy: Path) -> np.ndarray:
    """The scan's finite points, read by the engine's readers in .venv (their packages live there)."""
    code = ("import sys, numpy as np; from engine.formats import read_cloud; p = read_cloud(sys.argv[1]).points; "
            "np.save(sys.argv[2], p[np.isfinite(p).all(axis=1)])")
    subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", code, str(DATA / scan.file), str(npy)], cwd=ROOT,
                   check=True)
    return np.load(npy)


def poisson(scan: RealScan, depth: int, trim: float, out: Path) -> dict:
    """Open3D screened Poisson on the scan's points (centred: the LiDAR's coordinates are near 1e6)."""
    import open3d as o3d

    pts = points(scan, out.with_suffix(".npy"))
    centre = np.round(pts.mean(axis=0))
    t = time.perf_counter()
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts - centre))
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(30))
    if scan.sensor is not None:
        pcd.orient_normals_towards_camera_location(np.asarray(scan.sensor) - centre)
    else:
        pcd.orient_normals_to_align_with_direction(np.array([0.0, 0.0, 1.0]))
    mesh, dens = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(pcd, depth=depth)
    if trim > 0:
        d = np.asarray(dens)
        mesh.remove_vertices_by_mask(d < np.quantile(d, trim))
    seconds = time.perf_counter() - t
    write_ply(out, np.asarray(mesh.vertices) + centre, np.asarray(mesh.triangles))
    return {"seconds": seconds, "faces": len(mesh.triangles)}


def pieces(path: Path) -> int:
    v, f = read_ply(path)
    nv, g, _ = weld(v, f)
    return count_components(g, int(nv))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scans", default="table,autzen")
    ap.add_argument("--methods", default="ours,ours-learned,open3d-d8-t5,open3d-d9-t5",
                    help="ours (defaults), ours-learned (--prior learned), open3d-dD-t5 (Poisson depth D, trimmed)")
    ap.add_argument("--out", default=str(HERE / "_work" / "real"))
    ap.add_argument("--images", default=str(ROOT / "docs" / "real"), help="where the renders go")
    a = ap.parse_args()
    out, images = Path(a.out), Path(a.images)
    out.mkdir(parents=True, exist_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    for name in a.scans.split(","):
        scan = SCANS[name]
        for label in a.methods.split(","):
            mesh = out / f"{name}_{label}.ply"
            if label.startswith("ours"):
                rec = ours(scan, mesh, ("--prior", "learned") if label == "ours-learned" else ())
            else:
                rec = poisson(scan, int(label[8]), 0.05, mesh)
            rec["pieces"] = pieces(mesh)
            png = images / f"{name}_{label}.png"
            subprocess.run([str(ROOT / ".venv-blender" / "bin" / "python"), str(HERE / "render_mesh.py"), str(mesh),
                            str(png), *scan.view], check=True, env=env, capture_output=True)
            rows.append((name, label, rec, png))
            print(f"{name} {label}: {rec}", file=sys.stderr, flush=True)
    print("| scan | method | pieces | faces | seconds | command's wall |\n|---|---|---|---|---|---|")
    for name, label, rec, _ in rows:
        wall = f"{rec['cli']:.1f}" if "cli" in rec else "-"
        print(f"| {name} | {label} | {rec['pieces']} | {rec['faces']:,} | {rec['seconds']:.1f} | {wall} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
