"""*File > Import > Point Cloud (NKSR)*: any file the engine reads becomes a point-cloud object.

Blender itself imports PLY and OBJ only; the engine reads PLY (3DGS splats too),
PCD, LAS/LAZ, XYZ/PTS/CSV, NPY/NPZ and E57.  The operator sends the file's path
in a ``read`` request; the engine reads, subsamples and sends the arrays back,
float32 relative to a float64 offset (:mod:`engine.importing`), so a
georeferenced scan keeps its precision: the points stay near the object's
origin and the offset becomes the object's location (and its ``nksr_offset``
property).  On Blender 4.5+ the object is a Point Cloud; before, a mesh of loose
vertices.  Both carry ``normal`` and ``sensor`` (FLOAT_VECTOR, point domain)
and a ``Color`` attribute when the file has them, which is what
``nksr.reconstruct`` reads.  Nothing touches the scene until the cloud has
arrived whole, so a failed or cancelled import leaves it as it was.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import bpy
import numpy as np

from . import engine_link, settings
from .operators import ModalOperator, RunError, started_client

OFFSET_PROPERTY = "nksr_offset"


def suffixes() -> tuple[str, ...]:
    """The file suffixes the engine reads (``engine.suffixes.CLOUD_INPUTS``)."""
    return tuple(engine_link.engine_module("suffixes").CLOUD_INPUTS)


def makes_point_clouds() -> bool:
    """True where an import becomes a Point Cloud object: Blender 4.5+, which converts meshes to point clouds
    (``bpy.data.pointclouds`` has no way to add points from Python, even in 5.0, so the points go through a
    mesh); before 4.5 point clouds are experimental and the import stays a mesh of loose vertices."""
    if bpy.app.version < (4, 5, 0):
        return False
    convert: Any = bpy.ops.object.convert
    return "POINTCLOUD" in convert.get_rna_type().properties["target"].enum_items.keys()


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """Files store display (sRGB) colours; Blender's colour attributes are linear (as its PLY importer does)."""
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def display_radius(points: np.ndarray) -> float:
    """Half the spacing of a surface sampled by ``points`` over its bounding box, about diagonal / sqrt(N):
    drawn points then just touch (Blender's fixed default, 0.01, is a blob on a small object and dust on a site)."""
    finite = points[np.isfinite(points).all(axis=1)]
    if len(finite) < 2:
        return 0.01
    diagonal = float(np.linalg.norm(finite.max(axis=0) - finite.min(axis=0)))
    return 0.5 * diagonal / np.sqrt(len(finite)) if diagonal > 0 else 0.01


@dataclass
class ImportRun:
    """One file read by the engine: the :class:`task.Work` of the import operator (modal or blocking)."""

    path: str
    options: dict[str, Any]
    client: Any = None
    job: Any = None
    result: Any = None
    started: float = field(default_factory=time.perf_counter)
    restart: Any = None  # a started client when the quick start failed (modal path)

    def status(self) -> tuple[str, float]:
        if self.job is None:
            return "starting the engine", 0.0
        progress = self.job.progress
        return (progress.stage, progress.fraction) if progress is not None else ("sending", 0.0)

    def start(self, client: Any) -> None:
        self.client = client
        if client.running:
            self.job = client.submit_read(self.path, **self.options)

    def tick(self) -> bool:
        try:
            if self.job is None:
                if self.client.poll_start() is None:
                    return False
                self.job = self.client.submit_read(self.path, **self.options)
        except engine_link.client_api().EngineUnavailable:
            if self.restart is None:
                raise
            self.start(self.restart())
            return False
        self.job.poll()
        if self.job.done:
            self.result = self.job.result
        return self.job.done

    def cancel(self, wait: bool = True) -> None:
        if self.job is not None:
            self.job.cancel(grace=3.0, wait=wait)
        elif self.client is not None and not self.client.running:
            self.client.close()

    def settle(self) -> bool:
        if self.job is not None:
            self.job.poll()
        return self.job is None or self.job.done

    def run_blocking(self) -> None:
        last = ""

        def show(stage: str, fraction: float, text: str) -> None:
            nonlocal last
            if stage != last:
                print(f"NKSR import {Path(self.path).name}: {stage} ({text})", flush=True)
                last = stage

        self.result = self.client.read_file(self.path, on_progress=show, **self.options)


