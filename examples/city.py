"""A large-scene example through Blender: the synthetic city, reconstructed in chunks, rendered.

    NKSR_ENGINE_PYTHON=.venv/bin/python .venv-blender/bin/python examples/city.py [--points 400000]

Makes a point-cloud object (loose vertices with ``normal`` and colour
attributes) of the city of ``tests/shapes.py`` (100 m x 100 m: terrain,
buildings, thin poles), sets the panel's Large Scenes options (Chunk Size
25 m), runs ``nksr.reconstruct`` through the installed extension and the
engine process, and writes out/city.blend and a Workbench render,
out/city_mesh.png (the README's picture of a chunked result).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
os.environ["BLENDER_USER_RESOURCES"] = str(ROOT / "out" / "blender-user")  # before bpy, as demo.py does
sys.path[:0] = [str(ROOT / "examples"), str(ROOT)]

import bpy  # noqa: E402
import demo  # noqa: E402

from tests.shapes import city  # noqa: E402


def point_cloud(points: np.ndarray, normals: np.ndarray, colors: np.ndarray) -> bpy.types.Object:
    """A mesh of loose vertices with ``normal`` and an active colour attribute, as Blender's PLY importer makes."""
    mesh = bpy.data.meshes.new("city_scan")
    mesh.vertices.add(len(points))
    mesh.attributes["position"].data.foreach_set("vector", points.astype(np.float32).ravel())
    mesh.attributes.new("normal", "FLOAT_VECTOR", "POINT").data.foreach_set(
        "vector", normals.astype(np.float32).ravel())
    rgba = np.hstack([colors, np.ones((len(colors), 1))]).astype(np.float32)
    color = mesh.color_attributes.new("Col", "FLOAT_COLOR", "POINT")
    color.data.foreach_set("color", rgba.ravel())
    mesh.color_attributes.active_color = color
    obj = bpy.data.objects.new("city_scan", mesh)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    return obj


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=400_000)
    ap.add_argument("--chunk-size", type=float, default=25.0)
    args = ap.parse_args()
    demo.OUT.mkdir(exist_ok=True)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    demo.install_extension()
    scene = bpy.context.scene
    cloud = point_cloud(*city(args.points, size=100.0))
    scene.nksr.chunk_size = args.chunk_size
    mesh = demo.reconstruct(cloud)
    bpy.ops.wm.save_as_mainfile(filepath=str(demo.OUT / "city.blend"))
    demo.frame_camera(mesh, scene)
    demo.render(scene, demo.OUT / "city_mesh.png")
    print(f"wrote {demo.OUT / 'city.blend'} and {demo.OUT / 'city_mesh.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
