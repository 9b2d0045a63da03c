"""Clashscores: all-atom with riding hydrogens (what MolProbity reports) and heavy-atom only.

MolProbity's clashscore is the number of serious overlaps (≥ 0.4 Å of van der Waals radii) per
1,000 atoms of a model that carries hydrogens: Reduce adds them, Probe rolls dots over the atoms.
Here gemmi re-places every hydrogen from the CCP4 monomer-library dictionaries that the geometry
scores use, and contacts are judged with Probe's documented rules, simplified:

* **Hydrogen positions**: electron-cloud X–H distances (the dictionaries' ``value_dist``; C–H
  0.97 Å, N–H 0.86 Å), because that is MolProbity's default for X-ray and cryo-EM models (its
  code in cctbx, ``mmtbx.clashscore2``, has ``nuclear=False`` and says "Using electron cloud
  x-H distances"); nuclear distances are its option for neutron models, and C–H 1.09 Å would
  put every H 0.1 Å further out and count more clashes than MolProbity reports. The radii go
  with that choice: polar H 1.05 Å, other H 1.10 Å.
* **Hydrogens already in the model are replaced**, as MolProbity does by default, so a model
  refined with nuclear H or odd H names is scored like one without H. Waters get none.
* **Rotatable hydrogens** (OH, SH, NH3+) are turned about their bond towards acceptors and away
  from bumps, a small stand-in for Reduce's optimisation; every other H rides where the
  dictionary puts it.
* **Bonded pairs** never clash within 3 bonds, or within 4 bonds when one atom is a hydrogen.
* **Hydrogen bonds**: a polar H and an acceptor may overlap by 0.6 Å (0.8 Å when both are
  charged); only an overlap 0.4 Å beyond that is a serious clash. A water, which has no H, is
  treated the same with any N or O (Probe gives it a phantom H pointing at its partner).
* **Surface dots**: Probe scores dots on each atom's surface. A dot inside an atom bonded to its
  own atom (usually its own H) is hidden, and a dot inside several atoms belongs to the deepest.
  So a C···O overlap behind the carbon's hydrogen is not a second clash beside the H···O one.
  Each candidate pair is checked on ~1,000 dots per atom that way, and its overlap is the
  deepest dot's.
* **Not done** (Reduce does these, so the score can be a little higher than MolProbity's): no
  Asn/Gln/His flips and no choice of His tautomer (both ring N carry H, as in the dictionary).

Residues without a dictionary get no hydrogens; their heavy atoms are still scored, bonded to
whatever lies within covalent distance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gemmi
import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree

from cryostack.chem.contacts import (
    AROMATIC_C_RADIUS_A,
    CARBONYL_C_RADIUS_A,
    CLASH_OVERLAP_A,
    H_NONPOLAR_RADIUS_A,
    H_POLAR_RADIUS_A,
    HBOND_CHARGED_OVERLAP_A,
    HBOND_ELEMENTS,
    HBOND_MIN_DISTANCE_A,
    HBOND_OVERLAP_A,
    VDW_RADII_A,
    bond_reach,
)
from cryostack.chem.hydrogens import add_riding_hydrogens
from cryostack.chem.monlib import atom_key, monomer_library, topology
from cryostack.io.models import Structure

#: Pairs joined by at most this many bonds never clash; one more when either atom is a hydrogen.
EXCLUDED_BONDS = 3
EXCLUDED_BONDS_H = 4
#: Radius (Å) of an element the radius table lacks (the all-atom score gives metals ionic radii).
DEFAULT_RADIUS_A = 1.8
#: Extra length (Å) over the covalent radii that still joins two atoms of a residue without dictionary.
COVALENT_TOLERANCE_A = 0.4
#: Monomer-library energy types of charged donors (Lys NZ and the N-terminus, Arg) and acceptors
#: (carboxylate, phosphate): a salt bridge gets the larger hydrogen-bond allowance.
CHARGED_DONOR_TYPES = frozenset({"NT3", "NT4", "NC1", "NC2", "NC3"})
CHARGED_ACCEPTOR_TYPES = frozenset({"OC", "OC2", "OP"})
#: Rotatable-hydrogen search step (degrees).
ROTOR_STEP_DEG = 10.0

ALL_ATOM_METHOD = "all-atom (riding H, gemmi)"
HEAVY_ATOM_METHOD = "heavy-atom"


@dataclass
class ClashResult:
    """Serious overlaps (``clashes``, worst first) and their number per 1,000 atoms (``clashscore``)."""

    clashscore: float | None
    clashes: list[dict] = field(default_factory=list)
    n_atoms: int = 0  # atoms scored, hydrogens included
    n_hydrogens: int = 0
    method: str = "none"


def atom_ref(atom: gemmi.Atom, res: gemmi.Residue, chain: str) -> str:
    return f"{chain}/{res.name}{res.seqid.num}{res.seqid.icode.strip()}/{atom.name}"


def heavy_atom_clashes(st: gemmi.Structure, topo: gemmi.Topo) -> ClashResult:
    """Serious overlaps between non-hydrogen atoms more than three bonds apart, per 1,000 of them.

    ``st``/``topo`` as :func:`cryostack.chem.monlib.topology` returns them. Any N/O pair at least
    2.5 Å apart counts as a possible hydrogen bond, not a clash. Lower than MolProbity's
    all-atom value: most clashes involve a hydrogen.
    """
    atoms, info = [], []
    for chain in st[0]:
        for res in chain:
            for atom in res:
                if atom.altloc not in ("\0", "A") or atom.is_hydrogen():
                    continue
                atoms.append(atom)
                info.append((chain.name, res))
    if not atoms:
        return ClashResult(None, method=HEAVY_ATOM_METHOD)
    index = {atom_key(a): i for i, a in enumerate(atoms)}
    xyz = np.array([a.pos.tolist() for a in atoms])
    elem = np.array([a.element.name.upper() for a in atoms])
    radii = np.array([VDW_RADII_A.get(e, DEFAULT_RADIUS_A) for e in elem])
    bi, bj = _topology_bonds(topo, index)

    pairs = cKDTree(xyz).query_pairs(r=2 * radii.max() - CLASH_OVERLAP_A, output_type="ndarray")
    p1, p2 = pairs[:, 0], pairs[:, 1]
    d = np.linalg.norm(xyz[p1] - xyz[p2], axis=1)
    overlap = radii[p1] + radii[p2] - d
    polar = np.isin(elem, list(HBOND_ELEMENTS))
    hbond = polar[p1] & polar[p2] & (d >= HBOND_MIN_DISTANCE_A)  # a plausible hydrogen bond, not a clash
    keep = (overlap >= CLASH_OVERLAP_A) & ~hbond
    if keep.any():
        reach = bond_reach(_adjacency(bi, bj, len(atoms)), EXCLUDED_BONDS)
        keep[keep] = ~(np.asarray(reach[p1[keep], p2[keep]]).ravel() > 0)
    clashes = _records(atoms, info, p1[keep], p2[keep], d[keep], overlap[keep])
    return ClashResult(1000.0 * len(clashes) / len(atoms), clashes, len(atoms), 0, HEAVY_ATOM_METHOD)


def all_atom_clashes(structure: Structure, *, keep_hydrogens: bool = False) -> ClashResult:
    """MolProbity-style clashscore of the first model, with riding hydrogens added.

    Residues without a dictionary are scored by their heavy atoms. ``keep_hydrogens`` scores the
    model's own hydrogens instead (those its dictionary does not name are left out, rotatable
    ones are not turned), like MolProbity's ``keep_hydrogens=True``. Raises ``InputError`` where
    gemmi cannot place the hydrogens.
    """
    if keep_hydrogens:
        h_st, topo, missing = topology(structure, automatic_links=True)
    else:
        h_st, topo, missing = add_riding_hydrogens(structure)
    monlib = monomer_library(tuple(sorted(structure.model.get_all_residue_names())))
    atoms, info, types, water, n_placed = _gather(structure, topo, missing)
    if not atoms:
        return ClashResult(None, method=ALL_ATOM_METHOD)

    n = len(atoms)
    xyz = np.array([a.pos.tolist() for a in atoms])
    elem = np.array([a.element.name.upper() for a in atoms])
    is_h = np.array([a.is_hydrogen() for a in atoms])
    ener = monlib.ener_lib.atoms
    bi, bj = _topology_bonds(topo, {atom_key(a): i for i, a in enumerate(atoms[:n_placed])})
    if n > n_placed:
        # Residues without a dictionary: bonds from covalent radii, within them and to their neighbours.
        cov = np.array([a.element.covalent_r for a in atoms])
        close = cKDTree(xyz).query_pairs(r=2 * cov.max() + COVALENT_TOLERANCE_A, output_type="ndarray")
        c1, c2 = close[:, 0], close[:, 1]
        join = ((c1 >= n_placed) | (c2 >= n_placed)) & (
            np.linalg.norm(xyz[c1] - xyz[c2], axis=1) <= cov[c1] + cov[c2] + COVALENT_TOLERANCE_A
        )
        bi, bj = bi + c1[join].tolist(), bj + c2[join].tolist()
    adj = _adjacency(bi, bj, n)
    radii = _radii(atoms, types, elem, is_h, adj, ener)
    roles = _Roles(elem, types, is_h, np.array(water), adj, ener)
    reach3, reach4 = bond_reach(adj, EXCLUDED_BONDS), bond_reach(adj, EXCLUDED_BONDS_H)
    if not keep_hydrogens:
        _turn_rotatable_hydrogens(xyz, radii, elem, is_h, adj, roles, reach4)

    tree = cKDTree(xyz)
    pairs = tree.query_pairs(r=2 * radii.max() - CLASH_OVERLAP_A, output_type="ndarray")
    p1, p2 = pairs[:, 0], pairs[:, 1]
    d = np.linalg.norm(xyz[p1] - xyz[p2], axis=1)
    overlap = radii[p1] + radii[p2] - d
    cutoff = roles.cutoffs(p1, p2)
    keep = overlap >= cutoff
    if keep.any():
        i, j = p1[keep], p2[keep]
        near3 = np.asarray(reach3[i, j]).ravel() > 0
        near4 = np.asarray(reach4[i, j]).ravel() > 0
        keep[keep] = ~(near3 | ((is_h[i] | is_h[j]) & near4))
    surface = _Surface(xyz, radii, tree, reach3, reach4, is_h)
    for k in np.flatnonzero(keep):
        depth = max(surface.depth(p1[k], p2[k], cutoff[k]), surface.depth(p2[k], p1[k], cutoff[k]))
        keep[k] = depth >= cutoff[k]
        overlap[k] = depth
    clashes = _records(atoms, info, p1[keep], p2[keep], d[keep], overlap[keep])
    return ClashResult(1000.0 * len(clashes) / n, clashes, n, int(is_h.sum()), ALL_ATOM_METHOD)


def _gather(structure: Structure, topo: gemmi.Topo, missing: list[str]):
    """Atoms scored (first altloc), ``(chain, residue)``, energy types, water flags; dictionary-less last."""
    atoms: list[gemmi.Atom] = []
    info: list[tuple[str, gemmi.Residue]] = []
    types: list[str] = []  # monomer-library energy type; "" where there is no dictionary
    water: list[bool] = []
    for c in range(len(topo.chain_infos)):  # indexable, but not iterable in gemmi's stubs
        chain_info = topo.chain_infos[c]
        chain_name = chain_info.chain_ref.name
        for res_info in chain_info.res_infos:
            res = res_info.res
            cc = res_info.chemcomps[0].cc if len(res_info.chemcomps) else None
            for atom in res:
                if atom.altloc not in ("\0", "A"):
                    continue
                cc_atom = cc.find_atom(atom.name) if cc is not None else None
                atoms.append(atom)
                info.append((chain_name, res))
                types.append(cc_atom.chem_type if cc_atom is not None else "")
                water.append(res.is_water())
    n_placed = len(atoms)
    for chain in structure.model:
        for res in chain:
            if res.name not in missing:
                continue
            for atom in res:
                if atom.altloc in ("\0", "A") and not atom.is_hydrogen():
                    atoms.append(atom)
                    info.append((chain.name, res))
                    types.append("")
                    water.append(False)
    return atoms, info, types, water, n_placed


def _topology_bonds(topo: gemmi.Topo, index: dict) -> tuple[list[int], list[int]]:
    bi, bj = [], []
    for b in topo.bonds:
        i, j = index.get(atom_key(b.atoms[0])), index.get(atom_key(b.atoms[1]))
        if i is not None and j is not None:
            bi.append(i)
            bj.append(j)
    return bi, bj


def _element_radius(atom: gemmi.Atom, chem_type: str, ener: dict) -> float:
    e = atom.element.name.upper()
    if e in VDW_RADII_A:
        return VDW_RADII_A[e]
    if atom.element.is_metal:
        # Probe uses ionic radii for metals: a van der Waals radius would make every
        # coordinating oxygen a clash.
        lib = ener.get(chem_type)
        if lib is not None and np.isfinite(lib.ion_radius):
            return float(lib.ion_radius)
        return float(atom.element.covalent_r)
    return DEFAULT_RADIUS_A


def _radii(atoms, types, elem, is_h, adj: sparse.csr_matrix, ener) -> np.ndarray:
    """Probe's radii from element, bonded neighbours (``adj``) and monomer-library energy type."""
    types_arr = np.array(types)
    on_polar = _bonded_to(adj, np.isin(elem, ["N", "O", "S"]) & ~is_h)
    degree = np.diff(adj.indptr)
    on_oxygen = _bonded_to(adj, elem == "O")
    carbon = elem == "C"
    aromatic = carbon & np.char.startswith(types_arr, "CR")  # CR5, CR6, CR15, CR16, CR56, ...: ring carbons
    carbonyl = carbon & ~aromatic & on_oxygen & (degree <= 3)
    radii = np.zeros(len(atoms))
    for k in np.flatnonzero(~is_h & ~carbon):
        radii[k] = _element_radius(atoms[k], types[k], ener)
    radii[carbon] = VDW_RADII_A["C"]
    radii[aromatic] = AROMATIC_C_RADIUS_A
    radii[carbonyl] = CARBONYL_C_RADIUS_A
    radii[is_h] = np.where(on_polar[is_h], H_POLAR_RADIUS_A, H_NONPOLAR_RADIUS_A)
    return radii


