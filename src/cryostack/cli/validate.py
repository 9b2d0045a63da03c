"""``cryostack validate``: map–model fit, geometry and model-vs-reference scores in one report."""

from __future__ import annotations

from pathlib import Path

import typer

from cryostack.cli.options import JSON_OUT, RESOLUTION, THREADS, apply_threads
from cryostack.errors import InputError


def validate(
    model: Path = typer.Option(..., "--model", help="Model to validate (.pdb or .cif)."),
    map_path: Path | None = typer.Option(None, "--map", help="Map to fit against."),
    resolution: float | None = RESOLUTION,
    half_maps: tuple[Path, Path] | None = typer.Option(
        None, "--half-maps", help="Two half maps (FSC and its 0.143 resolution)."
    ),
    reference: Path | None = typer.Option(None, "--reference", help="Reference model (TM-score, lDDT, DockQ, ...)."),
    json_out: Path | None = JSON_OUT,
    plots: Path | None = typer.Option(None, "--plots", help="Folder for PNG plots."),
    html: Path | None = typer.Option(
        None, "--html", help="Self-contained HTML report (plots and outlier tables inline; JSON beside it)."
    ),
    no_q: bool = typer.Option(False, "--no-q-score", help="Skip the Q-score (faster)."),
    threads: int | None = THREADS,
) -> None:
    """Validate a model: the cryo-EM 'Table 1' in one command."""
    apply_threads(threads)
    from rich.console import Console

    from cryostack.io.atomic import check_writable
    from cryostack.io.maps import read_map
    from cryostack.validate.api import validate as run_validate
    from cryostack.validate.report import text_table, write_plots
    from cryostack.validate.stages import Stages

    if half_maps is not None and map_path is None:
        raise InputError(None, "--half-maps needs --map as well")
    # Output problems are found before minutes of work, and nothing is written.
    inputs = [p for p in (model, map_path, reference, *(half_maps or ())) if p is not None]
    for out in (json_out, plots, html, html.with_suffix(".json") if html else None):
        if out is not None and any(out.resolve() == p.resolve() for p in inputs):
            raise InputError(out, "output would overwrite an input file")
    for out in (json_out, html):
        if out is not None:
            check_writable(out)
    if plots is not None:
        if plots.exists() and not plots.is_dir():
            raise InputError(plots, "--plots names an existing file; give a folder")
        check_writable(plots / "ramachandran.png")
    console = Console(stderr=True)
    with console.status("validating") as status:
        stages = Stages(on_start=lambda name: status.update(f"validating: {name}"))
        # read once: the validation and the HTML report's map section use the same map
        density = read_map(map_path) if map_path is not None else None
        result = run_validate(
            model,
            density=density,
            resolution_A=resolution,
            half_maps=half_maps,
            reference=reference,
            compute_q=not no_q,
            stages=stages,
        )
        if plots is not None:
            status.update("validating: plots")
            write_plots(result, plots)
        if html is not None:
            from cryostack.report.pages import validation_page

            status.update("validating: HTML report")
            validation_page(
                result,
                html,
                density=density,
                inputs={k: str(v) for k, v in (("model", model), ("map", map_path), ("reference", reference)) if v},
                parameters={
                    "resolution_A": resolution,
                    "half_maps": [str(h) for h in half_maps or ()],
                    "q_score": not no_q,
                },
                protect=tuple(inputs),
            )
    if json_out is not None:
        result.write_json(json_out)
    typer.echo(text_table(result), nl=False)
