"""A model-building job on files: map + FASTA → model.cif, its validation against the map, and
optionally its refinement.

:func:`build_files` is what ``cryostack build`` runs. Every check happens before the network
runs; the model, the per-residue confidence (B-factor column) and the reports are written
atomically beside ``out`` (``OUT_report.html`` and ``OUT_report.json``); with ``refine`` the
model is then refined by :func:`~cryostack.pipeline.refine_job.refine_files` into
``OUT_refined.cif`` with its own reports.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cryostack.build.api import (
    BuildConfig,
    BuildResult,
    build_model,
    chains_from_fasta,
    check_build_resolution,
    poly_unk_chains,
)
from cryostack.density.checks import check_map_values, check_resolution
from cryostack.errors import InputError
from cryostack.io.atomic import atomic_output, jsonable
from cryostack.io.maps import read_map
from cryostack.io.sequences import read_fasta
from cryostack.pipeline.refine_job import check_outputs, default_outputs
from cryostack.validate.api import validate


@dataclass
class BuildJobResult:
    build: BuildResult
    validation: dict[str, Any]
    outputs: list[Path]
    refined: Path | None = None
    notes: list[str] = field(default_factory=list)


def build_outputs(out: Path) -> tuple[Path, Path, Path]:
    """``(model.cif, OUT_report.json, OUT_report.html)``."""
    model, _, js, html = default_outputs(out, out)
    return model, js, html


def build_files(
    map_path: Path,
    sequence: Path | None,
    resolution_A: float | None,
    out: Path,
    cfg: BuildConfig | None = None,
    *,
    sidechains: bool = True,
    refine: bool = False,
    n_residues: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    status: Callable[[str], None] | None = None,
) -> BuildJobResult:
    """Build a model of ``sequence``'s chains into ``map_path``; see the module docstring.

    Without ``sequence`` (``cfg.use_sequence`` False) one poly-UNK chain of ``n_residues`` is
    built (default: the map's protein volume above its 99th-percentile-scaled contour / 133 Å³).
    """
    say = status or (lambda _t: None)
    resolution_A = check_resolution(resolution_A, where=map_path, needed_for="model building")
    cfg = replace(cfg, resolution_A=resolution_A) if cfg else BuildConfig(resolution_A=resolution_A)
    inputs = tuple(p for p in (map_path, sequence) if p is not None)
    outputs = build_outputs(out)
    check_outputs(outputs, inputs)
    density = read_map(map_path)
    check_map_values(density)
    check_resolution(resolution_A, where=map_path, voxel_size_A=max(density.voxel_size))
    check_build_resolution(resolution_A, where=map_path)  # before the FASTA is read
    notes: list[str] = []
    if min(density.voxel_size) < 1.0:
        notes.append(f"voxel size {min(density.voxel_size):.3f} Å is finer than 1 Å; the map is resampled to 1.5 Å")
    if sequence is not None:
        chains, seq_notes = chains_from_fasta(read_fasta(sequence), where=sequence)
        notes += seq_notes
        if not cfg.use_sequence:  # --no-sequence with a FASTA: its lengths only
            chains = [type(c)(c.chain_id, c.record, "X" * len(c.sequence)) for c in chains]
    else:
        if cfg.use_sequence:
            raise InputError(None, "no sequence given: pass a FASTA or ask for a poly-UNK build (no-sequence)")
        chains = poly_unk_chains(n_residues or estimate_residues(density))
    say("building")
    result = build_model(density, chains, cfg, progress=progress)
    notes += result.notes
    structure = result.structure
    if sidechains and cfg.use_sequence:
        from cryostack.build.sidechains import add_sidechains, sidechains_available

        if sidechains_available():
            say("adding side chains (ProMod3)")
            structure = add_sidechains(structure)
        else:
            notes.append("ProMod3 not found: the model has backbone and Cβ only")
    result.structure = structure
    say("validating against the map")
    val = validate(structure, density=density, resolution_A=resolution_A, compute_q=False)
    structure.write(outputs[0], protect=inputs)
    record = {
        "map": str(map_path), "sequence": str(sequence) if sequence else None, "resolution_A": resolution_A,
        "build": result.summary(), "notes": notes,
        "confidence_per_residue": [round(float(c), 3) for c in result.confidence],
        "validation": val.to_dict(),
    }  # fmt: skip
    with atomic_output(outputs[1], protect=inputs) as tmp:
        tmp.write_text(json.dumps(jsonable(record), indent=1))
    from cryostack.report.pages import validation_page

    validation_page(
        val, outputs[2], density=density,
        inputs={"map": str(map_path), "sequence": str(sequence) if sequence else "none (poly-UNK)"},
        parameters={"resolution_A": resolution_A, "use_sequence": cfg.use_sequence, "crops": result.crops},
        protect=inputs,
    )  # fmt: skip
    job = BuildJobResult(result, val.to_dict(), list(outputs), notes=notes)
    if refine:
        from cryostack.pipeline.refine_job import refine_files

        say("refining")
        refined_out = outputs[0].with_name(outputs[0].name.removesuffix(".cif") + "_refined.cif")
        refine_files(outputs[0], map_path, resolution_A, out=refined_out, compute_q=False)
        job.refined = refined_out
    return job


def estimate_residues(density) -> int:
    """Residues the map's density can hold: voxels above 20 % of the 99.9th percentile (after the
    median is removed), at 133 Å³ per residue — a rough count for a poly-UNK build."""
    d = density.data - np.median(density.data)
    level = 0.2 * np.percentile(d, 99.9)
    volume = float((d > level).sum() * np.prod(density.voxel_size))
    return max(4, int(volume / 133.0))
