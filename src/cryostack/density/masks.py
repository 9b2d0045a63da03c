"""Masks on a map's grid from atom positions in Å (no map values involved)."""

from __future__ import annotations

import numpy as np

from cryostack.io.maps import DensityMap


def sphere_points(
    coords: np.ndarray, radius_A: float, density: DensityMap, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Grid points within ``radius_A`` of each atom, as pairs.

    Returns ``(atom, voxel)``: the row of ``coords`` ``(N, 3)`` Å and the flat ``[z, y, x]`` index
    of every grid point inside the map within ``radius_A`` of that atom, grouped by atom in
    input order. One small offset stencil is reused for every atom, so the cost grows with the
    number of atoms, not with the map.
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 3)
    vox = np.asarray(density.voxel_size, dtype=np.float64)
    h = np.ceil(radius_A / vox).astype(int) + 1  # x, y, z
    off = np.stack(np.meshgrid(*[np.arange(-k, k + 1) for k in h[::-1]], indexing="ij"), -1).reshape(-1, 3)  # z, y, x
    off_A = off[:, ::-1] * vox  # x, y, z
    # An atom lies within half a voxel of its nearest grid point along each axis.
    keep = np.linalg.norm(off_A, axis=1) <= radius_A + 0.5 * np.linalg.norm(vox) + 1e-6
    off, off_A = off[keep], off_A[keep]
    shape = np.array(density.shape)
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    off_flat = off @ strides
    r2 = radius_A**2
    chunk = max(1, min(chunk, (1 << 24) // len(off)))  # ≤ 16 M atom-offset pairs (128 MB) at once
    atoms_out, voxels_out = [], []
    for s0 in range(0, len(coords), chunk):
        c = coords[s0 : s0 + chunk]
        base = np.rint(density.angstrom_to_voxel(c)).astype(np.int64)  # (m, 3) z, y, x
        delta = c - density.voxel_to_angstrom(base)  # atom relative to its voxel, x, y, z
        # Squared distances summed axis by axis (x, y, z), without (m, K, 3) temporaries.
        d2 = (off_A[None, :, 0] - delta[:, 0, None]) ** 2
        d2 += (off_A[None, :, 1] - delta[:, 1, None]) ** 2
        d2 += (off_A[None, :, 2] - delta[:, 2, None]) ** 2
        near = d2 <= r2
        # Only atoms whose stencil reaches past the map's edge need the per-axis bounds check.
        edge = np.nonzero(np.any((base - h[::-1] < 0) | (base + h[::-1] >= shape), axis=1))[0]
        for ax in range(3):
            i = base[edge, ax, None] + off[None, :, ax]
            near[edge] &= (i >= 0) & (i < shape[ax])
        rows, cols = np.nonzero(near)
        atoms_out.append(rows + s0)
        voxels_out.append((base @ strides)[rows] + off_flat[cols])
    if not atoms_out:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(atoms_out), np.concatenate(voxels_out)


def sphere_mask(coords: np.ndarray, radius_A: float, density: DensityMap, chunk: int = 4096) -> np.ndarray:
    """Boolean ``[z, y, x]`` mask of grid points within ``radius_A`` of any of ``coords`` ``(N, 3)``."""
    out = np.zeros(density.shape, dtype=bool)
    out.ravel()[sphere_points(coords, radius_A, density, chunk)[1]] = True
    return out
