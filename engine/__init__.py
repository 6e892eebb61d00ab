"""NKSR-style neural-kernel surface reconstruction engine (torch; never imports bpy).

``reconstruct(points, normals=None, colors=None, options=None, **overrides) -> Mesh``
is the API (options: :class:`Options`, the table in :mod:`engine.options`;
``estimate_normals(points, ...)`` gives the normals it would estimate);
``python -m engine reconstruct IN OUT`` the command line.

The package imports lazily (PEP 562): ``import engine`` and its light modules
need only the standard library and numpy, so the Blender side can use them
without torch.  The folders follow that boundary and what changes together:

- ``service/``: the engine as a process (protocol, client, server); light.
- ``formats/``: every point-cloud reader and mesh writer; light.
- ``solver/``: points to a fitted field (resolution, knn, normals, voxels, basis,
  hierarchy, system, cg, fitting); torch.
- ``surface/``: field to mesh (marching cubes, trimming, colours); torch.
- ``large/``: large scenes (partition into chunks, chunk tasks, blending, executors, workers,
  memory guard); torch.
- top level: the option table, errors, the Mesh type, input clouds, atomic output
  files, optional packages, progress (light); the device choice and the pipeline
  that sequences the stages (torch); the command line.

pyproject.toml (ruff TID253) lists the files that may import torch at module
level and tests/engine/test_architecture.py checks the rest load without it.
Every module imports its siblings relatively, so the package also works under
another name (the extension bundles it as ``nksr_blender.engine``).
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# torch's CPU allocator reads this once, at its first allocation, so it is set before anything here imports
# torch (a user's own setting stands): blocks of 2 MB and more are then advised to the kernel as transparent huge
# pages (Linux; ignored elsewhere), as NumPy does for its arrays.  The page faults of fresh 4 kB pages were half of
# the 1M-point bunny's meshing (4.2-4.9 s -> 2.3-2.6 s, the same peak memory); bench/README.md, session 17.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

_LAZY = {
    "Cancelled": ".errors", "EngineError": ".errors", "InputError": ".errors",
    "Mesh": ".mesh", "Options": ".options", "estimate_normals": ".solver.normals",
    "fit_field": ".pipeline", "reconstruct": ".pipeline",
}

if TYPE_CHECKING:
    from .errors import Cancelled, EngineError, InputError
    from .mesh import Mesh
    from .options import Options
    from .pipeline import fit_field, reconstruct
    from .solver.normals import estimate_normals


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Cancelled", "EngineError", "InputError", "Mesh", "Options", "estimate_normals", "fit_field", "reconstruct",
           "__version__"]
