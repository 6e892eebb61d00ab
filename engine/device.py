"""Choice of the torch device the engine computes on: CUDA when available, else the CPU (option ``device``)."""

from __future__ import annotations

import torch

from .errors import InputError
from .options import SPECS


def select_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU.  Asking for CUDA without one is an input error."""
    name = SPECS["device"].check(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("CUDA was requested but torch sees no CUDA device.", "Use device 'cpu' or 'auto'.")
    return torch.device(name)

