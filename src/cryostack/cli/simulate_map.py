"""``cryostack simulate-map``: a model's density at a given resolution on a chosen grid."""

from __future__ import annotations

from pathlib import Path

import typer

from cryostack.cli.options import DEVICE, RESOLUTION_REQUIRED, THREADS, apply_threads, check_device
from cryostack.errors import InputError


def simulate_map(
    model: Path = typer.Option(..., "--model", help="Atomic model (.pdb or .cif)."),
    resolution: float = RESOLUTION_REQUIRED,
    out: Path = typer.Option(..., "--out", help="Output map (.mrc, .map; .gz to compress)."),
    like: Path | None = typer.Option(
        None, "--like", help="Simulate on this map's grid (shape, voxel size, origin, axis order)."
    ),
    voxel_size: float | None = typer.Option(None, "--voxel-size", help="Voxel size in Å for a box around the model."),
    margin: float = typer.Option(5.0, "--margin", help="Margin around the model in Å (with --voxel-size)."),
    no_bfactors: bool = typer.Option(False, "--no-bfactors", help="Ignore the model's B-factors."),
    device: str = DEVICE,
    threads: int | None = THREADS,
) -> None:
    """Simulate a map from an atomic model."""
    apply_threads(threads)
    import numpy as np

    from cryostack.density.checks import check_grid_size, check_resolution, check_voxel_size
    from cryostack.density.simulate import grid_around_atoms, simulate_model_map
    from cryostack.io.atomic import check_writable
    from cryostack.io.maps import DensityMap, read_map, write_map
    from cryostack.io.models import read_structure

    if (like is None) == (voxel_size is None):
        raise InputError(None, "give exactly one of --like MAP or --voxel-size V")
    check_resolution(resolution)
    check_device(device)
    if voxel_size is not None:
        check_voxel_size(voxel_size)
    if not 0 <= margin <= 1000:
        raise InputError(None, f"--margin must be 0–1000 Å, got {margin}")
    check_writable(out)
    structure = read_structure(model)
    coords = structure.atoms().coords
    if like is not None:
        template = read_map(like)
        check_voxel_size(template.voxel_size, where=like)
        grid = template.grid
        idx = template.angstrom_to_voxel(coords)
        inside = np.all((idx >= 0) & (idx <= np.array(template.shape) - 1), axis=1).mean() if len(coords) else 0.0
        if inside < 0.5:
            raise InputError(
                model,
                f"only {100 * inside:.0f}% of the atoms lie inside the grid of {like}: the simulated map would be "
                "(nearly) empty; is this the right map, and are origin and axis order right?",
            )
    else:
        template = None
        assert voxel_size is not None  # exactly one of like / voxel_size is given (checked above)
        grid = grid_around_atoms(coords, voxel_size, margin)
        check_grid_size(grid.shape, where=model)
    data = simulate_model_map(structure, grid, resolution, use_b_factors=not no_bfactors, device=device)
    if template is not None:
        result = template.with_data(data, source=None)
    else:
        result = DensityMap(data=data, voxel_size=grid.voxel_size, origin=grid.origin)
        n = [round(o / v) for o, v in zip(grid.origin, grid.voxel_size)]
        result.nstart = (n[0], n[1], n[2])  # the grid origin is snapped to the lattice, so NSTART is exact
    write_map(result, out, protect=(model,) + ((like,) if like else ()))
    typer.echo(
        f"wrote {out}: {data.shape[::-1]} voxels (x, y, z) at {grid.voxel_size[0]:.3f} Å, resolution {resolution} Å"
    )
