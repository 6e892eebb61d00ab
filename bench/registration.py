"""How much misregistration the engine's view registration leaves on the simulator's scans, and what it costs.

Each scan is the bench's own (``scan:scanner+outliers`` at 100k points, the seed
of bench/quality.py), made again by the simulator so that each point's noiseless
true position (``Scan.clean``) is known; ``--variant reg`` makes it without
misregistration, ``clean`` with the noiseless preset, ``nonormals`` drops the
normals, and ``rel`` puts the views on one another with the simulator's own
motions (each view moved by the mean motion after the inverse of its own), so
that only the common offset of the whole scan is left: the best any
registration could do; it also scores the true mesh moved by that mean motion
(what the offset alone costs).  Per view, the rigid motion (Kabsch) from its true points to its
points before and after registration is measured; printed are the mean gap
along the true normal between two views' placements of the same true points
(over all pairs: what registration can remove) and between the mean placement
and the truth ("common": an offset of the whole scan, which no method can see),
both in 1e-3 of the canonical frame, the views moved, and the mesh's Chamfer-L1
x1e-3 and normal consistency as the quality bench scores them (bench/quality.py,
run in ``--score-python``: it needs open3d).

    .venv/bin/python bench/registration.py [--shapes bunny,torus,sphere] [--variant mis|reg|clean|nonormals|rel]

Runs in .venv (the bunny's true mesh is the cached bench/_work/gt_bunny.ply, which
bench/quality.py writes); meshes go to bench/_work/registration/.  Results:
bench/README.md, "Misregistered views".
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import shapes
from plyio import write_ply
from scanner import PRESETS, scan

import engine.pipeline
from engine import reconstruct

HERE = Path(__file__).resolve().parent
SCORE = ("import sys, json; from pathlib import Path; from quality import GroundTruth; "
         "r = GroundTruth(sys.argv[1], Path(sys.argv[2]), 100_000).evaluate(Path(sys.argv[3])); "
         "print(json.dumps({'chamfer': r['chamfer_l1'] * 1e3, 'nc': r['nc']}))")
POINTS = 100_000
PRESET = "scanner+outliers"


def placements(true: np.ndarray, points: np.ndarray, view: np.ndarray, sample: np.ndarray) -> list[np.ndarray]:
    """Each view's placement of the true points ``true[sample]``: its rigid motion from true to measured points."""
    out = []
    for v in range(int(view.max()) + 1):
        a, b = true[view == v], points[view == v]
        ca, cb = a.mean(axis=0), b.mean(axis=0)
        u, _, wt = np.linalg.svd((a - ca).T @ (b - cb))
        rot = (u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ wt))]) @ wt).T
        out.append((true[sample] - ca) @ rot.T + cb)
    return out


def mean_motion(s: Any) -> tuple[np.ndarray, np.ndarray]:
    """The mean of the views' misregistrations (rotation projected back onto rotations, shift): the scan's offset."""
    u, _, wt = np.linalg.svd(s.view_rotations.mean(axis=0))
    return u @ wt, s.view_shifts.mean(axis=0)


def relatively_registered(s: Any) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Points, normals (None if the scan has none) and sensors of scan ``s``, every view moved from its own
    misregistration to the mean one: the views agree exactly and the scan keeps its common offset."""
    rot, shift = mean_motion(s)
    points, sensors = s.points.copy(), s.sensors.copy()
    normals = None if s.normals is None else s.normals.astype(np.float64)
    for v in range(len(s.view_rotations)):
        sel = s.views == v
        turn = rot @ s.view_rotations[v].T  # undo the view's rotation, then apply the mean one
        points[sel] = (points[sel] - s.centre - s.view_shifts[v]) @ turn.T + s.centre + shift
        sensors[sel] = (sensors[sel] - s.centre - s.view_shifts[v]) @ turn.T + s.centre + shift
        if normals is not None:
            normals[sel] = normals[sel] @ turn.T
    return points, normals, sensors


def gaps(true: np.ndarray, points: np.ndarray, view: np.ndarray, normal: np.ndarray, sample: np.ndarray
         ) -> tuple[float, float]:
    """Mean |gap| along the normal between views' placements (all pairs), and of their mean from the truth."""
    placed = placements(true, points, view, sample)
    n = normal[sample]
    pair = np.mean([np.abs(((placed[i] - placed[j]) * n).sum(axis=1)).mean()
                    for i in range(len(placed)) for j in range(i + 1, len(placed))])
    common = np.abs(((np.mean(placed, axis=0) - true[sample]) * n).sum(axis=1)).mean()
    return float(pair), float(common)


