"""``--command nksr`` on the formats Blender cannot import: the engine reads them itself (``nksr.reconstruct_file``)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import bpy
import numpy as np
import pytest

from tests.shapes import sphere

from .test_reconstruct_file import write_pcd

CENTRE = np.array([5.0, 1.0, -2.0])


def _write(tmp_path: Path, suffix: str) -> Path:
    points, normals = sphere(3000, seed=7)
    points = points + CENTRE
    path = tmp_path / f"in{suffix}"
    if suffix == ".pcd":
        write_pcd(path, points, normals)
    elif suffix == ".npy":
        np.save(path, np.hstack([points, normals]))
    else:
        np.savetxt(path, np.hstack([points, normals]), fmt="%.9g")
    return path


@pytest.mark.parametrize("suffix", [".pcd", ".xyz", ".npy"])
def test_an_engine_format_becomes_a_mesh_file(scene: bpy.types.Scene, tmp_path: Path, addon: ModuleType,
                                              suffix: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.ply"
    assert addon.cli_command.run([str(_write(tmp_path, suffix)), str(out), "--mise-iter", "0"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    bpy.ops.wm.ply_import(filepath=str(out))
    obj = bpy.context.selected_objects[0]
    verts = np.array([v.co for v in obj.data.vertices]) + np.array(obj.location)
    assert len(obj.data.polygons) > 500
    assert np.abs(np.linalg.norm(verts - CENTRE, axis=1) - 1).max() < 0.1  # the mesh is where the points were


def test_a_broken_engine_format_fails_with_the_engines_message(scene: bpy.types.Scene, tmp_path: Path,
                                                               addon: ModuleType,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "in.pcd"
    bad.write_text("# .PCD v0.7\nFIELDS x y z\nno header here\n")
    assert addon.cli_command.run([str(bad), str(tmp_path / "out.ply")]) == 3
    assert "in.pcd: not a readable PCD file" in capsys.readouterr().out
    assert not (tmp_path / "out.ply").exists() and not bpy.data.objects


def test_the_usage_lists_every_input(addon: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert addon.cli_command.run([str(Path("in.dwg")), "out.ply"]) == 2
    said = capsys.readouterr().out
    assert all(s in said for s in (".ply", ".obj", ".pcd", ".las", ".laz", ".e57", ".xyz", ".npy", ".npz"))
