"""Render one mesh file with Blender's Workbench from a fixed view (bench pictures; runs in .venv-blender).

    .venv-blender/bin/python bench/render_mesh.py MESH.ply OUT.png --direction DX DY DZ [--up z|-y]
    .venv-blender/bin/python bench/render_mesh.py MESH.ply OUT.png --eye X Y Z --up=-y

``--direction``: the camera looks at the mesh's bounding-box centre from that
direction, far enough that the bounding sphere fills the frame; ``--eye``: the
camera stands there (a scan's sensor) and looks at the centre.  ``--up`` names
the scene's up axis (-y for camera frames such as PCL's).  Solid colour with
cavity shading on a dark background, so pieces, holes and blobs show.
"""
from __future__ import annotations

import argparse
import math

import bpy
from mathutils import Matrix, Vector


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mesh")
    ap.add_argument("png")
    view = ap.add_mutually_exclusive_group(required=True)
    view.add_argument("--direction", type=float, nargs=3)
    view.add_argument("--eye", type=float, nargs=3)
    ap.add_argument("--up", choices=["z", "-y"], default="z")
    a = ap.parse_args()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.wm.ply_import(filepath=a.mesh)
    obj = bpy.context.selected_objects[0]
    scene = bpy.context.scene
    turn = Matrix.Rotation(-math.pi / 2, 4, "X") if a.up == "-y" else Matrix.Identity(4)  # the scene's -Y up
    obj.matrix_world = turn @ obj.matrix_world
    bpy.context.view_layer.update()
    corners = [obj.matrix_world @ Vector(c) for c in obj.bound_box]
    centre = sum(corners, Vector()) / 8
    radius = max((c - centre).length for c in corners)
    cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    scene.collection.objects.link(cam)
    cam.data.lens = 35
    cam.data.clip_end = radius * 20
    if a.eye is not None:
        cam.location = turn @ Vector(a.eye)
    else:
        fov = 2 * math.atan(cam.data.sensor_width / (2 * cam.data.lens))
        cam.location = centre + (turn.to_3x3() @ Vector(a.direction)).normalized() * radius / math.sin(fov / 2)
    cam.rotation_euler = (centre - cam.location).to_track_quat("-Z", "Y").to_euler()
    scene.camera = cam
    scene.render.engine = "BLENDER_WORKBENCH"
    shading = scene.display.shading
    shading.light, shading.studio_light = "STUDIO", "paint.sl"
    shading.color_type = "SINGLE"
    shading.single_color = (0.85, 0.78, 0.62)
    shading.show_cavity, shading.cavity_type = True, "WORLD"
    scene.render.resolution_x, scene.render.resolution_y = 640, 480
    scene.world = bpy.data.worlds.new("World")
    scene.world.color = (0.16, 0.17, 0.2)
    scene.render.image_settings.file_format = "PNG"
    scene.render.filepath = a.png
    bpy.ops.render.render(write_still=True)


if __name__ == "__main__":
    main()
