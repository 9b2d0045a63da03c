"""``cryostack run``: from particles or a map (and a model) to a validated model and one HTML report."""

from __future__ import annotations

from pathlib import Path

import typer

from cryostack.cli.options import DEVICE, RESOLUTION, THREADS, apply_threads


def run(
    out: Path = typer.Option(..., "--out", help="Run folder (one subfolder per stage; report.html at the top)."),
    particles: Path | None = typer.Option(None, "--particles", help="Picked particles (.star or .cs): run the wizard."),
    map_path: Path | None = typer.Option(None, "--map", help="A map to start from (instead of particles)."),
    half_maps: tuple[Path, Path] | None = typer.Option(None, "--half-maps", help="The map's two half maps."),
    sequence: Path | None = typer.Option(None, "--sequence", help="FASTA of the chains (checked against --model)."),
    model: Path | None = typer.Option(None, "--model", help="Starting model (.pdb or .cif): refine and validate it."),
    resolution: float | None = RESOLUTION,
    config: Path | None = typer.Option(None, "--config", help="TOML file with every setting (see docs/pipeline.md)."),
    device: str = DEVICE,
    threads: int | None = THREADS,
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars (logs, batch jobs)."),
) -> None:
    """Run every stage that applies to the inputs (particles -> map -> refine -> validate -> report);
    a rerun into the same folder skips finished stages."""
    apply_threads(threads)
    from rich.console import Console

    from cryostack.cli.options import check_device
    from cryostack.pipeline.config import load_config
    from cryostack.pipeline.run import RunInputs, run_pipeline

    console = Console(stderr=True)
    cfg, text = load_config(config, resolution_A=resolution, device=device if device != "cpu" else None)
    check_device(cfg.device)
    inputs = RunInputs(particles=particles, map=map_path, half_maps=half_maps, sequence=sequence, model=model)
    report = run_pipeline(
        out,
        inputs,
        cfg,
        text,
        progress=not no_progress,
        say=lambda line: console.print(line, highlight=False),
    )
    typer.echo(f"wrote {report}")
