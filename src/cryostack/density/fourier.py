"""Fourier-space filters on maps with (possibly anisotropic) voxels, in Å.

Spatial frequency ``s`` is in 1/Å along each axis (``numpy.fft`` frequencies divided by the
voxel size), so filters mean the same thing whatever the sampling.
"""

from __future__ import annotations

import numpy as np

from cryostack.io.maps import DensityMap


def frequency_squared(shape_zyx: tuple[int, ...], voxel_size_xyz: tuple[float, float, float]) -> np.ndarray:
    """``|s|²`` in 1/Å² on the ``rfftn`` half-grid of a ``[z, y, x]`` array (``shape_zyx`` has 3 entries)."""
    nz, ny, nx = shape_zyx
    vx, vy, vz = voxel_size_xyz
    sz = np.fft.fftfreq(nz, d=vz)[:, None, None]
    sy = np.fft.fftfreq(ny, d=vy)[None, :, None]
    sx = np.fft.rfftfreq(nx, d=vx)[None, None, :]
    return sz**2 + sy**2 + sx**2


def fourier_crop_or_pad(volume: np.ndarray, box_px: int) -> np.ndarray:
    """A cubic ``volume`` ``(n, n, n)`` → ``(box_px,)*3`` over the same field of view, by cropping
    or zero-padding its centred Fourier transform (a band limit, not an interpolation). Values,
    not sums, are kept; the voxel size becomes ``n / box_px`` times the old one (float64 out)."""
    n = volume.shape[0]
    f = np.fft.fftshift(np.fft.fftn(volume.astype(np.float64)))
    k = min(n, box_px)
    src = slice(n // 2 - k // 2, n // 2 - k // 2 + k)
    dst = slice(box_px // 2 - k // 2, box_px // 2 - k // 2 + k)
    g = np.zeros((box_px,) * 3, dtype=np.complex128)
    g[dst, dst, dst] = f[src, src, src]
    return np.fft.ifftn(np.fft.ifftshift(g)).real * (box_px / n) ** 3


def _apply(density: DensityMap, weight: np.ndarray) -> DensityMap:
    f = np.fft.rfftn(density.data.astype(np.float64))
    out = np.fft.irfftn(f * weight, s=density.shape, axes=(0, 1, 2))
    return density.with_data(out.astype(np.float32), source=None)


def low_pass(density: DensityMap, resolution_A: float, *, edge_width_A: float | None = None) -> DensityMap:
    """Low-pass filter to ``resolution_A`` with a raised-cosine edge.

    The edge spans ``edge_width_A`` in resolution below the cut-off (default: 5 % of the
    cut-off frequency), so frequencies above 1/resolution are removed and ringing is limited.
    """
    return _apply(density, low_pass_weight(density, resolution_A, edge_width_A=edge_width_A))


def low_pass_weight(density: DensityMap, resolution_A: float, *, edge_width_A: float | None = None) -> np.ndarray:
    """The :func:`low_pass` filter on the ``rfftn`` half-grid (1 inside, raised-cosine edge, 0 beyond)."""
    if resolution_A <= 0:
        raise ValueError(f"resolution must be positive (Å), got {resolution_A}")
    s = np.sqrt(frequency_squared(density.shape, density.voxel_size))
    s_cut = 1.0 / resolution_A
    if edge_width_A is None:
        s_in = 0.95 * s_cut
    else:
        s_in = 1.0 / (resolution_A + edge_width_A)
    w = np.ones_like(s)
    edge = (s > s_in) & (s < s_cut)
    w[edge] = 0.5 * (1.0 + np.cos(np.pi * (s[edge] - s_in) / (s_cut - s_in)))
    w[s >= s_cut] = 0.0
    return w


def apply_bfactor(density: DensityMap, b_factor_A2: float, *, resolution_A: float | None = None) -> DensityMap:
    """Multiply the map's Fourier amplitudes by ``exp(-B s² / 4)``.

    Positive ``b_factor_A2`` blurs, negative sharpens. When sharpening, pass ``resolution_A`` so
    frequencies beyond it are removed instead of amplified as noise.
    """
    s2 = frequency_squared(density.shape, density.voxel_size)
    if resolution_A is not None:
        # One transform: sharpening first and filtering after would lose the map to float32
        # round-off, since exp(-B s²/4) reaches 1e13 in the corners for B = -200 Å² at 1 Å voxels.
        lp = low_pass_weight(density, resolution_A)
        return _apply(density, np.where(lp > 0, np.exp(-b_factor_A2 * np.where(lp > 0, s2, 0.0) / 4.0), 0.0) * lp)
    return _apply(density, np.exp(-b_factor_A2 * s2 / 4.0))
