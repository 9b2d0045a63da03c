"""``cryostack refine``: refine a model into its map; refined mmCIF plus a before/after report."""

from __future__ import annotations

from pathlib import Path

import typer

from cryostack.cli.options import DEVICE, RESOLUTION, SEED, THREADS, apply_threads, check_device


def refine(
    model: Path = typer.Option(..., "--model", help="Starting model (.pdb or .cif)."),
    map_path: Path = typer.Option(..., "--map", help="Experimental map (MRC/CCP4)."),
    resolution: float | None = RESOLUTION,
    half_maps: tuple[Path, Path] | None = typer.Option(
        None,
        "--half-maps",
        help="Two half maps on the map's grid: FSC_work (model vs half 1), FSC_free (vs half 2) and their gap "
        "in the report; the model is still refined against --map unless --cross-validate.",
    ),
    cross_validate: bool = typer.Option(
        False,
        "--cross-validate",
        help="Refine against half map 1 only, so that FSC_free (vs half map 2) is independent: "
        "the overfitting check (needs --half-maps).",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Refined model (.cif); default MODEL_refined.cif beside the input."
    ),
    device: str = DEVICE,
    max_recycles: int = typer.Option(
        8,
        "--max-recycles",
        min=1,
        help="Most optimiser recycles (after coarse placement; a rotamer fit and polish follow).",
    ),
    max_rounds: int = typer.Option(
        4,
        "--max-rounds",
        min=1,
        help="Most rounds (each a whole pass from the last round's model, the mask rebuilt around it); "
        "rounds stop earlier once a round moves the Cα atoms less than --round-tolerance. 1: one pass.",
    ),
    round_tolerance: float | None = typer.Option(
        None,
        "--round-tolerance",
        min=0.0,
        help="Convergence: stop after a round whose Cα RMS shift (Å) is below this "
        "[default: 5 % of the resolution, 0.15 Å at 3 Å].",
    ),
    method: str = typer.Option(
        "direct",
        "--method",
        help="Optimiser: direct (default) or diffusion (the test-time-adapted denoiser; "
        "experimental: below direct on every benchmark case, see docs/refine.md).",
    ),
    weights: str | None = typer.Option(
        None,
        "--weights",
        help="Loss weights, e.g. 'density=60,rama=1'; density=auto (needs --half-maps) picks "
        "the density weight by FSC_free from a short scan (docs/refine.md).",
    ),
    seed: int = SEED,
    threads: int | None = THREADS,
    no_q: bool = typer.Option(False, "--no-q-score", help="Leave the Q-score out of the report (faster)."),
) -> None:
    """Refine a model against a cryo-EM map (density fit + monomer-library geometry + Top8000 priors)."""
    apply_threads(threads)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from cryostack.pipeline.refine_job import refine_files
    from cryostack.refine import RefineConfig

    check_device(device)
    console = Console(stderr=True)
    config = RefineConfig(
        method=method,
        max_recycles=max_recycles,
        max_rounds=max_rounds,
        round_tolerance_A=round_tolerance,
        seed=seed,
        device=device,
    )
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )
    # The bar appears once the checks have passed, so a bad input prints its one line alone.
    bar = Progress(*columns, console=console, transient=False)
    task = bar.add_task("refine", total=max_recycles, info="", start=False)

    def status(text: str) -> None:
        if not bar.live.is_started:
            bar.start()
            bar.start_task(task)
        bar.update(task, description=text)

    def progress(recycle, loss, terms, cc, crop=None, stage="adam", refine_round=(1, 1)):
        where = f"round {refine_round[0]}/{refine_round[1]} " if refine_round[1] > 1 else ""
        where += f"crop {crop[0]}/{crop[1]} " if crop else ""
        what = f"recycle {recycle}/{max_recycles}" if stage == "adam" else stage.replace("_", " ")
        status(f"{where}{what}")
        if stage == "adam":
            bar.update(task, completed=recycle)
        # Short enough for an 80-column terminal; every term is in the JSON report.
        bar.update(task, info=f"CC {cc:.3f} loss {loss:.4g} bond {terms.get('bond', 0):.3g}")

    try:
        job = refine_files(
            model,
            map_path,
            resolution,
            out=out,
            half_maps=half_maps,
            cross_validate=cross_validate,
            config=config,
            weights=weights,
            compute_q=not no_q,
            progress=progress,
            status=status,
        )
    finally:
        bar.stop()
    typer.echo(job.report_text, nl=False)
    console.print(f"wrote {', '.join(str(p) for p in job.outputs)}", highlight=False)
