"""*File > Import > Point Cloud (NKSR)* through the real bpy module and the real engine: files the engine reads
become point-cloud objects (a mesh of loose vertices before Blender 4.5) that Reconstruct takes."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from types import ModuleType

import bpy
import numpy as np
import pytest

from tests.shapes import sphere

from .conftest import write_ply
from .scenes import mesh_arrays, srgb_to_linear

GEO = np.array([652_345.25, 5_412_987.5, 312.75])  # a georeferenced place: float32 keeps 0.5 steps there


def state() -> dict[str, list[str]]:
    """Every datablock an import could leave behind."""
    return {kind: sorted(d.name for d in getattr(bpy.data, kind)) for kind in ("objects", "meshes", "pointclouds")}


def attribute(obj: bpy.types.Object, name: str, width: int = 3) -> np.ndarray:
    data = obj.data
    attr = data.attributes[name]
    assert attr.domain == "POINT"
    field = {"FLOAT_COLOR": "color", "FLOAT": "value"}.get(attr.data_type, "vector")
    values = np.empty(len(attr.data) * width, np.float32)
    attr.data.foreach_get(field, values)
    return values.reshape(-1, width)


def imported(path: Path, **options: object) -> bpy.types.Object:
    assert bpy.ops.nksr.import_cloud(filepath=str(path), **options) == {"FINISHED"}
    obj = bpy.context.view_layer.objects.active
    assert obj is not None and obj.name.startswith(path.stem) and obj.select_get()
    assert obj.type == ("POINTCLOUD" if bpy.app.version >= (4, 5, 0) else "MESH")
    return obj


def test_ply_with_normals_and_colours(scene: bpy.types.Scene, tmp_path: Path) -> None:
    points, normals = sphere(400)
    colors = np.clip(np.abs(normals), 0, 1)
    obj = imported(write_ply(tmp_path / "ball.ply", points, normals, colors))
    assert np.allclose(attribute(obj, "position"), points, atol=1e-6)
    assert np.allclose(attribute(obj, "normal"), normals, atol=1e-6)
    assert np.allclose(attribute(obj, "Color", 4)[:, :3], srgb_to_linear(np.round(colors * 255) / 255), atol=1e-5)
    assert "sensor" not in obj.data.attributes
    if obj.type == "POINTCLOUD":  # drawn at about the point spacing (the unit sphere's is about 0.18)
        assert 0.05 < attribute(obj, "radius", 1).mean() < 0.15
    assert tuple(obj.location) == (0, 0, 0) and list(obj["nksr_offset"]) == [0, 0, 0]
    # Reconstruct takes its normals and colours (a Point Cloud's colour attributes have no active one).
    assert bpy.ops.nksr.reconstruct(detail_level=0.3, mise_iter=0) == {"FINISHED"}
    made = bpy.context.view_layer.objects.active
    assert made.type == "MESH" and "Color" in made.data.color_attributes


def test_pcd_with_a_viewpoint_gives_sensors(scene: bpy.types.Scene, tmp_path: Path) -> None:
    points, normals = sphere(300)
    header = ["VERSION .7", "FIELDS x y z normal_x normal_y normal_z", "SIZE 4 4 4 4 4 4", "TYPE F F F F F F",
              "COUNT 1 1 1 1 1 1", f"WIDTH {len(points)}", "HEIGHT 1", "VIEWPOINT 0 0 5 1 0 0 0",
              f"POINTS {len(points)}", "DATA ascii"]
    path = tmp_path / "scan.pcd"
    path.write_text("\n".join(header) + "\n")
    with path.open("a") as out:
        np.savetxt(out, np.hstack([points, normals]), fmt="%.9g")
    obj = imported(path)
    assert np.allclose(attribute(obj, "position"), points, atol=1e-6)
    assert np.allclose(attribute(obj, "normal"), normals, atol=1e-6)
    assert np.allclose(attribute(obj, "sensor"), [0, 0, 5], atol=1e-6)


def sensor_npy(path: Path, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """A georeferenced radius-2 sphere in a structured NPY with per-point sensors outside it."""
    points, normals = sphere(n, radius=2.0)
    world, sensors = points + GEO, points + 3 * normals + GEO
    data = np.zeros(n, dtype=[(c, "f8") for c in ("x", "y", "z", "sx", "sy", "sz")])
    for i, c in enumerate("xyz"):
        data[c], data["s" + c] = world[:, i], sensors[:, i]
    np.save(path, data)
    return world, sensors


def test_npy_with_sensors_far_away_keeps_its_precision(scene: bpy.types.Scene, tmp_path: Path) -> None:
    world, sensors = sensor_npy(tmp_path / "site.npy", 500)
    obj = imported(tmp_path / "site.npy")
    offset = np.array(obj["nksr_offset"])
    assert np.array_equal(offset, np.round(0.5 * (world.min(axis=0) + world.max(axis=0))))
    assert np.allclose(np.array(obj.location), offset)  # the points sit where the file has them
    assert np.abs(offset + attribute(obj, "position") - world).max() < 1e-5
    assert np.abs(offset + attribute(obj, "sensor") - sensors).max() < 1e-5
    assert "normal" not in obj.data.attributes


def test_georeferenced_las(scene: bpy.types.Scene, tmp_path: Path) -> None:
    """Written by the engine's Python, which has laspy (this environment has not)."""
    points, _ = sphere(500, radius=5.0)
    world = np.round(points + GEO, 3)
    np.save(tmp_path / "pts.npy", world)
    script = ("import sys, numpy as np, laspy\n"
              "p = np.load(sys.argv[1]); h = laspy.LasHeader(point_format=3, version='1.2')\n"
              "h.offsets = p.min(axis=0); h.scales = [0.001] * 3\n"
              "las = laspy.LasData(h); las.x, las.y, las.z = p.T; las.write(sys.argv[2])\n")
    done = subprocess.run([os.environ["NKSR_ENGINE_PYTHON"], "-c", script, str(tmp_path / "pts.npy"),
                           str(tmp_path / "site.las")], capture_output=True, text=True)
    if done.returncode and "No module named 'laspy'" in done.stderr:
        pytest.skip("the engine's Python has no laspy")
    assert done.returncode == 0, done.stderr
    obj = imported(tmp_path / "site.las")
    offset = np.array(obj["nksr_offset"])
    assert np.abs(offset - GEO).max() < 6 and np.allclose(np.array(obj.location), offset)
    assert np.abs(offset + attribute(obj, "position") - world).max() < 1e-5


