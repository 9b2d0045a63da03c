"""Reading residue chemistry off a gemmi model: conformers (altlocs), peptide links and torsions.

Alternate conformations follow the usual PDB convention (and MolProbity's "conformer" view):
the conformer with altloc ``L`` of a residue holds its atoms with a blank altloc plus those
with altloc ``L``; a residue without alternates has the single conformer ``""``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import gemmi

from cryostack.chem.residues import PEPTIDE_BOND_MAX_A


def as_model(structure: Any) -> gemmi.Model:
    """The model to validate: the first model of a cryostack ``Structure`` or ``gemmi.Structure``,
    or a ``gemmi.Model`` as given."""
    if isinstance(structure, gemmi.Model):
        return structure
    st = getattr(structure, "gemmi", structure)
    if not isinstance(st, gemmi.Structure):
        raise TypeError(
            f"expected a cryostack Structure, gemmi.Structure or gemmi.Model, got {type(structure).__name__}"
        )
    if len(st) == 0:
        raise ValueError("structure has no models")
    return st[0]


def altloc_of(atom: gemmi.Atom) -> str:
    """An atom's altloc letter, ``""`` for none (gemmi stores ``"\\0"``)."""
    return "" if atom.altloc == "\0" else atom.altloc


def residue_altlocs(atoms: Iterable[gemmi.Atom]) -> list[str]:
    """Distinct non-blank altlocs of ``atoms`` in order of first appearance."""
    seen: dict[str, None] = {}
    for atom in atoms:
        alt = altloc_of(atom)
        if alt:
            seen.setdefault(alt, None)
    return list(seen)


def conformer_atoms(residue: gemmi.Residue, altloc: str, names: frozenset[str] | None = None) -> dict[str, gemmi.Atom]:
    """Atoms of ``residue`` in the conformer ``altloc`` (blank-altloc atoms plus altloc ``altloc``).

    Returns atom name → atom (the first such atom per name), optionally restricted to ``names``.
    """
    out: dict[str, gemmi.Atom] = {}
    for atom in residue:
        if names is not None and atom.name not in names:
            continue
        alt = altloc_of(atom)
        if alt and alt != altloc:
            continue
        out.setdefault(atom.name, atom)
    return out


def residue_groups(chain: gemmi.Chain) -> Iterator[list[gemmi.Residue]]:
    """Consecutive residues of ``chain`` sharing a sequence ID (point mutations modelled as
    alternates) grouped together; other residues come alone."""
    group: list[gemmi.Residue] = []
    for residue in chain:
        if group and residue.seqid != group[-1].seqid:
            yield group
            group = []
        group.append(residue)
    if group:
        yield group


def distance_A(a: gemmi.Atom, b: gemmi.Atom) -> float:
    """Distance between two atoms in Å."""
    return a.pos.dist(b.pos)


def dihedral_deg(a: gemmi.Atom, b: gemmi.Atom, c: gemmi.Atom, d: gemmi.Atom) -> float:
    """Dihedral angle a–b–c–d in degrees, in [-180, 180]."""
    return math.degrees(gemmi.calculate_dihedral(a.pos, b.pos, c.pos, d.pos))


def peptide_linked(prev_atoms: dict[str, gemmi.Atom], atoms: dict[str, gemmi.Atom]) -> bool:
    """True when C of the previous residue and N of this one are within peptide-bond distance
    (:data:`PEPTIDE_BOND_MAX_A`); missing atoms mean no link (a chain break)."""
    c = prev_atoms.get("C")
    n = atoms.get("N")
    return c is not None and n is not None and distance_A(c, n) < PEPTIDE_BOND_MAX_A


def phi_psi_deg(
    prev_atoms: dict[str, gemmi.Atom], atoms: dict[str, gemmi.Atom], next_atoms: dict[str, gemmi.Atom]
) -> tuple[float, float] | None:
    """Backbone (phi, psi) in degrees of the middle residue of three linked residues.

    phi = C(i-1)–N–CA–C, psi = N–CA–C–N(i+1). ``None`` when an atom is missing.
    """
    try:
        c_prev, n, ca, c, n_next = prev_atoms["C"], atoms["N"], atoms["CA"], atoms["C"], next_atoms["N"]
    except KeyError:
        return None
    return dihedral_deg(c_prev, n, ca, c), dihedral_deg(n, ca, c, n_next)


def omega_deg(prev_atoms: dict[str, gemmi.Atom], atoms: dict[str, gemmi.Atom]) -> float | None:
    """Peptide torsion omega CA(i-1)–C(i-1)–N–CA in degrees, ``None`` when an atom is missing."""
    try:
        return dihedral_deg(prev_atoms["CA"], prev_atoms["C"], atoms["N"], atoms["CA"])
    except KeyError:
        return None
