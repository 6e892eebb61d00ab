"""NKSR for Blender: the extension package (bpy side only: numpy + stdlib, never torch).

This package is the Blender half of the project.  It holds no features yet:
the sidebar panel, the ``nksr.reconstruct`` operator, engine management and
the headless CLI command are the work of the Blender-extension issue.  The
engine it will drive, in a separate process, is ``engine/`` at the top level.
"""

from __future__ import annotations


def register() -> None:
    """Blender calls this on enable; nothing is registered until the extension's operators exist."""


def unregister() -> None:
    """Blender calls this on disable."""
