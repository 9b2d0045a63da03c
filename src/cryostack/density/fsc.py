"""Fourier shell correlation between two maps on the same grid, in 1/Å."""

from __future__ import annotations

import numpy as np
import scipy.fft

from cryostack.density.fourier import frequency_squared


def _shells(shape: tuple[int, ...], voxel_size: tuple[float, float, float]) -> tuple[np.ndarray, int, float]:
    """Shell index of every rfft coefficient of a ``shape`` map, the number of shells up to
    Nyquist and the shell width (1/Å): ``1 / (box edge)`` along the longest box edge, up to
    Nyquist of the coarsest axis, so anisotropic voxels and non-cubic boxes are handled in 1/Å."""
    s = np.sqrt(frequency_squared(shape, voxel_size))
    extent = max(n * v for n, v in zip(shape[::-1], voxel_size))
    width = 1.0 / extent
    s_max = 1.0 / (2.0 * max(voxel_size))
    shell = np.floor(s / width + 0.5).astype(np.int64).ravel()
    return shell, int(np.floor(s_max / width + 0.5)) + 1, width


def fsc_curve(
    map1: np.ndarray, map2: np.ndarray, voxel_size: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Fourier shell correlation. Returns shell centres (1/Å) and FSC values.

    Shells are ``1 / (box edge)`` wide along the longest box edge, up to Nyquist of the
    coarsest axis, so anisotropic voxels and non-cubic boxes are handled in 1/Å.
    """
    f1 = scipy.fft.rfftn(map1.astype(np.float64), workers=-1)
    f2 = scipy.fft.rfftn(map2.astype(np.float64), workers=-1)
    shell, n_shells, width = _shells(map1.shape, voxel_size)
    # Shells beyond Nyquist are summed into their own bins and dropped (no copies of f1, f2).
    num = np.bincount(shell, weights=(f1 * np.conj(f2)).real.ravel(), minlength=n_shells)[:n_shells]
    d1 = np.bincount(shell, weights=(np.abs(f1) ** 2).ravel(), minlength=n_shells)[:n_shells]
    d2 = np.bincount(shell, weights=(np.abs(f2) ** 2).ravel(), minlength=n_shells)[:n_shells]
    with np.errstate(invalid="ignore", divide="ignore"):
        fsc = np.where((d1 > 0) & (d2 > 0), num / np.sqrt(d1 * d2), 0.0)
    freq = np.arange(n_shells) * width
    return freq[1:], fsc[1:]


def fsc_shell_counts(shape: tuple[int, ...], voxel_size: tuple[float, float, float]) -> np.ndarray:
    """Fourier coefficients in each shell of :func:`fsc_curve` for a ``shape`` map (same order,
    rfft half-space, so each Friedel pair counts once)."""
    shell, n_shells, _ = _shells(shape, voxel_size)
    return np.bincount(shell, minlength=n_shells)[1:n_shells]


def fsc_average(freq: np.ndarray, fsc: np.ndarray, counts: np.ndarray, resolution_A: float) -> float | None:
    """FSC averaged over the shells up to ``1/resolution_A`` (1/Å), each shell weighted by its
    number of Fourier coefficients (``counts``, :func:`fsc_shell_counts`): the "FSCaverage" that
    REFMAC and servalcat report. ``None`` when no shell lies within the resolution."""
    keep = freq <= 1.0 / resolution_A + 1e-9
    n = counts[keep].astype(np.float64)
    if n.sum() == 0:
        return None
    return float((n * fsc[keep]).sum() / n.sum())


def fsc_resolution(freq: np.ndarray, fsc: np.ndarray, threshold: float) -> float | None:
    """Resolution (Å) where the FSC first falls below ``threshold`` (linear interpolation)."""
    below = np.nonzero(fsc < threshold)[0]
    if below.size == 0:
        return float(1.0 / freq[-1])
    i = int(below[0])
    if i == 0:
        return None
    f0, f1, c0, c1 = freq[i - 1], freq[i], fsc[i - 1], fsc[i]
    s = f0 + (c0 - threshold) * (f1 - f0) / (c0 - c1)
    return float(1.0 / s)
