"""Tables and goal verdicts from the raw results JSON (pure Python, no numpy/open3d)."""
from __future__ import annotations

import statistics
from collections.abc import Iterable

RSS_LIMIT_MB = 4096.0  # "4 GB" peak RSS budget at 1M points (MiB, as VmHWM reports)
DETAIL_LABEL = "ours-detail"  # ours at a set detail level (quality.py --ours-details): "ours-detail0.3"


def _ok(r: dict) -> bool:
    return bool(r.get("ok")) and "chamfer_l1" in r.get("metrics", {})


def poisson_best(runs: list[dict], pool: str = "open3d") -> dict | None:
    """Lowest-Chamfer Poisson run: Open3D depths only (pool='open3d') or all peers ('poisson')."""
    wanted = {"open3d"} if pool == "open3d" else {"open3d", "pymeshlab"}
    peers = [r for r in runs if _ok(r) and r["method"] in wanted]
    return min(peers, key=lambda r: r["metrics"]["chamfer_l1"], default=None)


def _find(runs: list[dict], label: str) -> dict | None:
    return next((r for r in runs if r["label"] == label and r.get("ok")), None)


def _fmt(x: object, spec: str) -> str:
    return format("-", spec.rstrip("f").split(".")[0]) if x is None else format(x, spec)


def verdict(inp: dict, runs: list[dict], pool: str = "open3d") -> tuple[str, list[tuple[str, bool]]]:
    """Check `ours` against the goals; returns a one-line verdict and the individual checks."""
    ours, best, d8 = _find(runs, "ours"), poisson_best(runs, pool), _find(runs, "open3d-d8")
    if ours is None or not _ok(ours):
        return "VERDICT n/a: ours did not run or produced no mesh", []
    if best is None:
        return "VERDICT n/a: no Poisson reference", []
    om, bm = ours["metrics"], best["metrics"]
    clean = inp["case"] == "clean"
    ch_k, nc_tol = (1.1, 0.002) if clean else (0.8, 0.0)
    checks = [
        (f"chamfer {om['chamfer_l1']*1e3:.3f} <= {ch_k}x{bm['chamfer_l1']*1e3:.3f}",
         om["chamfer_l1"] <= ch_k * bm["chamfer_l1"]),
        (f"NC {om['nc']:.4f} >= {bm['nc']:.4f}{'-' + str(nc_tol) if nc_tol else ''}",
         om["nc"] >= bm["nc"] - nc_tol - 1e-12),
        (f"pieces {om['pieces']} <= {bm['pieces']}", om["pieces"] <= bm["pieces"]),
    ]
    if d8 is not None:
        checks.append((f"time {ours['worker']['seconds']:.2f}s <= {d8['worker']['seconds']:.2f}s (o3d-d8)",
                       ours["worker"]["seconds"] <= d8["worker"]["seconds"]))
    if inp["n"] >= 1_000_000:
        rss = ours["worker"]["peak_rss_mb"]
        checks.append((f"RSS {rss:.0f} <= {RSS_LIMIT_MB:.0f} MiB", rss <= RSS_LIMIT_MB))
    passed = all(ok for _, ok in checks)
    body = "; ".join(f"{t} {'ok' if ok else 'FAIL'}" for t, ok in checks)
    return f"VERDICT {'PASS' if passed else 'FAIL'} vs {best['label']}: {body}", checks


def paired_ratio(a: dict, b: dict) -> float | None:
    """The median over rounds of a's time over b's, where both ran the same rounds in turn (quality.py
    --repeat): less swayed than the fastest of each by a machine whose speed drifts; None for one round."""
    ta, tb = a["worker"].get("all_seconds", []), b["worker"].get("all_seconds", [])
    if len(ta) < 2 or len(ta) != len(tb):
        return None
    ratios = [x / y for x, y in zip(ta, tb, strict=True) if y > 0]
    return statistics.median(ratios) if ratios else None


def table(inp: dict, runs: list[dict], pool: str = "open3d") -> str:
    """Render one input's comparison table plus time ratios and the verdict."""
    best = poisson_best(runs, pool)
    ours = _find(runs, "ours")
    t_ours = ours["worker"]["seconds"] if ours else None
    head = (f"{'method':<15}{'Ch-L1e-3':>9}{'F@1%':>7}{'F@.5%':>7}{'NC':>7}{'pieces':>7}"
            f"{'bnd-e':>7}{'nm-e':>6}{'faces':>9}{'sec':>8}{'RSS MB':>8}{'ours/x':>7}")
    lines = [f"== {inp['key']}  ({inp['n']} pts, case {inp['case']}, diag {inp['diag']:.4g})", head]
    for r in runs:
        mark = "*" if best is not None and r is best else " "
        if not r.get("ok") or "chamfer_l1" not in r.get("metrics", {}):
            err = (r.get("error") or r.get("metrics", {}).get("error") or "failed").splitlines()[-1:]
            lines.append(f"{r['label'] + mark:<15} FAILED: {err[0][:90] if err else ''}")
            continue
        m, w = r["metrics"], r["worker"]
        ratio = t_ours / w["seconds"] if t_ours and w["seconds"] > 0 and r is not ours else None
        lines.append(
            f"{r['label'] + mark:<15}{m['chamfer_l1']*1e3:>9.3f}{m['fscore@1%']:>7.3f}"
            f"{m['fscore@0.5%']:>7.3f}{m['nc']:>7.3f}{m['pieces']:>7d}"
            f"{m['boundary_edges']:>7d}{m['nonmanifold_edges']:>6d}{w.get('faces', 0):>9d}"
            f"{w['seconds']:>8.2f}{w['peak_rss_mb']:>8.0f}{_fmt(ratio, '>7.2f')}"
        )
    d8 = _find(runs, "open3d-d8")
    if ours and t_ours:
        peers = [x for x in (d8, None if best is d8 else best) if x]
        parts = [f"{t_ours / x['worker']['seconds']:.2f}x {x['label']}" for x in peers]
        paired = paired_ratio(ours, d8) if d8 else None
        if paired is not None:
            parts.append(f"median of {len(ours['worker']['all_seconds'])} rounds {paired:.2f}x open3d-d8")
        if parts:
            lines.append("ours time = " + ", ".join(parts))
    for r in runs:  # ours at set detail levels (quality.py --ours-details), each against depth 8
        if r["label"].startswith(DETAIL_LABEL) and _ok(r) and d8:
            lines.append(f"{r['label']} time = {r['worker']['seconds'] / d8['worker']['seconds']:.2f}x open3d-d8, "
                         f"Chamfer {r['metrics']['chamfer_l1'] / d8['metrics']['chamfer_l1']:.2f}x")
    lines.append(verdict(inp, runs, pool)[0])
    return "\n".join(lines)


def print_all(results: dict, pool: str = "open3d", keys: Iterable[str] | None = None,
              tables: bool = True) -> None:
    """Print a table per input (in input order) and a final pass/fail summary."""
    verdicts = []
    for key in keys or results["inputs"]:
        inp = results["inputs"][key]
        runs = [r for r in results["runs"] if r["input"] == key]
        if not runs:
            continue
        if tables:
            print(table(inp, runs, pool), end="\n\n")
        verdicts.append((key, verdict(inp, runs, pool)[0].split(" ")[1].rstrip(":")))
    if verdicts:
        print("SUMMARY: " + ", ".join(f"{k}={v}" for k, v in verdicts))
