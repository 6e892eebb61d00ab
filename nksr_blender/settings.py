"""The add-on's settings: the panel's per-scene options, the run's live state, and the preferences."""

from __future__ import annotations

from typing import Any

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from . import engine_link

VIEWPOINTS = [
    ("AUTO", "Automatic", "Estimated normals face outward on closed shapes and up on open patches"),
    ("CAMERA", "Active Camera", "Estimated normals face the scene's camera (where the scan was taken from)"),
    ("CURSOR", "3D Cursor", "Estimated normals face the 3D cursor (put it where the scanner stood)"),
]
PRIORS = [  # the engine's option ``prior`` (its values, upper-cased as Blender's enum identifiers are)
    ("LEARNED", "Learned", "Smoothness per region, predicted by a small network trained on simulated scans "
                           "(without its weights file the engine says so and uses None)"),
    ("NONE", "None", "One global smoothness weight for the whole fit"),
]
DEVICES = [
    ("AUTO", "Auto", "CUDA when the engine sees a GPU, else the CPU"),
    ("CPU", "CPU", "Always the CPU"),
    ("CUDA", "CUDA", "An NVIDIA GPU (fails clearly when the engine has none)"),
]

SPECS: dict[str, Any] = engine_link.options_api().SPECS


def _text(name: str, note: str = "") -> str:
    """The option's help as a tooltip (capitalised), with what is Blender's own about it."""
    text = SPECS[name].help
    return text[0].upper() + text[1:] + note


def _number(prop: Any, name: str, label: str, *, zero_unsets: bool = False, default: Any = None, note: str = "",
            **extra: Any) -> Any:
    """A Float/IntProperty with the option's range, default and help.

    A property cannot be empty: with ``zero_unsets`` its 0 stands for the option's unset value.
    """
    spec = SPECS[name]
    low = 0 if zero_unsets else spec.minimum
    bounds = {k: v for k, v in (("min", low), ("max", spec.maximum)) if v is not None}
    if default is None:
        default = 0 if spec.default is None else spec.default
    return prop(name=label, default=default,
                description=_text(name, "; 0 leaves it unset" if zero_unsets else note), **bounds, **extra)


def _flag(name: str, label: str) -> Any:
    return BoolProperty(name=label, default=SPECS[name].default, description=_text(name))


class ReconstructOptions:
    """The reconstruction options, defined once: the panel's settings and the operator's properties.

    Defaults, ranges and tooltips come from the engine's option table (``engine/options.py``); the
    operator takes the panel's value for every one a script did not set.
    """

    auto_detail: BoolProperty(  # type: ignore[valid-type]
        name="Automatic Detail", default=True,
        description="Choose the voxel size from the measured point spacing and noise")
    detail_level: _number(FloatProperty, "detail_level", "Detail", default=0.75)  # type: ignore[valid-type]
    voxel_size: _number(FloatProperty, "voxel_size", "Voxel Size", zero_unsets=True,  # type: ignore[valid-type]
                        subtype="DISTANCE", precision=4)
    auto_refinement: BoolProperty(  # type: ignore[valid-type]
        name="Automatic Refinement", default=True,
        description="Refine below the finest voxel where the surface bends (uniform rounds where it is noisy, rough "
                    "or creased), none for a noisy scan with sensor positions")
    mise_iter: _number(IntProperty, "mise_iter", "Refinement", default=1)  # type: ignore[valid-type]
    max_faces: _number(IntProperty, "max_faces", "Max Triangles", zero_unsets=True)  # type: ignore[valid-type]
    trim: _flag("trim", "Trim")  # type: ignore[valid-type]
    keep_fragments: _flag("keep_fragments", "Keep Fragments")  # type: ignore[valid-type]
    watertight: _flag("watertight", "Watertight")  # type: ignore[valid-type]
    register_views: _flag("register_views", "Register Views")  # type: ignore[valid-type]
    prior: EnumProperty(  # type: ignore[valid-type]
        name="Prior", items=PRIORS, default=SPECS["prior"].default.upper(), description=_text("prior"))
    keep_colors: BoolProperty(  # type: ignore[valid-type]
        name="Keep Colours", default=True, description="Carry the points' active colour onto the mesh")
    estimate_normals: _flag("estimate_normals", "Estimate Normals")  # type: ignore[valid-type]
    keep_normals: _flag("keep_normals", "Keep Normals")  # type: ignore[valid-type]
    viewpoint: EnumProperty(  # type: ignore[valid-type]
        name="Viewpoint", items=VIEWPOINTS, default="AUTO", description="Which way estimated normals face")
    device: EnumProperty(  # type: ignore[valid-type]
        name="Device", items=[("PREFERENCES", "Default", "The device set in the add-on preferences"), *DEVICES],
        default="PREFERENCES")
    chunk_size: _number(FloatProperty, "chunk_size", "Chunk Size", zero_unsets=True,  # type: ignore[valid-type]
                        subtype="DISTANCE", precision=2)
    overlap_ratio: _number(FloatProperty, "overlap_ratio", "Overlap", subtype="FACTOR")  # type: ignore[valid-type]
    memory_limit_gb: _number(FloatProperty, "memory_limit_gb", "Memory Limit (GB)",  # type: ignore[valid-type]
                             zero_unsets=True, precision=1)
    workers: _number(  # type: ignore[valid-type]
        IntProperty, "workers", "Parallel Chunks", default=1, soft_max=64,
        note="; more than 1 runs each in an engine process of its own, 1 in the engine itself")


