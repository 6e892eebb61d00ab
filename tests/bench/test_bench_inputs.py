"""The benchmark's input cases (bench/shapes.py): scan cases are simulated scans with their sensors."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import scanner  # noqa: E402
import shapes  # noqa: E402
from plyio import write_ply  # noqa: E402


def test_case_names_parse_into_noise_tilt_or_scan() -> None:
    assert shapes.parse_case("n0.5+ang10") == shapes.Case("n0.5+ang10", 0.005, 10.0)
    scan = shapes.parse_case("scan:scanner+outliers")
    assert scan.preset == "scanner+outliers" and scan.normals
    bare = shapes.parse_case("scan:scanner:nonormals")
    assert bare.preset == "scanner" and not bare.normals
    with pytest.raises(ValueError, match="presets are"):
        shapes.parse_case("scan:lidar")


def test_a_scan_case_writes_the_scan_with_sensors_and_labels(tmp_path: Path) -> None:
    v, f = scanner.sphere_mesh(rings=40)
    write_ply(tmp_path / "gt_sphere.ply", v, f)  # the cached ground truth, so no open3d is needed
    path = shapes.make_input("sphere", 5_000, shapes.parse_case("scan:scanner+outliers"), tmp_path)
    data = np.load(path)
    n = data["points"].shape[0]
    assert 3_000 < n < 8_000
    assert data["normals"].shape == data["sensors"].shape == (n, 3)
    assert 0.005 < float(np.mean(data["labels"] == scanner.OUTLIER)) < 0.02
    bare = np.load(shapes.make_input("sphere", 5_000, shapes.parse_case("scan:scanner+outliers:nonormals"),
                                     tmp_path))
    assert "normals" not in bare.files
    np.testing.assert_array_equal(bare["points"], data["points"])  # the same scan, without its normals


def test_the_box_with_sharp_edges_is_a_bench_shape(tmp_path: Path) -> None:
    """``--shapes box`` (and rounded_box, dumbbell): the simulator's mesh as ground truth, its samples on it."""
    v, f = shapes.gt_mesh("box", tmp_path)
    np.testing.assert_allclose(np.abs(v).max(axis=0), [1.0, 0.7, 0.5])
    data = np.load(shapes.make_input("box", 2_000, shapes.parse_case("clean"), tmp_path))
    q = np.abs(data["points"]) - [1.0, 0.7, 0.5]
    assert data["points"].shape == (2_000, 3) and np.abs(q.max(axis=1)).max() < 1e-6  # on a face of the box
