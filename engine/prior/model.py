"""The prior's network and how its output reaches the solve.

A multilayer perceptron (:data:`HIDDEN` units, two hidden layers) maps a cell's features
(:mod:`engine.prior.features`, standardised by the training set's mean and spread, stored with the weights)
to a distribution over :data:`LOG2_FACTORS`, the smoothness factors whose fits it was trained to choose
between; the cell's factor is 2 to the expected log2 factor.  Each voxel of every level takes the geometric mean
of the factors of the points its basis function touches (voxels no point touches: that of all points), so the
smoothness term follows the points at every level.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from ..solver.basis import split_points
from ..solver.hierarchy import Level
from .features import N_FEATURES, CellFeatures, neighbour_sum

LOG2_FACTORS = (-2.0, 0.0, 2.0, 4.0, 6.0)  # smoothness factors 1/4 .. 64 the training fits compared
HIDDEN = 32
WEIGHTS_PATH = Path(__file__).with_name("prior.pt")


class PriorNet(nn.Module):
    """Cell features (C, N_FEATURES) -> logits (C, len(LOG2_FACTORS))."""

    mean: torch.Tensor  # the training features' mean and spread: inputs are standardised inside the network
    std: torch.Tensor

    def __init__(self, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(N_FEATURES))
        self.register_buffer("std", torch.ones(N_FEATURES))
        self.layers = nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                    nn.Linear(hidden, len(LOG2_FACTORS)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers((features - self.mean) / self.std)

    def log2_factor(self, features: torch.Tensor) -> torch.Tensor:
        """(C,) expected log2 smoothness factor of each cell."""
        probs = torch.softmax(self(features), dim=1)
        return probs @ torch.tensor(LOG2_FACTORS, device=features.device)


def load(path: Path = WEIGHTS_PATH, device: torch.device | str = "cpu") -> PriorNet | None:
    """The trained network, or None where its weights file is missing or does not fit this network."""
    if not path.is_file():
        return None
    net = PriorNet()
    try:
        net.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    except (RuntimeError, KeyError, ValueError, OSError, pickle.UnpicklingError):  # unreadable, or other features
        return None
    return net.to(device).eval()


def reference_input(net: PriorNet) -> torch.Tensor:
    """(16, N_FEATURES) fixed features around the training set's mean, whose outputs the training run records
    beside the weights (``prior.json``): a test compares them, so the shipped file is the one the card describes."""
    g = torch.Generator().manual_seed(16)
    return net.mean + net.std * torch.randn(16, N_FEATURES, generator=g).to(net.mean.device)


_LOADED: dict[str, PriorNet | None] = {}


def load_cached(device: torch.device | str = "cpu") -> PriorNet | None:
    """:func:`load` once per process and device (the engine service fits many clouds)."""
    key = str(device)
    if key not in _LOADED:
        _LOADED[key] = load(WEIGHTS_PATH, device)
    return _LOADED[key]


def level_scales(levels: list[Level], x: torch.Tensor, point_log2: torch.Tensor) -> list[torch.Tensor]:
    """One (M,) smoothness factor per voxel of each level (finest first), from each point's log2 factor (N,).

    A voxel's factor is the geometric mean over the points its basis touches, i.e. the points in the 27 cells
    around it: summed per cell first (each point's cell is a voxel of the level), then over each voxel's 27
    neighbours through the level's neighbour table (the assembly's own, so built once).
    """
    fallback = point_log2.mean()
    scales = []
    for level in levels:
        m = len(level)
        rows = level.index.lookup(split_points(x / level.size)[0])  # every point's cell is a voxel of the level
        own = torch.zeros(m + 1, 2, dtype=torch.float32, device=x.device)  # (sum, count); row m: absent
        own.index_add_(0, rows, torch.stack((point_log2.float(), torch.ones_like(point_log2, dtype=torch.float32)),
                                            dim=1))
        total = neighbour_sum(own, level.neighbours)
        mean = torch.where(total[:, 1] > 0, total[:, 0] / total[:, 1].clamp_min(1), fallback)
        scales.append(torch.exp2(mean))
    return scales


def point_log2_factors(net: PriorNet, features: CellFeatures) -> torch.Tensor:
    """(N,) each point's log2 smoothness factor: its cell's."""
    with torch.no_grad():
        return net.log2_factor(features.values)[features.of_point]