def score(python: str, shape: str, mesh: Path) -> str:
    """'Chamfer | NC' of the mesh as bench/quality.py scores it."""
    out = subprocess.run([python, "-c", SCORE, shape, str(HERE / "_work"), str(mesh)], cwd=HERE, check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    r = json.loads(out)
    return f"{r['chamfer']:.4f} | {r['nc']:.4f}"


def run(shape: str, variant: str, python: str) -> None:
    v, f = shapes.gt_mesh(shape, HERE / "_work")
    preset = "clean" if variant == "clean" else PRESET
    params = dataclasses.replace(PRESETS[preset], points=POINTS)
    if variant == "reg":
        params = dataclasses.replace(params, misregister_deg=0.0, misregister_shift=0.0)
    s = scan((v, f), params, seed=shapes._seed("scan", shape, POINTS, preset))
    points, normals, sensors = relatively_registered(s) if variant == "rel" else (s.points, s.normals, s.sensors)
    seen: dict[str, Any] = {}
    ensure_normals, register_views = engine.pipeline.ensure_normals, engine.pipeline.register_views

    def keep_cloud(cloud: Any, *a: Any, **k: Any) -> Any:
        seen["cloud"], stats = ensure_normals(cloud, *a, **k)
        return seen["cloud"], stats

    def keep_views(points: np.ndarray, normals: np.ndarray, views: Any, *a: Any, **k: Any) -> Any:
        out = register_views(points, normals, views, *a, **k)
        seen.update(before=points, after=out[0], view=views.index)
        return out

    engine.pipeline.ensure_normals, engine.pipeline.register_views = keep_cloud, keep_views
    try:
        t = time.perf_counter()
        m = reconstruct(points.astype(np.float32),
                        None if variant == "nonormals" or normals is None else normals.astype(np.float32),
                        sensor=sensors.astype(np.float32), device="cpu")
        seconds = time.perf_counter() - t
    finally:
        engine.pipeline.ensure_normals, engine.pipeline.register_views = ensure_normals, register_views
    cloud = seen["cloud"]
    true = cloud.frame.to_canonical(s.clean[cloud.kept])
    surface = s.labels[cloud.kept] == 0
    face_normal = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    normal = (face_normal / np.linalg.norm(face_normal, axis=1, keepdims=True))[s.faces[cloud.kept]]
    rows = np.flatnonzero(surface)
    sample = np.random.default_rng(0).choice(rows.size, size=min(rows.size, 20_000), replace=False)
    view = seen["view"][rows]
    pair0, common0 = gaps(true[rows], seen["before"][rows].astype(np.float64), view, normal[rows], sample)
    pair1, common1 = gaps(true[rows], seen["after"][rows].astype(np.float64), view, normal[rows], sample)
    mesh = HERE / "_work" / "registration" / f"{shape}_{variant}.ply"
    mesh.parent.mkdir(parents=True, exist_ok=True)
    write_ply(str(mesh), m.vertices64, m.faces.astype(np.int64))
    print(f"| {shape} | {variant} | {pair0 * 1e3:.3f} | {pair1 * 1e3:.3f} | {common0 * 1e3:.3f} | "
          f"{common1 * 1e3:.3f} | {m.stats['views_registered']} of {m.stats['views']} | "
          f"{m.stats['registration_rounds']} | {score(python, shape, mesh)} | {seconds:.1f} |", flush=True)
    if variant == "rel":
        rot, shift = mean_motion(s)
        moved = HERE / "_work" / "registration" / f"{shape}_truth_moved.ply"
        write_ply(str(moved), (v - s.centre) @ rot.T + s.centre + shift, f.astype(np.int64))
        print(f"| {shape} | the true mesh moved by the views' mean motion | | | | | | | "
              f"{score(python, shape, moved)} | |", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="bunny,torus,sphere")
    ap.add_argument("--variant", default="mis", choices=["mis", "reg", "clean", "nonormals", "rel"])
    ap.add_argument("--score-python", default=str(HERE.parent / ".venv-bench" / "bin" / "python"))
    a = ap.parse_args(argv)
    print("| shape | variant | gap before | gap after | common before | common after | views moved | rounds | "
          "Chamfer | NC | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for shape in a.shapes.split(","):
        run(shape, a.variant, a.score_python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
