"""``cryostack train encoder``: MoCo v3 pretraining of the particle encoder on simulated particles."""

from __future__ import annotations

from pathlib import Path

import typer

from cryostack.cli.options import DEVICE, SEED, THREADS, apply_threads, check_device


def encoder(
    corpus: Path = typer.Option(..., "--corpus", help="Corpus directory (cryostack data corpus); train split only."),
    out: Path = typer.Option(..., "--out", help="Run directory: last.pt (resumable), encoder.pt, card.md."),
    size: str = typer.Option("tiny", "--size", help="ViT size: tiny, small or base (ViT-B)."),
    steps: int = typer.Option(3000, "--steps", min=1, help="Optimiser steps."),
    batch: int = typer.Option(128, "--batch", min=4, help="Particle pairs per step (per process under torchrun)."),
    lr: float = typer.Option(5e-4, "--lr", min=0.0, help="Peak learning rate (AdamW)."),
    max_minutes: float | None = typer.Option(None, "--max-minutes", min=0.0, help="Wall-clock budget; resumable."),
    denoise_weight: float = typer.Option(
        1.0, "--denoise-weight", min=0.0, help="Weight of the dense denoising auxiliary loss (0: MoCo v3 alone)."
    ),
    seed: int = SEED,
    threads: int | None = THREADS,
    device: str = DEVICE,
    no_progress: bool = typer.Option(False, "--no-progress"),
) -> None:
    """Pretrain the particle encoder (ViT, MoCo v3) on particles simulated from the corpus train split."""
    from cryostack.particles.api import pretrain_encoder

    check_device(device)
    apply_threads(threads)
    result = pretrain_encoder(
        corpus,
        out,
        size=size,
        steps=steps,
        batch=batch,
        lr=lr,
        max_minutes=max_minutes,
        denoise_weight=denoise_weight,
        seed=seed,
        device=device,
        progress=not no_progress,
    )
    typer.echo(f"{result['step']}/{steps} steps in {result['wall_time_s']:.0f} s; wrote {result['encoder']}")
