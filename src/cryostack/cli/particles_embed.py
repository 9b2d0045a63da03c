"""``cryostack particles embed``: encoder features of every particle, for clustering."""

from __future__ import annotations

from pathlib import Path

import typer

from cryostack.cli.options import DEVICE, THREADS, apply_threads, check_device


def embed(
    particles: Path = typer.Option(..., "--particles", help="Particles: RELION .star or cryoSPARC .cs."),
    out: Path = typer.Option(..., "--out", help="Features (.npy, n × dim float32); an index .csv goes beside it."),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Encoder or ranker checkpoint (default: the packaged encoder)."
    ),
    batch: int = typer.Option(256, "--batch", min=1, help="Particles per forward pass."),
    threads: int | None = THREADS,
    device: str = DEVICE,
    no_progress: bool = typer.Option(False, "--no-progress"),
) -> None:
    """Write the particle encoder's features of every particle (row order of the input file)."""
    from cryostack.particles.rank import embed_particles

    check_device(device)
    apply_threads(threads)
    npy, index, feats = embed_particles(
        particles, out, checkpoint=checkpoint, device=device, batch=batch, progress=not no_progress
    )
    typer.echo(f"{feats.shape[0]:,} particles × {feats.shape[1]} features; wrote {npy} and {index}")
