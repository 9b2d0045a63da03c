"""The one check of a stated map resolution, used by every command that takes one."""

from __future__ import annotations

from pathlib import Path

from cryostack.errors import InputError

#: Sensible range of a cryo-EM map's resolution, Å: finer than 0.5 Å is not a cryo-EM map,
#: coarser than 50 Å carries no model information.
MIN_RESOLUTION_A, MAX_RESOLUTION_A = 0.5, 50.0


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
