"""``cryostack particles rank``: CryoRanker scores for every particle of a STAR or .cs file."""

from __future__ import annotations

from pathlib import Path

import typer

from cryostack.cli.options import DEVICE, THREADS, apply_threads, check_device


def rank(
    particles: Path = typer.Option(..., "--particles", help="Picked particles: RELION .star or cryoSPARC .cs."),
    out: Path = typer.Option(..., "--out", help="Scored particles: .star (rlnCryostackScore/Rank) or .cs."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Ranker checkpoint (default: the packaged one)."),
    batch: int = typer.Option(256, "--batch", min=1, help="Particles per forward pass."),
    diameter: float | None = typer.Option(
        None, "--diameter", min=0.0, help="Particle diameter in Å: warns when the box does not hold it."
    ),
    no_histogram: bool = typer.Option(False, "--no-histogram", help="Do not write <out>.scores.png."),
    relion_label: str | None = typer.Option(
        None,
        "--relion-label",
        help="Also write the score into this numeric RELION label (e.g. rlnParticleFigureOfMerit), so "
        "RELION can select on it; the input must not have it.",
    ),
    threads: int | None = THREADS,
    device: str = DEVICE,
    no_progress: bool = typer.Option(False, "--no-progress"),
) -> None:
    """Score every particle (0-1, higher is better) and write the file back with score and rank columns."""
    from cryostack.particles.rank import rank_particles

    check_device(device)
    apply_threads(threads)
    result = rank_particles(
        particles,
        out,
        checkpoint=checkpoint,
        device=device,
        batch=batch,
        diameter_A=diameter,
        histogram=not no_histogram,
        progress=not no_progress,
        relion_label=relion_label,
    )
    s = result.scores
    typer.echo(
        f"{result.n_particles:,} particles scored ({result.particles_per_second:,.0f}/s); "
        f"median score {float(sorted(s)[len(s) // 2]):.3f}; wrote {result.out}"
        + (f" and {result.histogram}" if result.histogram else "")
    )
