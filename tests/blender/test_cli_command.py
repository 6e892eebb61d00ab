"""``blender --background --command nksr IN OUT``: the handler, called directly as Blender would call it."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import bpy
import numpy as np
import pytest

from tests.shapes import sphere

from .conftest import write_ply
from .scenes import color_of


def _cloud(tmp_path: Path) -> Path:
    points, normals = sphere(3000, seed=5)
    return write_ply(tmp_path / "in.ply", points, normals, color_of(points))


def test_reconstructs_a_file_into_a_mesh_file(scene: bpy.types.Scene, tmp_path: Path, addon: ModuleType,
                                              capsys: object) -> None:
    out = tmp_path / "sub" / "out.ply"
    assert addon.cli_command.run([str(_cloud(tmp_path)), str(out), "--mise-iter", "0"]) == 0
    header = out.read_bytes()[:400].split(b"end_header")[0].decode()
    faces = int(next(line.split()[-1] for line in header.splitlines() if line.startswith("element face")))
    assert faces > 500
    assert "property float red" in header or "property uchar red" in header
    bpy.ops.wm.ply_import(filepath=str(out))
    verts = np.array([v.co for v in bpy.context.selected_objects[0].data.vertices])
    assert np.abs(np.linalg.norm(verts, axis=1) - 1).max() < 0.1


def test_saves_a_blend_file(scene: bpy.types.Scene, tmp_path: Path, addon: ModuleType) -> None:
    out = tmp_path / "result.blend"
    assert addon.cli_command.run([str(_cloud(tmp_path)), str(out), "--detail", "0.4", "--no-colors"]) == 0
    assert out.stat().st_size > 10_000


def test_bad_arguments_and_missing_file(scene: bpy.types.Scene, tmp_path: Path, addon: ModuleType,
                                        capsys: object) -> None:
    run = addon.cli_command.run
    assert run([]) == 2
    assert run([str(tmp_path / "in.ply"), str(tmp_path / "out.ply"), "--bogus"]) == 2
    assert run([str(tmp_path / "missing.ply"), str(tmp_path / "out.ply")]) == 2
    assert run([str(_cloud(tmp_path)), str(tmp_path / "out.xyz")]) == 2
    assert run([str(_cloud(tmp_path)), str(tmp_path / "out.ply"), "--detail", "fine"]) == 2
    assert not (tmp_path / "out.ply").exists()


def test_out_of_range_options_are_refused_before_anything_is_imported(scene: bpy.types.Scene, tmp_path: Path,
                                                                      addon: ModuleType,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    before = set(bpy.data.objects)
    code = addon.cli_command.run([str(_cloud(tmp_path)), str(tmp_path / "out.ply"), "--mise-iter", "10"])
    assert code == 2
    assert "'mise_iter' must be an integer from 0 to 3" in capsys.readouterr().out
    assert set(bpy.data.objects) == before and not (tmp_path / "out.ply").exists()
