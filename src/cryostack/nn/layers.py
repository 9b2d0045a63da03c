"""Small layers: MLPs and a Gaussian radial basis over physical distances."""

from __future__ import annotations

import torch
from torch import nn


def mlp(n_in: int, n_hidden: int, n_out: int) -> nn.Sequential:
    """``Linear → SiLU → Linear``."""
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.SiLU(), nn.Linear(n_hidden, n_out))


class RadialBasis(nn.Module):
    """``count`` Gaussians with centres evenly spaced over ``[0, max_A]`` Å and width ``max_A / count``.

    ``forward(d)``: distances ``(E,)`` Å → ``(E, count)`` features. Widths are in Å, not in grid or
    index units, so a model sees the same features whatever the sampling of its input.
    """

    centres: torch.Tensor  # buffer, registered in __init__

    def __init__(self, count: int, max_A: float):
        super().__init__()
        self.register_buffer("centres", torch.linspace(0.0, max_A, count))
        self.width = max_A / count

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        return torch.exp(-(((d[:, None] - self.centres) / self.width) ** 2))
