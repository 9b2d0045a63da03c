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


#: Relative radial L2 error (weighted by r², i.e. over volume) within which fewer Gaussians may
#: stand in for an element's 5-term profile; comparable to the simulator's stencil truncation.
PROFILE_TOLERANCE = 1e-3


def _radial_profile(a: np.ndarray, b: np.ndarray, r: np.ndarray) -> np.ndarray:
    return (a[:, None] * (4 * np.pi / b[:, None]) ** 1.5 * np.exp(-4 * np.pi**2 * r[None] ** 2 / b[:, None])).sum(0)


@lru_cache(maxsize=4096)
def _fit_profile(z: int, blur_B_A2: float, n_terms: int) -> tuple[tuple[float, ...], tuple[float, ...], float]:
    """``n_terms`` Gaussians ``(a, B_total)`` fitted to element ``z``'s profile at ``blur_B_A2``,
    and the fit's relative error."""
    from scipy.optimize import least_squares

    ta, tb = _table()
    a, b = ta[z], tb[z] + blur_B_A2
    if n_terms >= len(a) or not np.any(a):
        return tuple(a), tuple(b), 0.0
    r = np.linspace(0.0, np.sqrt(b.max() / (4 * np.pi**2) * np.log(1e4)), 400)
    target = _radial_profile(a, b, r)
    floor = 0.5 * b.min()  # widths stay positive and no sharper than half the sharpest term
    # Start from the terms grouped by width, each group merged with its amplitude-weighted width.
    groups = np.array_split(np.argsort(b), n_terms)
    a0 = np.array([a[g].sum() for g in groups])
    b0 = np.array([(a[g] * b[g]).sum() / a[g].sum() for g in groups])

    def residual(p):
        return (_radial_profile(np.exp(p[:n_terms]), floor + np.exp(p[n_terms:]), r) - target) * r

    p0 = np.concatenate([np.log(np.abs(a0) + 1e-6), np.log(np.maximum(b0 - floor, 1e-3))])
    fit = least_squares(residual, p0, xtol=1e-12, ftol=1e-12)
    error = float(np.linalg.norm(fit.fun) / np.linalg.norm(target * r))
    return tuple(np.exp(fit.x[:n_terms])), tuple(floor + np.exp(fit.x[n_terms:])), error


def blurred_gaussians(
    atomic_numbers: torch.Tensor,
    blur_B_A2: float,
    *,
    tolerance: float = PROFILE_TOLERANCE,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fewest Gaussians ``(a (N, n) Å, B_total (N, n) Å²)`` that reproduce each atom's scattering
    profile blurred by ``blur_B_A2`` within ``tolerance`` (relative, over volume).

    The blur of a map at a few Å resolution (``B = 4 d²``) swamps the spread of the five tabulated
    widths, so two or three Gaussians carry the same profile (at 3.3 Å two are within 3·10⁻⁴ for
    C, N, O, S) and the simulator's work, which scales with the number of terms, falls. ``n`` is
    the largest any element present needs; the widths returned already include the blur.
    """
    zs = sorted(set(int(z) for z in atomic_numbers.clamp(0, MAX_Z).cpu().tolist()))
    blur = round(float(blur_B_A2), 6)
    n = 1
    for z in zs:
        while n < 5 and _fit_profile(z, blur, n)[2] > tolerance:
            n += 1
    a = np.zeros((MAX_Z + 1, n))
    b = np.ones((MAX_Z + 1, n))
    for z in zs:
        fa, fb, _ = _fit_profile(z, blur, n)
        a[z], b[z] = fa, fb
    idx = atomic_numbers.clamp(0, MAX_Z).cpu().numpy()
    dev = atomic_numbers.device
    return torch.as_tensor(a[idx], dtype=dtype, device=dev), torch.as_tensor(b[idx], dtype=dtype, device=dev)