def _bonded_to(adj: sparse.csr_matrix, mask: np.ndarray) -> np.ndarray:
    """Whether each atom has a bonded neighbour in ``mask``."""
    return np.asarray(adj @ mask.astype(float)).ravel() > 0


class _Roles:
    """Hydrogen-bond roles per atom, from the monomer library's ``hb_type`` of each energy type.

    Acceptors: ``hb_type`` A or B, any N/O without a dictionary, and aromatic ring carbons (an
    OH···π contact is a weak hydrogen bond, as Probe counts it). Donor H: an H on an atom of
    ``hb_type`` D or B.
    """

    def __init__(self, elem, types, is_h, is_water, adj: sparse.csr_matrix, ener):
        types_arr = np.array(types)
        hb_type = np.array([ener[t].hb_type if t in ener else "" for t in types])
        self.acceptor = (
            np.isin(hb_type, ["A", "B"])
            | ((types_arr == "") & np.isin(elem, ["N", "O"]))
            | ((elem == "C") & np.char.startswith(types_arr, "CR"))
        ) & ~is_h
        donor = np.isin(hb_type, ["D", "B"]) & ~is_h
        self.donor_h = is_h & _bonded_to(adj, donor)
        self.charged_h = is_h & _bonded_to(adj, donor & np.isin(types_arr, list(CHARGED_DONOR_TYPES)))
        # Both oxygens of a carboxylate or phosphate are charged, whichever one the dictionary types OC.
        centre = _bonded_to(adj, np.isin(types_arr, list(CHARGED_ACCEPTOR_TYPES)))
        self.charged_acceptor = (elem == "O") & _bonded_to(adj, centre)
        self.polar = np.isin(elem, list(HBOND_ELEMENTS)) & ~is_h
        self.water = is_water

    def hbond_allowance(self, h: np.ndarray, other: np.ndarray) -> np.ndarray:
        """Overlap (Å) allowed as a hydrogen bond between H ``h`` and atom ``other`` (0 if none)."""
        hb = self.donor_h[h] & self.acceptor[other]
        salt = hb & self.charged_h[h] & self.charged_acceptor[other]
        return np.where(salt, HBOND_CHARGED_OVERLAP_A, np.where(hb, HBOND_OVERLAP_A, 0.0))

    def cutoffs(self, p1: np.ndarray, p2: np.ndarray) -> np.ndarray:
        """Overlap (Å) at which each pair is a serious clash: 0.4 Å beyond any hydrogen-bond allowance."""
        allowance = np.maximum(self.hbond_allowance(p1, p2), self.hbond_allowance(p2, p1))
        phantom = (self.water[p1] & self.polar[p2]) | (self.water[p2] & self.polar[p1])
        allowance = np.where(phantom, np.maximum(allowance, HBOND_OVERLAP_A), allowance)
        return CLASH_OVERLAP_A + allowance