def test_subsampling(scene: bpy.types.Scene, tmp_path: Path) -> None:
    points = np.random.default_rng(0).random((2000, 3)) * 4
    np.save(tmp_path / "r.npy", points)
    obj = imported(tmp_path / "r.npy", subsample="EVERY", every=5)
    assert np.allclose(attribute(obj, "position"), points[::5], atol=1e-6)
    obj = imported(tmp_path / "r.npy", subsample="VOXEL", voxel_size=1.0)
    assert len(attribute(obj, "position")) == len(np.unique(np.floor(points - points.min(axis=0)), axis=0)) == 64


def test_bad_files_and_options_leave_the_scene_as_it_was(scene: bpy.types.Scene, tmp_path: Path) -> None:
    bpy.ops.mesh.primitive_cube_add()
    before = state()
    (tmp_path / "junk.ply").write_bytes(b"this is no ply\n" * 20)
    np.save(tmp_path / "r.npy", np.random.default_rng(0).random((100, 3)))
    for path, options, pattern in [(tmp_path / "junk.ply", {}, "junk.ply: not a readable PLY"),
                                   (tmp_path / "gone.e57", {}, "gone.e57: no such file"),
                                   (tmp_path / "r.npy", {"subsample": "VOXEL", "voxel_size": 0.0}, "voxel_size")]:
        with pytest.raises(RuntimeError, match=pattern):
            bpy.ops.nksr.import_cloud(filepath=str(path), **options)
        assert state() == before


