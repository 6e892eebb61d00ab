"""Packages that only some file formats need: imported when such a file is read or written.

Pinned in requirements/formats.txt; the engine runs without them, and asking
for their format then says what to install instead of failing on import.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingPackageError


def import_optional(module: str, purpose: str, pip: str) -> ModuleType:
    """``module`` imported, or a :class:`MissingPackageError` naming the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingPackageError(
            f"{purpose} needs the optional package {pip.split()[0]}, which is not installed.",
            f"Install it into the engine's Python: pip install {pip} "
            "(pinned versions: requirements/formats.txt).") from None
