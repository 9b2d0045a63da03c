"""The residue and atom vocabulary every tool shares: names, aliases and main-chain sets.

One place for what a residue or atom name means, so a featuriser, a dataset and a validator
never disagree on whether ``MSE`` is a methionine or ``O1P`` a phosphate oxygen. Learned tools
turn these tuples into integer tokens (index + 1, 0 = anything else); changing an order changes
every trained checkpoint's input, so new names are only ever appended.
"""

from __future__ import annotations

import numpy as np

from cryostack.io.models import PROTEIN, AtomArrays

#: The 20 standard amino acids, alphabetical by 3-letter code.
AMINO_ACIDS: tuple[str, ...] = (
    "ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE",
    "LEU", "LYS", "MET", "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL",
)  # fmt: skip
#: One-letter codes of :data:`AMINO_ACIDS`.
ONE_LETTER: dict[str, str] = dict(zip(AMINO_ACIDS, "ARNDCQEGHILKMFPSTWYV"))
#: DNA then RNA nucleotides.
NUCLEOTIDES: tuple[str, ...] = ("DA", "DC", "DG", "DT", "A", "C", "G", "U")
WATER = "HOH"

#: MolProbity's "common amino acids": the 20 standard residues plus selenomethionine.
COMMON_AMINO_ACIDS = frozenset(AMINO_ACIDS) | {"MSE"}
#: Chemical Component Dictionary names of the D-amino acids (D-Ala, D-Arg, ..., D-Met).
D_AMINO_ACIDS = frozenset("DAL DAR DAS DCY DGL DGN DHI DIL DLE DLY DPN DPR DSG DSN DTH DTR DTY DVA MED".split())

#: Names read in the PDB and from MD force fields for a standard residue: modified or
#: protonation-state variants mapped onto their parent.
RESIDUE_ALIASES: dict[str, str] = {
    "MSE": "MET", "SEC": "CYS", "HSD": "HIS", "HSE": "HIS", "HSP": "HIS", "HIE": "HIS", "HID": "HIS",
    "DU": "DT", "WAT": "HOH", "DOD": "HOH",
}  # fmt: skip

#: Heavy-atom names of the standard amino acids.
PROTEIN_ATOMS: tuple[str, ...] = (
    "N", "CA", "C", "O", "OXT", "CB", "CG", "CG1", "CG2", "CD", "CD1", "CD2", "CE", "CE1",
    "CE2", "CE3", "CZ", "CZ2", "CZ3", "CH2", "NE", "NE1", "NE2", "NH1", "NH2", "ND1", "ND2",
    "NZ", "OD1", "OD2", "OE1", "OE2", "OG", "OG1", "OH", "SD", "SG", "SE",
)  # fmt: skip
#: Heavy-atom names of the standard nucleotides.
NUCLEIC_ATOMS: tuple[str, ...] = (
    "P", "OP1", "OP2", "OP3", "O5'", "C5'", "C4'", "O4'", "C3'", "O3'", "C2'", "O2'", "C1'",
    "N1", "C2", "N2", "O2", "N3", "C4", "N4", "O4", "C5", "C7", "C6", "N6", "O6", "N7", "C8", "N9",
)  # fmt: skip
#: Every standard heavy-atom name, protein first (order fixed: it is a token vocabulary).
ATOM_NAMES: tuple[str, ...] = tuple(dict.fromkeys(PROTEIN_ATOMS + NUCLEIC_ATOMS))
#: The 37 protein heavy-atom names in the order widely used by structure-prediction models.
ATOM37: tuple[str, ...] = (
    "N", "CA", "C", "CB", "O", "CG", "CG1", "CG2", "OG", "OG1", "SG", "CD", "CD1", "CD2", "ND1",
    "ND2", "OD1", "OD2", "SD", "CE", "CE1", "CE2", "CE3", "NE", "NE1", "NE2", "OE1", "OE2", "CH2",
    "NH1", "NH2", "OH", "CZ", "CZ2", "CZ3", "NZ", "OXT",
)  # fmt: skip
#: Older (PDB v2, CHARMM) atom names mapped onto the current ones, for any residue.
ATOM_ALIASES: dict[str, str] = {"O1P": "OP1", "O2P": "OP2", "O3P": "OP3", "C5M": "C7", "OT1": "O", "OT2": "OXT"}
#: Residue-specific old names: (residue, current name) → the old name (PDB v2 Ile ``CD``).
RESIDUE_ATOM_ALIASES: dict[tuple[str, str], str] = {("ILE", "CD1"): "CD"}

#: Elements with their own token in learned tools (anything else shares one).
ELEMENTS: tuple[str, ...] = ("C", "N", "O", "S", "P", "SE", "H")

#: Protein main chain (the atoms map-model CC_mc is computed over).
PROTEIN_MAIN_CHAIN = frozenset({"N", "CA", "C", "O"})
#: Nucleic-acid sugar-phosphate backbone.
NUCLEIC_BACKBONE = frozenset({"P", "OP1", "OP2", "OP3", "O5'", "C5'", "C4'", "O4'", "C3'", "O3'", "C2'", "O2'", "C1'"})
#: Main-chain atoms of both polymer kinds, terminal OXT included.
MAIN_CHAIN = PROTEIN_MAIN_CHAIN | {"OXT"} | NUCLEIC_BACKBONE
#: Atoms that link consecutive residues of a chain (peptide bond / phosphodiester neighbourhood).
LINK_ATOMS = frozenset({"N", "CA", "C", "O", "P", "OP1", "OP2", "O5'", "C5'", "C4'", "C3'", "O3'"})

#: Longest C(i-1)–N(i) distance (Å) still counted as a peptide bond (no bond → chain break).
PEPTIDE_BOND_MAX_A = 2.0


def canonical_residue(name: str) -> str:
    """The standard parent of a residue name (``MSE`` → ``MET``), or the name itself."""
    return RESIDUE_ALIASES.get(name, name)


def canonical_atom(name: str) -> str:
    """The current name of an atom name (``O1P`` → ``OP1``), or the name itself."""
    return ATOM_ALIASES.get(name, name)


def main_chain_mask(atoms: AtomArrays) -> np.ndarray:
    """``(N,)`` bool: protein main chain (N, CA, C, O, OXT) or nucleic-acid sugar-phosphate atoms."""
    return atoms.is_polymer & np.isin(np.array(atoms.atom_names, dtype=object), list(MAIN_CHAIN))


def trace_residues(atoms: AtomArrays) -> tuple[int, int]:
    """(protein residues with a Cα but neither N nor C, protein residues)."""
    protein = np.flatnonzero(atoms.residue_class == PROTEIN)
    if protein.size == 0:
        return 0, 0
    names = np.array(atoms.atom_names, dtype=object)
    res = atoms.residue_index
    has = {n: np.zeros(len(atoms.residue_names), dtype=bool) for n in ("N", "CA", "C")}
    for n in has:
        has[n][res[names == n]] = True
    trace = has["CA"] & ~has["N"] & ~has["C"]
    return int(trace[protein].sum()), int(protein.size)
