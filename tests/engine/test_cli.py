"""The command line: PLY in (binary/ASCII, float/double, normals, colours), PLY out, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from engine.ply import read_mesh
from tests import shapes
from tests.meshcheck import boundary_edges

ROOT = Path(__file__).resolve().parents[2]


def engine_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def write_cloud(path: Path, text: bool, coord: str, colors: bool = True, normals: bool = True) -> None:
    p, n = shapes.sphere(3000)
    fields = [("x", coord), ("y", coord), ("z", coord)]
    if normals:
        fields += [("nx", "f4"), ("ny", "f4"), ("nz", "f4")]
    if colors:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    v = np.empty(len(p), dtype=fields)
    v["x"], v["y"], v["z"] = (p + [100.0, 0.0, 0.0]).T
    if normals:
        v["nx"], v["ny"], v["nz"] = n.T
    if colors:
        v["red"], v["green"], v["blue"] = 200, 100, 50
    PlyData([PlyElement.describe(v, "vertex")], text=text).write(str(path))


@pytest.mark.parametrize("text, coord", [(False, "f4"), (True, "f8")])
def test_reconstruct_round_trip(tmp_path: Path, text: bool, coord: str) -> None:
    src, dst = tmp_path / "in.ply", tmp_path / "out.ply"
    write_cloud(src, text, coord)
    done = engine_cli("reconstruct", str(src), str(dst), "--json", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert stats["points_in"] == 3000 and stats["faces"] > 0
    assert "vertices" in done.stdout.splitlines()[0]  # the one-line summary
    verts, faces = read_mesh(dst)
    assert len(faces) == stats["faces"] and boundary_edges(faces) == 0
    assert np.abs(np.linalg.norm(verts - [100.0, 0, 0], axis=1) - 1.0).max() < 0.02
    vertex = PlyData.read(str(dst))["vertex"].data
    assert vertex["red"].min() == 200 and vertex["blue"].max() == 50


def test_options_are_passed_on(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.ply", tmp_path / "out.ply"
    write_cloud(src, False, "f4")
    done = engine_cli("reconstruct", str(src), str(dst), "--voxel-size", "0.2", "--mise-iter", "0", "--json")
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert abs(stats["voxel_size"] - 0.2) < 1e-9


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    done = engine_cli("reconstruct", str(tmp_path / "nope.ply"), str(tmp_path / "out.ply"))
    assert done.returncode == 2 and "no such file" in done.stderr


def test_cloud_without_normals_gets_estimated_normals(tmp_path: Path) -> None:
    src = tmp_path / "in.ply"
    write_cloud(src, False, "f4", normals=False)
    done = engine_cli("reconstruct", str(src), str(tmp_path / "out.ply"), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["normals_estimated"] is True
    assert (tmp_path / "out.ply").exists()


def test_bad_arguments() -> None:
    assert engine_cli("reconstruct", "a.ply").returncode == 2
    assert engine_cli("reconstruct", "a.ply", "b.ply", "--detail", "fine").returncode == 2
