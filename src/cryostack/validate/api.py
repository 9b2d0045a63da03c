"""``validate()``: every validation number for a model, in one result object."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from cryostack.chem.residues import trace_residues
from cryostack.density.checks import check_half_maps, check_map_values, check_model_atoms, check_resolution
from cryostack.errors import InputError
from cryostack.io.atomic import atomic_output, jsonable
from cryostack.io.maps import DensityMap, read_map
from cryostack.io.models import PROTEIN, Structure, read_structure
from cryostack.validate.stages import Stages, stage

if TYPE_CHECKING:
    from cryostack.validate.cbeta import CbetaResult
    from cryostack.validate.geometry import GeometryResult
    from cryostack.validate.mapfit import MapModelFit
    from cryostack.validate.ramachandran import RamachandranResult
    from cryostack.validate.reference import ReferenceResult
    from cryostack.validate.rotamers import RotamerResult

#: A map–model comparison is refused when more than this fraction of atoms lies outside the box.
MAX_OUTSIDE_FRACTION = 0.5


@dataclass
class ValidationResult:
    """Sections are ``None`` when their inputs were not given (no map, no reference)."""

    model: str
    map_model: MapModelFit | None = None
    geometry: GeometryResult | None = None
    ramachandran: RamachandranResult | None = None
    rotamer: RotamerResult | None = None
    cbeta: CbetaResult | None = None
    reference: ReferenceResult | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        geom = self.geometry.to_dict() if self.geometry is not None else {}
        if self.ramachandran is not None:
            geom["ramachandran"] = self.ramachandran.to_dict()
        if self.rotamer is not None:
            geom["rotamer"] = self.rotamer.to_dict()
        if self.cbeta is not None:
            cb = self.cbeta.to_dict()
            geom["cbeta_deviations"] = len(cb.get("outliers", []))
            geom["cbeta"] = cb
        return {
            "model": self.model,
            "map_model": self.map_model.to_dict() if self.map_model is not None else None,
            "geometry": geom,
            "reference": self.reference.to_dict() if self.reference is not None else None,
            "notes": self.notes,
        }

    def write_json(self, path: str | Path) -> Path:
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(jsonable(self.to_dict()), indent=2))
        return Path(path)


def validate(
    model: Structure | str | Path,
    *,
    density: DensityMap | str | Path | None = None,
    resolution_A: float | None = None,
    half_maps: tuple[DensityMap | str | Path, DensityMap | str | Path] | None = None,
    reference: Structure | str | Path | None = None,
    compute_q: bool = True,
    stages: Stages | None = None,
) -> ValidationResult:
    """Validate a model: geometry always; map fit with a map; scores against a reference.

    ``stages`` (optional) records wall and CPU seconds per step and can report progress.
    """
    with stage(stages, "read inputs"):
        structure = model if isinstance(model, Structure) else read_structure(model)
        atoms = structure.atoms()
    name = structure.source or "model"
    result = ValidationResult(model=name)

    if density is not None:
        with stage(stages, "read inputs"):
            dmap = density if isinstance(density, DensityMap) else read_map(density)
        where = dmap.source or "map"
        resolution_A = check_resolution(resolution_A, where=where, needed_for="map–model validation")
        check_map_values(dmap)
        check_model_atoms(atoms, name)
        halves: tuple[DensityMap, DensityMap] | None = None
        if half_maps is not None:
            with stage(stages, "read inputs"):
                halves = cast(
                    "tuple[DensityMap, DensityMap]",
                    tuple(h if isinstance(h, DensityMap) else read_map(h) for h in half_maps),
                )
            check_half_maps(dmap, halves)
        from cryostack.validate.mapfit import map_model_fit

        idx = dmap.angstrom_to_voxel(atoms.coords)
        outside = float(np.any((idx < 0) | (idx > np.array(dmap.shape) - 1), axis=1).mean())
        if outside > MAX_OUTSIDE_FRACTION:
            raise InputError(
                name,
                f"{100 * outside:.0f}% of the model's atoms lie outside the map box "
                f"({where}); is this the right map, and are origin and axis order right?",
            )
        result.map_model = map_model_fit(
            structure, dmap, resolution_A, half_maps=halves, compute_q=compute_q, atoms=atoms, stages=stages
        )
        if outside > 0:
            result.notes.append(f"{100 * outside:.1f}% of atoms lie outside the map box")
        if result.map_model.cc_peaks is not None and result.map_model.cc_peaks < 0:
            result.notes.append(
                "CC_peaks < 0: the map's strongest density lies mostly where the model has none "
                "(a partial model in a larger map?); CC_mask and the local CCs are the fit measures"
            )
        if result.map_model.q_score_undefined_atoms:
            result.notes.append(
                f"no Q-score for {result.map_model.q_score_undefined_atoms} atoms "
                "(within 2 Å of the map's edge, beyond it, or in flat density)"
            )

    from cryostack.validate.geometry import geometry

    with stage(stages, "geometry and clashes"):
        result.geometry = geometry(structure)
    if result.geometry.residues_without_dictionary:
        result.notes.append(
            "no monomer-library entry for: "
            + ", ".join(result.geometry.residues_without_dictionary)
            + " (left out of geometry scores)"
        )
    if result.geometry.clashscore_method.startswith("heavy-atom"):
        result.notes.append(
            f"clashscore is {result.geometry.clashscore_method}: lower than MolProbity's all-atom value"
        )
    no_h = [n for n in result.geometry.residues_without_dictionary if "/" not in n]
    if no_h and not result.geometry.clashscore_method.startswith("heavy-atom"):
        # Their heavy atoms are still in the all-atom clashscore, but without their hydrogens.
        result.notes.append(f"clashscore: no hydrogens placed on {', '.join(no_h)} (no monomer-library entry)")

    has_protein = bool((atoms.residue_class == PROTEIN).any())
    n_trace, n_protein = trace_residues(atoms)
    if n_protein and n_trace > n_protein // 2:
        # A Cα trace (what builders produce first) has no bonds, angles, φ/ψ or side chains, and
        # heavy-atom radii say nothing about Cα–Cα contacts: those scores are left out, not zeroed.
        result.geometry.clashscore = None
        result.geometry.clashscore_heavy_atom = None
        result.geometry.clashes = []
        result.notes = [n for n in result.notes if not n.startswith("clashscore")]
        result.notes.append(
            f"Cα trace ({n_trace} of {n_protein} protein residues have only Cα): bond/angle, clash, "
            "Ramachandran, rotamer and Cβ scores need full residues and are not reported"
        )
        has_protein = False
    elif has_protein:
        from cryostack.validate.cbeta import cbeta_deviations
        from cryostack.validate.ramachandran import ramachandran
        from cryostack.validate.rotamers import rotamers

        with stage(stages, "Ramachandran"):
            result.ramachandran = ramachandran(structure)
        with stage(stages, "rotamers"):
            result.rotamer = rotamers(structure)
        with stage(stages, "C-beta deviations"):
            result.cbeta = cbeta_deviations(structure)
    elif n_protein == 0:
        result.notes.append("no protein residues: Ramachandran, rotamer and Cβ scores skipped")

    if reference is not None:
        from cryostack.validate.reference import compare_to_reference

        with stage(stages, "read inputs"):
            ref = reference if isinstance(reference, Structure) else read_structure(reference)
        with stage(stages, "versus reference"):
            result.reference = compare_to_reference(structure, ref)
        result.notes.extend(f"reference: {n}" for n in getattr(result.reference, "notes", []))
    return result
