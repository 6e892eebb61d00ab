"""Ground-truth meshes and cached, seeded point-cloud inputs (runs in the benchenv)."""
from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from geom import bbox_diagonal, sample_surface
from plyio import read_ply, write_ply

SHAPES = ("bunny", "sphere", "torus")
CAD_SHAPES = ("box", "rounded_box", "dumbbell")  # also accepted by --shapes


def bunny_path() -> Path:
    """The Stanford bunny shipped inside the pymeshlab wheel."""
    import pymeshlab

    return Path(pymeshlab.__file__).parent / "tests" / "sample_meshes" / "bunny.obj"


def build_gt(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Build a ground-truth mesh (vertices float64, faces int64) by name."""
    if name in CAD_SHAPES:  # the scan simulator's meshes: sharp edges and corners (box), a thin bar (dumbbell)
        from scanner import PROCEDURAL

        return PROCEDURAL[name]()
    import open3d as o3d

    if name == "bunny":
        m = o3d.io.read_triangle_mesh(str(bunny_path()))
    elif name == "sphere":
        m = o3d.geometry.TriangleMesh.create_sphere(radius=1.0, resolution=160)
    elif name == "torus":
        m = o3d.geometry.TriangleMesh.create_torus(
            torus_radius=1.0, tube_radius=0.35, radial_resolution=320, tubular_resolution=120
        )
    else:
        raise ValueError(f"unknown shape {name!r}")
    v, f = np.asarray(m.vertices, np.float64), np.asarray(m.triangles, np.int64)
    if len(f) == 0:
        raise RuntimeError(f"could not load ground truth {name!r}")
    return v, f


def gt_mesh(name: str, work: Path) -> tuple[np.ndarray, np.ndarray]:
    """Cached ground-truth mesh as float32 vertices / int64 faces (PLY in work dir)."""
    path = work / f"gt_{name}.ply"
    if not path.exists():
        write_ply(path, *build_gt(name))
    return read_ply(path)


@dataclass(frozen=True)
class Case:
    """Perturbation of an input: position noise (fraction of diagonal), normal tilt (deg), or a simulated scan.

    ``preset`` names a scan simulator preset (scanner.PRESETS): the input is then a scan
    of the shape instead of area samples; ``normals`` False drops the input's normals
    (ours estimates them, Poisson gets Open3D's estimate).
    """

    name: str
    pos_sigma: float = 0.0
    ang_deg: float = 0.0
    preset: str | None = None
    normals: bool = True


SCAN_PREFIX = "scan:"  # 'scan:scanner+outliers' is a simulated scan with that preset
NO_NORMALS = ":nonormals"  # suffix: the same input without its normals


def parse_case(name: str) -> Case:
    """'clean', 'n0.5' (sigma = 0.5% of diag), 'ang10' (10 deg tilt), 'n0.5+ang10', or a scan.

    Scans: 'scan:PRESET' with a preset of bench/scanner.py (scan:scanner, scan:scanner+outliers);
    any case may end in ':nonormals'.
    """
    if name.endswith(NO_NORMALS):
        return replace(parse_case(name[: -len(NO_NORMALS)]), name=name, normals=False)
    if name.startswith(SCAN_PREFIX):
        import scanner

        preset = name[len(SCAN_PREFIX):]
        if preset not in scanner.PRESETS:
            raise ValueError(f"bad case {name!r}: presets are {', '.join(scanner.PRESETS)}")
        return Case(name, preset=preset)
    pos, ang = 0.0, 0.0
    for part in name.split("+"):
        if part == "clean":
            continue
        if part.startswith("ang"):
            ang = float(part[3:])
        elif part.startswith("n"):
            pos = float(part[1:]) / 100.0
        else:
            raise ValueError(f"bad case {name!r}")
    return Case(name, pos, ang)


def parse_size(s: str) -> int:
    """'100k' -> 100000, '1M' -> 1000000, '5000' -> 5000."""
    mult = {"k": 1_000, "m": 1_000_000}.get(s[-1].lower(), 1)
    return int(float(s[:-1] if mult > 1 else s) * mult)


def _seed(*parts: object) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def tilt_normals(n: np.ndarray, deg: float, rng: np.random.Generator) -> np.ndarray:
    """Rotate each unit normal by exactly `deg` degrees towards a random tangent direction."""
    g = rng.normal(size=n.shape)
    t = g - (g * n).sum(1, keepdims=True) * n
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    a = np.deg2rad(deg)
    return np.cos(a) * n + np.sin(a) * t


def make_input(shape: str, n: int, case: Case, work: Path) -> Path:
    """Create (or reuse) the .npz input: points/normals float32 plus metadata.

    Clean points are sampled by area with exact face normals from a seed that depends
    only on (shape, n), so all cases share the same underlying samples. Position noise
    is isotropic Gaussian per axis with sigma = pos_sigma * bbox diagonal.
    """
    path = work / f"in_{shape}_{n}_{case.name.replace(':', '-')}.npz"
    if path.exists():
        return path
    v, f = gt_mesh(shape, work)
    diag = bbox_diagonal(v)
    if case.preset is not None:
        return _scan_input(path, shape, n, case, v, f, diag)
    pts, nrm, _ = sample_surface(v, f, n, np.random.default_rng(_seed("sample", shape, n)))
    rng = np.random.default_rng(_seed("noise", shape, n, case.name))
    if case.pos_sigma > 0:
        pts = pts + rng.normal(scale=case.pos_sigma * diag, size=pts.shape)
    if case.ang_deg > 0:
        nrm = tilt_normals(nrm, case.ang_deg, rng)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(
        tmp, points=pts.astype(np.float32), normals=nrm.astype(np.float32), diag=diag,
        pos_sigma=case.pos_sigma, ang_deg=case.ang_deg, shape=shape, case=case.name,
    )
    tmp.rename(path)
    return path


def _scan_input(path: Path, shape: str, n: int, case: Case, v: np.ndarray, f: np.ndarray, diag: float) -> Path:
    """A simulated scan of the shape (about n points) as an input file, with sensors and labels."""
    import dataclasses

    import scanner

    params = dataclasses.replace(scanner.PRESETS[str(case.preset)], points=n)
    s = scanner.scan((v, f), params, seed=_seed("scan", shape, n, case.preset))
    extra = {"normals": s.normals.astype(np.float32)} if case.normals and s.normals is not None else {}
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, points=s.points.astype(np.float32), sensors=s.sensors.astype(np.float32), labels=s.labels,
             diag=diag, pos_sigma=0.0, ang_deg=0.0, shape=shape, case=case.name, **extra)
    tmp.rename(path)
    return path