def _turn_rotatable_hydrogens(xyz, radii, elem, is_h, adj: sparse.csr_matrix, roles: _Roles, reach4) -> None:
    """Turn each OH, SH and NH3+ group about its bond to the best-scoring angle (``xyz`` in place).

    A stand-in for Reduce's optimisation: the dictionary's torsion often points a hydroxyl H into
    a neighbour. Score: hydrogen bonds (overlap with acceptors up to the allowance) count for, any
    other overlap counts ten times against. Groups next to another group are turned twice, so
    that each sees where the other ended up.
    """
    rotors = []
    for x in np.flatnonzero(~is_h & np.isin(elem, ["O", "S", "N"])):
        nb = _row(adj, x)
        hs, heavy = nb[is_h[nb]], nb[~is_h[nb]]
        # OH/SH with one H, or sp3 N with three; an NH2 or NH is planar and stays.
        if len(heavy) == 1 and len(hs) == (1 if elem[x] in ("O", "S") else 3):
            rotors.append((heavy[0], x, hs))
    if not rotors:
        return
    step = np.deg2rad(ROTOR_STEP_DEG)
    # Every H of a group lies within 1.5 Å of its parent atom, so one search around the parent does.
    search_A = 1.5 + H_POLAR_RADIUS_A + float(radii.max())
    bonded = np.zeros(len(xyz), bool)
    rotor_h = np.zeros(len(xyz), bool)
    for _, _, hs in rotors:
        rotor_h[hs] = True
    tree = cKDTree(xyz)
    for sweep in range(2):
        for y, x, hs in rotors:
            near = np.asarray(tree.query_ball_point(xyz[x], search_A), dtype=int)
            # All H of a group reach the same atoms within 4 bonds (every path runs through x).
            excluded = _row(reach4, hs[0])
            bonded[excluded] = True
            others = near[~bonded[near]]
            bonded[excluded] = False
            if len(others) == 0 or (sweep == 1 and not rotor_h[others].any()):
                continue  # the second sweep only revisits groups next to another group
            turn = 2 * np.pi / len(hs)  # three H repeat every 120°
            angles = np.arange(0.0, turn - 1e-9, step)
            axis = xyz[x] - xyz[y]
            axis /= np.linalg.norm(axis)
            cand = _rotate(xyz[hs] - xyz[x], axis, angles) + xyz[x]  # (angles, H, 3)
            dist = np.linalg.norm(cand[:, :, None, :] - xyz[others][None, None], axis=3)  # (angles, H, others)
            ov = radii[hs][None, :, None] + radii[others][None, None] - dist
            allowed = roles.hbond_allowance(np.repeat(hs, len(others)), np.tile(others, len(hs)))
            allowed = allowed.reshape(1, len(hs), len(others))
            hb = np.clip(ov, 0.0, allowed)
            bump = np.clip(ov - allowed, 0.0, None)
            score = (hb - 10.0 * bump).sum(axis=(1, 2))
            xyz[hs] = cand[int(np.argmax(score))]


