"""Typed errors of the engine: each says what is wrong and how to fix it.

Callers (the CLI, the protocol server, the Blender add-on) map these onto user
messages and exit codes; every one carries a ``hint`` for the user.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""

    code = "engine_error"

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()


class InputError(EngineError):
    """The point cloud or the options cannot be reconstructed as given."""

    code = "bad_input"


class TooFewPointsError(InputError):
    code = "too_few_points"


class DegenerateInputError(InputError):
    """All points lie on a line or a plane: no volume to close."""

    code = "degenerate_input"


class NoSurfaceError(InputError):
    """The points fill a volume (all stray points, a volume sample): there is no surface to close."""

    code = "no_surface"


class ShapeMismatchError(InputError):
    code = "shape_mismatch"


class MemoryLimitError(InputError):
    """The requested resolution would need more memory than allowed."""

    code = "memory_limit"


class Cancelled(EngineError):
    """The caller's cancel callback asked the engine to stop."""

    code = "cancelled"

    def __init__(self, message: str = "Reconstruction cancelled.", hint: str = "") -> None:
        super().__init__(message, hint)


class MissingPackageError(InputError):
    """A file format needs an optional package that is not installed."""

    code = "missing_package"
