"""Simple agreement measures: maps on the same grid, and a map at atom positions."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cryostack.io.maps import DensityMap


def correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Pearson correlation of two same-shape arrays, over ``mask`` (boolean) if given."""
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    if mask is not None:
        a, b = a[mask], b[mask]
    a = a.astype(np.float64).ravel() - a.mean(dtype=np.float64)
    b = b.astype(np.float64).ravel() - b.mean(dtype=np.float64)
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def _sphere_directions(n: int) -> np.ndarray:
    """``(n, 3)`` unit vectors spread evenly over the sphere (Fibonacci lattice; no randomness)."""
    k = np.arange(n) + 0.5
    cos_polar = 1.0 - 2.0 * k / n
    azimuth = np.pi * (1.0 + 5**0.5) * k
    sin_polar = np.sqrt(1.0 - cos_polar**2)
    return np.stack([sin_polar * np.cos(azimuth), sin_polar * np.sin(azimuth), cos_polar], axis=1)


@dataclass(frozen=True)
class Placement:
    """How well atoms sit in a map; see :func:`placement_statistics`."""

    n_atoms: int  # atoms inside the box (the others are left out)
    mean_at_atoms: float  # mean interpolated map value at those atoms
    z_map: float  # (mean_at_atoms - map mean) / map std, over all voxels
    masked_fraction: float  # fraction of voxels exactly 0 (a masked segment when large)
    atom_inclusion: float  # fraction of the atoms where the map is not 0 (inside the unmasked part)
    z_displaced: float  # mean_at_atoms vs the same atoms rigidly displaced, in std of the displaced means
    displacement_A: float  # length of those displacements (Å)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def placement_statistics(
    density: DensityMap,
    xyz_A: np.ndarray,
    *,
    displacement_A: float = 3.0,
    n_displacements: int = 64,
) -> Placement:
    """Statistics of the map at atom positions ``(N, 3)`` (x, y, z Å): does the model sit in its density?

    ``z_map`` is the plain test (mean value at the atoms, in standard deviations above the map
    mean). It is not meaningful for a masked segment: there most voxels are 0, which sets the
    mean and std, and atoms outside the mask read 0. Restricting the statistics to the non-zero
    voxels does not help either when the mask is a density threshold, since then every
    remaining voxel is density. ``z_displaced`` works for any map: the mean at the atoms
    compared with the means at ``n_displacements`` copies of the atoms shifted rigidly by
    ``displacement_A`` along directions spread over the sphere, in units of the copies' std.
    It is independent of the map's offset and scale, and near 0 for a misplaced model.
    """
    xyz = np.asarray(xyz_A, dtype=np.float64).reshape(-1, 3)
    idx = density.angstrom_to_voxel(xyz)
    inside = np.all((idx >= 0) & (idx <= np.asarray(density.shape) - 1), axis=1)
    xyz = xyz[inside]
    if not len(xyz):
        raise ValueError("no atom lies inside the map's box")
    data = density.data
    mean, std = float(data.mean(dtype=np.float64)), float(data.std(dtype=np.float64))
    values = density.interpolate(xyz)
    at_atoms = float(values.mean(dtype=np.float64))
    shifted = np.array(
        [
            density.interpolate(xyz + displacement_A * u).mean(dtype=np.float64)
            for u in _sphere_directions(n_displacements)
        ]
    )
    spread = float(shifted.std())
    return Placement(
        n_atoms=int(len(xyz)),
        mean_at_atoms=at_atoms,
        z_map=(at_atoms - mean) / std if std > 0 else 0.0,
        masked_fraction=float(np.count_nonzero(data == 0) / data.size),
        atom_inclusion=float(np.count_nonzero(values != 0) / len(values)),
        z_displaced=(at_atoms - float(shifted.mean())) / spread if spread > 0 else 0.0,
        displacement_A=float(displacement_A),
    )
