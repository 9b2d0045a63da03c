"""``cryostack train enhancer``: the map enhancer on simulated maps of corpus chains (resumable)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cryostack.cli.options import DEVICE, SEED, THREADS, apply_threads, check_device


def enhancer(
    corpus: Path = typer.Option(..., "--corpus", help="Corpus with side chains (cryostack data corpus --sidechains)."),
    out: Path = typer.Option(..., "--out", help="Run directory: last.pt (resumable), enhancer.pt, report.json."),
    steps: int = typer.Option(4000, "--steps", min=1, help="Optimiser steps."),
    batch: int = typer.Option(4, "--batch", min=1, help="Simulated cubes per step."),
    crop: int = typer.Option(40, "--crop", min=8, help="Training cube edge in voxels at 1 Å (multiple of 8)."),
    no_structure: bool = typer.Option(False, "--no-structure", help="Never read structure embeddings (the ablation)."),
    bypass_prob: float = typer.Option(0.5, "--bypass-prob", min=0.0, max=1.0, help="Items that skip the embeddings."),
    channels: str = typer.Option("16,32,64,96", "--channels", help="U-Net widths per level, finest first."),
    sim_box: int = typer.Option(
        0,
        "--sim-box",
        min=0,
        help="Simulate this box (voxels), normalise it whole, train on a random --crop cube of it.",
    ),
    init: Path | None = typer.Option(None, "--init", help="Start from this enhancer.pt (fine-tuning)."),
    lr: float = typer.Option(1e-3, "--lr", min=0.0, help="Peak learning rate."),
    warmup: int = typer.Option(100, "--warmup", min=0, help="Warm-up steps."),
    max_minutes: float | None = typer.Option(
        None, "--max-minutes", help="Wall-clock budget of the whole run (resumed time counts); rerun to continue."
    ),
    seed: int = SEED,
    threads: int | None = THREADS,
    device: str = DEVICE,
    no_progress: bool = typer.Option(False, "--no-progress"),
) -> None:
    """Train the map enhancer (train split; validation on val)."""
    from cryostack.errors import InputError

    check_device(device)
    if not (corpus / "corpus.json").is_file():
        raise InputError(corpus, "not a cryostack corpus (no corpus.json)")
    if crop % 8:
        raise InputError(None, f"--crop must be a multiple of 8, got {crop}")
    apply_threads(threads)
    from cryostack.enhance.train import EnhanceTrainConfig, train_enhancer

    widths = tuple(int(c) for c in channels.split(","))
    if sim_box and sim_box < crop:
        raise InputError(None, f"--sim-box ({sim_box}) must be at least --crop ({crop})")
    if init is not None and not init.is_file():
        raise InputError(init, "no such checkpoint (--init)")
    cfg = EnhanceTrainConfig(
        steps=steps, batch=batch, crop_voxels=crop, bypass_prob=1.0 if no_structure else bypass_prob,
        max_hours=max_minutes / 60 if max_minutes else None, seed=seed, model={"channels": widths},
        sim_box_voxels=sim_box, init_checkpoint=str(init) if init else None, lr=lr, warmup_steps=warmup,
    )  # fmt: skip
    report = train_enhancer(corpus, out, cfg, device=device, progress=not no_progress)
    typer.echo(json.dumps({k: report[k] for k in ("steps", "finished", "wall_time_s", "val")}, indent=1))
