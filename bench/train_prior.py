"""Train the learned prior (issue 16) on scans the pipeline simulates itself, and write its weights.

    .venv/bin/python bench/train_prior.py [--train 48] [--validation 12] [--out engine/prior/prior.pt]

Data: procedural closed shapes (:mod:`procedural`: CSG of primitives, superquadrics, swept tubes, displaced
blobs, thin plates, terrain, room-like scenes; 60% of them with fine relief, :func:`procedural._detailed`;
never meshes from packages or datasets) scanned by the scan simulator (:mod:`scanner`) with randomised views
(2-10), elevations, noise, outliers, flying pixels, misregistration, dropout and point counts (15k-120k), with
and without scanner normals.  Train and validation shapes come from disjoint seed ranges (``procedural.split``);
the bench shapes (bunny, torus, sphere) are never used.

Target (the "simpler target" the issue allows): each scan is prepared once by the engine (cleaning, normals,
registration: the same code as a reconstruction) and fitted once per smoothness factor in
:data:`engine.prior.model.LOG2_FACTORS`; each fit's error is measured at samples of the true surface (distance
of the zero level, |f| / |grad f| in finest voxels, capped at 2, plus half the normal error 1 - |cos|) and
summed per occupied cell over its 3^3 neighbourhood.  The network is trained to minimise the expected error of
its distribution over the factors, i.e. to choose, cell by cell, the factor whose fit was best there.  Not
built: differentiating the solve itself (an adjoint solve per step).  ``engine/prior/MODEL_CARD.md`` has the
figures.  Fixed seeds throughout; a rerun gives the same examples and, up to float summation order with
another thread count, the same weights.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
import procedural  # noqa: E402
import scanner  # noqa: E402
from geom import sample_surface  # noqa: E402

from engine.options import Options  # noqa: E402
from engine.pipeline import Prepared, band_only, fit, prepare  # noqa: E402
from engine.prior.features import NAMES, cell_features, neighbour_sum  # noqa: E402
from engine.prior.model import LOG2_FACTORS, WEIGHTS_PATH, PriorNet, reference_input  # noqa: E402
from engine.progress import Run  # noqa: E402
from engine.solver.hierarchy import evaluate  # noqa: E402
from engine.solver.voxels import VoxelIndex  # noqa: E402

WORK = HERE / "_work" / "prior"
SCANS_VERSION = 3  # bump when the target or the scan distribution changes: cached examples go stale
FEATURES_VERSION = zlib.crc32(",".join(NAMES).encode())  # the feature layout: cached features follow it
ERROR_CAP = 2.0  # voxels: a sample farther than this from the zero level counts as this far
SAMPLES = 60_000  # true-surface samples per scan


def scan_params(rng: np.random.Generator) -> scanner.ScanParams:
    """A random scanner: views, noise, outliers, flying pixels, misregistration, dropout, point count."""
    views = int(rng.integers(2, 11))
    elevations = tuple(float(e) for e in rng.uniform(-30, 45, size=int(rng.integers(1, 3))))
    return scanner.ScanParams(
        views=views, elevations=elevations, up=str(rng.choice(["x", "y", "z"])),
        points=int(np.exp(rng.uniform(np.log(15_000), np.log(120_000)))),
        depth_noise=float(rng.choice([0.0, rng.uniform(0.0005, 0.004)], p=[0.2, 0.8])),
        misregister_deg=float(rng.uniform(0, 0.2)), misregister_shift=float(rng.uniform(0, 0.002)),
        outliers=float(rng.uniform(0, 0.02)), flying=float(rng.uniform(0, 0.02)),
        grazing_power=float(rng.uniform(0, 1.5)), range_power=float(rng.uniform(0, 2)),
        max_incidence=float(rng.uniform(75, 89)), normal_k=int(rng.choice([0, 16])))


def example(seed: int, points: int | None = None) -> dict[str, np.ndarray]:
    """Features (C, F) and per-factor errors (C, K) of one simulated scan's occupied cells.

    Both are cached apart (the features under their layout's checksum, the errors under
    :data:`SCANS_VERSION`), so a change to the features costs a scan and a preparation per example, not
    its five fits.  ``points`` overrides the scan's random point count (the tests' tiny scans).
    """
    tag = f"{seed}{'' if points is None else f'_{points}'}"
    fpath = WORK / f"features_v{SCANS_VERSION}_{FEATURES_VERSION:08x}_{tag}.npz"
    epath = WORK / f"errors_v{SCANS_VERSION}_{tag}.npz"
    if fpath.exists() and epath.exists():
        with np.load(fpath) as zf, np.load(epath) as ze:
            return {**dict(zf), **dict(ze)}
    rng = np.random.default_rng(seed + 7_000_000)
    shape = procedural.make_shape(seed, detail=float(rng.choice([0.0, rng.uniform(0.003, 0.012)], p=[0.4, 0.6])))
    params = scan_params(rng)
    if points is not None:
        params = replace(params, points=points)
    s = scanner.scan((shape.vertices, shape.faces), params, seed=seed)
    opts = Options.of(device="cpu", auto_chunk=False, chunk_size=None)
    run = Run(None, None)
    prepared = prepare(s.points, s.normals, None, opts, run, sensor=s.sensors)
    assert prepared.cloud.normals is not None
    x = prepared.frame.to_voxels(torch.from_numpy(prepared.cloud.points))  # the fit's points and frame
    feats = cell_features(x, torch.from_numpy(prepared.cloud.normals), prepared.prior_context())
    _save(fpath, {"features": feats.values.numpy()})
    if not epath.exists():
        true_p, _, _ = sample_surface(shape.vertices, shape.faces, SAMPLES, rng)
        _save(epath, {**_errors(prepared, opts, run, feats.cells, true_p, _sdf_normals(shape.sdf, true_p)),
                      "params": np.array(json.dumps(dataclasses.asdict(params))), "kind": np.array(shape.kind)})
    return example(seed, points)


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    tmp.rename(path)


def _errors(prepared: Prepared, opts: Options, run: Run, cells: torch.Tensor, true_p: np.ndarray,
            true_n: np.ndarray) -> dict[str, np.ndarray]:
    """Each factor's fit error summed over each cell's 3^3 neighbourhood (C, K), and the samples there (C,)."""
    index = VoxelIndex(cells)
    table = index.neighbour_table(1 << 18)
    errors, counts = [], None
    for log2 in LOG2_FACTORS:
        weights = replace(prepared.weights, smooth=prepared.weights.smooth * 2.0**log2)
        f = fit(replace(prepared, weights=weights), opts, run, bridge=not band_only(opts))  # as reconstruct fits
        xs = f.to_voxels(true_p)
        value, grad = evaluate(f.levels, xs, with_grad=True)
        assert grad is not None
        gn = grad.norm(dim=1).clamp_min(1e-6)
        dist = (value.abs() / gn).clamp_max(ERROR_CAP)
        cos = ((grad / gn[:, None]) * torch.from_numpy(true_n).float()).sum(dim=1).abs()
        row = index.lookup(torch.floor(xs).to(torch.int64))
        errors.append(_neighbourhood_sum(row, dist + 0.5 * (1.0 - cos), table, len(cells)))
        if counts is None:
            counts = _neighbourhood_sum(row, torch.ones_like(dist), table, len(cells))
    assert counts is not None
    return {"errors": torch.stack(errors, 1).numpy(), "counts": counts.numpy()}


def _sdf_normals(sdf: object, p: np.ndarray, h: float = 1e-4) -> np.ndarray:
    """Unit gradients of the shape's signed distance at p (N, 3), by central differences."""
    g = np.stack([sdf(p + h * e) - sdf(p - h * e) for e in np.eye(3)], axis=1)  # type: ignore[operator]
    return g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)


