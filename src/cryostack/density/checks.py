"""Input sanity checks shared by every command: stated resolution, map values, voxel sizes, model atoms.

Each raises :class:`~cryostack.errors.InputError` with one line naming the file and the problem,
before any work starts, so a meaningless input is refused instead of giving meaningless numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryostack.errors import InputError
from cryostack.io.maps import DensityMap
from cryostack.io.models import AtomArrays

#: Sensible range of a cryo-EM map's resolution, Å: finer than 0.5 Å is not a cryo-EM map,
#: coarser than 50 Å carries no model information.
MIN_RESOLUTION_A, MAX_RESOLUTION_A = 0.5, 50.0
#: Sensible voxel sizes, Å: finer than 0.05 Å or coarser than 20 Å is a header error, not a map.
MIN_VOXEL_A, MAX_VOXEL_A = 0.05, 20.0
#: Largest plausible atom coordinate, Å (a PDB file cannot hold more than 9999.999; a cryo-EM box
#: of 100,000 Å does not exist).
MAX_COORDINATE_A = 1e5
#: Largest grid built for a simulated map (voxels): 1024³ float32 is 4 GiB.
MAX_GRID_VOXELS = 1024**3


def check_resolution(
    resolution_A: float | None,
    *,
    where: str | Path | None = None,
    voxel_size_A: float | None = None,
    needed_for: str = "this",
) -> float:
    """``resolution_A`` as a float, or :class:`InputError` (naming ``where``) when it is missing,
    outside :data:`MIN_RESOLUTION_A`–:data:`MAX_RESOLUTION_A`, or (with ``voxel_size_A``) finer
    than Nyquist (2 × voxel size)."""
    if resolution_A is None:
        raise InputError(where, f"{needed_for} needs the map's resolution (resolution_A, Å)")
    value = float(resolution_A)
    if not (MIN_RESOLUTION_A <= value <= MAX_RESOLUTION_A):
        raise InputError(
            where, f"resolution {value:g} Å is outside the sensible range {MIN_RESOLUTION_A:g}–{MAX_RESOLUTION_A:g} Å"
        )
    if voxel_size_A is not None and value < 2.0 * voxel_size_A - 1e-9:
        raise InputError(
            where, f"resolution {value:g} Å is finer than Nyquist of {voxel_size_A:g} Å voxels (2 × voxel size)"
        )
    return value


def check_voxel_size(voxel_size_A: float | tuple[float, ...], *, where: str | Path | None = None) -> None:
    """Refuse a voxel size outside :data:`MIN_VOXEL_A`–:data:`MAX_VOXEL_A` (a broken header or a typo)."""
    sizes = np.atleast_1d(np.asarray(voxel_size_A, dtype=np.float64))
    if not np.isfinite(sizes).all() or (sizes < MIN_VOXEL_A).any() or (sizes > MAX_VOXEL_A).any():
        shown = ", ".join(f"{v:g}" for v in sizes)
        raise InputError(where, f"voxel size {shown} Å is outside the sensible range {MIN_VOXEL_A:g}–{MAX_VOXEL_A:g} Å")


def check_grid_size(shape: tuple[int, ...], *, where: str | Path | None = None) -> None:
    """Refuse a grid of more than :data:`MAX_GRID_VOXELS` voxels before it is allocated."""
    n = int(np.prod(np.asarray(shape, dtype=np.float64)))
    if n > MAX_GRID_VOXELS:
        raise InputError(
            where,
            f"the grid would have {n:.3g} voxels ({' × '.join(str(int(s)) for s in shape)}), more than "
            f"{MAX_GRID_VOXELS:.3g}; use a coarser voxel size or a smaller margin",
        )


def check_half_maps(density: DensityMap, halves) -> None:
    """Refuse half maps on another grid (shape or voxel size) than ``density``."""
    for h in halves:
        if h.shape != density.shape or any(abs(a - b) > 1e-3 for a, b in zip(h.voxel_size, density.voxel_size)):
            raise InputError(
                h.source,
                f"half map grid {h.shape[::-1]} at {h.voxel_size[0]:.3f} Å "
                f"differs from the map's {density.shape[::-1]} at {density.voxel_size[0]:.3f} Å",
            )


def check_map_values(density: DensityMap) -> None:
    """Refuse a map with non-finite values or no variation (all zero, constant): nothing to fit."""
    where = density.source or "map"
    data = density.data
    if not np.isfinite(data).all():
        raise InputError(where, f"the map has {int((~np.isfinite(data)).sum())} non-finite values (NaN or inf)")
    if float(data.max()) == float(data.min()):
        raise InputError(where, f"the map is constant ({float(data.min()):g} everywhere): there is no density to fit")
    check_voxel_size(density.voxel_size, where=where)


def check_model_atoms(atoms: AtomArrays, where: str | None = None) -> None:
    """Refuse, with one line naming ``where``, a model whose density would be meaningless:
    no atoms, non-finite or absurd coordinates, negative B-factors, occupancies outside 0–1, or every
    occupancy 0 (no atom would contribute)."""
    where = where or "model"
    if atoms.n_atoms == 0:
        raise InputError(where, "the model has no atoms")
    if not np.isfinite(atoms.coords).all():
        raise InputError(where, "the model has non-finite coordinates")
    far = np.abs(atoms.coords).max(axis=1) > MAX_COORDINATE_A
    if far.any():
        raise InputError(
            where, f"{int(far.sum())} atoms lie beyond ±{MAX_COORDINATE_A:g} Å (a broken coordinate record?)"
        )
    if (atoms.b_factors < 0).any():
        n = int((atoms.b_factors < 0).sum())
        raise InputError(
            where, f"{n} atoms have negative B-factors (lowest {atoms.b_factors.min():.1f} Å²); B must be ≥ 0"
        )
    occ = atoms.occupancies
    if ((occ < 0) | (occ > 1.0 + 1e-3)).any():
        raise InputError(where, f"occupancies must lie in 0–1 (found {occ.min():.2f}–{occ.max():.2f})")
    if not (occ > 0).any():
        raise InputError(where, "every atom has occupancy 0: the model has no density")
