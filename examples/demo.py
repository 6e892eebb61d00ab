"""The main job (``python3 build.py demo``), through the real Blender module.

Builds the extension zip, installs it into a private Blender user folder
(out/blender-user, never the user's own Blender), imports the bundled example
cloud with Blender's PLY importer, runs ``nksr.reconstruct`` through the real
engine subprocess, and writes out/example.blend, out/example_mesh.ply and a
Workbench render, out/example_mesh.png.  Run it with .venv-blender's Python;
``NKSR_ENGINE_PYTHON`` names the engine's (build.py sets both).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out"
EXAMPLE = ROOT / "examples" / "trefoil.ply"
os.environ["BLENDER_USER_RESOURCES"] = str(OUT / "blender-user")

import bpy  # noqa: E402
from mathutils import Vector  # noqa: E402

sys.path.insert(0, str(ROOT))
import build  # noqa: E402


def install_extension() -> None:
    zip_path = build.build_extension(OUT / "dist")
    assert bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo="user_default",
                                                    enable_on_install=True, overwrite=True) == {"FINISHED"}


def frame_camera(target: bpy.types.Object, scene: bpy.types.Scene) -> None:
    """A camera looking down at the object from the front-left, its bounding sphere filling the frame."""
    corners = [target.matrix_world @ Vector(c) for c in target.bound_box]
    center = sum(corners, Vector()) / 8
    radius = max((c - center).length for c in corners)
    cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    scene.collection.objects.link(cam)
    cam.data.lens = 50
    direction = Vector((0.55, -1.0, 0.75)).normalized()
    fov = 2 * math.atan(cam.data.sensor_width / (2 * cam.data.lens))
    cam.location = center + direction * radius / math.sin(fov / 2) * 0.8
    cam.rotation_euler = (center - cam.location).to_track_quat("-Z", "Y").to_euler()
    scene.camera = cam


def render(scene: bpy.types.Scene, path: Path) -> None:
    scene.render.engine = "BLENDER_WORKBENCH"
    shading = scene.display.shading
    shading.light, shading.studio_light = "STUDIO", "paint.sl"
    shading.color_type = "VERTEX"
    shading.show_cavity, shading.cavity_type = True, "WORLD"
    scene.render.resolution_x, scene.render.resolution_y = 960, 720
    scene.render.film_transparent = False
    scene.world = scene.world or bpy.data.worlds.new("World")
    scene.world.color = (1.0, 1.0, 1.0)
    scene.render.image_settings.file_format = "PNG"
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)


def reconstruct(cloud: bpy.types.Object) -> bpy.types.Object:
    """Run ``nksr.reconstruct`` on the selection; hide the cloud from renders, print the summary, return the mesh."""
    t0 = time.perf_counter()
    bpy.ops.nksr.reconstruct()
    seconds = time.perf_counter() - t0
    mesh = bpy.context.view_layer.objects.active
    cloud.hide_render = True
    print(f"NKSR: {bpy.context.window_manager.nksr_run.last_summary} (operator {seconds:.1f} s incl. engine start)")
    return mesh


def main() -> int:
    OUT.mkdir(exist_ok=True)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    install_extension()
    scene = bpy.context.scene
    bpy.ops.wm.ply_import(filepath=str(EXAMPLE))
    cloud = bpy.context.selected_objects[0]
    mesh = reconstruct(cloud)
    bpy.ops.wm.save_as_mainfile(filepath=str(OUT / "example.blend"))
    cloud.select_set(False)
    mesh.select_set(True)
    bpy.ops.wm.ply_export(filepath=str(OUT / "example_mesh.ply"), export_selected_objects=True,
                          export_colors="LINEAR", export_normals=True)
    frame_camera(mesh, scene)
    render(scene, OUT / "example_mesh.png")
    print(f"wrote {OUT / 'example.blend'}, {OUT / 'example_mesh.ply'} and {OUT / 'example_mesh.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
