"""``cryostack particles dataset``: collections of simulated particle sets from one corpus split."""

from __future__ import annotations

from pathlib import Path

import typer


def dataset(
    kind: str = typer.Option(..., "--kind", help="pretrain, ranking or subset (docs/particles.md)."),
    corpus: Path = typer.Option(..., "--corpus", help="Corpus folder: the structures come from one of its splits."),
    out: Path = typer.Option(..., "--out", help="Output folder (set_NNN/ folders and dataset.json)."),
    split: str = typer.Option("train", "--split", help="Corpus split (train or val; test with --allow-test)."),
    n: int | None = typer.Option(None, "--n", help="Particles per set (default: the kind's, see the docs)."),
    sets: int | None = typer.Option(None, "--sets", help="Number of sets (default: the kind's)."),
    structures: int | None = typer.Option(
        None, "--structures", help="Structures per set (pretrain only; ranking and subset sets hold one)."
    ),
    box: int = typer.Option(128, "--box", help="Box edge in pixels (even)."),
    pixel_size: float | None = typer.Option(
        None, "--pixel-size", help="Fix the pixel size in Å (default: drawn per set from the kind's range)."
    ),
    pixel_size_range: tuple[float, float] | None = typer.Option(
        None, "--pixel-size-range", help="Range of the pixel size per set in Å."
    ),
    snr_range: tuple[float, float] | None = typer.Option(
        None, "--snr-range", help="Range of the SNR per set (drawn log-uniformly)."
    ),
    junk_range: tuple[float, float] | None = typer.Option(
        None, "--junk-range", help="Range of the junk fraction per set (0-1)."
    ),
    allow_test: bool = typer.Option(False, "--allow-test", help="Allow --split test (held-out evaluation sets only)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (the dataset is deterministic given it)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    workers: int = typer.Option(1, "--workers", help="Worker processes of one thread each per set (CPU)."),
    no_cs: bool = typer.Option(False, "--no-cs", help="Do not write particles.cs."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """Simulate sets for pretraining, ranking or subset selection from one corpus split (resumable)."""
    from cryostack.cli.options import check_device
    from cryostack.errors import InputError
    from cryostack.particles.datasets import build_dataset

    overrides: dict = {"box_px": box}
    if pixel_size is not None and pixel_size_range is not None:
        raise InputError(None, "give --pixel-size or --pixel-size-range, not both")
    if pixel_size is not None:
        overrides["pixel_size_range_A"] = (float(pixel_size), float(pixel_size))
    if pixel_size_range is not None:
        overrides["pixel_size_range_A"] = (float(pixel_size_range[0]), float(pixel_size_range[1]))
    if snr_range is not None:
        overrides["snr_range"] = (float(snr_range[0]), float(snr_range[1]))
    if junk_range is not None:
        overrides["junk_range"] = (float(junk_range[0]), float(junk_range[1]))
    if structures is not None:
        overrides["structures_per_set"] = structures
    if split == "test" and not allow_test:
        raise InputError(None, "the test split is held out; pass --allow-test only for evaluation sets")
    result = build_dataset(
        kind,
        corpus,
        out,
        split=split,
        n=n,
        sets=sets,
        seed=seed,
        allow_test=allow_test,
        write_cs=not no_cs,
        workers=workers,
        device=check_device(device),
        progress=not no_progress,
        **overrides,
    )
    typer.echo(
        f"wrote {result.manifest_path}: {len(result.sets)} {result.kind} sets from split {result.split} "
        f"({result.built} built, {result.skipped} already done), {result.n_particles} particles "
        f"in {result.seconds:.1f} s"
    )
