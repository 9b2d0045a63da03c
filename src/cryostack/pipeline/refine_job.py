"""A refinement job on files: check, validate before, refine, validate after, write model and report.

:func:`refine_files` is what ``cryostack refine`` runs; it returns a :class:`RefineJobResult`
and writes four files, each atomically and only after every check has passed:
the refined model (``.cif``), a text, a JSON and a self-contained HTML report beside it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from cryostack.errors import InputError
from cryostack.io.atomic import atomic_output, check_writable, jsonable
from cryostack.io.maps import DensityMap, read_map
from cryostack.io.models import Structure, read_structure
from cryostack.refine import LossWeights, RefineConfig, RefineResult, available_methods, check_inputs, refine
from cryostack.report.before_after import report_rows, text_report
from cryostack.report.pages import refinement_page
from cryostack.validate.api import validate


@dataclass
class RefineJobResult:
    """What :func:`refine_files` produced: the refined model, the refinement record, both validations."""

    refined: Structure
    refinement: RefineResult
    before: dict[str, Any]
    after: dict[str, Any]
    report_text: str
    outputs: tuple[Path, Path, Path, Path]  # model, text report, JSON report, HTML report


#: Model file endings stripped to name the reports beside a refined model (longest first).
MODEL_SUFFIXES = (".mmcif.gz", ".cif.gz", ".pdb.gz", ".ent.gz", ".mmcif", ".cif", ".pdb", ".ent")


def default_outputs(model: Path, out: Path | None) -> tuple[Path, Path, Path, Path]:
    """``(model.cif, report.txt, report.json, report.html)``: ``MODEL_refined.cif`` beside the input by default."""
    out = out or model.with_name(model.name.split(".")[0] + "_refined.cif")
    name = out.name
    for suffix in MODEL_SUFFIXES:  # r.pdb -> r_report.txt, not r.pdb_report.txt
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    stem = out.with_name(name)
    return out, Path(f"{stem}_report.txt"), Path(f"{stem}_report.json"), Path(f"{stem}_report.html")


def check_outputs(outputs: tuple[Path, ...], inputs: tuple[Path, ...]) -> None:
    """Refuse, before any work, outputs that would replace an input or cannot be written."""
    for o in outputs:
        if any(o.exists() and o.resolve() == p.resolve() for p in inputs):
            raise InputError(o, "output would overwrite an input file; choose another output name")
        check_writable(o)


def refine_files(
    model: Path,
    map_path: Path,
    resolution_A: float | None,
    *,
    out: Path | None = None,
    half_maps: tuple[Path, Path] | None = None,
    config: RefineConfig | None = None,
    weights: str | None = None,
    compute_q: bool = True,
    progress: Callable[..., None] | None = None,
    status: Callable[[str], None] | None = None,
) -> RefineJobResult:
    """Refine ``model`` into ``map_path`` and write the refined model and before/after reports.

    ``weights`` is a loss-weight string (``"density=60,rama=1"``); ``progress`` is the
    refinement's per-recycle callback and ``status(text)`` hears which step is running.
    """
    config = config or RefineConfig()
    say = status or (lambda _text: None)
    if config.method not in available_methods():
        raise InputError(None, f"unknown method {config.method!r} (available: {', '.join(available_methods())})")
    if config.max_recycles < 1:
        raise InputError(None, f"max_recycles must be at least 1, got {config.max_recycles}")
    try:
        loss_weights = LossWeights.parse(weights)
    except ValueError as exc:
        raise InputError(None, f"loss weights: {exc}") from None
    inputs = (model, map_path, *(half_maps or ()))
    outputs = default_outputs(model, out)
    check_outputs(outputs, inputs)

    structure = read_structure(model)
    density = read_map(map_path)
    check_inputs(structure, density, resolution_A)
    assert resolution_A is not None  # check_inputs refuses a missing resolution
    halves = (
        cast("tuple[DensityMap, DensityMap]", tuple(read_map(h) for h in half_maps)) if half_maps is not None else None
    )

    say("validating the starting model")
    before = validate(structure, density=density, resolution_A=resolution_A, half_maps=halves, compute_q=compute_q)
    say("refining")
    refined, result = refine(structure, density, resolution_A, config, loss_weights, progress=progress)
    say("validating the refined model")
    refined.source = None
    after = validate(refined, density=density, resolution_A=resolution_A, half_maps=halves, compute_q=compute_q)

    bd, ad = before.to_dict(), after.to_dict()
    title = (
        f"cryostack refine ({config.method}): {model.name} in {map_path.name} at {resolution_A} Å, "
        f"{result.n_recycles} recycles, best record {result.best_recycle}, {result.wall_s:.0f} s"
    )
    text = text_report(report_rows(bd, ad), title)
    refined.write(outputs[0], protect=inputs)
    with atomic_output(outputs[1], protect=inputs) as tmp:
        tmp.write_text(text)
    record = {
        "model": str(model),
        "map": str(map_path),
        "resolution_A": resolution_A,
        "method": config.method,
        "weights": loss_weights.as_dict(),
        "refinement": result.to_dict(),
        "before": bd,
        "after": ad,
    }
    with atomic_output(outputs[2], protect=inputs) as tmp:
        tmp.write_text(json.dumps(jsonable(record), indent=2))
    say("writing the HTML report")
    refinement_page(record, outputs[3], after=after, density=density, protect=inputs)
    return RefineJobResult(refined, result, bd, ad, text, outputs)
