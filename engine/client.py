"""Deprecated path: the client moved to :mod:`engine.service.client` (``from engine.service.client import
EngineClient``).  This module re-exports its public names and will be removed in a later version."""

from __future__ import annotations

import warnings

from .service.client import (  # noqa: F401
    ClientError,
    EngineClient,
    EngineCrashed,
    EngineStalled,
    EngineTimeout,
    EngineUnavailable,
    InvalidRequest,
    Job,
    Progress,
    RemoteError,
    Result,
)

warnings.warn("engine.client moved to engine.service.client; import it from there.", DeprecationWarning,
              stacklevel=2)