def _neighbourhood_sum(row: torch.Tensor, value: torch.Tensor, table: torch.Tensor, n: int) -> torch.Tensor:
    """(n,) sums of ``value`` over samples in each cell's 3^3 neighbourhood (``row``: a sample's cell, -1: none)."""
    own = torch.zeros(n + 1, dtype=torch.float64)
    own.index_add_(0, torch.where(row >= 0, row, n), value.double())
    own[n] = 0  # samples outside every cell landed on the absent row
    return neighbour_sum(own, table).float()


def stack(seeds: list[int], points: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and errors (normalised by the cell's sample count) of the examples' cells with samples."""
    feats, errs = [], []
    for i, seed in enumerate(seeds):
        t = time.time()
        ex = example(seed, points)
        keep = ex["counts"] > 0
        feats.append(torch.from_numpy(ex["features"][keep]))
        errs.append(torch.from_numpy(ex["errors"][keep] / ex["counts"][keep, None]))
        print(f"  example {i + 1}/{len(seeds)} (seed {seed}, {str(ex['kind'])}): {int(keep.sum())} cells, "
              f"{time.time() - t:.1f} s", flush=True)
    return torch.cat(feats), torch.cat(errs)


def expected_error(net: PriorNet, feats: torch.Tensor, errs: torch.Tensor) -> torch.Tensor:
    """Mean over cells of the error expected under the network's distribution over the factors."""
    return (torch.softmax(net(feats), dim=1) * errs).sum(dim=1).mean()


def train(feats: torch.Tensor, errs: torch.Tensor, val_feats: torch.Tensor, val_errs: torch.Tensor,
          epochs: int, seed: int = 0, log: bool = True) -> tuple[PriorNet, list[dict[str, float]]]:
    """Fit the network (Adam, minibatches of 4096 cells) and return it with the per-epoch history."""
    torch.manual_seed(seed)
    net = PriorNet()
    net.mean.copy_(feats.mean(dim=0))
    net.std.copy_(feats.std(dim=0).clamp_min(1e-6))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    history = []
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(feats.shape[0], generator=gen)
        for start in range(0, len(order), 4096):
            idx = order[start:start + 4096]
            loss = expected_error(net, feats[idx], errs[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            row = {"epoch": epoch + 1, "train": float(expected_error(net, feats, errs)),
                   "validation": float(expected_error(net, val_feats, val_errs))}
        history.append(row)
        if log:
            print(f"  epoch {epoch + 1}: expected error train {row['train']:.4f}, validation "
                  f"{row['validation']:.4f}", flush=True)
    return net.eval(), history


def baselines(errs: torch.Tensor) -> dict[str, float]:
    """Mean error of each fixed factor and of the per-cell best (the floor the network aims at)."""
    out = {f"factor 2^{k:g}": float(errs[:, i].mean()) for i, k in enumerate(LOG2_FACTORS)}
    out["best per cell"] = float(errs.min(dim=1).values.mean())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=48, help="training scans")
    ap.add_argument("--validation", type=int, default=12, help="validation scans")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.time()
    print(f"training scans ({a.train}):", flush=True)
    feats, errs = stack(procedural.split("train", a.train))
    print(f"validation scans ({a.validation}):", flush=True)
    val_feats, val_errs = stack(procedural.split("validation", a.validation))
    t_data = time.time() - t0
    net, history = train(feats, errs, val_feats, val_errs, a.epochs, a.seed)
    with torch.no_grad():
        reference = [round(float(v), 6) for v in net.log2_factor(reference_input(net))]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".tmp")
    torch.save(net.state_dict(), tmp)
    tmp.replace(a.out)
    report = {"train_cells": int(feats.shape[0]), "validation_cells": int(val_feats.shape[0]),
              "data_seconds": round(t_data, 1), "total_seconds": round(time.time() - t0, 1),
              "validation_baselines": baselines(val_errs), "history": history[-1],
              "reference_log2_factors": reference,
              "torch_threads": torch.get_num_threads()}
    print(json.dumps(report, indent=1))
    a.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
