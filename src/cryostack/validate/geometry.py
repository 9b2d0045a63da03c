"""Covalent geometry against the CCP4 monomer library, peptide ω, chirality and clashes.

Restraints come from gemmi's topology built with a complete copy of the CCP4 monomer library
(the one shipped in the ``coot-headless-api`` wheel: Debian's copy lacks ``mon_lib_list.cif``
and has broken entries). Residues without a dictionary are reported and left out of the
geometry scores, never silently scored against nothing.

Clashscore here is **heavy-atom based** unless the model carries hydrogens: without riding
hydrogens it counts serious overlaps (≥ 0.4 Å) between non-hydrogen atoms, which finds fewer
clashes than MolProbity's all-atom Probe score. The output says which was used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import gemmi
import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree

from cryostack.chem.contacts import CLASH_OVERLAP_A, HBOND_ELEMENTS, HBOND_MIN_DISTANCE_A, VDW_RADII_A
from cryostack.chem.monlib import atom_key, topology
from cryostack.io.models import Structure

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
    clashscore: float | None = None
    clashes: list[dict] = field(default_factory=list)
    clashscore_method: str = "heavy-atom"
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
            "clashes": self.clashes,
            "residues_without_dictionary": self.residues_without_dictionary,
        }


def _atom_ref(atom: gemmi.Atom, res: gemmi.Residue, chain: str) -> str:
    return f"{chain}/{res.name}{res.seqid.num}{res.seqid.icode.strip()}/{atom.name}"


def geometry(structure: Structure) -> GeometryResult:
    """Bond/angle RMSD and outliers, chirality, peptide ω and clashscore of the first model."""
    st, topo, missing = topology(structure)
    # gemmi returns fresh Python wrappers for topology atoms, so atoms are matched by key.
    where = {atom_key(atom): (res, chain.name) for chain in st[0] for res in chain for atom in res}

    def ref(atom: gemmi.Atom) -> tuple[str, dict]:
        res, ch = where[atom_key(atom)]
        return _atom_ref(atom, res, ch), _res_ref(res, ch)

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
    clashscore, clashes, method = _clashes(st, topo)
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
        clashscore=clashscore,
        clashes=clashes,
        clashscore_method=method,
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


def _clashes(st: gemmi.Structure, topo: gemmi.Topo) -> tuple[float | None, list[dict], str]:
    """Serious overlaps (≥ 0.4 Å) between atoms more than three bonds apart, per 1,000 atoms."""
    atoms, info = [], []
    for chain in st[0]:
        for res in chain:
            for atom in res:
                if atom.altloc not in ("\0", "A"):
                    continue
                atoms.append(atom)
                info.append((chain.name, res))
    if not atoms:
        return None, [], "none"
    has_h = any(a.is_hydrogen() for a in atoms)
    method = "all-atom (model hydrogens)" if has_h else "heavy-atom (no hydrogens in model)"
    index = {atom_key(a): i for i, a in enumerate(atoms)}
    xyz = np.array([a.pos.tolist() for a in atoms])
    elem = [a.element.name.upper() for a in atoms]
    elem_arr = np.array(elem)
    radii = np.array([VDW_RADII_A.get(e, 1.8) for e in elem])

    # Bond graph from the topology; pairs within three bonds are excluded.
    bi, bj = [], []
    for b in topo.bonds:
        i, j = index.get(atom_key(b.atoms[0])), index.get(atom_key(b.atoms[1]))
        if i is not None and j is not None:
            bi.append(i)
            bj.append(j)

    tree = cKDTree(xyz)
    pairs = tree.query_pairs(r=2 * radii.max() - CLASH_OVERLAP_A, output_type="ndarray")
    p1, p2 = pairs[:, 0], pairs[:, 1]
    d = np.linalg.norm(xyz[p1] - xyz[p2], axis=1)
    overlap = radii[p1] + radii[p2] - d
    polar = np.isin(elem_arr, list(HBOND_ELEMENTS))
    hbond = polar[p1] & polar[p2] & (d >= HBOND_MIN_DISTANCE_A)  # a plausible hydrogen bond, not a clash
    keep = (overlap >= CLASH_OVERLAP_A) & ~hbond
    keep[keep] = ~_within_bonds(bi, bj, len(atoms), p1[keep], p2[keep], 3)
    clashes: list[dict[str, Any]] = []
    for i, j, dist, ov in zip(p1[keep], p2[keep], d[keep], overlap[keep]):
        ci, ri = info[i]
        cj, rj = info[j]
        clashes.append(
            {
                "atom1": _atom_ref(atoms[i], ri, ci),
                "atom2": _atom_ref(atoms[j], rj, cj),
                "distance_A": round(float(dist), 2),
                "overlap_A": round(float(ov), 2),
            }
        )
    clashes.sort(key=lambda c: -c["overlap_A"])
    return 1000.0 * len(clashes) / len(atoms), clashes, method


def _within_bonds(
    bond_i: list[int], bond_j: list[int], n_atoms: int, i: np.ndarray, j: np.ndarray, depth: int
) -> np.ndarray:
    """Whether atoms ``i[k]`` and ``j[k]`` are joined by a path of at most ``depth`` bonds."""
    if len(i) == 0:  # scipy returns a sparse matrix, not an array, for an empty selection
        return np.zeros(0, dtype=bool)
    adj = sparse.coo_matrix(
        (np.ones(2 * len(bond_i)), (bond_i + bond_j, bond_j + bond_i)), shape=(n_atoms, n_atoms)
    ).tocsr()
    adj.data[:] = 1.0
    reach, walk = adj.copy(), adj
    for _ in range(depth - 1):
        walk = walk @ adj
        walk.data[:] = 1.0  # only connectivity matters; keeps the counts from growing
        reach = reach + walk
    return np.asarray(reach[i, j]).ravel() > 0
