"""Small nucleic-acid test models built from the CCP4 monomer library's ideal coordinates.

``python tests/data/nucleic/make_models.py`` (from the repository root, with the project's venv)
rewrites ``rna8.pdb``, ``dna8.pdb`` and ``protein_rna.pdb`` here.

Each nucleotide is the library's ideal monomer (``_chem_comp_atom`` x/y/z) without hydrogens.
Residue i+1 is placed so that residue i's O3' takes the place of its 5'-terminal OP3: its P is
built from residue i's C4', C3', O3' with the link's ideal O3'–P bond (1.607 Å) and C3'–O3'–P
angle and a torsion ε, its O5' with a torsion ζ, and the monomer's P, O5', OP3 are superposed
onto those points (Kabsch); OP3 is then dropped. ε and ζ are scanned on a 15°/30° grid for
the chain with no close contacts between residues, the most compact such chain winning. The
assembled chain is then regularised by :func:`cryostack.refine.refine` with the density weight
0 (restraints and clash term only), so the committed models are at library geometry and serve as the refinement tests' "truth".
"""

from __future__ import annotations

import itertools
import math
from functools import cache
from pathlib import Path

import gemmi
import numpy as np

HERE = Path(__file__).resolve().parent
RNA_SEQUENCE = ["G", "C", "A", "U", "G", "A", "C", "U"]
DNA_SEQUENCE = ["DG", "DC", "DA", "DT", "DG", "DA", "DC", "DT"]
#: Link geometry (monomer library, link ``p``): O3'–P bond (Å), C3'–O3'–P and O3'–P–O5' angles (°).
O3P_A, C3O3P_DEG, O3PO5_DEG = 1.607, 121.082, 100.661
#: Backbone torsions ε (C4'–C3'–O3'–P) and ζ (C3'–O3'–P–O5') scanned, degrees; α follows from
#: the monomer, whose OP3 position the previous O3' takes.
EPSILON_DEG = tuple(range(-180, -44, 15))
ZETA_DEG = tuple(range(-180, 180, 30))
#: Closest approach (Å) between residues counted as clash-free when choosing torsions.
CLEAR_A = 3.2
#: Atom pairs across a link that are within three bonds (O3'(i) side, P(i+1) side).
_LINK_NEAR = {
    ("O3'", "P"),
    ("O3'", "OP1"),
    ("O3'", "OP2"),
    ("O3'", "O5'"),
    ("O3'", "C5'"),
    ("C3'", "P"),
    ("C3'", "OP1"),
    ("C3'", "OP2"),
    ("C3'", "O5'"),
    ("C2'", "P"),
    ("C4'", "P"),
}


@cache
def monomer(name: str, with_op3: bool = False) -> tuple[tuple[str, str, tuple[float, float, float]], ...]:
    """(atom name, element, ideal x/y/z Å) of the library monomer ``name``: heavy atoms, and OP3
    only if ``with_op3`` (in a chain the link's O3' replaces it)."""
    from cryostack.chem.monlib import monomer_library_dir

    path = monomer_library_dir() / name[0].lower() / f"{name}.cif"
    cc = gemmi.make_chemcomp_from_block(gemmi.cif.read(str(path))[f"comp_{name}"])
    return tuple(
        (a.id, a.el.name, tuple(a.xyz.tolist()))
        for a in cc.atoms
        if not a.is_hydrogen() and (with_op3 or a.id != "OP3")
    )


def _place(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, bond_A: float, angle_deg: float, torsion_deg: float
) -> np.ndarray:
    """The atom d with |cd| = bond_A, angle b-c-d and dihedral a-b-c-d (internal to Cartesian)."""
    bc = (c - b) / np.linalg.norm(c - b)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    th, ph = math.radians(angle_deg), math.radians(torsion_deg)
    d_local = np.array(
        [-bond_A * math.cos(th), bond_A * math.sin(th) * math.cos(ph), bond_A * math.sin(th) * math.sin(ph)]
    )
    return c + d_local[0] * bc + d_local[1] * m + d_local[2] * n


