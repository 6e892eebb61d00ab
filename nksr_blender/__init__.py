"""NKSR for Blender: point clouds to meshes with a neural-kernel surface solver.

The Blender half of the project (bpy, numpy and the standard library; never
torch).  It reads the selected point clouds, sends them to the engine, a
separate Python process with torch (``engine_link``), and adds the meshes it
returns.  Modules: ``settings`` (panel options, run state, preferences),
``scene_io`` (arrays out of objects, meshes back in), ``operators``
(``nksr.reconstruct`` and the engine set-up), ``importer`` (*File > Import >
Point Cloud (NKSR)*: any format the engine reads), ``panel`` (the sidebar tab) and
``cli_command`` (``blender --background --command nksr``).
"""

from __future__ import annotations

from . import cli_command, engine_link, importer, operators, panel, settings

_MODULES = (settings, operators, importer, panel, cli_command)


def register() -> None:
    for module in _MODULES:
        module.register()


def unregister() -> None:
    for module in reversed(_MODULES):
        module.unregister()
    engine_link.session.shutdown()
