"""The 3D viewport's sidebar tab: settings, the Reconstruct button, progress and the last run's figures."""

from __future__ import annotations

import textwrap

import bpy

from . import settings

WARNING_WIDTH = 36  # characters per line of a warning: the sidebar's labels do not wrap, they are cut short


class NKSR_PT_reconstruct(bpy.types.Panel):
    bl_idname = "NKSR_PT_reconstruct"
    bl_label = "Surface Reconstruction"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "NKSR"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        panel = settings.panel_settings(context)
        state = settings.run_state(context)

        col = layout.column()
        col.prop(panel, "auto_detail")
        sub = col.column()
        sub.active = not panel.auto_detail and panel.voxel_size == 0
        sub.prop(panel, "detail_level", slider=True)
        col.prop(panel, "voxel_size")
        col.prop(panel, "auto_refinement")
        sub = col.column()
        sub.active = not panel.auto_refinement
        sub.prop(panel, "mise_iter")
        col.prop(panel, "max_faces")
        sub = col.column()
        sub.active = not panel.watertight  # watertight replaces trimming
        sub.prop(panel, "trim")
        col.prop(panel, "keep_fragments")
        col.prop(panel, "watertight")
        col.prop(panel, "register_views")
        col.prop(panel, "prior")
        col.prop(panel, "keep_colors")
        col.prop(panel, "estimate_normals")
        sub = col.column()
        sub.active = not panel.estimate_normals  # estimating replaces the given normals
        sub.prop(panel, "keep_normals")
        col.prop(panel, "viewpoint")
        col.prop(panel, "device")

        col = layout.column(heading="Large Scenes")
        col.prop(panel, "chunk_size")
        col.prop(panel, "overlap_ratio", slider=True)
        col.prop(panel, "memory_limit_gb")
        col.prop(panel, "workers")

        row = layout.row()
        row.scale_y = 1.4
        row.enabled = not state.running
        row.operator("nksr.reconstruct", icon="MESH_DATA")
        row = layout.row()
        row.enabled = not state.running
        row.operator("nksr.reconstruct_file", icon="FILE_FOLDER")  # the engine reads the file: no import first
        row = layout.row()
        row.enabled = not state.running
        row.operator("nksr.import_cloud", text="Import Point Cloud...", icon="IMPORT")
        if state.running:
            layout.progress(factor=state.fraction, text=f"{state.stage} {100 * state.fraction:.0f}%  (Esc cancels)")
        elif state.last_summary:
            box = layout.box()
            box.label(text="Last run", icon="INFO")
            box.label(text=f"Points in: {state.points_in:,}")
            box.label(text=f"Faces out: {state.faces_out:,}")
            box.label(text=f"Voxel size: {state.voxel_size:.4g}")
            box.label(text=f"Time: {state.seconds:.1f} s")
            if state.chunks:
                box.label(text=f"Chunks: {state.chunks}")
            for line in state.last_warnings.splitlines():  # the sidebar cuts a long label short: wrapped
                for i, part in enumerate(textwrap.wrap(line, WARNING_WIDTH)):
                    box.label(text=part, icon="ERROR" if i == 0 else "BLANK1")


CLASSES = (NKSR_PT_reconstruct,)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
