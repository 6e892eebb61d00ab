"""Normal estimation benchmark: ours vs Open3D, side by side in one run (issue 5).

Run with the benchenv python (open3d + pymeshlab make the inputs and metrics):

    .venv-bench/bin/python bench/normals.py --sizes 100k,1M --cases clean
    python bench/normals.py --reprint bench/_work/normals.json   # any python

For each input (the pymeshlab bunny, sampled with exact normals as quality.py does):
1. normals: ours (engine.estimate_normals, .venv) and Open3D (estimate_normals with
   its default 30 neighbours, then orient_normals_consistent_tangent_plane(10)), each
   in a fresh process: share of correctly oriented normals (n . n_true > 0; rows left
   out as doubtful count as not correct), mean angle to the true normal line, time;
2. meshes, each method's own pipeline with the true normals and with its estimated
   ones: ours = reconstruct(points, normals) against reconstruct(points) (which
   estimates them itself); Open3D = screened Poisson depth 8 on the true normals
   against Poisson depth 8 on Open3D's normals from step 1.  Chamfer-L1 and normal
   consistency against the ground truth, and the ratio estimated / true.
Every worker gets OMP_NUM_THREADS / OMP_WAIT_POLICY=PASSIVE like quality.py.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from quality import GroundTruth, log, run_json, run_worker, save  # noqa: E402

GOAL_CORRECT = 0.995  # clean input
GOAL_MESH = 0.10  # Chamfer-L1 and NC within 10% of the true-normals run


def normal_figures(est: object, true: object) -> dict:
    """Share correct (zero rows count as wrong), zero rows, mean unoriented angle (degrees) over non-zero rows."""
    import numpy as np

    e, t = np.asarray(est, np.float64), np.asarray(true, np.float64)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    length = np.linalg.norm(e, axis=1)
    ok = length > 0
    dot = (e[ok] * t[ok]).sum(1) / length[ok]
    return {"correct": float((dot > 0).sum() / len(e)), "wrong": int((dot <= 0).sum()),
            "left_out": int((~ok).sum()),
            "angle_deg": float(np.degrees(np.arccos(np.clip(np.abs(dot), 0.0, 1.0))).mean())}


def table(key: str, rec: dict) -> str:
    """One input's side-by-side table and goal lines."""
    nr, ms = rec["normals"], rec["meshes"]
    o3d_sec = nr.get("open3d", {}).get("seconds")
    lines = [f"== {key}  ({rec['n']} pts)",
             f"{'normals':<7} {'correct%':>9} {'wrong':>6} {'left out':>8} {'angle°':>7} {'sec':>7} {'/o3d':>5}"
             f"   {'mesher':<10} {'Ch-L1e-3':>8} {'(true)':>7} {'ratio':>6} {'NC':>6} {'(true)':>6} {'ratio':>6}"]
    for method, mesher in (("ours", "ours"), ("open3d", "poisson-d8")):
        n = nr.get(method)
        left = "-" if n is None else (
            f"{100 * n['correct']:9.3f} {n['wrong']:6d} {n['left_out']:8d} {n['angle_deg']:7.2f} "
            f"{n['seconds']:7.2f} {n['seconds'] / o3d_sec if o3d_sec else float('nan'):5.2f}")
        est, true = ms.get(f"{method}-est", {}).get("metrics"), ms.get(f"{method}-true", {}).get("metrics")
        right = ""
        if est and true:
            right = (f"{mesher:<10} {est['chamfer_l1'] * 1e3:8.3f} {true['chamfer_l1'] * 1e3:7.3f} "
                     f"{est['chamfer_l1'] / true['chamfer_l1']:6.3f} {est['nc']:6.3f} {true['nc']:6.3f} "
                     f"{est['nc'] / true['nc']:6.4f}")
        lines.append(f"{method:<7} {left:<52}   {right}")
    ours, o3d = nr.get("ours"), nr.get("open3d")
    if ours and o3d:
        lines.append(f"time ours/open3d = {ours['seconds'] / o3d['seconds']:.2f} (same run; goal <= 1)")
    if ours and rec["case"] == "clean":
        lines.append(f"correct {100 * ours['correct']:.3f}% (goal >= {100 * GOAL_CORRECT:.1f}% on clean input)")
    est, true = ms.get("ours-est", {}).get("metrics"), ms.get("ours-true", {}).get("metrics")
    if est and true:
        lines.append(f"our mesh from estimated normals: Chamfer x{est['chamfer_l1'] / true['chamfer_l1']:.3f}, "
                     f"NC x{est['nc'] / true['nc']:.4f} of the true-normals run (goal within {GOAL_MESH:.0%})")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="100k,1M")
    ap.add_argument("--cases", default="clean")
    ap.add_argument("--shape", default="bunny")
    ap.add_argument("--ours-python", default=str(REPO / ".venv" / "bin" / "python"))
    ap.add_argument("--peer-python", default=sys.executable)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--no-meshes", action="store_true", help="only the normals, no reconstructions")
    ap.add_argument("--poisson-depth", type=int, default=8, help="Open3D's mesher for its two mesh runs")
    ap.add_argument("--eval-samples", type=int, default=100_000)
    ap.add_argument("--work", default=str(HERE / "_work"))
    ap.add_argument("--out", default=None, help="results JSON (default WORK/normals.json)")
    ap.add_argument("--reprint", metavar="JSON")
    return ap.parse_args()


