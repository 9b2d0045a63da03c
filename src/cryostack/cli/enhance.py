"""``cryostack enhance``: a 4–8 Å map made clearer by the trained U-Net, in the input's own frame."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cryostack.cli.options import DEVICE, JSON_OUT, RESOLUTION, THREADS, apply_threads, check_device


def enhance(
    map_path: Path | None = typer.Option(None, "--map", help="Map to enhance (MRC)."),
    out: Path = typer.Option(..., "--out", help="Enhanced map (MRC; same grid, origin and axis order as the input)."),
    half_maps: tuple[Path, Path] | None = typer.Option(
        None, "--half-maps", help="Two half maps: their average is enhanced (--map optional then)."
    ),
    resolution: float | None = RESOLUTION,
    confidence: Path | None = typer.Option(
        None,
        "--confidence",
        help="Also write a per-voxel confidence map: the SD of the prediction over rotated passes (low = stable).",
    ),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Enhancer weights (default: the packaged model)."
    ),
    views: int = typer.Option(1, "--views", min=1, max=8, help="Rotated passes averaged into the output."),
    batch: int = typer.Option(2, "--batch", min=1, help="Tiles per network call."),
    device: str = DEVICE,
    threads: int | None = THREADS,
    json_out: Path | None = JSON_OUT,
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """Enhance a 4–8 Å cryo-EM map for model building (output in the input's frame)."""
    check_device(device)
    apply_threads(threads)
    from rich.console import Console
    from rich.progress import Progress

    from cryostack.enhance.api import EnhanceConfig, enhance_files
    from cryostack.io.atomic import atomic_output

    console = Console(stderr=True)
    cfg = EnhanceConfig(views=views, batch=batch, device=device)
    with Progress(console=console, disable=no_progress, transient=True) as bar:
        task = bar.add_task("enhancing tiles", total=None)
        result = enhance_files(
            map_path, out, half_maps=half_maps, resolution_A=resolution, confidence_out=confidence,
            checkpoint=checkpoint, cfg=cfg, progress=lambda done, total: bar.update(task, completed=done, total=total),
        )  # fmt: skip
    for w in result.warnings:
        console.print(f"[yellow]warning:[/] {w}", soft_wrap=True)
    i = result.info
    console.print(
        f"enhanced {i['used']} ({i['tiles']} tiles × {i['views']} view(s) at {i['network_voxel_size_A']:g} Å) "
        f"in {i['wall_s']:.1f} s → {out}" + (f"; confidence → {confidence}" if confidence else ""),
        soft_wrap=True,
    )
    if json_out is not None:
        with atomic_output(json_out) as tmp:
            tmp.write_text(json.dumps({**i, "warnings": result.warnings, "out": str(out)}, indent=1))
