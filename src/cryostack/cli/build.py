"""``cryostack build``: map + sequence → an atomic model in the map's frame (mmCIF) and its report."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cryostack.cli.options import DEVICE, JSON_OUT, RESOLUTION, THREADS, apply_threads, check_device


def build(
    map_path: Path = typer.Option(..., "--map", help="Map to build into (MRC)."),
    sequence: Path | None = typer.Option(
        None, "--sequence", help="FASTA of the chains (one record per entity; RCSB 'Chains A, B' headers give copies)."
    ),
    out: Path = typer.Option(..., "--out", help="Model (mmCIF); OUT_report.html/.json beside it."),
    resolution: float | None = RESOLUTION,
    no_sequence: bool = typer.Option(
        False, "--no-sequence", help="Build poly-UNK backbone (lengths from the FASTA if given)."
    ),
    residues: int | None = typer.Option(None, "--residues", min=1, help="Residues of a poly-UNK build without FASTA."),
    refine: bool = typer.Option(False, "--refine", help="Then refine the model into the map (cryostack refine)."),
    no_sidechains: bool = typer.Option(False, "--no-sidechains", help="Backbone and Cβ only (no ProMod3)."),
    no_gnn: bool = typer.Option(False, "--no-gnn", help="Skip the frame GNN (ablation)."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Builder weights (default: the packaged model)."),
    device: str = DEVICE,
    threads: int | None = THREADS,
    json_out: Path | None = JSON_OUT,
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """Build an atomic model into a 2.5–6 Å map from its sequences (one pass, then side chains)."""
    check_device(device)
    apply_threads(threads)
    from rich.console import Console
    from rich.progress import Progress

    from cryostack.build.api import BuildConfig
    from cryostack.errors import InputError
    from cryostack.io.atomic import atomic_output
    from cryostack.pipeline.build_job import build_files

    if checkpoint is not None and not checkpoint.is_file():
        raise InputError(checkpoint, "no such checkpoint (--checkpoint)")
    console = Console(stderr=True)
    cfg = BuildConfig(
        resolution_A=resolution or 0.0, checkpoint=checkpoint, device=device, use_sequence=not no_sequence,
        use_gnn=not no_gnn,
    )  # fmt: skip
    with Progress(console=console, disable=no_progress, transient=True) as bar:
        task = bar.add_task("building", total=None)
        job = build_files(
            map_path, sequence, resolution, out, cfg, sidechains=not no_sidechains, refine=refine,
            n_residues=residues, progress=lambda done, total: bar.update(task, completed=done, total=total),
            status=lambda text: bar.update(task, description=text),
        )  # fmt: skip
    for note in job.notes:
        console.print(f"[yellow]note:[/] {note}", soft_wrap=True)
    s = job.build.summary()
    console.print(
        f"built {s['residues']} residues in {len(s['chains'])} chain(s), mean confidence {s['mean_confidence']}, "
        f"{s['wall_time_s']:.1f} s → {job.outputs[0]} (report {job.outputs[2]})"
        + (f"; refined → {job.refined}" if job.refined else ""),
        soft_wrap=True,
    )
    if json_out is not None:
        with atomic_output(json_out) as tmp:
            tmp.write_text(json.dumps({**s, "outputs": [str(p) for p in job.outputs], "notes": job.notes}, indent=1))
