"""``cryostack particles wizard``: ranked subsets reconstructed with RELION, the best map kept."""

from __future__ import annotations

from pathlib import Path

import typer

from cryostack.cli.options import DEVICE, THREADS, apply_threads, check_device


def wizard(
    particles: Path = typer.Option(..., "--particles", help="Picked particles: RELION .star or cryoSPARC .cs."),
    out: Path = typer.Option(
        ..., "--out", help="Output folder (final/ holds the map, half maps, mask, particles, log)."
    ),
    symmetry: str = typer.Option("C1", "--symmetry", help="Point group (RELION notation: C1, C2, D7, T, O, I1-I5)."),
    mask_diameter: float | None = typer.Option(
        None, "--mask-diameter", help="Particle (mask) diameter in Å; default 0.75 × the box edge."
    ),
    engine: str = typer.Option("relion", "--engine", help="Reconstruction engine (relion)."),
    mpi: int = typer.Option(
        3, "--mpi", min=3, help="MPI processes per RELION auto-refine (a leader and ≥ 1 follower per half set)."
    ),
    relion_threads: int = typer.Option(1, "--relion-threads", min=1, help="Threads per RELION process (--j)."),
    initial_sizes: str | None = typer.Option(
        None, "--initial-sizes", help="Stage-2 subset sizes, comma-separated (default: 50k,100k scaled to the data)."
    ),
    min_subset: int = typer.Option(200, "--min-subset", min=10, help="Smallest subset worth reconstructing."),
    search_pixel: float | None = typer.Option(
        None, "--search-pixel", help="Pixel size (Å) of the downsampled copy the searches run on."
    ),
    ranker: Path | None = typer.Option(None, "--ranker", help="Ranker checkpoint (default: the packaged one)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = DEVICE,
    resume: bool = typer.Option(False, "--resume", help="Continue a run in --out (refuses another input)."),
    threads: int | None = THREADS,
    no_progress: bool = typer.Option(False, "--no-progress"),
) -> None:
    """Rank particles, reconstruct top-ranked subsets with RELION, judge them by resolution and cFAR,
    rescue preferred orientation, and refine the best subset at full sampling."""
    from cryostack.errors import InputError
    from cryostack.particles.engine import EngineConfig
    from cryostack.particles.wizard import WizardConfig, run_wizard

    if engine != "relion":
        raise InputError(None, f"--engine {engine!r} is not available here (relion)")
    apply_threads(threads)
    sizes = None
    if initial_sizes:
        try:
            sizes = tuple(int(s) for s in initial_sizes.split(","))
        except ValueError:
            raise InputError(None, f"--initial-sizes must be comma-separated integers, got {initial_sizes!r}") from None
    cfg = WizardConfig(
        symmetry=symmetry,
        mask_diameter_A=mask_diameter,
        initial_sizes=sizes,
        min_subset=min_subset,
        search_pixel_A=search_pixel,
        ranker=None if ranker is None else str(ranker),
        seed=seed,
        device=check_device(device),
        engine=EngineConfig(mpi=mpi, threads=relion_threads),
    )
    summary = run_wizard(particles, out, cfg, resume=resume, progress=not no_progress)
    final = summary["final"]
    res, cf = final["resolution_A"], final["cfar"]
    typer.echo(
        f"{summary['chosen']:,} of {summary['particles']:,} particles chosen; final map "
        f"{'n/a' if res is None else f'{res:.2f} Å'} (FSC 0.143), cFAR {'n/a' if cf is None else f'{cf:.2f}'}; "
        f"{len(summary['subsets'])} reconstructions; wrote {Path(out) / 'final'}"
    )
