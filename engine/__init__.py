"""NKSR-style neural-kernel surface reconstruction engine (torch; never imports bpy).

``reconstruct(points, normals, colors=None, ...) -> Mesh`` is the API; ``python
-m engine reconstruct IN OUT`` the command line.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import Cancelled, EngineError, InputError  # noqa: E402
from .mesh import Mesh  # noqa: E402
from .pipeline import fit_field, reconstruct  # noqa: E402

__all__ = ["Cancelled", "EngineError", "InputError", "Mesh", "fit_field", "reconstruct", "__version__"]
