"""Global B-factor sharpening from the Guinier plot: the classic baseline of map enhancement.

The spherically averaged amplitude of a map falls off as ``exp(-B s² / 4)`` beyond ~10 Å
(Rosenthal & Henderson 2003). Fitting ``ln |F|`` against ``s²`` between ``low_A`` and the map's
resolution gives that B; multiplying the amplitudes by ``exp(+B s² / 4)`` (and cutting at the
resolution) restores the high-resolution contrast, as RELION's post-processing does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryostack.density.fourier import apply_bfactor, frequency_squared
from cryostack.io.maps import DensityMap


@dataclass(frozen=True)
class GuinierFit:
    """The fit behind a sharpening: ``ln|F| ≈ intercept - (b_factor_A2 / 4) s²`` over the range."""

    b_factor_A2: float  # positive: the map is blurred by this much
    low_A: float
    high_A: float
    shells: int


def guinier_bfactor(density: DensityMap, resolution_A: float, *, low_A: float = 10.0, n_shells: int = 40) -> GuinierFit:
    """Fit the map's amplitude fall-off between ``low_A`` and ``resolution_A`` (both Å)."""
    if not 0 < resolution_A < low_A:
        raise ValueError(f"resolution {resolution_A} Å must be finer than the fit's low end {low_A} Å")
    s2 = frequency_squared(density.shape, density.voxel_size)
    amp = np.abs(np.fft.rfftn(density.data.astype(np.float64)))
    edges = np.linspace(1.0 / low_A**2, 1.0 / resolution_A**2, n_shells + 1)
    shell = np.digitize(s2, edges) - 1
    inside = (shell >= 0) & (shell < n_shells)
    counts = np.bincount(shell[inside], minlength=n_shells)
    sums = np.bincount(shell[inside], weights=amp[inside], minlength=n_shells)
    ok = (counts > 0) & (sums > 0)
    if ok.sum() < 3:
        raise ValueError("too few Fourier shells between the fit limits; is the box too small?")
    x = 0.5 * (edges[:-1] + edges[1:])[ok]
    y = np.log(sums[ok] / counts[ok])
    slope = float(np.polyfit(x, y, 1)[0])
    return GuinierFit(b_factor_A2=-4.0 * slope, low_A=low_A, high_A=resolution_A, shells=int(ok.sum()))


def auto_sharpen(density: DensityMap, resolution_A: float, *, low_A: float = 10.0) -> tuple[DensityMap, GuinierFit]:
    """Sharpen by the fitted B (never blur: a negative fit is left alone) and low-pass at the resolution."""
    fit = guinier_bfactor(density, resolution_A, low_A=low_A)
    return apply_bfactor(density, -max(fit.b_factor_A2, 0.0), resolution_A=resolution_A), fit
