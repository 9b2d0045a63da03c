"""``cryostack train ranker``: CryoRanker fine-tuning of the particle encoder on simulated, labelled particles."""

from __future__ import annotations

from pathlib import Path

import typer

from cryostack.cli.options import DEVICE, SEED, THREADS, apply_threads, check_device


def ranker(
    corpus: Path = typer.Option(..., "--corpus", help="Corpus directory (cryostack data corpus); train split only."),
    out: Path = typer.Option(..., "--out", help="Run directory: last.pt (resumable), ranker.pt, card.md."),
    encoder: Path | None = typer.Option(
        None, "--encoder", help="Pretrained encoder (encoder.pt); default: the packaged one. 'none' = from scratch."
    ),
    steps: int = typer.Option(1500, "--steps", min=1, help="Optimiser steps."),
    batch: int = typer.Option(128, "--batch", min=4, help="Particles per step (per process under torchrun)."),
    lr: float = typer.Option(2e-4, "--lr", min=0.0, help="Peak learning rate (AdamW)."),
    max_minutes: float | None = typer.Option(None, "--max-minutes", min=0.0, help="Wall-clock budget; resumable."),
    seed: int = SEED,
    threads: int | None = THREADS,
    device: str = DEVICE,
    no_progress: bool = typer.Option(False, "--no-progress"),
) -> None:
    """Fine-tune CryoRanker (whole network: CE + margin ranking) on particles simulated from the train split."""
    from cryostack.particles.api import finetune_ranker

    check_device(device)
    apply_threads(threads)
    result = finetune_ranker(
        corpus,
        out,
        encoder=encoder,
        steps=steps,
        batch=batch,
        lr=lr,
        max_minutes=max_minutes,
        seed=seed,
        device=device,
        progress=not no_progress,
    )
    typer.echo(f"{result['step']}/{steps} steps in {result['wall_time_s']:.0f} s; wrote {result['ranker']}")
