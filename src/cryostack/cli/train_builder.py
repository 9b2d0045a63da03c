"""``cryostack train builder``: the model builder on simulated maps of corpus chains (resumable)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cryostack.cli.options import DEVICE, SEED, THREADS, apply_threads, check_device


def builder(
    corpus: Path = typer.Option(..., "--corpus", help="Corpus with side chains (cryostack data corpus --sidechains)."),
    out: Path = typer.Option(..., "--out", help="Run directory: last.pt (resumable), builder.pt, report.json."),
    steps: int = typer.Option(3000, "--steps", min=1, help="Optimiser steps."),
    batch: int = typer.Option(2, "--batch", min=1, help="Simulated crops per step."),
    crop: int = typer.Option(40, "--crop", min=8, help="Training crop edge in voxels at 1.5 Å (multiple of 4)."),
    max_residues: int = typer.Option(160, "--max-residues", min=4, help="Residues kept per crop (nearest its centre)."),
    init: Path | None = typer.Option(None, "--init", help="Start from this builder.pt (fine-tuning)."),
    lr: float = typer.Option(5e-4, "--lr", min=0.0, help="Peak learning rate."),
    warmup: int = typer.Option(100, "--warmup", min=0, help="Warm-up steps."),
    max_minutes: float | None = typer.Option(
        None, "--max-minutes", help="Wall-clock budget of the whole run (resumed time counts); rerun to continue."
    ),
    seed: int = SEED,
    threads: int | None = THREADS,
    device: str = DEVICE,
    no_progress: bool = typer.Option(False, "--no-progress"),
) -> None:
    """Train the model builder (train split; validation on val)."""
    from cryostack.errors import InputError

    check_device(device)
    if not (corpus / "corpus.json").is_file():
        raise InputError(corpus, "not a cryostack corpus (no corpus.json)")
    if crop % 4:
        raise InputError(None, f"--crop must be a multiple of 4, got {crop}")
    if init is not None and not init.is_file():
        raise InputError(init, "no such checkpoint (--init)")
    apply_threads(threads)
    from cryostack.build.train import BuildTrainConfig, train_builder

    cfg = BuildTrainConfig(
        steps=steps, batch=batch, crop_voxels=crop, max_residues=max_residues, lr=lr, warmup_steps=warmup,
        max_hours=max_minutes / 60 if max_minutes else None, seed=seed,
        init_checkpoint=str(init) if init else None,
    )  # fmt: skip
    report = train_builder(corpus, out, cfg, device=device, progress=not no_progress)
    typer.echo(json.dumps({k: report[k] for k in ("steps", "finished", "wall_time_s", "val")}, indent=1))
