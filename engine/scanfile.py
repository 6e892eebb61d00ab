"""A point-cloud file read for a reconstruction: the one path the CLI and the server's file request share.

Reading is more than :func:`engine.formats.read_cloud`: the sensor that
estimated normals face is the caller's (``--sensor``, the request's
``sensors``) or else the positions the file records, and a 3D Gaussian
Splatting file's splat axes are lines that need their side before they are
normals.  Torch loads only for those axes, and only once the file read well.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import formats
from .formats import splat
from .options import Options


@dataclass
class FileInput:
    """What :func:`engine.reconstruct` takes, read from a file, and how it was read.

    ``info`` holds ``read_dropped`` (rows the reader left out, by reason), ``sensor_source``
    (``"option"``, ``"file"`` or None) and, for splat files, ``axes_orientation``.
    """

    points: np.ndarray
    normals: np.ndarray | None
    colors: np.ndarray | None
    sensor: Any  # (3,) or (N, 3), or None: where estimated normals face
    info: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # "read" and, for splats, "orient_axes"


def read_input(path: str | Path, opts: Options, sensor: Any = None, *,
               splat_min_opacity: float = splat.MIN_OPACITY) -> FileInput:
    """The cloud in ``path`` ready to reconstruct; ``sensor`` (the caller's) wins over the file's own.

    Raises :class:`engine.errors.InputError` for an unreadable, unsupported or
    malformed file, and its :class:`~engine.errors.MissingPackageError` when the
    format's optional package is missing.
    """
    t = time.perf_counter()
    cloud = formats.read_cloud(path, splat_min_opacity=splat_min_opacity)
    if sensor is not None:
        source: str | None = "option"
    elif cloud.sensors is not None:
        sensor, source = cloud.sensors, "file"
    else:
        source = None
    read = FileInput(cloud.points, cloud.normals, cloud.colors, sensor,
                     {"read_dropped": cloud.dropped, "sensor_source": source},
                     {"read": time.perf_counter() - t})
    if read.normals is not None and not cloud.normals_oriented:  # splat axes: lines, each given its side here
        from .solver.normals import orient_axes

        t = time.perf_counter()
        read.normals, sides = orient_axes(read.normals, read.points, opts.normal_k, sensor, device=opts.device)
        read.info["axes_orientation"] = sides["normals_orientation"]
        read.seconds["orient_axes"] = time.perf_counter() - t
    return read