def _start_modal(addon: ModuleType, monkeypatch: pytest.MonkeyPatch, path: Path, **options: object) -> object:
    """``nksr.import_cloud`` on its modal path (as after the file browser): the running operator.

    Background mode never ticks timers, so the test ticks the operator's task as its timer would.
    """
    addon.engine_link.session.client_for("")  # a warm engine: the read is submitted at once
    window = bpy.context.window_manager.windows[0]
    running = {o.as_pointer() for o in window.modal_operators}  # an earlier test's, until a file load drops them
    with monkeypatch.context() as patch:
        patch.setattr(addon.operators, "is_modal", lambda op, context: True)
        with bpy.context.temp_override(window=window):
            t0 = time.perf_counter()
            assert bpy.ops.nksr.import_cloud(filepath=str(path), **options) == {"RUNNING_MODAL"}
            assert time.perf_counter() - t0 < 0.5  # the read runs in the engine, not in Blender's thread
    (op,) = [o for o in window.modal_operators if isinstance(o, addon.importer.NKSR_OT_import_cloud)
             and o.as_pointer() not in running]
    return op


def _tick_until_ended(op: object) -> None:
    deadline = time.monotonic() + 60
    while not op._task.ended:
        op._task.tick()
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_esc_cancels_and_leaves_the_scene_as_it_was(scene: bpy.types.Scene, tmp_path: Path, addon: ModuleType,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    np.save(tmp_path / "big.npy", np.random.default_rng(0).random((3_000_000, 3)))
    before = state()
    op = _start_modal(addon, monkeypatch, tmp_path / "big.npy", subsample="VOXEL", voxel_size=0.001)
    run = op._task.work
    assert op._task.escape()  # what Esc does
    _tick_until_ended(op)
    assert op._task.state is addon.task.State.CANCELLED and state() == before
    assert run.job.error is not None and run.job.error.code == "cancelled"  # the engine stopped the read
    with bpy.context.temp_override(window=bpy.context.window_manager.windows[0]):
        op.cancel(bpy.context)  # Blender drops the handler: the timer goes, nothing else happens
    assert op._timer is None and state() == before


def test_the_modal_path_imports(scene: bpy.types.Scene, tmp_path: Path, addon: ModuleType,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    points = np.random.default_rng(4).random((1000, 3))
    np.save(tmp_path / "m.npy", points)
    op = _start_modal(addon, monkeypatch, tmp_path / "m.npy", subsample="EVERY", every=2)
    stage = op._progress(op._task.work)[0]
    assert stage.startswith("NKSR import m.npy")
    _tick_until_ended(op)
    assert op._task.state is addon.task.State.FINISHED
    with bpy.context.temp_override(window=bpy.context.window_manager.windows[0]):
        report = op._finish(bpy.context, op._task.work)
        op.cancel(bpy.context)  # a no-op once ended, but removes the timer
    assert "500 of 1,000 points" in report
    obj = bpy.context.view_layer.objects.active
    assert obj.name == "m" and np.allclose(attribute(obj, "position"), points[::2], atol=1e-6)


def test_reconstruct_of_an_imported_cloud_lines_up(scene: bpy.types.Scene, tmp_path: Path,
                                                   addon: ModuleType) -> None:
    """Far from the origin, with per-point sensors (no normals): the mesh lies on the points in world space,
    also after the object is moved."""
    world, sensors = sensor_npy(tmp_path / "site.npy")
    obj = imported(tmp_path / "site.npy")
    read = addon.scene_io.read_point_set(obj, bpy.context.evaluated_depsgraph_get())
    assert read.sensors is not None and np.abs(read.sensors + read.center - sensors).max() < 1e-3
    obj.location.z += 10.0
    bpy.context.view_layer.update()
    assert bpy.ops.nksr.reconstruct(mise_iter=0) == {"FINISHED"}
    made = bpy.context.view_layer.objects.active
    assert made is not obj and made.type == "MESH"
    local, _ = mesh_arrays(made)
    matrix = np.array(made.matrix_world)
    mesh_world = local.astype(np.float64) @ matrix[:3, :3].T + matrix[:3, 3]
    voxel = addon.settings.run_state(bpy.context).voxel_size
    radius = np.linalg.norm(mesh_world - (GEO + [0, 0, 10.0]), axis=1)  # the sphere, moved with the object
    assert len(radius) > 500 and np.abs(radius - 2.0).max() < 2 * voxel, (np.abs(radius - 2.0).max(), voxel)
