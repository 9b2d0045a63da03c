"""Side-chain rotamer validation against the MolProbity Top8000 rotamer distributions.

The reference (chi definitions, percentile grids, named rotamers and cut-offs) is
:mod:`cryostack.chem.rotamers`; this module scores a model with it.

Evaluation
----------
* Chi angles are measured with gemmi (IUPAC atom quadruples, see :data:`CHI_ATOMS`), wrapped
  into each grid's range. The grids' ranges carry the side-chain symmetry: Phe/Tyr chi2 and
  Asp chi2 span 0–180° and Glu chi3 spans 0–180°, so those angles are folded modulo 180°
  (a ring flip or carboxylate swap gives the same conformation). Leu, Asn, Gln and His keep
  0–360°. Pro is scored on its chi1 grid (``rota8000-pro``).
* The score at a conformation is the **multilinear interpolation** of the grid between the
  2^n surrounding cell centres, wrapping in every dimension. The ``.data`` headers describe
  value-per-cell tables (bounds, bin count, wrapping) in the layout of Silk's ``NDimTable``,
  and MolProbity's reader of these files documents its point look-up as exactly this linear
  interpolation between the nearest cell centres; nearest-cell look-up would make the
  verdict jump at cell edges (cells are 1–10° wide).
* Selenomethionine (MSE, SE for SD) is scored as Met. Ala and Gly have no rotamer; residues
  of other names (nucleic acids, ligands, waters, modified residues) are ignored. A residue
  lacking any atom a chi needs is skipped and counted in ``n_incomplete``.
* Alternate conformations: a residue whose chi atoms carry altlocs is evaluated once per
  altloc (blank-altloc atoms plus that altloc) and gets one record per altloc. Statistics
  (``n_residues`` and the percentages) count each residue once, from its first altloc
  (usually ``A``), as the Ramachandran validator does.
* Each record is named after the nearest Top8000 rotamer centre (``rotamer_name``, e.g.
  ``mtt180`` or ``mtp``): the smallest circular chi distance in degrees to the rotamer means
  of ``Top8000_rotamer_central_values``, with the same symmetry folding. Outliers keep the
  name of the nearest centre as well; their ``classification`` says they are outliers.

There is no external reference to test against here: cctbx's ``rotalyze`` does not run in
this environment (the ``cctbx-base`` wheel runs MolProbity's ``ramalyze`` and ``cbetadev``
but not its rotamer tool), so the tests check the method on the released Met grid, the
grids themselves, known rotamers and strained conformations instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gemmi

from cryostack.chem.conformers import as_model, residue_altlocs
from cryostack.chem.residues import RESIDUE_ATOM_ALIASES
from cryostack.chem.rotamers import CHI_ATOMS, classify, residue_chis_deg, rotamer_name, score_chis
from cryostack.validate.residues import ClassifiedCounts, ResidueRecord


@dataclass(frozen=True)
class RotamerResidue(ResidueRecord):
    """One scored side chain (one record per altloc); angles in degrees, ``score`` 0–1."""

    chain: str
    number: int | None
    icode: str
    name: str
    altloc: str
    chis_deg: tuple[float, ...]
    score: float
    classification: str
    rotamer_name: str

    def outlier_dict(self) -> dict[str, Any]:
        return {
            **self.ref.as_dict(),
            "score": self.score,
            "chis": [round(x, 1) for x in self.chis_deg],
            "rotamer": self.rotamer_name,
        }


@dataclass
class RotamerResult(ClassifiedCounts):
    """Rotamer statistics of a model.

    ``residues`` holds every scored side chain (one record per altloc where the chi atoms have
    altlocs); ``n_residues`` and the percentages count each residue once (its first altloc).
    ``n_incomplete`` counts residues skipped for missing side-chain atoms.
    """

    n_incomplete: int = 0
    residues: list[RotamerResidue] = field(default_factory=list)


def _side_chain_altlocs(residue: gemmi.Residue) -> list[str]:
    names = {a for quad in CHI_ATOMS[residue.name] for a in quad} | set(RESIDUE_ATOM_ALIASES.values())
    return residue_altlocs(a for a in residue if a.name in names) or [""]


def _score_residue(chain: gemmi.Chain, residue: gemmi.Residue) -> list[RotamerResidue] | None:
    """Records of one residue (one per altloc); ``None`` if its side chain is incomplete."""
    records = []
    for altloc in _side_chain_altlocs(residue):
        chis = residue_chis_deg(residue, altloc)
        if chis is None:
            continue
        value = score_chis(residue.name, chis)
        records.append(
            RotamerResidue(
                chain=chain.name,
                number=residue.seqid.num,
                icode=residue.seqid.icode.strip(),
                name=residue.name,
                altloc=altloc,
                chis_deg=chis,
                score=value,
                classification=classify(value),
                rotamer_name=rotamer_name(residue.name, chis),
            )
        )
    return records or None


def rotamers(structure: Any) -> RotamerResult:
    """Rotamer analysis of the first model of ``structure`` (a cryostack ``Structure``,
    ``gemmi.Structure`` or ``gemmi.Model``)."""
    model = as_model(structure)
    counts = {"favored": 0, "allowed": 0, "outlier": 0}
    residues: list[RotamerResidue] = []
    counted: set[tuple[str, int | None, str]] = set()
    n_incomplete = 0
    for chain in model:
        for residue in chain:
            if residue.name not in CHI_ATOMS:
                continue  # Ala, Gly, nucleic acids, ligands, waters, modified residues
            records = _score_residue(chain, residue)
            if records is None:
                n_incomplete += 1
                continue
            key = (chain.name, residue.seqid.num, residue.seqid.icode.strip())
            if key not in counted:  # point mutations modelled as alternates count once
                counted.add(key)
                counts[records[0].classification] += 1
            residues.extend(records)
    return RotamerResult(
        n_residues=sum(counts.values()),
        n_favored=counts["favored"],
        n_allowed=counts["allowed"],
        n_outliers=counts["outlier"],
        n_incomplete=n_incomplete,
        residues=residues,
    )