def main() -> None:
    a = parse_args()
    if a.reprint:
        for key, rec in json.loads(Path(a.reprint).read_text())["inputs"].items():
            print(table(key, rec), end="\n\n")
        return
    import numpy as np
    import shapes

    a.detail = "auto"
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    out_path = Path(a.out) if a.out else work / "normals.json"
    results: dict = {"meta": {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv,
                              "threads": a.threads}, "inputs": {}}
    truth = GroundTruth(a.shape, work, a.eval_samples)
    for size in a.sizes.split(","):
        n = shapes.parse_size(size)
        for cname in a.cases.split(","):
            key = f"{a.shape}/{size}/{cname}"
            inp = shapes.make_input(a.shape, n, shapes.parse_case(cname), work)
            true = np.load(inp)["normals"]
            rec: dict = {"n": n, "case": cname, "normals": {}, "meshes": {}}
            results["inputs"][key] = rec
            for method in ("ours", "open3d"):
                out = work / f"normals_{a.shape}_{n}_{cname}_{method}.npz"
                python = a.ours_python if method == "ours" else a.peer_python
                log(f"{key} normals {method}: running")
                w = run_json([python, str(HERE / "run_normals.py"), method, str(inp), str(out)],
                             a.threads, a.timeout, ours=method == "ours")
                rec["normals"][method] = {**normal_figures(np.load(out)["normals"], true), **w}
                log(f"{key} normals {method}: {w['seconds']:.2f}s, correct {rec['normals'][method]['correct']:.5f}")
                save(results, out_path)
            o3d_normals = work / f"normals_{a.shape}_{n}_{cname}_open3d.npz"
            meshes = [] if a.no_meshes else [
                ("ours-true", "ours", None, ()), ("ours-est", "ours", None, ("--normals", "none")),
                ("open3d-true", "open3d", a.poisson_depth, ()),
                ("open3d-est", "open3d", a.poisson_depth, ("--normals", str(o3d_normals)))]
            for label, method, depth, extra in meshes:
                mesh = work / f"normals_mesh_{a.shape}_{n}_{cname}_{label}.ply"
                log(f"{key} mesh {label}: running")
                w = run_worker(a, method, depth, inp, mesh, extra)
                m = truth.evaluate(mesh)
                mesh.unlink()
                rec["meshes"][label] = {"worker": w, "metrics": m}
                log(f"{key} mesh {label}: {w['seconds']:.1f}s chamfer {m['chamfer_l1'] * 1e3:.3f}e-3")
                save(results, out_path)
            print(table(key, rec), end="\n\n", flush=True)
    log(f"results saved to {out_path}")


if __name__ == "__main__":
    main()
