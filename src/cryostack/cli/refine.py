"""``cryostack refine``: refine a model into its map; refined mmCIF plus a before/after report."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cryostack.errors import InputError
from cryostack.refine.report import report_rows, text_report

def refine(
    model: Path = typer.Option(..., "--model", help="Starting model (.pdb or .cif)."),
    map_path: Path = typer.Option(..., "--map", help="Experimental map (MRC/CCP4)."),
    resolution: float | None = typer.Option(None, "--resolution", help="Map resolution in Å."),
    half_maps: tuple[Path, Path] | None = typer.Option(None, "--half-maps", help="Two half maps (for the FSC in the report)."),
    out: Path | None = typer.Option(None, "--out", help="Refined model (.cif); default MODEL_refined.cif beside the input."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    max_recycles: int = typer.Option(8, "--max-recycles", help="Most recycles (each a batch of optimiser steps)."),
    method: str = typer.Option("direct", "--method", help="Optimiser: direct (default) or diffusion (the test-time-adapted denoiser; "
                                "experimental: below direct on every benchmark case, see docs/refine.md)."),
    weights: str | None = typer.Option(None, "--weights", help="Loss weights, e.g. 'density=60,rama=1'."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    no_q: bool = typer.Option(False, "--no-q-score", help="Leave the Q-score out of the report (faster)."),
) -> None:
    """Refine a model against a cryo-EM map (density fit + monomer-library geometry + Top8000 priors)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from cryostack.io.atomic import atomic_output
    from cryostack.io.maps import read_map
    from cryostack.io.models import read_structure
    from cryostack.refine import LossWeights, RefineConfig, available_methods, check_inputs
    from cryostack.refine import refine as run_refine
    from cryostack.validate.api import validate

    console = Console(stderr=True)
    if method not in available_methods():
        raise InputError(None, f"unknown --method {method!r} (available: {', '.join(available_methods())})")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(None, f"--device must be cpu or cuda, not {device!r}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InputError(None, "--device cuda requested but no CUDA device is available")
    if max_recycles < 1:
        raise InputError(None, "--max-recycles must be at least 1")
    try:
        loss_weights = LossWeights.parse(weights)
    except ValueError as exc:
        raise InputError(None, f"--weights: {exc}") from None

    structure = read_structure(model)
    density = read_map(map_path)
    check_inputs(structure, density, resolution)
    halves = None
    if half_maps is not None:
        halves = tuple(read_map(h) for h in half_maps)
    out = out or model.with_name(model.name.split(".")[0] + "_refined.cif")
    inputs = [model, map_path, *(half_maps or ())]
    stem = out.with_suffix("") if out.suffix.lower() == ".cif" else out
    outputs = [out, Path(f"{stem}_report.txt"), Path(f"{stem}_report.json")]
    for o in outputs:
        if any(o.exists() and o.resolve() == p.resolve() for p in inputs):
            raise InputError(o, "output would overwrite an input file; choose another --out")

    with console.status("validating the starting model"):
        before = validate(structure, density=density, resolution_A=resolution, half_maps=halves, compute_q=not no_q)

    config = RefineConfig(method=method, max_recycles=max_recycles, seed=seed, device=device)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("refine", total=max_recycles, info="")

        def progress(recycle, loss, terms, cc, crop=None):
            shown = " ".join(f"{k}={v:.3g}" for k, v in terms.items())
            where = f"crop {crop[0]}/{crop[1]} " if crop else ""
            bar.update(task, completed=recycle, description=f"{where}recycle {recycle}",
                       info=f"CC {cc:.3f} loss {loss:.4g} | {shown}")

        refined, result = run_refine(structure, density, resolution, config, loss_weights, progress=progress)

    with console.status("validating the refined model"):
        refined.source = None
        after = validate(refined, density=density, resolution_A=resolution, half_maps=halves, compute_q=not no_q)
    bd, ad = before.to_dict(), after.to_dict()
    rows = report_rows(bd, ad)
    title = (f"cryostack refine ({method}): {model.name} in {map_path.name} at {resolution} Å, "
             f"{len(result.history) - 1} recycles, best {result.best_recycle}, {result.wall_s:.0f} s")
    text = text_report(rows, title)
    # Write the model last-but-atomically; each file appears whole or not at all.
    refined.write(out, protect=tuple(inputs))
    with atomic_output(outputs[1], protect=tuple(inputs)) as tmp:
        tmp.write_text(text)
    from cryostack.validate.api import _jsonable

    with atomic_output(outputs[2], protect=tuple(inputs)) as tmp:
        tmp.write_text(json.dumps(_jsonable({"model": str(model), "map": str(map_path), "resolution_A": resolution,
                                             "method": method, "weights": loss_weights.as_dict(),
                                             "refinement": result.to_dict(), "before": bd, "after": ad}), indent=2))
    typer.echo(text, nl=False)
    console.print(f"wrote {out}, {outputs[1]} and {outputs[2]}", highlight=False)