def build_object(context: bpy.types.Context, name: str, cloud: Any) -> bpy.types.Object:
    """A new object for ``cloud`` (an ImportedCloud) in the active collection, selected and active; all or
    nothing: a failure removes what was made."""
    count = len(cloud.points)
    mesh: Any = bpy.data.meshes.new(name)
    obj: Any = None
    try:
        mesh.vertices.add(count)
        mesh.attributes["position"].data.foreach_set("vector", np.ascontiguousarray(cloud.points, np.float32).ravel())
        for attr_name, values in (("normal", cloud.normals), ("sensor", cloud.sensors)):
            if values is not None:
                attr = mesh.attributes.new(attr_name, "FLOAT_VECTOR", "POINT")
                attr.data.foreach_set("vector", np.ascontiguousarray(values, np.float32).ravel())
        if cloud.colors is not None:
            rgba = np.ascontiguousarray(cloud.colors, np.float32).copy()
            rgba[:, :3] = srgb_to_linear(rgba[:, :3])
            attr = mesh.color_attributes.new("Color", "FLOAT_COLOR", "POINT")
            attr.data.foreach_set("color", rgba.ravel())
            mesh.color_attributes.active_color = attr
        mesh.update()
        obj = bpy.data.objects.new(name, mesh)
        context.collection.objects.link(obj)
        if makes_point_clouds():
            try:
                with context.temp_override(object=obj, active_object=obj, selected_objects=[obj],
                                           selected_editable_objects=[obj]):
                    bpy.ops.object.convert(target="POINTCLOUD")
            except RuntimeError as exc:  # e.g. another object in Edit Mode: the import stays a vertex mesh
                print(f"NKSR: {name} stays a mesh of loose vertices ({exc})", flush=True)
            if obj.type == "POINTCLOUD":
                bpy.data.meshes.remove(mesh)  # the conversion leaves the mesh behind, unused
                mesh = None
                radius = obj.data.attributes.new("radius", "FLOAT", "POINT")
                radius.data.foreach_set("value", np.full(count, display_radius(cloud.points), np.float32))
        obj.location = [float(v) for v in cloud.offset]
        obj[OFFSET_PROPERTY] = [float(v) for v in cloud.offset]
    except BaseException:
        if obj is not None:
            data = obj.data
            bpy.data.objects.remove(obj)
            if isinstance(data, bpy.types.PointCloud):
                bpy.data.pointclouds.remove(data)
        if mesh is not None:
            bpy.data.meshes.remove(mesh)
        raise
    for selected in context.selected_objects:
        selected.select_set(False)
    obj.select_set(True)
    context.view_layer.objects.active = obj
    return obj


class NKSR_OT_import_cloud(ModalOperator, bpy.types.Operator):
    """Import a point cloud from any file the NKSR engine reads (PLY, 3DGS splats, PCD, LAS/LAZ, XYZ/PTS/CSV, NPY/NPZ, E57)"""  # noqa: E501

    bl_idname = "nksr.import_cloud"
    bl_label = "Point Cloud (NKSR)"
    bl_options = {"REGISTER", "UNDO"}

    cancelled_report = "NKSR: import cancelled; the scene is unchanged."

    filepath: bpy.props.StringProperty(  # type: ignore[valid-type]
        name="File Path", subtype="FILE_PATH", description="The point-cloud file to import")
    filter_glob: bpy.props.StringProperty(  # type: ignore[valid-type]
        default=engine_link.engine_module("suffixes").glob(), options={"HIDDEN"})
    subsample: bpy.props.EnumProperty(  # type: ignore[valid-type]
        name="Subsample", default="NONE", description="Keep fewer points than the file holds",
        items=[("NONE", "All Points", "Keep every point of the file"),
               ("EVERY", "Every k-th Point", "Keep every k-th point, in file order"),
               ("VOXEL", "Voxel Grid", "Keep one point per cube of the given size (file units)")])
    every: bpy.props.IntProperty(  # type: ignore[valid-type]
        name="Every", default=10, min=1, description="With Every k-th Point: keep one point in this many")
    voxel_size: bpy.props.FloatProperty(  # type: ignore[valid-type]
        name="Voxel Size", default=0.01, min=0.0, precision=4,
        description="With Voxel Grid: the edge of the cubes that keep one point each, in the file's units")

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> Any:
        """The file browser first (filtered to the engine's formats); it calls execute, which runs modal."""
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def _options(self) -> dict[str, Any]:
        if self.subsample == "EVERY":
            return {"every": int(self.every)}
        if self.subsample == "VOXEL":
            return {"voxel_size": float(self.voxel_size)}
        return {}

    def _failures(self) -> tuple[type[Exception], ...]:
        return RunError, engine_link.EngineSetupError, engine_link.client_api().ClientError

    def _begin(self, context: bpy.types.Context, modal: bool) -> ImportRun:
        path = bpy.path.abspath(self.filepath)
        if not self.filepath or not os.path.isfile(path):
            raise RunError(f"{path or 'No file'}: no such file. Choose a point-cloud file to import.")
        try:
            options = engine_link.engine_module("importing").check_import_options(self._options())
        except engine_link.options_api().OptionError as exc:
            raise RunError(f"{Path(path).name}: {exc}") from exc
        run = ImportRun(path, options)
        preference = settings.engine_python(context)
        if not modal:
            run.client = started_client(preference)
            return run
        run.restart = partial(started_client, preference)
        run.start(engine_link.session.begin(preference))
        return run

    def _finish(self, context: bpy.types.Context, work: ImportRun) -> str:
        cloud = work.result
        obj = build_object(context, Path(work.path).stem, cloud)
        kept = f"{len(cloud.points):,}" + (f" of {cloud.total:,}" if cloud.total != len(cloud.points) else "")
        dropped = ", ".join(f"{n:,} {k.replace('_', ' ')}" for k, n in cloud.dropped.items() if n)
        return (f"NKSR: imported {kept} points from {Path(work.path).name} ({cloud.format}) as '{obj.name}'"
                + (f"; left out {dropped}" if dropped else "") + f", {time.perf_counter() - work.started:.1f} s")

    def _progress(self, work: ImportRun) -> tuple[str, float]:
        stage, fraction = work.status()
        return f"NKSR import {Path(work.path).name}: {stage}", fraction

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.use_property_split = True
        layout.prop(self, "subsample")
        if self.subsample == "EVERY":
            layout.prop(self, "every")
        elif self.subsample == "VOXEL":
            layout.prop(self, "voxel_size")


def menu_entry(self: Any, context: bpy.types.Context) -> None:
    self.layout.operator(NKSR_OT_import_cloud.bl_idname, text="Point Cloud (NKSR)")


CLASSES = (NKSR_OT_import_cloud,)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.TOPBAR_MT_file_import.append(menu_entry)


def unregister() -> None:
    bpy.types.TOPBAR_MT_file_import.remove(menu_entry)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
