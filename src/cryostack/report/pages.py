"""Whole report pages of the single tools: ``cryostack validate --html`` and ``cryostack refine``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cryostack.io.maps import DensityMap
from cryostack.report.html import Section, page, write_report
from cryostack.report.sections import inputs_section, map_section, refinement_section, validation_section


def subtitle(what: str) -> str:
    from cryostack import __version__

    return f"{what} · cryostack {__version__} · {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"


def validation_page(
    result,
    path: str | Path,
    *,
    density: DensityMap | None = None,
    inputs: Mapping[str, object] | None = None,
    parameters: Mapping[str, object] | None = None,
    protect: Sequence[Path] = (),
) -> Path:
    """Write the HTML validation report of ``result`` (a ``ValidationResult``) and its JSON."""
    d = result.to_dict()
    sections: list[Section] = [inputs_section(inputs or {"model": d["model"]}, parameters or {})]
    if density is not None:
        sections.append(map_section(density))
    sections.append(validation_section(d, ramachandran=result.ramachandran))
    data = {"inputs": inputs, "parameters": parameters, "validation": d}
    doc = page(f"Validation of {Path(str(d['model'])).name}", subtitle("cryostack validate"), sections, data)
    return write_report(path, doc, data, protect=protect)


def refinement_page(
    record: Mapping,
    path: str | Path,
    *,
    after=None,
    density: DensityMap | None = None,
    protect: Sequence[Path] = (),
) -> Path:
    """The refinement report: inputs, refinement (before/after, history), the map and the refined
    model's full validation (``after``, a ``ValidationResult``, for the Ramachandran plot)."""
    inputs = {k: record[k] for k in ("model", "map") if k in record}
    for i, h in enumerate(record.get("half_maps") or (), start=1):
        inputs[f"half map {i}"] = h
    params = {
        "resolution_A": record.get("resolution_A"),
        "method": record.get("method"),
        "refined_against": record.get("refined_against", "map"),
        "weights": record.get("weights"),
    }
    sections = [inputs_section(inputs, params), refinement_section(record)]
    if density is not None:
        sections.append(map_section(density))
    if record.get("after"):
        sections.append(
            validation_section(
                record["after"],
                title="Refined model validation",
                anchor="model",
                ramachandran=getattr(after, "ramachandran", None),
            )
        )
    name = Path(str(record.get("model", "model"))).name
    doc = page(f"Refinement of {name}", subtitle("cryostack refine"), sections, dict(record))
    return write_report(path, doc, protect=protect)


def run_page(
    path: str | Path,
    *,
    stages: Sequence[Mapping],
    products: Mapping[str, Path],
    inputs: Mapping[str, object],
    parameters: Mapping[str, object],
    config_text: str = "",
    failure: Mapping | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """The report of a ``cryostack run``: built from the records its finished stages left on disk
    (``products``: output name -> file), so a resumed or failed run gets a report of what exists."""
    import json

    from cryostack.io.maps import read_map
    from cryostack.report.html import note
    from cryostack.report.sections import particles_section, stages_section

    def load(name: str) -> dict | None:
        p = products.get(name)
        return json.loads(Path(p).read_text()) if p is not None and Path(p).is_file() else None

    data: dict = {"stages": list(stages), "inputs": inputs, "parameters": parameters, "failure": failure}
    sections = [stages_section(stages, failure)]
    for n in notes:
        sections[0].add(note(n))
    sections.append(inputs_section(inputs, parameters, config_text or None))
    wizard = load("wizard_log")
    if wizard is not None:
        folder = Path(products["wizard_log"]).parent
        ranked = folder.parent / "rank" / "ranked.star"
        scores = None
        if ranked.is_file():
            from cryostack.io.particles import read_particles

            scores = read_particles(ranked).column("rlnCryostackScore")
        sections.append(particles_section(wizard, folder, scores))
        data["particles"] = wizard
    summary = load("map_summary")
    if summary is not None:
        density = read_map(summary["map"]["path"])
        sphere = Path(summary["fsc_sphere_png"]) if summary.get("fsc_sphere_png") else None
        extra = [(sphere, "conical FSC areas over the sphere (3D FSC)")] if sphere and sphere.is_file() else []
        sections.append(map_section(density, fsc=summary.get("fsc"), cfar=summary.get("cfar"), extra_images=extra))
        data["map"] = summary
    enhanced = products.get("enhanced_map")
    if enhanced is not None and Path(enhanced).is_file() and summary is not None:
        sections.append(
            map_section(
                read_map(enhanced), title="Enhanced map", anchor="enhanced", compare=read_map(summary["map"]["path"]),
                compare_label="experimental",
            )
        )  # fmt: skip
        conf = products.get("enhance_confidence")
        if conf is not None and Path(conf).is_file():
            c = read_map(conf).data
            sections[-1].add(
                note(f"confidence map {Path(conf).name}: per-voxel SD over 4 rotated passes, median {np.median(c):.3g},"
                     f" 99th percentile {np.percentile(c, 99):.3g} (enhanced-map units; high = the prediction depends on"
                     " the view: trust that density less)")
            )  # fmt: skip
    record = load("refine_record")
    if record is not None:
        sections.append(refinement_section(record))
        data["refinement"] = record
    validation = load("validation")
    if validation is not None:
        from cryostack.io.models import read_structure
        from cryostack.validate.ramachandran import ramachandran

        model = products.get("model") or Path(str(validation["model"]))
        rama = ramachandran(read_structure(model)) if Path(model).is_file() else None
        sections.append(validation_section(validation, title="Model validation", ramachandran=rama))
        data["validation"] = validation
    status = "stopped at stage " + str(failure["stage"]) if failure else "finished"
    doc = page("cryostack run", subtitle(f"cryostack run · {status}"), sections, data)
    return write_report(path, doc, data)
