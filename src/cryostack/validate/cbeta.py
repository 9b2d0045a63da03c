"""Cβ deviation (MolProbity's cbetadev; Lovell et al. 2003, Proteins 50:437).

For every non-glycine residue with N, CA, C and CB, the ideal Cβ is built from the backbone
(:mod:`cryostack.chem.cbeta`, with the residue-dependent ideal geometry); the deviation is the
distance between the modelled and the ideal Cβ, and 0.25 Å or more is an outlier (it usually
flags a misfit side chain or backbone). D-amino acids (by name, or for non-standard residues by
the handedness of CA) use the mirrored geometry. Alternate conformations: a residue is evaluated
in its first conformer and again in every conformer whose N, CA, C or CB differ (reported with
that altloc).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gemmi
import numpy as np

from cryostack.chem.cbeta import cross3, ideal_cbeta, ideal_geometry
from cryostack.chem.conformers import altloc_of, as_model, conformer_atoms, residue_altlocs, residue_groups
from cryostack.validate.residues import ResidueRecord

#: Deviations at or above this (Å) are outliers.
OUTLIER_MIN_A = 0.25
_RELEVANT = frozenset({"N", "CA", "C", "CB"})


@dataclass(frozen=True)
class CbetaDeviation(ResidueRecord):
    """Cβ deviation of one residue (conformation); ``altloc`` is ``""`` unless N/CA/C/CB have
    alternates."""

    chain: str
    number: int | None
    icode: str
    name: str
    altloc: str
    deviation_A: float

    @property
    def is_outlier(self) -> bool:
        return self.deviation_A >= OUTLIER_MIN_A

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.ref.as_dict(),
            "deviation_A": round(self.deviation_A, 3),
        }


@dataclass
class CbetaResult:
    """Cβ deviations of a model: every evaluated residue conformation and the outliers."""

    residues: list[CbetaDeviation] = field(default_factory=list)

    @property
    def n_residues(self) -> int:
        return len(self.residues)

    @property
    def outliers(self) -> list[dict[str, Any]]:
        """Outliers (deviation ≥ 0.25 Å) as dicts: chain, number, icode, name, altloc, deviation_A."""
        return [r.as_dict() for r in self.residues if r.is_outlier]

    @property
    def max_deviation_A(self) -> float | None:
        return max((r.deviation_A for r in self.residues), default=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        max_dev = self.max_deviation_A
        return {
            "n_residues": self.n_residues,
            "n_outliers": len(self.outliers),
            "max_deviation_A": None if max_dev is None else round(max_dev, 3),
            "outliers": self.outliers,
        }


def _xyz(atom: gemmi.Atom) -> np.ndarray:
    return np.array([atom.pos.x, atom.pos.y, atom.pos.z])


def cbeta_deviation_A(atoms: dict[str, gemmi.Atom], name: str) -> float:
    """Cβ deviation (Å) of a residue given its N, CA, C and CB atoms (NaN for a degenerate
    backbone: N, CA, C collinear)."""
    n, ca, c, cb = (_xyz(atoms[k]) for k in ("N", "CA", "C", "CB"))
    chiral_volume = float(np.dot(n - ca, cross3(cb - ca, c - ca)))
    ideal = ideal_cbeta(n, ca, c, ideal_geometry(name, chiral_volume))
    return float(np.linalg.norm(cb - ideal))


def cbeta_deviations(structure: Any) -> CbetaResult:
    """Cβ deviations of the first model of ``structure`` (a cryostack ``Structure``,
    ``gemmi.Structure`` or ``gemmi.Model``). Glycines, residues lacking N, CA, C or CB (nucleic
    acids, most ligands) and degenerate backbones (N, CA, C collinear) are skipped."""
    model = as_model(structure)
    records: list[CbetaDeviation] = []
    for chain in model:
        for group in residue_groups(chain):
            conformers = residue_altlocs(a for res in group for a in res) or [""]
            for index, conformer in enumerate(conformers):
                for res in group:
                    if res.name == "GLY":
                        continue
                    atoms = conformer_atoms(res, conformer, _RELEVANT)
                    is_alt = any(altloc_of(a) for a in atoms.values())
                    if len(atoms) < 4 or not (index == 0 or is_alt):
                        continue
                    deviation = cbeta_deviation_A(atoms, res.name)
                    if not np.isfinite(deviation):
                        continue
                    records.append(
                        CbetaDeviation(
                            chain=chain.name,
                            number=res.seqid.num,
                            icode=res.seqid.icode.strip(),
                            name=res.name,
                            altloc=conformer if is_alt else "",
                            deviation_A=deviation,
                        )
                    )
    return CbetaResult(records)