def _rotate(v: np.ndarray, axis: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """``(A, N, 3)``: vectors ``v`` (N, 3) turned about unit ``axis`` by each angle (Rodrigues)."""
    c, s = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]
    ax, ay, az = axis
    # axis × v written out: np.cross costs more than the rest of the rotation for three vectors.
    cross = np.stack([ay * v[:, 2] - az * v[:, 1], az * v[:, 0] - ax * v[:, 2], ax * v[:, 1] - ay * v[:, 0]], axis=1)
    dot = (v @ axis)[None, :, None]
    return v[None] * c + cross[None] * s + axis[None, None] * dot * (1 - c)


def _row(csr: sparse.csr_matrix, i: int) -> np.ndarray:
    """Column indices of row ``i`` (scipy's own row slicing is ~100× slower)."""
    return csr.indices[csr.indptr[i] : csr.indptr[i + 1]]


def _adjacency(bi: list[int], bj: list[int], n: int) -> sparse.csr_matrix:
    adj = sparse.coo_matrix((np.ones(2 * len(bi)), (bi + bj, bj + bi)), shape=(n, n)).tocsr()
    adj.data[:] = 1.0
    adj.sort_indices()
    return adj


def _fibonacci_sphere(n: int) -> np.ndarray:
    """``(n, 3)`` nearly even unit vectors."""
    k = np.arange(n) + 0.5
    z = 1 - 2 * k / n
    phi = np.pi * (1 + 5**0.5) * k
    r = np.sqrt(1 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


#: Surface-dot directions: ~27 dots/Å² on a carbon, denser than Probe's 16 so that borderline
#: overlaps do not depend on where the dots happen to fall.
_DOTS = _fibonacci_sphere(1000)


class _Surface:
    """Probe's view of a contact: dots on one atom's van der Waals surface inside another.

    A dot inside an atom that its own atom may not clash with (bonded within the limits) is
    hidden; a dot inside several atoms belongs to the one it penetrates deepest.
    """

    def __init__(self, xyz, radii, tree: cKDTree, reach3, reach4, is_h):
        self.xyz, self.radii, self.tree = xyz, radii, tree
        self.reach3, self.reach4, self.is_h = reach3, reach4, is_h
        self.search_A = float(radii.max())  # a dot of s lies inside m only if |s - m| < r_s + r_m

    def _excluded(self, s: int) -> np.ndarray:
        four = _row(self.reach4, s)
        if self.is_h[s]:
            return four
        return np.union1d(_row(self.reach3, s), four[self.is_h[four]])

    def depth(self, s: int, t: int, cutoff: float) -> float:
        """Deepest dot of ``s`` inside ``t`` that is hidden by no bonded atom and has ``t`` as its
        deepest atom; ``-inf`` when none is ``cutoff`` Å deep."""
        xyz, radii = self.xyz, self.radii
        axis = xyz[t] - xyz[s]
        axis = axis / np.linalg.norm(axis)
        # The point on the axis is the deepest one: with it, an unhidden overlap is exact.
        dots = xyz[s] + radii[s] * np.vstack([axis[None], _DOTS])
        depth = radii[t] - np.linalg.norm(dots - xyz[t], axis=1)
        deep = depth >= cutoff - 1e-9
        if not deep.any():
            return -np.inf
        dots, depth = dots[deep], depth[deep]
        near = np.array(self.tree.query_ball_point(xyz[s], radii[s] + self.search_A), dtype=int)
        near = near[(near != s) & (near != t)]
        if len(near):
            depth_near = radii[near][None] - np.linalg.norm(dots[:, None, :] - xyz[near][None], axis=2)
            excluded = np.isin(near, self._excluded(s))
            hidden = (depth_near[:, excluded] > 0).any(axis=1)
            deeper = (depth_near[:, ~excluded] > depth[:, None]).any(axis=1)
            depth = depth[~hidden & ~deeper]
        return float(depth.max()) if len(depth) else -np.inf


def _records(atoms, info, p1, p2, d, overlap) -> list[dict[str, Any]]:
    clashes: list[dict[str, Any]] = []
    for i, j, dist, ov in zip(p1, p2, d, overlap):
        ci, ri = info[i]
        cj, rj = info[j]
        clashes.append(
            {
                "atom1": atom_ref(atoms[i], ri, ci),
                "atom2": atom_ref(atoms[j], rj, cj),
                "distance_A": round(float(dist), 2),
                "overlap_A": round(float(ov), 2),
            }
        )
    clashes.sort(key=lambda c: -c["overlap_A"])
    return clashes
