"""Covalent geometry against the CCP4 monomer library, peptide ω, chirality and clashes.

Restraints come from gemmi's topology built with a complete copy of the CCP4 monomer library
(the one shipped in the ``coot-headless-api`` wheel: Debian's copy lacks ``mon_lib_list.cif``
and has broken entries). Residues without a dictionary are reported and left out of the
geometry scores, never silently scored against nothing.

``clashscore`` is all-atom, as MolProbity's: riding hydrogens are placed from the same
dictionaries and Probe's contact rules are applied (:mod:`cryostack.validate.clashes`).
``clashscore_heavy_atom`` keeps the older score over non-hydrogen atoms, which finds fewer
clashes; it is also the ``clashscore`` where gemmi cannot place the hydrogens, and
``clashscore_method`` says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import gemmi
import numpy as np

from cryostack.chem.monlib import atom_key, topology
from cryostack.errors import InputError
from cryostack.io.models import Structure
from cryostack.validate.clashes import HEAVY_ATOM_METHOD, all_atom_clashes, atom_ref, heavy_atom_clashes

OUTLIER_SIGMA = 4.0


def _res_ref(cra_or_res, chain_name: str | None = None) -> dict:
    res = cra_or_res
    return {"chain": chain_name, "number": res.seqid.num, "icode": res.seqid.icode.strip(), "name": res.name}


@dataclass
class GeometryResult:
    bond_rmsd: float | None
    angle_rmsd: float | None
    n_bonds: int
    n_angles: int
    bond_outliers: list[dict] = field(default_factory=list)
    angle_outliers: list[dict] = field(default_factory=list)
    chirality_errors: list[dict] = field(default_factory=list)
    cis_peptides: list[dict] = field(default_factory=list)
    twisted_peptides: list[dict] = field(default_factory=list)
    clashscore: float | None = None  # all-atom (riding H) unless clashscore_method says otherwise
    clashes: list[dict] = field(default_factory=list)
    clashscore_method: str = "none"
    clashscore_heavy_atom: float | None = None  # non-hydrogen atoms only: lower than MolProbity's
    residues_without_dictionary: list[str] = field(default_factory=list)  # names, or chain/res/atom

    def to_dict(self) -> dict:
        return {
            "bond_rmsd": self.bond_rmsd,
            "angle_rmsd": self.angle_rmsd,
            "n_bonds": self.n_bonds,
            "n_angles": self.n_angles,
            "bond_outliers": self.bond_outliers,
            "angle_outliers": self.angle_outliers,
            "chirality_errors": self.chirality_errors,
            "cis_peptides": self.cis_peptides,
            "twisted_peptides": self.twisted_peptides,
            "clashscore": self.clashscore,
            "clashscore_method": self.clashscore_method,
            "clashscore_heavy_atom": self.clashscore_heavy_atom,
            "clashes": self.clashes,
            "residues_without_dictionary": self.residues_without_dictionary,
        }


def geometry(structure: Structure) -> GeometryResult:
    """Bond/angle RMSD and outliers, chirality, peptide ω and clashscore of the first model."""
    st, topo, missing = topology(structure)
    # gemmi returns fresh Python wrappers for topology atoms, so atoms are matched by key.
    where = {atom_key(atom): (res, chain.name) for chain in st[0] for res in chain for atom in res}

    def ref(atom: gemmi.Atom) -> tuple[str, dict]:
        res, ch = where[atom_key(atom)]
        return atom_ref(atom, res, ch), _res_ref(res, ch)

    bond_dev, bond_out = [], []
    for b in topo.bonds:
        d = b.calculate()
        dev = d - b.restr.value
        bond_dev.append(dev)
        if abs(dev) > OUTLIER_SIGMA * b.restr.esd:
            a1, r = ref(b.atoms[0])
            a2, _ = ref(b.atoms[1])
            bond_out.append(
                {
                    **r,
                    "atoms": f"{a1}–{a2}",
                    "model_A": round(d, 3),
                    "ideal_A": b.restr.value,
                    "sigmas": round(dev / b.restr.esd, 1),
                }
            )
    ang_dev, ang_out = [], []
    for a in topo.angles:
        v = math.degrees(a.calculate())
        dev = v - a.restr.value
        ang_dev.append(dev)
        if abs(dev) > OUTLIER_SIGMA * a.restr.esd:
            a1, r = ref(a.atoms[1])
            ang_out.append(
                {
                    **r,
                    "atoms": "–".join(x.name for x in a.atoms),
                    "model_deg": round(v, 1),
                    "ideal_deg": a.restr.value,
                    "sigmas": round(dev / a.restr.esd, 1),
                }
            )
    chir = []
    for c in topo.chirs:
        if c.restr.is_wrong(c.calculate()):
            _, r = ref(c.atoms[0])
            chir.append({**r, "centre": c.atoms[0].name, "volume_A3": round(c.calculate(), 2)})

    cis, twisted = _peptide_omega(st)
    heavy = heavy_atom_clashes(st, topo)
    try:
        clash = all_atom_clashes(structure)
    except InputError as exc:
        # gemmi could not place the hydrogens: report the heavy-atom score, and say so.
        clash = heavy
        clash.method = f"{HEAVY_ATOM_METHOD} (hydrogens could not be placed: {exc.problem})"
    return GeometryResult(
        bond_rmsd=float(np.sqrt(np.mean(np.square(bond_dev)))) if bond_dev else None,
        angle_rmsd=float(np.sqrt(np.mean(np.square(ang_dev)))) if ang_dev else None,
        n_bonds=len(bond_dev),
        n_angles=len(ang_dev),
        bond_outliers=bond_out,
        angle_outliers=ang_out,
        chirality_errors=chir,
        cis_peptides=cis,
        twisted_peptides=twisted,
        clashscore=clash.clashscore,
        clashes=clash.clashes,
        clashscore_method=clash.method,
        clashscore_heavy_atom=heavy.clashscore,
        residues_without_dictionary=missing,
    )


def _peptide_omega(st: gemmi.Structure) -> tuple[list[dict], list[dict]]:
    """Cis (|ω| < 30°) and twisted (30° ≤ |ω| < 150°) peptides, as MolProbity's omegalyze."""
    cis, twisted = [], []
    for chain in st[0]:
        polymer = list(chain.get_polymer())
        for prev, res in zip(polymer, polymer[1:]):
            ca1, c1, n2, ca2 = (
                prev.find_atom("CA", "*"),
                prev.find_atom("C", "*"),
                res.find_atom("N", "*"),
                res.find_atom("CA", "*"),
            )
            if not all((ca1, c1, n2, ca2)) or c1.pos.dist(n2.pos) > 2.0:  # chain break
                continue
            omega = math.degrees(gemmi.calculate_dihedral(ca1.pos, c1.pos, n2.pos, ca2.pos))
            entry = {**_res_ref(res, chain.name), "omega_deg": round(omega, 1), "proline": res.name == "PRO"}
            if abs(omega) < 30:
                cis.append(entry)
            elif abs(omega) < 150:
                twisted.append(entry)
    return cis, twisted
