"""Ground-truth shapes for tests: exact samples, exact normals and exact signed distances."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def sphere(n: int, radius: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return radius * d, d


def sphere_sdf(x: np.ndarray, radius: float = 1.0) -> np.ndarray:
    return np.linalg.norm(x, axis=1) - radius


def torus(n: int, major: float = 1.0, minor: float = 0.35, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Uniform by area: the area element is proportional to (major + minor cos v)."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(0, 2 * np.pi, 4 * n)
    v = rng.uniform(0, 2 * np.pi, 4 * n)
    keep = rng.uniform(0, major + minor, 4 * n) < major + minor * np.cos(v)
    u, v = u[keep][:n], v[keep][:n]
    normal = np.stack([np.cos(v) * np.cos(u), np.cos(v) * np.sin(u), np.sin(v)], axis=1)
    centre = np.stack([major * np.cos(u), major * np.sin(u), np.zeros_like(u)], axis=1)
    return centre + minor * normal, normal


def torus_sdf(x: np.ndarray, major: float = 1.0, minor: float = 0.35) -> np.ndarray:
    q = np.hypot(x[:, 0], x[:, 1]) - major
    return np.hypot(q, x[:, 2]) - minor


def box(n: int, half: tuple[float, float, float] = (1.0, 0.7, 0.5), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Uniform by area over the six faces of an axis-aligned box."""
    rng = np.random.default_rng(seed)
    h = np.asarray(half)
    areas = np.array([h[1] * h[2], h[0] * h[2], h[0] * h[1]]).repeat(2)
    face = rng.choice(6, size=n, p=areas / areas.sum())
    axis, sign = face // 2, np.where(face % 2 == 0, -1.0, 1.0)
    p = rng.uniform(-1, 1, size=(n, 3)) * h
    p[np.arange(n), axis] = sign * h[axis]
    normal = np.zeros((n, 3))
    normal[np.arange(n), axis] = sign
    return p, normal


def box_sdf(x: np.ndarray, half: tuple[float, float, float] = (1.0, 0.7, 0.5)) -> np.ndarray:
    q = np.abs(x) - np.asarray(half)
    outside = np.linalg.norm(np.maximum(q, 0.0), axis=1)
    return outside + np.minimum(q.max(axis=1), 0.0)