def _kabsch(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R and translation t with R @ src + t ≈ dst (least squares)."""
    cs, cd = src.mean(0), dst.mean(0)
    u, _, vt = np.linalg.svd((src - cs).T @ (dst - cd))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return r, cd - r @ cs


def _angle_deg(a, b, c) -> float:
    u, v = a - b, c - b
    return math.degrees(math.acos(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v)))


def assemble(sequence: list[str], epsilon_deg: float, zeta_deg: float) -> list[list[tuple[str, str, np.ndarray]]]:
    """Residues (lists of (name, element, xyz Å)) joined by O3'–P links with torsions ε and ζ."""
    residues = [[(n, e, np.array(x)) for n, e, x in monomer(sequence[0])]]
    for name in sequence[1:]:
        prev = {n: x for n, _, x in residues[-1]}
        mine = {n: np.array(x) for n, _, x in monomer(name, with_op3=True)}
        # The previous O3' takes the new monomer's OP3 place: P, O5' and the OP3 direction are
        # superposed, with the monomer's own OP3–P–O5' angle so the fit is exact.
        po5 = np.linalg.norm(mine["O5'"] - mine["P"])
        op3_p_o5 = _angle_deg(mine["OP3"], mine["P"], mine["O5'"])
        p = _place(prev["C4'"], prev["C3'"], prev["O3'"], O3P_A, C3O3P_DEG, epsilon_deg)
        o5 = _place(prev["C3'"], prev["O3'"], p, po5, op3_p_o5, zeta_deg)
        op3 = p + (prev["O3'"] - p) * np.linalg.norm(mine["OP3"] - mine["P"]) / O3P_A
        r, t = _kabsch(np.stack([mine["P"], mine["O5'"], mine["OP3"]]), np.stack([p, o5, op3]))
        residues.append([(n, e, r @ np.array(x) + t) for n, e, x in monomer(name)])
    return residues


def closest_approach_A(residues) -> float:
    """Smallest distance (Å) between atoms of different residues, leaving out pairs within three
    bonds across a link."""
    best = np.inf
    for i, j in itertools.combinations(range(len(residues)), 2):
        a = np.stack([x for _, _, x in residues[i]])
        b = np.stack([x for _, _, x in residues[j]])
        d = np.linalg.norm(a[:, None] - b[None], axis=-1)
        if j == i + 1:
            for k, (na, _, _) in enumerate(residues[i]):
                for m, (nb, _, _) in enumerate(residues[j]):
                    if (na, nb) in _LINK_NEAR:
                        d[k, m] = np.inf
        best = min(best, float(d.min()))
    return best


def best_chain(sequence: list[str]):
    """The assembled chain with the largest closest approach (up to :data:`CLEAR_A`); among
    clash-free ones the most compact (smallest radius), so the bases stay near each other."""
    best, best_key = None, None
    for eps, zeta in itertools.product(EPSILON_DEG, ZETA_DEG):
        res = assemble(sequence, eps, zeta)
        xyz = np.concatenate([np.stack([x for _, _, x in r]) for r in res])
        radius = float(np.sqrt(((xyz - xyz.mean(0)) ** 2).sum(1).mean()))
        key = (min(closest_approach_A(res), CLEAR_A), -radius)
        if best_key is None or key > best_key:
            best, best_key = res, key
    return best


def to_structure(chains: dict[str, list[tuple[str, list]]]) -> gemmi.Structure:
    """A gemmi Structure from ``{chain id: [(residue name, atoms), ...]}`` (numbered from 1)."""
    st = gemmi.Structure()
    st.cell = gemmi.UnitCell()
    model = gemmi.Model("1")
    for cid, residues in chains.items():
        chain = gemmi.Chain(cid)
        for k, (rname, atoms) in enumerate(residues, start=1):
            res = gemmi.Residue()
            res.name = rname
            res.seqid = gemmi.SeqId(k, " ")
            res.entity_type = gemmi.EntityType.Polymer
            for aname, el, xyz in atoms:
                atom = gemmi.Atom()
                atom.name = aname
                atom.element = gemmi.Element(el)
                atom.pos = gemmi.Position(*xyz)
                atom.occ = 1.0
                atom.b_iso = 20.0
                res.add_atom(atom)
            chain.add_residue(res)
        model.add_chain(chain)
    st.add_model(model)
    st.setup_entities()
    return st


def regularise(structure, steps: int = 300):
    """``structure`` after restraint-only refinement (density weight 0) to library geometry."""
    from cryostack.density.simulate import grid_around_atoms, simulate_model_map
    from cryostack.io.maps import DensityMap
    from cryostack.refine import LossWeights, RefineConfig, refine

    # The objective needs a map to set up its box; with density weight 0 it is never compared.
    grid = grid_around_atoms(structure.atoms().coords, 1.0, margin_A=6.0)
    data = simulate_model_map(structure, grid, 4.0, use_b_factors=False)
    dmap = DensityMap(data=data.astype(np.float32), voxel_size=grid.voxel_size, origin=grid.origin)
    weights = LossWeights(density=0.0)
    config = RefineConfig(
        max_recycles=6, steps_per_recycle=steps // 6, rigid_steps=0, lr=0.02, patience=6, min_improvement=0.0
    )
    out, _ = refine(structure, dmap, 4.0, config, weights)
    return out


def protein_piece(n_residues: int = 12):
    """The first ``n_residues`` of the bundled spike NTD model's first chain (heavy atoms)."""
    from cryostack.examples import SPIKE_NTD_MODEL
    from cryostack.io.models import read_structure

    st = read_structure(SPIKE_NTD_MODEL).gemmi.clone()
    st.remove_hydrogens()
    for m in range(len(st) - 1, 0, -1):
        del st[m]
    chain = st[0][0]
    for i in reversed(range(n_residues, len(chain))):
        del chain[i]
    for ch in list(st[0])[1:]:
        st[0].remove_chain(ch.name)
    return st


def build_all() -> dict[str, gemmi.Structure]:
    from cryostack.io.models import Structure

    rna = best_chain(RNA_SEQUENCE)
    dna = best_chain(DNA_SEQUENCE)
    out = {}
    out["rna8.pdb"] = regularise(Structure(to_structure({"R": list(zip(RNA_SEQUENCE, rna))}))).gemmi
    out["dna8.pdb"] = regularise(Structure(to_structure({"D": list(zip(DNA_SEQUENCE, dna))}))).gemmi

    # Protein piece plus the RNA chain, the RNA moved to sit beside the protein (not touching it).
    prot = protein_piece()
    pxyz = np.array([a.pos.tolist() for r in prot[0][0] for a in r])
    rxyz = np.concatenate([np.stack([x for _, _, x in r]) for r in rna])
    axis = np.array([1.0, 0.0, 0.0])
    gap = (pxyz @ axis).max() - (rxyz @ axis).min() + 5.0
    shift = pxyz.mean(0) - rxyz.mean(0)
    shift = shift - (shift @ axis) * axis + gap * axis
    moved = [[(n, e, x + shift) for n, e, x in r] for r in rna]
    mixed = to_structure({"R": list(zip(RNA_SEQUENCE, moved))})
    chain_a = prot[0][0].clone()
    mixed[0].add_chain(chain_a, pos=0)
    mixed.setup_entities()
    out["protein_rna.pdb"] = regularise(Structure(mixed)).gemmi
    return out


def main() -> None:
    for name, st in build_all().items():
        st.remove_ligands_and_waters()
        st.setup_entities()
        path = HERE / name
        st.write_pdb(str(path), gemmi.PdbWriteOptions(minimal=True))
        print(f"wrote {path} ({st[0].count_atom_sites()} atoms)")


if __name__ == "__main__":
    main()
