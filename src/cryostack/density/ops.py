"""Grid operations on :class:`~cryostack.io.maps.DensityMap` that keep every voxel's Å position.

Cropping and padding move the origin (and NSTART) with the box; resampling keeps the position of
voxel ``[0, 0, 0]``; nothing here resizes a map to a fixed cube.
"""

from __future__ import annotations

from typing import cast

import numpy as np
from scipy.ndimage import map_coordinates, spline_filter

from cryostack.density.fourier import low_pass
from cryostack.io.maps import DensityMap, grid_nstart


def crop_or_pad(
    density: DensityMap, start_zyx: tuple[int, int, int], shape_zyx: tuple[int, int, int], fill: float = 0.0
) -> DensityMap:
    """The box of ``shape_zyx`` voxels whose first voxel is this map's voxel ``start_zyx``.

    ``start_zyx`` may be negative and the box may extend past the map: those voxels are ``fill``.
    """
    start = np.asarray(start_zyx, dtype=np.int64)
    shape = np.asarray(shape_zyx, dtype=np.int64)
    if np.any(shape < 1):
        raise ValueError(f"box shape must be positive, got {tuple(shape)}")
    out = np.full(tuple(shape), fill, dtype=np.float32)
    src_lo = np.maximum(start, 0)
    src_hi = np.minimum(start + shape, density.shape)
    if np.all(src_hi > src_lo):
        dst_lo = src_lo - start
        dst_hi = dst_lo + (src_hi - src_lo)
        out[dst_lo[0] : dst_hi[0], dst_lo[1] : dst_hi[1], dst_lo[2] : dst_hi[2]] = density.data[
            src_lo[0] : src_hi[0], src_lo[1] : src_hi[1], src_lo[2] : src_hi[2]
        ]
    return density.shifted(cast("tuple[int, int, int]", tuple(int(s) for s in start)), out)


def box_around(density: DensityMap, coords_xyz: np.ndarray, margin_A: float = 5.0, fill: float = 0.0) -> DensityMap:
    """Crop (or pad) the map to the atoms' bounding box plus ``margin_A`` Å on every side."""
    coords = np.asarray(coords_xyz, dtype=np.float64).reshape(-1, 3)
    if coords.size == 0:
        raise ValueError("cannot box around zero atoms")
    lo = density.angstrom_to_voxel(coords.min(axis=0) - margin_A)  # [z, y, x] fractional
    hi = density.angstrom_to_voxel(coords.max(axis=0) + margin_A)
    start = np.floor(lo).astype(np.int64)
    stop = np.ceil(hi).astype(np.int64) + 1
    return crop_or_pad(density, tuple(start), tuple(stop - start), fill=fill)


def resample(density: DensityMap, voxel_size_A: float | tuple[float, float, float], *, order: int = 3) -> DensityMap:
    """Resample to a new voxel size (Å, scalar or ``(x, y, z)``), keeping the Å position of voxel 0.

    The new box covers the same physical extent. When coarsening, the map is first low-pass
    filtered to the new Nyquist limit so that no aliasing is introduced.
    """
    new_vox = np.broadcast_to(np.asarray(voxel_size_A, dtype=np.float64), 3)
    if np.any(new_vox <= 0):
        raise ValueError(f"voxel size must be positive (Å), got {tuple(new_vox)}")
    old_vox = np.asarray(density.voxel_size)
    if np.allclose(new_vox, old_vox):
        return density.with_data(density.data.copy(), source=None)
    src = density
    nyquist_A = 2.0 * float(new_vox.max())
    if np.any(new_vox > old_vox * (1 + 1e-6)):
        src = low_pass(density, nyquist_A)
    n_old_xyz = np.asarray(density.shape[::-1])
    n_new_xyz = np.floor((n_old_xyz - 1) * old_vox / new_vox + 1e-6).astype(np.int64) + 1
    axes = [np.arange(n) * (new_vox[i] / old_vox[i]) for i, n in enumerate(n_new_xyz)]  # x, y, z in old voxels
    zz, yy, xx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    data = map_coordinates(src.data, [zz, yy, xx], order=order, mode="nearest")
    # An ORIGIN-field map stays one; an NSTART map stays one when the origin falls on the new grid.
    nstart, header_origin = density.nstart, density.header_origin
    if not header_origin:
        on_grid = grid_nstart(density.origin, new_vox)
        if on_grid is None:
            nstart, header_origin = (0, 0, 0), True
        else:
            nstart = on_grid
    return DensityMap(
        data=data,
        voxel_size=tuple(new_vox),
        origin=density.origin,
        nstart=nstart,
        axis_order=density.axis_order,
        header_origin=header_origin,
    )


def normalize_percentile(density: DensityMap, low: float = 0.1, high: float = 99.9, clip: bool = True) -> DensityMap:
    """Map values scaled so the ``low`` and ``high`` percentiles become 0 and 1 (clipped by default)."""
    lo, hi = np.percentile(density.data, [low, high])
    if hi <= lo:
        raise ValueError("map is flat between the requested percentiles; cannot normalise")
    out = (density.data - lo) / (hi - lo)
    if clip:
        out = np.clip(out, 0.0, 1.0)
    return density.with_data(out.astype(np.float32), source=None)


def normalize_zscore(density: DensityMap, mask: np.ndarray | None = None) -> DensityMap:
    """Map values minus the mean over divided by the standard deviation (over ``mask`` if given)."""
    vals = density.data[mask] if mask is not None else density.data
    std = float(vals.std())
    if std == 0:
        raise ValueError("map is flat; cannot normalise")
    return density.with_data(((density.data - vals.mean()) / std).astype(np.float32), source=None)


def resample_like(density: DensityMap, like: DensityMap, *, order: int = 3) -> DensityMap:
    """``density`` interpolated at the voxel centres of ``like``: same shape, voxel size, origin,
    NSTART and axis order as ``like`` (Å positions are matched, nothing is shifted).

    Used to bring a map processed on another grid (e.g. 1 Å/voxel) back into its input's frame.
    Low-pass filtered to ``like``'s Nyquist first when that grid is coarser. Voxels of ``like``
    outside ``density``'s box take the nearest edge value.
    """
    src = density
    if np.any(np.asarray(like.voxel_size) > np.asarray(density.voxel_size) * (1 + 1e-6)):
        src = low_pass(density, 2.0 * float(max(like.voxel_size)))
    # axes are aligned, so each output axis maps to fractional input voxels on its own
    frac = [
        (np.asarray(like.origin[a]) + np.arange(n) * like.voxel_size[a] - density.origin[a]) / density.voxel_size[a]
        for a, n in zip((2, 1, 0), like.shape)
    ]  # z, y, x
    coeffs = spline_filter(src.data, order=order, mode="nearest") if order > 1 else src.data  # once, not per slab
    data = np.empty(like.shape, np.float32)
    yy, xx = np.meshgrid(frac[1], frac[2], indexing="ij")
    for k, z in enumerate(frac[0]):  # slab by slab: memory stays at one plane of coordinates
        coords = np.stack([np.full_like(yy, z), yy, xx])
        data[k] = map_coordinates(coeffs, coords, order=order, mode="nearest", prefilter=False)
    return like.with_data(data, source=None)
