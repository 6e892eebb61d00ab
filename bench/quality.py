"""Quality/speed benchmark driver: our engine vs Open3D and PyMeshLab screened Poisson.

Run with the benchenv python (needs open3d + pymeshlab for inputs and metrics):

    /tmp/benchenv/bin/python bench/quality.py --sizes 100k --cases clean,n0.5 \
        --shapes bunny --methods open3d,pymeshlab --out bench/_work/results.json
    python bench/quality.py --reprint bench/_work/results.json   # any python

Each method runs in a fresh subprocess (run_method.py) with OMP_WAIT_POLICY=PASSIVE
and OMP_NUM_THREADS set; only the reconstruction is timed, peak RSS is VmHWM.
With ``--repeat N`` the methods take turns (ours, Open3D d8, ..., then again), so a
slow minute of a shared machine falls on all of them, not on one method's tries;
each keeps its fastest, and the report adds the median of the per-round ratios.
``--ours-details 0.3,0.5`` adds runs of ours at those detail levels (labels
``ours-detail0.3``, ...): its speed against accuracy beside Poisson's depths.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import report  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


Spec = tuple[str, str, int | None]


def method_specs(methods: list[str], o3d_depths: list[int], pml_depths: list[int],
                 ours_details: list[str] = ()) -> list[Spec]:
    """(label, method, depth) for every run of one input."""
    specs: list[Spec] = []
    for m in methods:
        if m == "ours":
            specs.append(("ours", "ours", None))
        elif m == "ours-learned":  # ours with the learned prior (engine/prior)
            specs.append(("ours-learned", "ours", None))
        elif m == "open3d":
            specs += [(f"open3d-d{d}", "open3d", d) for d in o3d_depths]
        elif m == "open3d-trim":  # Poisson then the 5% least dense vertices dropped (the usual recipe)
            specs += [(f"open3d-d{d}-t5", "open3d", d) for d in o3d_depths]
        elif m == "pymeshlab":
            specs += [(f"pymeshlab-d{d}", "pymeshlab", d) for d in pml_depths]
        else:
            raise SystemExit(f"unknown method {m!r}")
    specs += [(f"{report.DETAIL_LABEL}{d}", "ours", None) for d in ours_details]
    return specs


def run_worker(a: argparse.Namespace, method: str, depth: int | None, inp: Path, out: Path,
               extra: tuple[str, ...] = ()) -> dict:
    """Run run_method.py in a fresh process; returns the parsed JSON line or raises."""
    python = a.ours_python if method == "ours" else a.peer_python
    detail = out.stem.split(report.DETAIL_LABEL)[-1] if report.DETAIL_LABEL in out.stem else a.detail
    cmd = [python, str(HERE / "run_method.py"), method, str(inp), str(out), "--detail", detail, *extra]
    if out.stem.endswith("-t5"):
        cmd += ["--density-trim", "0.05"]
    if "ours-learned" in out.stem:
        cmd += ["--prior", "learned"]
    if depth is not None:
        cmd += ["--depth", str(depth)]
    return run_json(cmd, a.threads, a.timeout, ours=method == "ours")


def run_json(cmd: list[str], threads: int, timeout: float, ours: bool) -> dict:
    """Run a worker command with the benchmark's thread settings; returns its last JSON line or raises."""
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    if ours:
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"exit {p.returncode}: {p.stderr.strip()[-2000:]}")
    for line in reversed(p.stdout.strip().splitlines()):
        if line.startswith("{"):
            res = json.loads(line)
            res["process_seconds"] = time.perf_counter() - t0
            res["loadavg_before"] = float(load) if load != "?" else None
            return res
    raise RuntimeError(f"no JSON line in worker output: {p.stdout[-500:]} {p.stderr[-1500:]}")


class GroundTruth:
    """A shape's reference surface and its fixed evaluation samples (seed 7), for scoring meshes against it."""

    def __init__(self, shape: str, work: Path, n_samples: int) -> None:
        import metrics
        import numpy as np
        import shapes

        gv, gf = shapes.gt_mesh(shape, work)
        self.diag = float(np.linalg.norm(gv.max(0).astype(np.float64) - gv.min(0)))
        self.query = metrics.SurfaceQuery(gv, gf)
        gp, gn, _ = shapes.sample_surface(gv, gf, n_samples, np.random.default_rng(7))
        self.samples, self.n_samples = (gp, gn), n_samples

    def evaluate(self, mesh: Path) -> dict:
        """Chamfer-L1, F-scores, normal consistency, pieces, ... of the PLY mesh at ``mesh``."""
        import metrics
        from plyio import read_ply

        return metrics.evaluate(*read_ply(mesh), self.query, self.samples, self.diag, n_samples=self.n_samples)


Todo = list[tuple[dict, Path, list[dict]]]  # each method's record, its mesh's path and its tries so far


def run_method_on(a: argparse.Namespace, inp: Path, rec: dict, mesh: Path) -> dict:
    """One try of ``rec``'s method on the input ``inp``, its mesh written to ``mesh``."""
    return run_worker(a, rec["method"], rec["depth"], inp, mesh)


def failed(rec: dict, e: BaseException) -> None:
    """Keep a method's error in its record and say so in the log."""
    rec["error"] = str(e)
    log(f"  {rec['label']}: FAILED {str(e).splitlines()[-1] if str(e) else type(e).__name__}")


def take_turns(todo: Todo, repeat: int, run: Callable[[dict, Path], dict]) -> None:
    """``repeat`` rounds in which each method of ``todo`` runs once (``run(record, mesh)``), in turn; a method
    that fails keeps its error in its record and sits out the rounds after."""
    for attempt in range(max(1, repeat)):
        for rec, mesh, tries in todo:
            if "error" in rec:
                continue
            log(f"  {rec['label']}: running" + (f" ({attempt + 1}/{repeat})" if repeat > 1 else ""))
            try:
                tries.append(run(rec, mesh))
            except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError) as e:
                failed(rec, e)


