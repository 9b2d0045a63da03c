"""``cryostack demo``: refinement on the bundled spike NTD example (EMD-21457 / PDB 6VYB)."""

from __future__ import annotations

from pathlib import Path

import typer

from cryostack.cli.options import SEED, THREADS, apply_threads


def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", help="Output folder."),
    max_recycles: int = typer.Option(8, "--max-recycles", min=1, help="Most refinement recycles."),
    seed: int = SEED,
    threads: int | None = THREADS,
    full: bool = typer.Option(
        False,
        "--full",
        help="The whole chain instead: simulated particles with junk -> wizard (RELION) -> dock -> "
        "refine -> validate -> HTML report (about 20-30 min on 2 cores; rerun to resume).",
    ),
) -> None:
    """Perturb the deposited spike NTD model and refine it back into its map (EMD-21457 / 6VYB)."""
    apply_threads(threads)
    from rich.console import Console
    from rich.table import Table

    from cryostack.pipeline.demo import run_demo

    console = Console()
    if full:
        from cryostack.pipeline.config import load_config
        from cryostack.pipeline.example import make_example
        from cryostack.pipeline.run import run_pipeline

        console.rule("cryostack demo --full: simulated spike NTD particles to a refined, validated model")
        example = make_example(out / "example", seed=seed)
        cfg, text = load_config(example.config)
        report = run_pipeline(out / "run", example.inputs, cfg, text, say=lambda t: console.print(t, highlight=False))
        console.print(f"wrote {report}", highlight=False)
        return
    console.rule("cryostack demo: refine a perturbed 6VYB NTD into EMD-21457 (3.2 Å)")
    with console.status("starting") as spinner:
        result = run_demo(
            out,
            max_recycles=max_recycles,
            seed=seed,
            say=lambda text: console.print(text, highlight=False),
            status=spinner.update,
        )
    table = Table(title=f"Before / after refinement ({result.recycles} recycles + rotamer fit, {result.wall_s:.0f} s)")
    table.add_column("measure")
    table.add_column("perturbed", justify="right")
    table.add_column("refined", justify="right")
    for label, b, a in result.rows:
        table.add_row(label, b, a)
    console.print(table)
    m, p, r, j = result.files
    console.print(
        f"wrote {r} (refined), {p}, {m} (deposited model's map) and {j}",
        highlight=False,
    )