class NKSR_Settings(ReconstructOptions, bpy.types.PropertyGroup):
    """What the sidebar panel edits (one per scene)."""


OPTION_NAMES = tuple(ReconstructOptions.__annotations__)


class NKSR_RunState(bpy.types.PropertyGroup):
    """The running job and the last run's figures (on the window manager: never saved, never undone)."""

    running: BoolProperty(default=False)  # type: ignore[valid-type]
    stage: StringProperty(default="")  # type: ignore[valid-type]
    fraction: FloatProperty(default=0.0, min=0.0, max=1.0, subtype="FACTOR")  # type: ignore[valid-type]
    last_summary: StringProperty(default="")  # type: ignore[valid-type]
    last_warnings: StringProperty(default="")  # type: ignore[valid-type]  # the engine's, one per line
    points_in: IntProperty(default=0)  # type: ignore[valid-type]
    faces_out: IntProperty(default=0)  # type: ignore[valid-type]
    voxel_size: FloatProperty(default=0.0)  # type: ignore[valid-type]
    seconds: FloatProperty(default=0.0)  # type: ignore[valid-type]
    chunks: IntProperty(default=0)  # type: ignore[valid-type]


class NKSR_Preferences(bpy.types.AddonPreferences):
    """Which Python runs the engine, its private environment, the default device and the log."""

    bl_idname = __package__

    engine_python: StringProperty(  # type: ignore[valid-type]
        name="Engine Python", subtype="FILE_PATH", default="",
        description="A Python interpreter with the engine's requirements (torch). "
                    f"{engine_link.ENV_VAR} overrides it; empty uses the private engine environment")
    device: EnumProperty(name="Default Device", items=DEVICES, default="AUTO")  # type: ignore[valid-type]
    engine_info: StringProperty(default="")  # type: ignore[valid-type]

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.prop(self, "engine_python")
        row = layout.row()
        row.operator("nksr.check_engine", icon="CHECKMARK")
        row.operator("nksr.setup_engine", icon="CONSOLE")
        for line in self.engine_info.splitlines():
            layout.label(text=line)
        layout.prop(self, "device")
        layout.label(text=f"Engine log: {engine_link.log_path()}")
        layout.label(text=f"Private environment: {engine_link.private_env()}")


def preferences(context: Any = None) -> Any:
    """This add-on's preferences, or None when it is not enabled as an add-on (e.g. loaded from source)."""
    context = context or bpy.context
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon is not None else None


def engine_python(context: Any = None) -> str:
    """The Engine Python preference ('' when unset, or when not enabled as an add-on)."""
    prefs = preferences(context)
    return prefs.engine_python if prefs is not None else ""


def panel_settings(context: bpy.types.Context) -> NKSR_Settings:
    """The scene's panel settings (a property this add-on registers, unknown to the type stubs)."""
    return context.scene.nksr


def run_state(context: bpy.types.Context) -> NKSR_RunState:
    """The running job's state and the last run's figures."""
    return context.window_manager.nksr_run


CLASSES = (NKSR_Settings, NKSR_RunState, NKSR_Preferences)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.nksr = PointerProperty(type=NKSR_Settings)  # type: ignore[attr-defined]
    bpy.types.WindowManager.nksr_run = PointerProperty(type=NKSR_RunState)  # type: ignore[attr-defined]


def unregister() -> None:
    del bpy.types.WindowManager.nksr_run  # type: ignore[attr-defined]
    del bpy.types.Scene.nksr  # type: ignore[attr-defined]
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
