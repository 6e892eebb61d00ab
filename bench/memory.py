"""The memory guard's footprint, measured: peak RSS of real runs against what the guard estimated.

    .venv-bench/bin/python bench/memory.py --ours-python .venv/bin/python [--work bench/_work]
        [--sizes 10k,30k,100k,300k,1M,4M] [--city 300k,2M] [--out bench/_work/memory.json]

Each input is reconstructed by ``bench/run_method.py ours`` in a fresh process
(default options; the whole job forced with a 64 GB limit, so that no input is
chunked), which reports its peak RSS (VmHWM) and the guard's estimate
(``memory_estimate_bytes``).  Inputs: the bunny at ``--sizes`` (clean) and at
100k and 1M with 0.5% noise, the simulator's bunny and torus scans (the
inputs of bench/quality.py, made there or here, in ``--work``), the city of
tests/shapes.py at ``--city``, and the 100k sphere and blob at 0, 1, 2 and 3
refinement rounds (``mise_iter``).

Printed per run: measured peak, the guard's estimate and their ratio (the
margin; below 1 the guard would let a job past its limit), and the least-squares
fit ``base + a * unknowns + b * points`` over the runs at one round or none,
with the unknowns the guard estimated (:func:`engine.large.memory.estimate_unknowns`,
recovered from its estimate) -- the figures :data:`engine.large.memory.COMPILED`
was set from.  Past one round: the bytes per face that refinement added.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))
MiB = float(1 << 20)


def bench_input(shape: str, n: int, case: str, work: Path) -> Path:
    """An input of bench/quality.py (made there, or here with its own code)."""
    from shapes import make_input, parse_case

    return make_input(shape, n, parse_case(case), work)


def shape_input(name: str, n: int, work: Path) -> Path:
    """tests/shapes.py's ``name`` (city, sphere, blob) with n points as an .npz of points and normals."""
    from tests import shapes as test_shapes

    path = work / f"mem_{name}_{n}.npz"
    if not path.exists():
        made = getattr(test_shapes, name)(n)
        np.savez(path, points=made[0].astype(np.float32), normals=made[1].astype(np.float32))
    return path


def run(python: str, inp: Path, work: Path, options: dict[str, Any]) -> dict[str, Any]:
    """One fresh ``run_method.py ours`` process; its JSON line."""
    cmd = [python, str(BENCH / "run_method.py"), "ours", str(inp), str(work / "mem_out.ply"),
           "--option", "memory_limit_gb=64", *(f"--option={k}={v}" for k, v in options.items())]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"{inp.name} {options}: exit {p.returncode}: {p.stderr.strip()[-1500:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def footprint(python: str) -> dict[str, float]:
    """:data:`engine.large.memory.COMPILED` and ``FACES_PER_UNKNOWN``, read by the engine's interpreter."""
    code = ("import dataclasses, json; from engine.large import memory as m; "
            "print(json.dumps({**dataclasses.asdict(m.COMPILED), 'faces_per_unknown': m.FACES_PER_UNKNOWN}))")
    return json.loads(subprocess.run([python, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                     check=True).stdout)


def estimated_unknowns(stats: dict[str, Any], fp: dict[str, float]) -> float:
    """The unknowns the guard estimated, recovered from its estimate (:func:`engine.large.memory.job_bytes`)."""
    rounds = int(stats["mise_iter"])
    rest = stats["memory_estimate_bytes"] - fp["base"] - stats["points_used"] * fp["per_point"]
    return rest / (fp["per_unknown"] + fp["faces_per_unknown"] * max(0, 4**rounds - 4) * fp["per_face"])


def main() -> None:
    from shapes import parse_size

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours-python", default=sys.executable, help="interpreter with the engine's requirements")
    ap.add_argument("--work", type=Path, default=BENCH / "_work")
    ap.add_argument("--sizes", default="10k,30k,100k,300k,1M,4M", help="bunny sizes, clean")
    ap.add_argument("--city", default="300k,2M", help="sizes of tests/shapes.py's city")
    ap.add_argument("--out", type=Path, default=None, help="write every run's record here (JSON)")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, Path, dict[str, Any]]] = []
    for s in a.sizes.split(","):
        jobs.append((f"bunny {s} clean", bench_input("bunny", parse_size(s), "clean", a.work), {}))
    for s in ("100k", "1M"):
        jobs.append((f"bunny {s} n0.5", bench_input("bunny", parse_size(s), "n0.5", a.work), {}))
    for shape in ("bunny", "torus"):
        jobs.append((f"{shape} scan", bench_input(shape, 100_000, "scan:scanner+outliers", a.work), {}))
    for s in filter(None, a.city.split(",")):
        jobs.append((f"city {s}", shape_input("city", parse_size(s), a.work), {}))
    for shape in ("sphere", "blob"):
        for rounds in (0, 1, 2, 3):
            jobs.append((f"{shape} 100k r{rounds}", shape_input(shape, 100_000, a.work), {"mise_iter": rounds}))
    fp = footprint(a.ours_python)
    records = []
    print(f"{'input':22s} {'peak MiB':>9s} {'guard MiB':>9s} {'peak/guard':>10s} {'unknowns':>10s} {'est.':>10s} "
          f"{'points':>9s} {'faces':>10s}", flush=True)
    for label, inp, options in jobs:
        r = run(a.ours_python, inp, a.work, options)
        s = r["stats"]
        rec = {"label": label, "peak_mb": r["peak_rss_mb"], "estimate_mb": s["memory_estimate_bytes"] / MiB,
               "unknowns": s["unknowns"], "estimated_unknowns": estimated_unknowns(s, fp), "points": s["points_used"],
               "mise_iter": s["mise_iter"], "faces_meshed": s["faces_before_simplify"], "seconds": r["seconds"]}
        records.append(rec)
        ratio = rec["peak_mb"] / rec["estimate_mb"]
        print(f"{label:22s} {rec['peak_mb']:9.0f} {rec['estimate_mb']:9.0f} {ratio:10.2f} "
              f"{rec['unknowns']:10,d} {rec['estimated_unknowns']:10,.0f} {rec['points']:9,d} "
              f"{rec['faces_meshed']:10,d}", flush=True)
    one = [r for r in records if r["mise_iter"] <= 1]
    x = np.array([[1.0, r["estimated_unknowns"], r["points"]] for r in one])
    y = np.array([r["peak_mb"] * MiB for r in one])
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    fitted = x @ coef / MiB
    print(f"\nfit over {len(one)} runs at one round or none: {coef[0] / MiB:.0f} MiB + {coef[1]:.0f} B per estimated "
          f"unknown + {coef[2]:.0f} B per point; measured / fitted "
          f"{min(y / MiB / fitted):.2f}-{max(y / MiB / fitted):.2f}")
    for shape in ("sphere", "blob"):
        base = next(r for r in records if r["label"] == f"{shape} 100k r1")
        for r in records:
            if r["label"].startswith(f"{shape} 100k r") and r["mise_iter"] > 1:
                added = 0.5 * r["estimated_unknowns"] * (4 ** r["mise_iter"] - 4)
                print(f"{r['label']}: {(r['peak_mb'] - base['peak_mb']) * MiB / added:.0f} B per estimated face "
                      "past one round")
    worst = max(records, key=lambda r: r["peak_mb"] / r["estimate_mb"])
    print(f"highest peak / guard: {worst['peak_mb'] / worst['estimate_mb']:.2f} ({worst['label']})")
    if a.out is not None:
        a.out.write_text(json.dumps({"argv": sys.argv, "runs": records, "fit": coef.tolist()}, indent=1))


if __name__ == "__main__":
    main()