def hemisphere(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The upper half (z >= 0) of the unit sphere: an open surface."""
    p, nrm = sphere(2 * n, seed=seed)
    keep = p[:, 2] >= 0
    return p[keep][:n], nrm[keep][:n]


def blob(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bunny-like closed shape: a sphere with bumps, a dent and two lobes (star-shaped, not convex).

    The surface is r = R(d) along unit directions d; samples are uniform by
    area (directions drawn uniformly, then kept with probability proportional
    to the area element r^2 / (d . n)); normals are the exact gradient.
    """
    rng = np.random.default_rng(seed)
    out_p, out_n = [], []
    count = 0
    while count < n:
        d = rng.normal(size=(8 * n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        r, grad = _blob_radius(d)
        normal = d - (grad - (grad * d).sum(1, keepdims=True) * d) / r[:, None]  # gradient of |x| - R(x/|x|)
        normal /= np.linalg.norm(normal, axis=1, keepdims=True)
        element = r**2 / (d * normal).sum(1)
        keep = rng.uniform(0, 1, len(d)) < element / element.max() / 1.05
        out_p.append(r[keep, None] * d[keep])
        out_n.append(normal[keep])
        count += int(keep.sum())
    return np.concatenate(out_p)[:n], np.concatenate(out_n)[:n]


def _blob_radius(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R(d) and its gradient with respect to d (as a function on R^3, projected by the caller)."""
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    lobes = np.exp(-8 * ((x - 0.3) ** 2 + (y - 0.5) ** 2 + (z - 0.8) ** 2)) + np.exp(
        -8 * ((x + 0.3) ** 2 + (y - 0.5) ** 2 + (z - 0.8) ** 2))
    dent = np.exp(-6 * ((x - 0.9) ** 2 + y**2 + z**2))
    r = 1.0 + 0.1 * np.sin(3 * x) * np.cos(2 * y) + 0.35 * lobes - 0.2 * dent
    g_lobes = np.zeros_like(d)
    for sx in (0.3, -0.3):
        e = np.exp(-8 * ((x - sx) ** 2 + (y - 0.5) ** 2 + (z - 0.8) ** 2))
        g_lobes += -16 * e[:, None] * np.stack([x - sx, y - 0.5, z - 0.8], 1)
    g_dent = -12 * dent[:, None] * np.stack([x - 0.9, y, z], 1)
    g_wave = np.stack([0.3 * np.cos(3 * x) * np.cos(2 * y), -0.2 * np.sin(3 * x) * np.sin(2 * y), 0 * z], 1)
    return r, g_wave + 0.35 * g_lobes - 0.2 * g_dent


def terrain(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An open height field z = h(x, y) over [-1, 1]^2 (hills and a valley), normals facing up."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)
    z = 0.15 * np.sin(2 * x) * np.cos(3 * y) + 0.1 * np.exp(-4 * (x**2 + y**2))
    hx = 0.3 * np.cos(2 * x) * np.cos(3 * y) - 0.8 * x * np.exp(-4 * (x**2 + y**2))
    hy = -0.45 * np.sin(2 * x) * np.sin(3 * y) - 0.8 * y * np.exp(-4 * (x**2 + y**2))
    normal = np.stack([-hx, -hy, np.ones(n)], axis=1)
    return np.stack([x, y, z], axis=1), normal / np.linalg.norm(normal, axis=1, keepdims=True)


# --- a synthetic city block: large, open, with thin parts, for chunked reconstruction -----------------------------

_CELL = 1.0  # metres; objects are kept more than a cell apart so each lookup cell belongs to at most one object


@dataclass(frozen=True)
class _CityLayout:
    """Everything about a city scene that depends only on (seed, size), never on the number of samples."""

    size: float
    waves: np.ndarray  # (k, 4): kx, ky, phase, amplitude of the height field's sine waves
    bumps: np.ndarray  # (k, 4): cx, cy, sigma, amplitude of its Gaussian hills (negative: hollows)
    buildings: np.ndarray  # (m, 6): x0, y0, x1, y1, wall bottom z, roof z
    poles: np.ndarray  # (p, 5): cx, cy, radius, bottom z, top z
    owner: np.ndarray  # (g, g) int32: the object (building index, then m + pole index) touching each cell, or -1
    height_range: tuple[float, float]
    terrain_area: float  # true (sloped) area of the terrain left outside footprints and pole bases


def city(n: int, seed: int = 0, size: float = 200.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """points (n, 3) float64 metres, oriented unit normals (n, 3) float64, colours (n, 3) float32 in [0, 1].

    A size x size metre terrain tile (gentle hills) with box buildings (walls and flat roofs, no floors; the
    terrain under them is removed) and thin vertical poles (side and top cap). Every surface is sampled
    uniformly by area at one common density, split so that exactly n points come out: a large, open scene
    whose thin parts get few points, to test chunked reconstruction. The layout depends only on seed and
    size, so scenes of different n are the same geometry. Points are grouped by surface (terrain first).
    """
    lay = _city_layout(seed, size)
    rng = np.random.default_rng((seed, 1))  # sampling stream, separate from the layout's
    b, p = lay.buildings, lay.poles
    wall_h, pole_h = b[:, 5] - b[:, 4], p[:, 4] - p[:, 3]
    w, d = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    per_building = np.stack([d * wall_h, d * wall_h, w * wall_h, w * wall_h, w * d], axis=1)  # -x +x -y +y roof
    per_pole = np.stack([2 * np.pi * p[:, 2] * pole_h, np.pi * p[:, 2] ** 2], axis=1)  # side, cap
    areas = np.concatenate([[lay.terrain_area], per_building.ravel(), per_pole.ravel()])
    counts = _split(n, areas)

    points = np.empty((n, 3))
    normals = np.zeros((n, 3))
    colours = np.empty((n, 3), dtype=np.float32)
    start = int(counts[0])
    _city_terrain(lay, rng, points[:start], normals[:start], colours[:start])
    for i, c in enumerate(counts[1:].tolist()):
        if c == 0:
            continue
        sl = slice(start, start + c)
        start += c
        pt, nm, col = points[sl], normals[sl], colours[sl]
        if i < 5 * len(b):
            x0, y0, x1, y1, zb, zr = b[i // 5]
            face = i % 5
            if face == 4:  # roof
                pt[:, 0], pt[:, 1], pt[:, 2] = rng.uniform(x0, x1, c), rng.uniform(y0, y1, c), zr
                nm[:, 2] = 1.0
                col[:] = (0.62, 0.24, 0.19)
                continue
            axis, side = face // 2, face % 2  # axis 0: walls at x = x0 / x1; axis 1: at y = y0 / y1
            lo, hi = (y0, y1) if axis == 0 else (x0, x1)
            pt[:, axis] = (x0, x1, y0, y1)[face]
            pt[:, 1 - axis] = rng.uniform(lo, hi, c)
            pt[:, 2] = rng.uniform(zb, zr, c)
            nm[:, axis] = 1.0 if side else -1.0
            col[:] = (0.58, 0.58, 0.56)
        else:
            cx, cy, r, zb, zt = p[(i - 5 * len(b)) // 2]
            if (i - 5 * len(b)) % 2 == 0:  # side
                t = rng.uniform(0, 2 * np.pi, c)
                nm[:, 0], nm[:, 1] = np.cos(t), np.sin(t)
                pt[:, 0], pt[:, 1], pt[:, 2] = cx + r * nm[:, 0], cy + r * nm[:, 1], rng.uniform(zb, zt, c)
            else:  # cap: uniform on the disc
                rho, t = r * np.sqrt(rng.uniform(0, 1, c)), rng.uniform(0, 2 * np.pi, c)
                pt[:, 0], pt[:, 1], pt[:, 2] = cx + rho * np.cos(t), cy + rho * np.sin(t), zt
                nm[:, 2] = 1.0
            col[:] = (0.13, 0.13, 0.14)
    tail = colours[counts[0]:]
    tail += 0.03 * rng.standard_normal(tail.shape, dtype=np.float32)
    np.clip(tail, 0.0, 1.0, out=tail)
    return points, normals, colours


def _split(n: int, areas: np.ndarray) -> np.ndarray:
    """n split proportionally to areas (largest remainders), so the density is common and the total exact."""
    q = n * areas / areas.sum()
    counts = np.floor(q).astype(np.int64)
    extra = np.argsort(-(q - counts), kind="stable")[: n - int(counts.sum())]
    counts[extra] += 1
    return counts


def _city_height(lay: _CityLayout, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The terrain height h(x, y) and its exact gradient (hx, hy)."""
    h, hx, hy = np.zeros_like(x), np.zeros_like(x), np.zeros_like(x)
    for kx, ky, phase, amp in lay.waves:
        arg = kx * x + ky * y + phase
        h += amp * np.sin(arg)
        c = amp * np.cos(arg)
        hx += kx * c
        hy += ky * c
    for cx, cy, sigma, amp in lay.bumps:
        dx, dy = x - cx, y - cy
        e = amp * np.exp(-(dx * dx + dy * dy) / (2 * sigma**2))
        h += e
        hx -= e * dx / sigma**2
        hy -= e * dy / sigma**2
    return h, hx, hy


def _city_inside(lay: _CityLayout, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether (x, y) lies in a building footprint or a pole's base disc (a cell lookup, then one exact test)."""
    g = lay.owner.shape[0]
    i = np.minimum((x / _CELL).astype(np.int64), g - 1)
    j = np.minimum((y / _CELL).astype(np.int64), g - 1)
    k = lay.owner[i, j]
    near = np.flatnonzero(k >= 0)
    inside = np.zeros(len(x), dtype=bool)
    if len(near) == 0:
        return inside
    k, xn, yn = k[near], x[near], y[near]
    m = len(lay.buildings)
    is_b = k < m
    b = lay.buildings[np.where(is_b, k, 0)] if m else np.zeros((len(k), 6))
    p = lay.poles[np.where(is_b, 0, k - m)] if len(lay.poles) else np.zeros((len(k), 5))
    in_b = (xn >= b[:, 0]) & (xn <= b[:, 2]) & (yn >= b[:, 1]) & (yn <= b[:, 3])
    in_p = (xn - p[:, 0]) ** 2 + (yn - p[:, 1]) ** 2 <= p[:, 2] ** 2
    inside[near] = np.where(is_b, in_b, in_p)
    return inside


def _city_terrain(lay: _CityLayout, rng: np.random.Generator, pt: np.ndarray, nm: np.ndarray, col: np.ndarray) -> None:
    """Fill len(pt) terrain samples, uniform by sloped area (rejection on sqrt(1 + |grad h|^2)), off the objects."""
    steepest = (np.abs(lay.waves[:, 3]) * np.hypot(lay.waves[:, 0], lay.waves[:, 1])).sum() + (
        np.abs(lay.bumps[:, 3]) / lay.bumps[:, 2] * np.exp(-0.5)).sum()  # a bound on |grad h|
    bound = np.sqrt(1 + steepest**2)
    lo, hi = lay.height_range
    green, brown = np.array([0.27, 0.45, 0.16], np.float32), np.array([0.50, 0.40, 0.26], np.float32)
    done, n = 0, len(pt)
    while done < n:
        m = min(int((n - done) * 1.3) + 1000, 2_000_000)
        x, y = rng.uniform(0, lay.size, m), rng.uniform(0, lay.size, m)
        h, hx, hy = _city_height(lay, x, y)
        slope = np.sqrt(1 + hx * hx + hy * hy)
        keep = rng.uniform(0, bound, m) < slope
        keep &= ~_city_inside(lay, x, y)
        idx = np.flatnonzero(keep)[: n - done]
        c = len(idx)
        sl = slice(done, done + c)
        pt[sl, 0], pt[sl, 1], pt[sl, 2] = x[idx], y[idx], h[idx]
        s = slope[idx]
        nm[sl, 0], nm[sl, 1], nm[sl, 2] = -hx[idx] / s, -hy[idx] / s, 1 / s
        t = np.clip((h[idx] - lo) / (hi - lo), 0, 1).astype(np.float32)[:, None]
        col[sl] = green + t * (brown - green) + 0.03 * rng.standard_normal((c, 3), dtype=np.float32)
        done += c
    np.clip(col, 0.0, 1.0, out=col)


def _city_layout(seed: int, size: float) -> _CityLayout:
    """Terrain, buildings and poles for (seed, size): a Python loop per object is fine, there are few."""
    rng = np.random.default_rng(seed)
    # terrain: three long sine waves and some broad hills/hollows, a few metres of relief in all
    length, angle = rng.uniform(60, 200, 3), rng.uniform(0, 2 * np.pi, 3)
    k = 2 * np.pi / length
    waves = np.stack([k * np.cos(angle), k * np.sin(angle), rng.uniform(0, 2 * np.pi, 3), rng.uniform(0.4, 1.2, 3)], 1)
    nb = max(2, round(size**2 / 8000))
    bumps = np.stack([rng.uniform(-0.1, 1.1, nb) * size, rng.uniform(-0.1, 1.1, nb) * size,
                      rng.uniform(15, 40, nb), rng.uniform(-2, 3, nb)], 1)
    lay = _CityLayout(size, waves, bumps, np.zeros((0, 6)), np.zeros((0, 5)), np.zeros((0, 0), np.int32),
                      (0.0, 1.0), 0.0)

    def height(x: float | np.ndarray, y: float | np.ndarray) -> np.ndarray:
        return _city_height(lay, np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float)))[0]

    boxes: list[tuple[float, float, float, float]] = []  # bounding boxes of everything placed so far

    def free(x0: float, y0: float, x1: float, y1: float, gap: float) -> bool:
        return all(x0 >= b[2] + gap or x1 <= b[0] - gap or y0 >= b[3] + gap or y1 <= b[1] - gap for b in boxes)

    buildings: list[tuple[float, float, float, float, float, float]] = []
    target = round(size**2 / 2500)
    for _ in range(200 * target):
        if len(buildings) == target:
            break
        w, d = rng.uniform(8, 25, 2)
        if size - 20 < max(w, d):
            continue
        x0, y0 = rng.uniform(10, size - 10 - w), rng.uniform(10, size - 10 - d)
        x1, y1 = x0 + w, y0 + d
        if not free(x0, y0, x1, y1, 4.0):  # streets between buildings
            continue
        boxes.append((x0, y0, x1, y1))
        u = np.linspace(0, 1, 33)
        rim = height(np.concatenate([x0 + w * u, x0 + w * u, np.full(33, x0), np.full(33, x1)]),
                     np.concatenate([np.full(33, y0), np.full(33, y1), y0 + d * u, y0 + d * u]))
        gx, gy = np.meshgrid(x0 + w * u, y0 + d * u)
        ground_top = height(gx.ravel(), gy.ravel()).max()
        buildings.append((x0, y0, x1, y1, rim.min() - 0.5, ground_top + rng.uniform(6, 30)))

    poles: list[tuple[float, float, float, float, float]] = []
    target = round(size**2 / 1000)
    for _ in range(200 * target):
        if len(poles) == target:
            break
        r = rng.uniform(0.15, 0.25)
        cx, cy = rng.uniform(2, size - 2, 2)
        if not free(cx - r, cy - r, cx + r, cy + r, 2.5):
            continue
        boxes.append((cx - r, cy - r, cx + r, cy + r))
        t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        rim = height(cx + r * np.cos(t), cy + r * np.sin(t))
        poles.append((cx, cy, r, rim.min() - 0.5, height(cx, cy)[0] + rng.uniform(5, 9)))

    # who touches each lookup cell: objects are more than a cell apart, so at most one does
    g = max(1, int(np.ceil(size / _CELL)))
    owner = np.full((g, g), -1, np.int32)
    for idx, (x0, y0, x1, y1) in enumerate(boxes):
        i0, j0 = int(x0 // _CELL), int(y0 // _CELL)
        i1, j1 = min(int(x1 // _CELL), g - 1), min(int(y1 // _CELL), g - 1)
        assert (owner[i0:i1 + 1, j0:j1 + 1] == -1).all()
        owner[i0:i1 + 1, j0:j1 + 1] = idx

    # sloped terrain area: midpoint rule over the tile, less the same over each footprint and pole base
    def sloped(x0: float, y0: float, x1: float, y1: float, cells: int) -> tuple[float, float, float]:
        total, lo, hi = 0.0, np.inf, -np.inf
        xs = x0 + (np.arange(cells) + 0.5) * (x1 - x0) / cells
        for rows in np.array_split(np.arange(cells), max(1, cells // 128)):
            ys = y0 + (rows + 0.5) * (y1 - y0) / cells
            gx, gy = np.meshgrid(xs, ys)
            h, hx, hy = _city_height(lay, gx.ravel(), gy.ravel())
            total += np.sqrt(1 + hx * hx + hy * hy).sum()
            lo, hi = min(lo, h.min()), max(hi, h.max())
        return total * (x1 - x0) * (y1 - y0) / cells**2, lo, hi

    area, lo, hi = sloped(0.0, 0.0, size, size, int(np.clip(size / 0.25, 256, 2048)))
    for x0, y0, x1, y1, _, _ in buildings:
        area -= sloped(x0, y0, x1, y1, 64)[0]
    for cx, cy, r, _, _ in poles:
        _, hx, hy = _city_height(lay, np.array([cx]), np.array([cy]))
        area -= np.pi * r**2 * float(np.sqrt(1 + hx[0] ** 2 + hy[0] ** 2))
    return _CityLayout(size, waves, bumps, np.array(buildings).reshape(-1, 6), np.array(poles).reshape(-1, 5),
                       owner, (float(lo), float(hi)), float(area))


def tilted(normals: np.ndarray, degrees: float, seed: int = 7) -> np.ndarray:
    """Each normal turned by ``degrees`` about a random axis across it (an exporter's or a noisy estimate's)."""
    axis = np.cross(normals, np.random.default_rng(seed).normal(size=normals.shape))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    t = np.radians(degrees)
    return normals * np.cos(t) + np.cross(axis, normals) * np.sin(t)


def square(n: int, bend: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """An n x n square of unit cells (2 triangles each, normals +z), optionally bent into z = bend * x^2."""
    x, y = np.meshgrid(np.arange(n + 1.0), np.arange(n + 1.0), indexing="ij")
    v = np.stack([x.ravel(), y.ravel(), bend * (x.ravel() - n / 2) ** 2], axis=1)
    i = (np.arange(n)[:, None] * (n + 1) + np.arange(n)[None, :]).ravel()
    f = np.concatenate([np.stack([i, i + n + 1, i + n + 2], 1), np.stack([i, i + n + 2, i + 1], 1)])
    return v, f
