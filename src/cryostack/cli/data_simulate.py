"""``cryostack data simulate``: write a simulated (map, model) dataset from a corpus split to disk."""

from __future__ import annotations

from pathlib import Path

import typer

from cryostack.cli.options import SEED


def simulate(
    corpus: Path = typer.Option(..., "--corpus", help="Corpus directory (from `cryostack data corpus`)."),
    out: Path = typer.Option(..., "--out", help="Dataset directory (created; an unfinished one is resumed)."),
    n: int = typer.Option(..., "--n", help="Number of items to write."),
    split: str = typer.Option("train", "--split", help="train or val; test only with --allow-test (evaluation)."),
    resolution: tuple[float, float] = typer.Option(
        (3.0, 6.0), "--resolution", help="Resolution range in Å (two values, lo hi)."
    ),
    voxel_size: float = typer.Option(1.0, "--voxel-size", help="Voxel size in Å."),
    crop: int = typer.Option(64, "--crop", help="Edge of the cubic crop in voxels."),
    noise_scale: tuple[float, float] = typer.Option(
        (1.0, 1.0), "--noise-scale", help="Noise amplitude range relative to FSC 0.143 at the resolution (>1: noisier)."
    ),
    seed: int = SEED,
    write_mrc: bool = typer.Option(
        False, "--write-mrc", help="Also write each item as input/target MRC maps and an mmCIF model."
    ),
    allow_test: bool = typer.Option(False, "--allow-test", help="Allow --split test (held-out evaluation data only)."),
    workers: int = typer.Option(1, "--workers", help="Parallel worker processes."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """Simulate experimental-like maps with sharp targets and model crops from corpus chains."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from cryostack.data.synthetic import SimulationConfig
    from cryostack.data.write import write_dataset
    from cryostack.density.checks import check_resolution
    from cryostack.errors import InputError

    lo, hi = resolution
    if not (0 < voxel_size <= 10):
        raise InputError(None, f"--voxel-size must be in (0, 10] Å, got {voxel_size}")
    check_resolution(lo, voxel_size_A=voxel_size)
    check_resolution(hi, voxel_size_A=voxel_size)
    if lo > hi:
        raise InputError(None, f"--resolution must be lo <= hi, got {lo} {hi}")
    if not (0 <= noise_scale[0] <= noise_scale[1] <= 10):
        raise InputError(
            None, f"--noise-scale must be two values 0 <= lo <= hi <= 10, got {noise_scale[0]} {noise_scale[1]}"
        )
    if split == "test" and not allow_test:
        raise InputError(None, "the test split is held out for evaluation: add --allow-test to simulate from it")
    if crop < 8:
        raise InputError(None, f"--crop must be at least 8 voxels, got {crop}")
    config = SimulationConfig(
        resolution_A=(float(lo), float(hi)),
        voxel_size_A=float(voxel_size),
        crop_voxels=int(crop),
        noise_scale=(float(noise_scale[0]), float(noise_scale[1])),
    )
    columns = (TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=no_progress) as bar:
        task = bar.add_task("simulate", total=n)
        result = write_dataset(
            corpus,
            out,
            n,
            config,
            split=split,
            seed=seed,
            allow_test=allow_test,
            write_mrc=write_mrc,
            workers=workers,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    typer.echo(
        f"wrote {out}: {n} items ({result.already_there} already there), {crop}³ voxels at {voxel_size} Å, "
        f"resolution {lo}–{hi} Å, split {split}"
    )
