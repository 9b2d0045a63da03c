#!/usr/bin/env python3
"""Rebuild the Ramachandran / Cβ test fixtures in this folder (see README.md).

Run with the system Python that has ProMod3 (Debian ``python3-promod3`` + ``promod3-data``)::

    cd / && /usr/bin/python3 /path/to/tests/data/validate_rama/make_fixtures.py

It needs no third-party package besides ProMod3 and numpy; the nucleotides come from PDB entry
1ZBL as shipped in cctbx's test data (``iotbx/pdb/remediation/tst/protein-dna-test.pdb``).
"""

from __future__ import annotations

import glob
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DB_PATH = "/usr/share/promod3/loop_data/structure_db.dat"
#: StructureDB chains exported (PDB id_chain → chain ID in the fixture file).
CHAINS = {"3A0E_A": "A", "5L39_D": "D", "5MJ3_B": "B"}
ONE_TO_THREE = dict(
    zip(
        "ACDEFGHIKLMNPQRSTVWY",
        "ALA CYS ASP GLU PHE GLY HIS ILE LYS LEU MET ASN PRO GLN ARG SER THR VAL TRP TYR".split(),
    )
)


def atom_line(
    serial: int, name: str, resname: str, chain: str, resnum: int, xyz, element: str, het: bool = False
) -> str:
    """One PDB ATOM/HETATM record (occupancy 1, B 20)."""
    record = "HETATM" if het else "ATOM  "
    padded = f" {name:<3}" if len(name) < 4 else name
    return (
        f"{record}{serial:5d} {padded:<4} {resname:>3} {chain}{resnum:4d}    "
        f"{xyz[0]:8.3f}{xyz[1]:8.3f}{xyz[2]:8.3f}  1.00 20.00          {element:>2}"
    )


def export_chains() -> dict[str, list[tuple[str, int, dict[str, np.ndarray]]]]:
    """Backbones (N, CA, C, O, CB; no CB for Gly) of :data:`CHAINS` in their PDB frames."""
    from promod3 import loop

    db = loop.StructureDB.Load(DB_PATH)
    wanted = {}
    for i in range(db.GetNumCoords()):
        info = db.GetCoordInfo(i)
        key = f"{info.id}_{info.chain_name}"
        if key in CHAINS:
            wanted[key] = i
    out = {}
    for key, chain_id in CHAINS.items():
        i = wanted[key]
        info = db.GetCoordInfo(i)
        seq = db.GetSequence(loop.FragmentInfo(i, 0, info.size))
        bb = db.GetBackboneList(i, seq)
        shift = np.array([info.shift[0], info.shift[1], info.shift[2]])
        residues = []
        for r, aa in enumerate(seq):
            atoms = {}
            for name, get in (("N", bb.GetN), ("CA", bb.GetCA), ("C", bb.GetC), ("O", bb.GetO), ("CB", bb.GetCB)):
                if name == "CB" and aa == "G":
                    continue
                p = get(r)
                atoms[name] = np.array([p[0], p[1], p[2]]) - shift
            residues.append((ONE_TO_THREE[aa], info.start_resnum + r, atoms))
        out[chain_id] = residues
    return out


def write_backbones(chains) -> None:
    lines = ["REMARK   ProMod3 StructureDB backbones of PDB 3A0E chain A, 5MJ3 chain B, 5L39 chain D"]
    serial = 1
    for chain_id, residues in sorted(chains.items()):
        for resname, num, atoms in residues:
            for name, xyz in atoms.items():
                lines.append(atom_line(serial, name, resname, chain_id, num, xyz, name[0]))
                serial += 1
        lines.append("TER")
    lines.append("END")
    (HERE / "promod3_backbones.pdb").write_text("\n".join(lines) + "\n")


def write_mixed(chains) -> None:
    """Protein chain B residues 1–60 of 5MJ3 with residue 30 removed (a gap), a sulfate and two
    waters in chain B, and six nucleotides (RNA chain C, DNA chain D) of PDB 1ZBL."""
    lines = ["REMARK   chain break (residue 30 deleted), ligands, waters and nucleic acids"]
    serial = 1
    residues = chains["B"][:60]
    for index, (resname, num, atoms) in enumerate(residues):
        if index == 29:
            continue
        for name, xyz in atoms.items():
            lines.append(atom_line(serial, name, resname, "B", num, xyz, name[0]))
            serial += 1
    last_n = residues[-1][2]["N"]
    ligand = {
        "S": (0.0, 0.0, 0.0),
        "O1": (1.45, 0, 0),
        "O2": (-0.48, 1.37, 0),
        "O3": (-0.48, -0.68, 1.19),
        "O4": (-0.48, -0.68, -1.19),
    }
    for name, offset in ligand.items():
        lines.append(atom_line(serial, name, "SO4", "B", 201, last_n + 6.0 + np.array(offset), name[0], het=True))
        serial += 1
    for k in range(2):
        lines.append(
            atom_line(serial, "O", "HOH", "B", 301 + k, last_n + np.array([0.0, 8.0 + 3 * k, 0.0]), "O", het=True)
        )
        serial += 1
    lines.append("TER")
    source = glob.glob(
        str(HERE.parents[2] / ".venv/lib/python3*/site-packages/iotbx/pdb/remediation/tst/protein-dna-test.pdb")
    )
    for line in Path(source[0]).read_text().splitlines():
        if line.startswith(("ATOM", "HETATM")) and line[21] in "CD" and line[76:78].strip() != "H":
            lines.append(line[:6] + f"{serial:5d}" + line[11:66] + "          " + line[76:78])
            serial += 1
    lines.append("END")
    (HERE / "mixed_break_ligand_na.pdb").write_text("\n".join(lines) + "\n")


def main() -> int:
    chains = export_chains()
    write_backbones(chains)
    write_mixed(chains)
    return 0


if __name__ == "__main__":
    sys.exit(main())
