"""Small residue-level helpers shared by the backbone validators (Ramachandran, Cβ deviation).

Alternate conformations follow the usual PDB convention (and MolProbity's "conformer" view):
the conformer with altloc ``L`` of a residue holds its atoms with a blank altloc plus those
with altloc ``L``; a residue without alternates has the single conformer ``""``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Iterator

import gemmi

#: MolProbity's "common amino acids": the 20 standard residues plus selenomethionine.
COMMON_AMINO_ACIDS = frozenset(
    "GLY ALA VAL LEU ILE MET MSE PRO PHE TRP SER THR ASN GLN TYR CYS LYS ARG HIS ASP GLU".split()
)

#: Chemical Component Dictionary names of the D-amino acids (D-Ala, D-Arg, ..., D-Met).
D_AMINO_ACIDS = frozenset(
    "DAL DAR DAS DCY DGL DGN DHI DIL DLE DLY DPN DPR DSG DSN DTH DTR DTY DVA MED".split()
)

#: Longest C(i-1)–N(i) distance (Å) still counted as a peptide bond (no bond → chain break).
PEPTIDE_BOND_MAX_A = 2.0


@dataclass(frozen=True)
class ResidueRef:
    """Identifies one residue (optionally one alternate conformation) of a model.

    ``number`` is the author residue number, ``icode`` the insertion code (``""`` if none) and
    ``altloc`` the alternate-conformation letter (``""`` when the residue has none).
    """

    chain: str
    number: int
    icode: str
    name: str
    altloc: str = ""

    def label(self) -> str:
        """Short human label, e.g. ``A/57 PRO`` or ``B/100A LYS (altloc B)``."""
        text = f"{self.chain}/{self.number}{self.icode} {self.name}"
        return f"{text} (altloc {self.altloc})" if self.altloc else text

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ResidueRecord:
    """Base of per-residue result records (Ramachandran, rotamer, Cβ) that carry ``chain``,
    ``number``, ``icode``, ``name`` and ``altloc`` fields."""

    @property
    def ref(self) -> ResidueRef:
        return ResidueRef(self.chain, self.number, self.icode, self.name, self.altloc)

    @property
    def label(self) -> str:
        """Short plot label, e.g. ``A/57 GLU`` or ``A/57 B GLU`` for altloc B."""
        alt = f" {self.altloc}" if self.altloc else ""
        return f"{self.chain}/{self.number}{self.icode}{alt} {self.name}"


@dataclass
class ClassifiedCounts:
    """Favoured / allowed / outlier counts over ``n_residues`` residues (Ramachandran, rotamers).

    Subclasses add ``residues``: records with a ``classification`` and an ``outlier_dict()``.
    """

    n_residues: int
    n_favored: int
    n_allowed: int
    n_outliers: int

    def _pct(self, n: int) -> float:
        return 100.0 * n / self.n_residues if self.n_residues else 0.0

    @property
    def favored_pct(self) -> float:
        return self._pct(self.n_favored)

    @property
    def allowed_pct(self) -> float:
        return self._pct(self.n_allowed)

    @property
    def outlier_pct(self) -> float:
        return self._pct(self.n_outliers)

    @property
    def outliers(self) -> list[dict[str, Any]]:
        """Outlier records (every conformation) as dicts."""
        return [r.outlier_dict() for r in self.residues if r.classification == "outlier"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "favored_pct": round(self.favored_pct, 3),
            "allowed_pct": round(self.allowed_pct, 3),
            "outlier_pct": round(self.outlier_pct, 3),
            "n_residues": self.n_residues,
            "outliers": self.outliers,
        }


def as_model(structure: Any) -> gemmi.Model:
    """The model to validate: the first model of a cryostack ``Structure`` or ``gemmi.Structure``,
    or a ``gemmi.Model`` as given."""
    if isinstance(structure, gemmi.Model):
        return structure
    st = getattr(structure, "gemmi", structure)
    if not isinstance(st, gemmi.Structure):
        raise TypeError(f"expected a cryostack Structure, gemmi.Structure or gemmi.Model, got {type(structure).__name__}")
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


def conformer_atoms(
    residue: gemmi.Residue, altloc: str, names: frozenset[str] | None = None
) -> dict[str, gemmi.Atom]:
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


def ref_of(chain: gemmi.Chain, residue: gemmi.Residue, altloc: str = "") -> ResidueRef:
    """The :class:`ResidueRef` of ``residue`` in ``chain``."""
    return ResidueRef(chain.name, residue.seqid.num, residue.seqid.icode.strip(), residue.name, altloc)


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