def evaluate_tries(rec: dict, tries: list[dict], truth: GroundTruth, mesh: Path) -> None:
    """Fill ``rec`` from a method's tries (the fastest, and every time) and its mesh's metrics."""
    rec["worker"] = min(tries, key=lambda w: w["seconds"])
    rec["worker"]["all_seconds"] = [w["seconds"] for w in tries]
    log(f"  {rec['label']}: {rec['worker']['seconds']:.2f}s, {rec['worker']['peak_rss_mb']:.0f} MiB, evaluating")
    try:
        rec["metrics"] = truth.evaluate(mesh)
    except (RuntimeError, OSError, ValueError) as e:
        failed(rec, e)
        return
    rec["ok"] = "error" not in rec["metrics"]
    if rec["ok"]:
        m = rec["metrics"]
        log(f"  {rec['label']}: chamfer {m['chamfer_l1']*1e3:.3f}e-3 NC {m['nc']:.4f} pieces {m['pieces']}")


def save(results: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="100k,1M")
    ap.add_argument("--cases", default="clean,n0.25,n0.5,n1,ang10",
                    help="clean, nS (noise S%% of diag), angD, or scan:PRESET (bench/scanner.py), each optionally "
                         "ending in :nonormals")
    ap.add_argument("--shapes", default="bunny,sphere,torus")
    ap.add_argument("--methods", default="ours,open3d,pymeshlab",
                    help="ours, ours-learned, open3d, open3d-trim, pymeshlab")
    ap.add_argument("--open3d-depths", default="5,6,7,8,9,10")
    ap.add_argument("--pymeshlab-depths", default="8", help="8 = PyMeshLab's default")
    ap.add_argument("--ours-python", default=str(REPO / ".venv" / "bin" / "python"))
    ap.add_argument("--peer-python", default=sys.executable)
    ap.add_argument("--detail", default="auto", help="detail_level passed to ours")
    ap.add_argument("--ours-details", default="", help="extra runs of ours at these detail levels, e.g. 0.3,0.5")
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS for every method")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per method run")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each method N times (fresh process each, the methods taking turns), keep the fastest")
    ap.add_argument("--eval-samples", type=int, default=100_000)
    ap.add_argument("--work", default=str(HERE / "_work"), help="cache dir for inputs/meshes")
    ap.add_argument("--out", default=None, help="results JSON (default WORK/results.json)")
    ap.add_argument("--resume", action="store_true", help="skip runs already OK in --out")
    ap.add_argument("--keep-meshes", action="store_true")
    ap.add_argument("--best-pool", choices=["open3d", "poisson"], default="open3d",
                    help="Poisson-best = best Open3D depth, or best of all peers")
    ap.add_argument("--reprint", metavar="JSON", help="only re-print tables from a results file")
    return ap.parse_args()


def main() -> None:
    a = parse_args()
    if a.reprint:
        report.print_all(json.loads(Path(a.reprint).read_text()), a.best_pool)
        return
    import shapes

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    out_path = Path(a.out) if a.out else work / "results.json"
    results = {"inputs": {}, "runs": []}
    if a.resume and out_path.exists():
        results = json.loads(out_path.read_text())
    results["meta"] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv, "host": platform.node(),
        "cpus": os.cpu_count(), "threads": a.threads, "platform": platform.platform(),
    }
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    details = [str(float(d)) for d in a.ours_details.split(",") if d]
    specs = method_specs(a.methods.split(","), ints(a.open3d_depths), ints(a.pymeshlab_depths), details)
    keys = []
    for shape in a.shapes.split(","):
        truth = GroundTruth(shape, work, a.eval_samples)
        for size in a.sizes.split(","):
            n = shapes.parse_size(size)
            for cname in a.cases.split(","):
                case = shapes.parse_case(cname)
                key = f"{shape}/{size}/{cname}"
                keys.append(key)
                log(f"input {key}: preparing")
                inp = shapes.make_input(shape, n, case, work)
                results["inputs"][key] = {"key": key, "shape": shape, "n": n, "case": cname,
                                          "diag": truth.diag, "pos_sigma": case.pos_sigma,
                                          "ang_deg": case.ang_deg, "file": str(inp)}
                todo: Todo = []
                for label, method, depth in specs:
                    old = [r for r in results["runs"] if r["input"] == key and r["label"] == label]
                    if a.resume and any(r.get("ok") for r in old):
                        log(f"  {label}: cached")
                        continue
                    results["runs"] = [r for r in results["runs"] if r not in old]
                    mesh = work / f"out_{shape}_{n}_{cname.replace(':', '-')}_{label}.ply"
                    todo.append(({"input": key, "label": label, "method": method, "depth": depth, "ok": False},
                                 mesh, []))
                take_turns(todo, a.repeat, partial(run_method_on, a, inp))
                for rec, mesh, tries in todo:
                    if "error" not in rec:
                        evaluate_tries(rec, tries, truth, mesh)
                    if not a.keep_meshes and mesh.exists():
                        mesh.unlink()
                    results["runs"].append(rec)
                    save(results, out_path)
                runs = [r for r in results["runs"] if r["input"] == key]
                print(report.table(results["inputs"][key], runs, a.best_pool), end="\n\n", flush=True)
    log(f"results saved to {out_path}")
    report.print_all(results, a.best_pool, keys, tables=False)


if __name__ == "__main__":
    main()

