"""A refinement job on files: check, validate before, refine, validate after, write model and report.

:func:`refine_files` is what ``cryostack refine`` runs; it returns a :class:`RefineJobResult`
and writes four files, each atomically and only after every check has passed:
the refined model (``.cif``), a text, a JSON and a self-contained HTML report beside it.

With half maps the reports carry FSC_work and FSC_free (the model map against half 1 and half 2,
:mod:`cryostack.pipeline.refine_crossval`) before and after. The model is refined against the
full map unless ``cross_validate`` is set, in which case it is refined against half map 1 only
and half map 2 stays free; ``density=auto`` in the weights chooses the density weight by FSC_free.
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
from cryostack.pipeline.refine_crossval import (
    check_half_maps_for_refinement,
    fsc_summary,
    scan_density_weight,
    scan_text,
)
from cryostack.refine import LossWeights, RefineConfig, RefineResult, available_methods, check_inputs, refine
from cryostack.report.before_after import b_factor_rows, report_rows, text_report
from cryostack.report.pages import refinement_page
from cryostack.report.sections import rounds_summary
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
    #: The cross-validation record (``None`` without half maps); see :func:`refine_files`.
    cross_validation: dict | None = None


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


def parse_weights(text: str | None) -> tuple[LossWeights, bool]:
    """Loss weights from ``"density=60,rama=1"``, and whether the density weight is ``auto``
    (then left at its default here, to be chosen by :func:`scan_density_weight`)."""
    items = [item for item in (text or "").split(",") if item.strip()]
    auto = [item for item in items if item.partition("=")[2].strip().lower() == "auto"]
    for item in auto:
        if item.partition("=")[0].strip() != "density":
            raise InputError(None, f"loss weights: only density can be auto, not {item.strip()!r}")
    try:
        weights = LossWeights.parse(",".join(item for item in items if item not in auto))
    except ValueError as exc:
        raise InputError(None, f"loss weights: {exc}") from None
    return weights, bool(auto)


def refine_files(
    model: Path,
    map_path: Path,
    resolution_A: float | None,
    *,
    out: Path | None = None,
    half_maps: tuple[Path, Path] | None = None,
    cross_validate: bool = False,
    config: RefineConfig | None = None,
    weights: str | None = None,
    compute_q: bool = True,
    progress: Callable[..., None] | None = None,
    status: Callable[[str], None] | None = None,
) -> RefineJobResult:
    """Refine ``model`` into ``map_path`` and write the refined model and before/after reports.

    ``weights`` is a loss-weight string (``"density=60,rama=1"``); ``progress`` is the
    refinement's per-recycle callback and ``status(text)`` hears which step is running.

    ``half_maps`` (two maps on the map's grid) add FSC_work (model vs half 1), FSC_free (model vs
    half 2) and their gap to the reports. The model is still refined against the full map, which
    holds both halves, so that FSC_free is not independent; ``cross_validate`` refines against
    half map 1 instead, making half 2 truly free (the overfitting check). ``density=auto`` in
    ``weights`` first scans a few density weights against half map 1 and keeps the one with the
    best FSC_free (:func:`~cryostack.pipeline.refine_crossval.scan_density_weight`); both need
    half maps.
    """
    config = config or RefineConfig()
    say = status or (lambda _text: None)
    if config.method not in available_methods():
        raise InputError(None, f"unknown method {config.method!r} (available: {', '.join(available_methods())})")
    if config.max_recycles < 1:
        raise InputError(None, f"max_recycles must be at least 1, got {config.max_recycles}")
    loss_weights, auto_density = parse_weights(weights)
    if half_maps is None and auto_density:
        raise InputError(None, "density=auto needs half maps (half_maps): the weight is chosen by the free half's FSC")
    if half_maps is None and cross_validate:
        raise InputError(
            None, "cross_validate needs half maps (half_maps): it refines against half 1, judged by half 2"
        )
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
    if halves is not None:
        check_half_maps_for_refinement(density, halves, half_maps)

    say("validating the starting model")
    before = validate(structure, density=density, resolution_A=resolution_A, half_maps=halves, compute_q=compute_q)
    scan = None
    if auto_density:
        assert halves is not None  # refused above without half maps
        scan = scan_density_weight(structure, halves, resolution_A, config, loss_weights, status=say)
        loss_weights.density = scan["chosen"]
    say("refining against half map 1" if cross_validate else "refining")
    target = halves[0] if cross_validate and halves is not None else density
    refined, result = refine(structure, target, resolution_A, config, loss_weights, progress=progress)
    say("validating the refined model")
    refined.source = None
    after = validate(refined, density=density, resolution_A=resolution_A, half_maps=halves, compute_q=compute_q)

    bd, ad = before.to_dict(), after.to_dict()
    against = half_maps[0].name + " (half map 1, cross-validation)" if cross_validate and half_maps else map_path.name
    title = (
        f"cryostack refine ({config.method}): {model.name} in {against} at {resolution_A} Å, "
        f"{result.n_recycles} recycles, best record {result.best_recycle}, {result.wall_s:.0f} s"
    )
    text = text_report(report_rows(bd, ad, b_factor_rows(result.adp)), title)
    text += "rounds: " + rounds_summary(result.to_dict()) + "; Cα RMS shift per round (Å): "
    text += ", ".join(f"{r.ca_shift_rms_A:.3f}" for r in result.rounds) + "\n"
    cross = None
    if half_maps is not None:
        cross = {
            "refined_against": "half_map_1" if cross_validate else "map",
            "work_half_map": str(half_maps[0]),
            "free_half_map": str(half_maps[1]),
            # Refined against the full map, half 2 took part in the fit: its FSC is not free.
            "free_is_independent": cross_validate,
            "average_up_to_A": resolution_A,
            "before": fsc_summary(bd),
            "after": fsc_summary(ad),
            "density_weight_scan": scan,
        }
        if scan is not None:
            text += scan_text(scan) + "\n"
        if not cross_validate:
            text += (
                "note: refined against the full map, which holds both halves, so FSC_free is not independent; "
                "refine against half map 1 (cross-validation) for the overfitting check\n"
            )
    refined.write(outputs[0], protect=inputs)
    with atomic_output(outputs[1], protect=inputs) as tmp:
        tmp.write_text(text)
    record = {
        "model": str(model),
        "map": str(map_path),
        "resolution_A": resolution_A,
        "method": config.method,
        "half_maps": [str(h) for h in half_maps] if half_maps is not None else None,
        "refined_against": "half_map_1" if cross_validate and half_maps is not None else "map",
        "weights": loss_weights.as_dict(),
        "cross_validation": cross,
        "refinement": result.to_dict(),
        "before": bd,
        "after": ad,
    }
    with atomic_output(outputs[2], protect=inputs) as tmp:
        tmp.write_text(json.dumps(jsonable(record), indent=2))
    say("writing the HTML report")
    refinement_page(record, outputs[3], after=after, density=density, protect=inputs)
    return RefineJobResult(refined, result, bd, ad, text, outputs, cross)
