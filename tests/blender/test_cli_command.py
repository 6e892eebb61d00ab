"""``blender --background --command nksr IN OUT``: the handler, called directly as Blender would call it."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import bpy
import numpy as np
import pytest

from tests.meshcheck import boundary_edges
from tests.mounts import fill, read_only_folder, tiny_fs
from tests.shapes import sphere

from .conftest import write_ply
from .scenes import color_of


def _cloud(tmp_path: Path) -> Path:
    points, normals = sphere(3000, seed=5)
    return write_ply(tmp_path / "in.ply", points, normals, color_of(points))


def test_reconstructs_a_file_into_a_mesh_file(scene: bpy.types.Scene, tmp_path: Path, addon: ModuleType,
                                              capsys: object) -> None:
    out = tmp_path / "sub" / "out.ply"
    assert addon.cli_command.run([str(_cloud(tmp_path)), str(out), "--mise-iter", "0", "--keep-fragments"]) == 0
    header = out.read_bytes()[:400].split(b"end_header")[0].decode()
    faces = int(next(line.split()[-1] for line in header.splitlines() if line.startswith("element face")))
    assert faces > 500
    assert "property float red" in header or "property uchar red" in header
    bpy.ops.wm.ply_import(filepath=str(out))
    verts = np.array([v.co for v in bpy.context.selected_objects[0].data.vertices])
    assert np.abs(np.linalg.norm(verts, axis=1) - 1).max() < 0.1


def test_max_faces_reaches_the_engine(scene: bpy.types.Scene, tmp_path: Path, addon: ModuleType) -> None:
    """``--max-faces`` is one of the command's flags, and the written mesh keeps to it (within 10%)."""
    out = tmp_path / "out.ply"
    assert addon.cli_command.run([str(_cloud(tmp_path)), str(out), "--max-faces", "600", "--no-colors"]) == 0
    header = out.read_bytes()[:400].split(b"end_header")[0].decode()
    faces = int(next(line.split()[-1] for line in header.splitlines() if line.startswith("element face")))
    assert 540 <= faces <= 660


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


def test_output_that_is_the_input_is_refused(scene: bpy.types.Scene, tmp_path: Path, addon: ModuleType,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    src = _cloud(tmp_path)
    before = src.read_bytes()
    (tmp_path / "alias.ply").symlink_to(src)
    for output in (src, tmp_path / "alias.ply", tmp_path / "." / "in.ply"):
        assert addon.cli_command.run([str(src), str(output)]) == 2
        assert "is the input file" in capsys.readouterr().out
    assert src.read_bytes() == before and not bpy.data.objects  # refused before even importing


def test_unwritable_output_is_refused_before_the_reconstruction(scene: bpy.types.Scene, tmp_path: Path,
                                                                addon: ModuleType,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    src = _cloud(tmp_path)
    with read_only_folder(tmp_path / "ro") as folder:
        assert addon.cli_command.run([str(src), str(folder / "out.ply")]) == 2
    assert "cannot create files in" in capsys.readouterr().out
    assert not bpy.data.objects  # nothing imported, nothing reconstructed
    (tmp_path / "file").write_bytes(b"")
    assert addon.cli_command.run([str(src), str(tmp_path / "file" / "out.ply")]) == 2
    assert "cannot create the folder" in capsys.readouterr().out


@pytest.mark.parametrize("suffix", [".ply", ".blend"])  # Blender's PLY exporter hides the failure, its .blend save not
def test_full_disk_keeps_the_previous_output(scene: bpy.types.Scene, tmp_path: Path, addon: ModuleType,
                                             capsys: pytest.CaptureFixture[str], suffix: str) -> None:
    src = _cloud(tmp_path)
    with tiny_fs(tmp_path / "disk", "1m") as disk:
        out = disk / f"out{suffix}"
        out.write_bytes(b"last week's mesh " * 100)
        fill(disk, leave=16 * 1024)
        assert addon.cli_command.run([str(src), str(out), "--mise-iter", "0"]) == 2
        assert out.read_bytes() == b"last week's mesh " * 100
        assert sorted(p.name for p in disk.iterdir()) == ["filler", f"out{suffix}"]  # no temporary file left
    printed = capsys.readouterr().out
    assert "previous file is unchanged" in printed
    if suffix == ".ply":  # our check after the exporter; a .blend save's error text is Blender's own (4.2 differs)
        assert "No space left on device" in printed and "Free space" in printed


def test_out_of_range_options_are_refused_before_anything_is_imported(scene: bpy.types.Scene, tmp_path: Path,
                                                                      addon: ModuleType,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    before = set(bpy.data.objects)
    code = addon.cli_command.run([str(_cloud(tmp_path)), str(tmp_path / "out.ply"), "--mise-iter", "10"])
    assert code == 2
    assert "'mise_iter' must be an integer from 0 to 3" in capsys.readouterr().out
    assert set(bpy.data.objects) == before and not (tmp_path / "out.ply").exists()


def test_watertight_closes_the_unseen_underside(scene: bpy.types.Scene, tmp_path: Path, addon: ModuleType,
                                                capsys: object) -> None:
    """``--watertight`` reaches the engine: the cap the scan never saw is closed; without it, it stays open."""
    points, normals = sphere(3000, seed=5)
    seen = points[:, 2] > -0.7
    src = write_ply(tmp_path / "in.ply", points[seen], normals[seen], color_of(points[seen]))
    for flags, closed in (([], False), (["--watertight"], True)):
        out = tmp_path / f"out{len(flags)}.ply"
        assert addon.cli_command.run([str(src), str(out), "--mise-iter", "0", *flags]) == 0
        bpy.ops.wm.ply_import(filepath=str(out))
        mesh = bpy.context.selected_objects[0].data
        faces = np.array([p.vertices[:] for p in mesh.polygons])
        assert (boundary_edges(faces) == 0) is closed
