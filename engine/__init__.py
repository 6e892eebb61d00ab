"""NKSR-style neural-kernel surface reconstruction engine (torch; never imports bpy).

``reconstruct(points, normals=None, colors=None, ...) -> Mesh`` is the API
(``estimate_normals(points, ...)`` gives the normals it would estimate);
``python -m engine reconstruct IN OUT`` the command line.

The package imports lazily (PEP 562): ``import engine`` and its light modules
(the wire protocol, the client) need only the standard library and numpy, so the
Blender side can use them without torch.  Every module imports its siblings
relatively, so the package also works under another name (the extension bundles
it as ``nksr_blender.engine``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Cancelled": ".errors", "EngineError": ".errors", "InputError": ".errors",
    "Mesh": ".mesh", "estimate_normals": ".solver.normals", "fit_field": ".pipeline", "reconstruct": ".pipeline",
}

if TYPE_CHECKING:
    from .errors import Cancelled, EngineError, InputError
    from .mesh import Mesh
    from .pipeline import fit_field, reconstruct
    from .solver.normals import estimate_normals


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Cancelled", "EngineError", "InputError", "Mesh", "estimate_normals", "fit_field", "reconstruct",
           "__version__"]
