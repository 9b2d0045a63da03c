"""``cryostack info FILE``: summarise a map or a model."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cryostack.errors import InputError

MAP_SUFFIXES = {".mrc", ".map", ".ccp4", ".mrcs", ".rec"}
MODEL_SUFFIXES = {".pdb", ".ent", ".cif", ".mmcif"}


def file_kind(path: Path) -> str:
    """``'map'`` or ``'model'`` from the file name (``.gz`` ignored)."""
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    last = suffixes[-1] if suffixes else ""
    if last in MAP_SUFFIXES:
        return "map"
    if last in MODEL_SUFFIXES:
        return "model"
    raise InputError(
        path, f"unknown file type {last or '(no extension)'!r}; expected a map (.mrc/.map/.ccp4) or a model (.pdb/.cif)"
    )


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (tuple, list)):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    return str(v)


def info(
    path: Path = typer.Argument(..., help="A map (.mrc, .map, .ccp4, optionally .gz) or a model (.pdb, .cif)."),
    json_out: Path | None = typer.Option(
        None, "--json", help="Write the summary as JSON to this file ('-': print it instead of the table)."
    ),
) -> None:
    """Summarise a map (shape, voxel size, origin, nstart, axis order, statistics) or a model."""
    if json_out is not None and str(json_out) != "-":
        from cryostack.io.atomic import check_writable

        check_writable(json_out)
    kind = file_kind(path)
    if kind == "map":
        from cryostack.io.maps import map_summary, read_map

        summary = map_summary(read_map(path))
    else:
        from cryostack.io.models import read_structure

        summary = read_structure(path).summary()
    if json_out is not None:
        text = json.dumps(summary, indent=2)
        if str(json_out) == "-":
            typer.echo(text)
            return
        from cryostack.io.atomic import atomic_output

        with atomic_output(json_out, protect=(path,)) as tmp:
            tmp.write_text(text + "\n")
    console = Console()
    table = Table(title=f"{path} ({kind})", show_header=False)
    for key, value in summary.items():
        if key == "chain_details":
            continue
        table.add_row(key, _fmt(value))
    console.print(table)
    for chain in summary.get("chain_details", []):
        seq = chain["sequence"]
        seq = seq if len(seq) <= 70 else seq[:67] + "..."
        console.print(
            f"chain {chain['chain']}: {chain['residues']} residues, {chain['polymer_type']}  {seq}", highlight=False
        )
