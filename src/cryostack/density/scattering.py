"""Electron scattering factors as sums of Gaussians, by atomic number.

The coefficients are the 5-Gaussian fits of International Tables for Crystallography Vol. C,
Table 4.3.2.2 (electron scattering), as tabulated in gemmi (``Element.c4322``) — the same table
gemmi's ``DensityCalculatorE`` uses. In real space an atom with isotropic B (Å²) is

    rho(r) = sum_k a_k * (4 pi / (b_k + B))^{3/2} * exp(-4 pi^2 r^2 / (b_k + B))

with ``a_k`` in Å and ``b_k`` in Å².
"""

from __future__ import annotations

from functools import lru_cache

import gemmi
import numpy as np
import torch

#: Highest atomic number in the table (Cf).
MAX_Z = 98


@lru_cache(maxsize=1)
def _table() -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros((MAX_Z + 1, 5), dtype=np.float64)
    b = np.ones((MAX_Z + 1, 5), dtype=np.float64)
    for z in range(0, MAX_Z + 1):
        coef = gemmi.Element(z).c4322
        a[z], b[z] = coef.a, coef.b
    return a, b


def electron_gaussians(
    atomic_numbers: torch.Tensor, *, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian amplitudes ``a`` (Å) and widths ``b`` (Å²), each ``(N, 5)``, for atoms ``(N,)``."""
    a, b = _table()
    z = atomic_numbers.clamp(0, MAX_Z).cpu().numpy()
    dev = atomic_numbers.device
    return (
        torch.as_tensor(a[z], dtype=dtype, device=dev),
        torch.as_tensor(b[z], dtype=dtype, device=dev),
    )
