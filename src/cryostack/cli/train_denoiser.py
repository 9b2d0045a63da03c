"""``cryostack train denoiser``: denoising pretraining of the refinement denoiser (train split only)."""

from __future__ import annotations

from pathlib import Path

import typer

from cryostack.cli.options import DEVICE, SEED, THREADS, apply_threads, check_device


def denoiser(
    corpus: Path = typer.Option(..., "--corpus", help="Corpus directory (cryostack data corpus)."),
    out: Path = typer.Option(..., "--out", help="Run directory: last.pt (resumable), denoiser.pt, report.json."),
    # Defaults come from PretrainConfig (read inside, so `--help` does not import torch).
    steps: int | None = typer.Option(None, "--steps", min=1, help="Optimiser steps (default 6000)."),
    max_minutes: float | None = typer.Option(
        None, "--max-minutes", help="Wall-clock budget in minutes (default 39.6)."
    ),
    batch_chains: int | None = typer.Option(None, "--batch-chains", min=1, help="Chains per step (default 4)."),
    crop_atoms: int | None = typer.Option(None, "--crop-atoms", min=16, help="Atoms per crop (default 512)."),
    val_chains: int | None = typer.Option(None, "--val-chains", min=0, help="Validation chains (default 32)."),
    backbone_only: bool = typer.Option(False, "--backbone-only", help="Ignore full-atom chains."),
    full_atom_from: Path | None = typer.Option(
        None, "--full-atom-from", help="Another corpus whose full-atom chains replace the same chains of --corpus."
    ),
    hold_out_from: list[Path] = typer.Option(
        [], "--hold-out-from", help="Never train on entries in the val/test split of this corpus (repeatable)."
    ),
    seed: int = SEED,
    threads: int | None = THREADS,
    device: str = DEVICE,
    no_progress: bool = typer.Option(False, "--no-progress"),
) -> None:
    """Pretrain the atom denoiser of `refine --method diffusion` on the corpus train split."""

    from cryostack.errors import InputError
    from cryostack.refine.diffusion.config import PretrainConfig
    from cryostack.refine.diffusion.train import pretrain_from_corpus

    check_device(device)
    if not (corpus / "corpus.json").is_file():
        raise InputError(corpus, "not a cryostack corpus (no corpus.json)")
    apply_threads(threads)
    d = PretrainConfig()
    pcfg = PretrainConfig(
        steps=steps or d.steps,
        max_hours=max_minutes / 60 if max_minutes is not None else d.max_hours,
        batch_chains=batch_chains or d.batch_chains,
        crop_atoms=crop_atoms or d.crop_atoms,
        val_chains=val_chains if val_chains is not None else d.val_chains,
        seed=seed,
        full_atom=not backbone_only,
    )
    report = pretrain_from_corpus(
        corpus,
        out,
        pcfg,
        full_atom_from=full_atom_from,
        hold_out_from=hold_out_from,
        progress=not no_progress,
        device=device,
    )
    typer.echo(
        f"{report['steps']} steps in {report['wall_time_s']:.0f} s; wrote {out / 'denoiser.pt'} and {out / 'report.json'}"
    )
