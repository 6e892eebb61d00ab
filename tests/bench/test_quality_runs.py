"""The quality bench's runs: methods take turns over the repeats, ours at set detail levels, paired ratios."""
from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import quality  # noqa: E402
import report  # noqa: E402


def test_the_methods_take_turns_and_a_failed_one_sits_out_the_rest(tmp_path: Path) -> None:
    todo = [({"label": label}, tmp_path / f"{label}.ply", []) for label in ("ours", "open3d-d8", "broken")]
    order: list[str] = []

    def run(rec: dict, mesh: Path) -> dict:
        order.append(rec["label"])
        if rec["label"] == "broken":
            raise RuntimeError("exit 1: no mesh")
        return {"seconds": float(len(order))}

    quality.take_turns(todo, 3, run)
    assert order == ["ours", "open3d-d8", "broken", "ours", "open3d-d8", "ours", "open3d-d8"]
    assert [w["seconds"] for w in todo[0][2]] == [1.0, 4.0, 6.0]
    assert todo[2][0]["error"] == "exit 1: no mesh" and todo[2][2] == []


def test_detail_runs_are_ours_with_their_detail_level(tmp_path: Path, monkeypatch) -> None:
    specs = quality.method_specs(["ours", "open3d"], [8], [], ["0.3"])
    assert specs == [("ours", "ours", None), ("open3d-d8", "open3d", 8), ("ours-detail0.3", "ours", None)]
    commands: list[list[str]] = []
    monkeypatch.setattr(quality, "run_json", lambda cmd, *args, **kw: commands.append(cmd) or {})
    args = quality.argparse.Namespace(ours_python="py", peer_python="py", detail="auto", threads=2, timeout=1.0)
    for label, method, depth in specs:
        quality.run_worker(args, method, depth, tmp_path / "in.npz", tmp_path / f"out_bunny_1000_clean_{label}.ply")
    details = [cmd[cmd.index("--detail") + 1] for cmd in commands]
    assert details == ["auto", "auto", "0.3"]


def test_the_paired_ratio_is_the_median_of_each_rounds_ratio() -> None:
    ours = {"worker": {"all_seconds": [2.0, 3.0, 2.2]}}
    peer = {"worker": {"all_seconds": [4.0, 4.0, 5.5]}}  # rounds' ratios 0.5, 0.75, 0.4
    assert report.paired_ratio(ours, peer) == 0.5
    assert report.paired_ratio({"worker": {"all_seconds": [2.0, 3.0]}}, peer) is None  # not the same rounds
    assert report.paired_ratio({"worker": {"all_seconds": [2.0]}}, {"worker": {"all_seconds": [4.0]}}) is None


def test_the_table_gives_each_detail_run_against_depth_8_and_the_rounds_median() -> None:
    def run(label: str, method: str, seconds: list[float], chamfer: float) -> dict:
        metrics = {"chamfer_l1": chamfer, "fscore@1%": 1.0, "fscore@0.5%": 1.0, "nc": 0.99, "pieces": 1,
                   "boundary_edges": 0, "nonmanifold_edges": 0}
        return {"label": label, "method": method, "ok": True, "metrics": metrics,
                "worker": {"seconds": min(seconds), "all_seconds": seconds, "peak_rss_mb": 100.0, "faces": 10}}

    runs = [run("ours", "ours", [2.0, 3.0], 1e-5), run("open3d-d8", "open3d", [4.0, 4.0], 4e-5),
            run(f"{report.DETAIL_LABEL}0.3", "ours", [1.0, 1.2], 2e-5)]
    text = report.table({"key": "bunny/1M/clean", "n": 1_000_000, "case": "clean", "diag": 1.0}, runs)
    assert "ours time = 0.50x open3d-d8, median of 2 rounds 0.62x open3d-d8\n" in text  # d8 named once
    assert "ours-detail0.3 time = 0.25x open3d-d8, Chamfer 0.50x" in text
