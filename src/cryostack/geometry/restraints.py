"""Monomer-library restraints as tensors: bonds, angles, planes, chirality and peptide ω.

Restraints come from gemmi's topology (``gemmi.prepare_topology``) over the complete CCP4
monomer library, built by the same loader as the validator (:mod:`cryostack.chem.monlib`), so link
restraints across residues (peptide, phosphodiester, disulfide) are included and the bond and
angle RMSDs computed here equal ``cryostack validate``'s. Atoms are indexed in
:meth:`Structure.atoms` order; residues without a dictionary entry get no restraints and are
listed in :attr:`RestraintSet.residues_without_dictionary`.

Each loss is the mean squared deviation in units of the restraint's standard deviation
(``((value - ideal) / esd)²``), so an ideal model scores 0 and a model at the library's spread
scores about 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import gemmi
import numpy as np
import scipy.sparse as sp
import torch

from cryostack.chem.contacts import bond_reach
from cryostack.io.models import Structure

#: Chiral-volume standard deviation (Å³); the library gives none (REFMAC's default is 0.2).
CHIRAL_ESD_A3 = 0.2
#: Peptide ω standard deviation (degrees), as the library's TRANS/CIS links.
OMEGA_ESD_DEG = 5.0
#: A peptide with |ω| below this (degrees) in the starting model is restrained to cis.
CIS_BELOW_DEG = 30.0
#: Consecutive residues whose C(i)–N(i+1) (or O3'(i)–P(i+1)) is shorter than this (Å) are linked and
#: restrained as such, even when a distorted starting model stretches the link past gemmi's own
#: connection test; longer is a chain break.
PEPTIDE_BOND_MAX_A = 4.0


@dataclass
class RestraintSet:
    """Restraints of one model as index/target tensors (``N`` atoms).

    Indices point into :meth:`Structure.atoms` order. Ideal values are in Å, radians or Å³.
    """

    n_atoms: int
    bond_index: torch.Tensor  # (B, 2) int64
    bond_ideal_A: torch.Tensor  # (B,)
    bond_esd_A: torch.Tensor  # (B,)
    angle_index: torch.Tensor  # (A, 3) int64, middle atom is the vertex
    angle_ideal_rad: torch.Tensor  # (A,)
    angle_esd_rad: torch.Tensor  # (A,)
    plane_index: torch.Tensor  # (P, K) int64, padded with 0
    plane_mask: torch.Tensor  # (P, K) bool
    plane_esd_A: torch.Tensor  # (P,)
    chiral_index: torch.Tensor  # (C, 4) int64: centre, then the three neighbours
    chiral_ideal_A3: torch.Tensor  # (C,) signed ideal volume
    omega_index: torch.Tensor  # (W, 4) int64: CA(i), C(i), N(i+1), CA(i+1)
    omega_ideal_rad: torch.Tensor  # (W,) 0 (cis) or pi (trans)
    excluded_pairs: torch.Tensor  # (E,) int64 keys i * N + j (i < j) of atoms within three bonds
    residues_without_dictionary: list[str] = field(default_factory=list)

    def to(self, device: str | torch.device, dtype: torch.dtype = torch.float32) -> RestraintSet:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
            out[f.name] = v
        return RestraintSet(**out)

    def involving(self, atoms: torch.Tensor) -> RestraintSet:
        """Only the restraints that involve at least one of ``atoms`` (bool ``(N,)``); same indexing."""
        a = torch.as_tensor(atoms, dtype=torch.bool, device=self.bond_index.device)

        def rows(index: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
            hit = a[index] if mask is None else a[index] & mask
            return hit.any(dim=1) if index.numel() else torch.zeros(0, dtype=torch.bool, device=a.device)

        ob, oa, op = rows(self.bond_index), rows(self.angle_index), rows(self.plane_index, self.plane_mask)
        oc, ow = rows(self.chiral_index), rows(self.omega_index)
        return RestraintSet(
            n_atoms=self.n_atoms,
            bond_index=self.bond_index[ob], bond_ideal_A=self.bond_ideal_A[ob], bond_esd_A=self.bond_esd_A[ob],
            angle_index=self.angle_index[oa], angle_ideal_rad=self.angle_ideal_rad[oa],
            angle_esd_rad=self.angle_esd_rad[oa],
            plane_index=self.plane_index[op], plane_mask=self.plane_mask[op], plane_esd_A=self.plane_esd_A[op],
            chiral_index=self.chiral_index[oc], chiral_ideal_A3=self.chiral_ideal_A3[oc],
            omega_index=self.omega_index[ow], omega_ideal_rad=self.omega_ideal_rad[ow],
            excluded_pairs=self.excluded_pairs,
            residues_without_dictionary=list(self.residues_without_dictionary),
        )  # fmt: skip

    def subset(self, keep: np.ndarray) -> RestraintSet:
        """Restraints among the atoms ``keep`` (bool ``(N,)``), re-indexed to those atoms."""
        keep_t = torch.as_tensor(np.asarray(keep, dtype=bool))
        new = torch.full((self.n_atoms,), -1, dtype=torch.int64)
        new[keep_t] = torch.arange(int(keep_t.sum()))
        m = int(keep_t.sum())

        def pick(index: torch.Tensor, mask: torch.Tensor | None = None):
            if index.numel() == 0:
                return torch.zeros(0, dtype=torch.bool), index
            mapped = new[index]
            ok = (mapped >= 0) | (~mask if mask is not None else False)
            ok = ok.all(dim=1)
            return ok, mapped.clamp(min=0)

        ob, bi = pick(self.bond_index)
        oa, ai = pick(self.angle_index)
        op, pi = pick(self.plane_index, self.plane_mask)
        oc, ci = pick(self.chiral_index)
        ow, wi = pick(self.omega_index)
        i, j = self.excluded_pairs // self.n_atoms, self.excluded_pairs % self.n_atoms
        ke = (new[i] >= 0) & (new[j] >= 0)
        excl = new[i][ke] * m + new[j][ke]
        return RestraintSet(
            n_atoms=m,
            bond_index=bi[ob], bond_ideal_A=self.bond_ideal_A[ob], bond_esd_A=self.bond_esd_A[ob],
            angle_index=ai[oa], angle_ideal_rad=self.angle_ideal_rad[oa], angle_esd_rad=self.angle_esd_rad[oa],
            plane_index=pi[op], plane_mask=self.plane_mask[op], plane_esd_A=self.plane_esd_A[op],
            chiral_index=ci[oc], chiral_ideal_A3=self.chiral_ideal_A3[oc],
            omega_index=wi[ow], omega_ideal_rad=self.omega_ideal_rad[ow],
            excluded_pairs=excl,
            residues_without_dictionary=list(self.residues_without_dictionary),
        )  # fmt: skip


def build_restraints(structure: Structure) -> RestraintSet:
    """Restraints of the first model of ``structure`` from the CCP4 monomer library (via gemmi)."""
    from cryostack.chem.monlib import atom_key, topology  # the loader the validator uses too

    st = structure.gemmi.clone()
    _close_links(st)
    # Topology atoms are copies, and gemmi renumbers serials when an atom without a dictionary
    # entry is dropped and the topology retried (3MFP's methylated HIS73 shifted every later
    # index by one), so restraint atoms are mapped back to our order by name, altloc and position.
    where = {atom_key(atom): i for i, atom in enumerate(a for chain in st[0] for res in chain for a in res)}
    n = sum(1 for chain in st[0] for res in chain for _ in res)
    _, topo, missing = topology(Structure(st))

    def idx(atoms) -> list[int]:
        return [where[atom_key(a)] for a in atoms]

    bonds = [(idx(b.atoms), b.restr.value, b.restr.esd) for b in topo.bonds]
    angles = [(idx(a.atoms), math.radians(a.restr.value), math.radians(a.restr.esd)) for a in topo.angles]
    planes = [(idx(p.atoms), p.restr.esd) for p in topo.planes if len(p.atoms) >= 4]
    chirs = []
    for c in topo.chirs:
        if c.restr.sign == gemmi.ChiralityType.Both:
            continue
        ideal = topo.ideal_chiral_abs_volume(c)
        sign = 1.0 if c.restr.sign == gemmi.ChiralityType.Positive else -1.0
        chirs.append((idx(c.atoms), sign * ideal))

    arr = structure.atoms()
    # ω only where the topology has the peptide bond: a C(i)–N(j) pair a few Å apart across a
    # numbering gap (a missing residue) is a chain break, not a peptide.
    names = arr.atom_names
    peptide_bonds = {(min(i, j), max(i, j)) for (i, j), _, _ in bonds if {names[i], names[j]} == {"C", "N"}}
    omegas = _peptide_omegas(arr, peptide_bonds)
    kmax = max((len(p[0]) for p in planes), default=1)
    plane_index = np.zeros((len(planes), kmax), dtype=np.int64)
    plane_mask = np.zeros((len(planes), kmax), dtype=bool)
    for r, (ids, _) in enumerate(planes):
        plane_index[r, : len(ids)] = ids
        plane_mask[r, : len(ids)] = True

    bi = np.array([b[0] for b in bonds], dtype=np.int64).reshape(-1, 2)
    excluded = _excluded_pairs(bi, n)

    def t(x, dtype=torch.float32, shape=(-1,)):
        return (
            torch.as_tensor(np.asarray(x, dtype=np.float64 if dtype.is_floating_point else np.int64))
            .to(dtype)
            .reshape(shape)
        )

    return RestraintSet(
        n_atoms=n,
        bond_index=t(bi, torch.int64, (-1, 2)),
        bond_ideal_A=t([b[1] for b in bonds]),
        bond_esd_A=t([b[2] for b in bonds]),
        angle_index=t([a[0] for a in angles], torch.int64, (-1, 3)),
        angle_ideal_rad=t([a[1] for a in angles]),
        angle_esd_rad=t([a[2] for a in angles]),
        plane_index=torch.as_tensor(plane_index),
        plane_mask=torch.as_tensor(plane_mask),
        plane_esd_A=t([p[1] for p in planes]),
        chiral_index=t([c[0] for c in chirs], torch.int64, (-1, 4)),
        chiral_ideal_A3=t([c[1] for c in chirs]),
        omega_index=t([o[0] for o in omegas], torch.int64, (-1, 4)),
        omega_ideal_rad=t([o[1] for o in omegas]),
        excluded_pairs=torch.as_tensor(excluded),
        residues_without_dictionary=list(missing),
    )


_LINK_ATOMS = {"peptide": ("C", "N", 1.33), "nucleic": ("O3'", "P", 1.61)}


def _close_links(st: gemmi.Structure) -> None:
    """Move N(i+1) (P(i+1)) onto the ideal link distance from C(i) (O3'(i)) where a stretched link
    (up to :data:`PEPTIDE_BOND_MAX_A`) would fail gemmi's connection test. Only the copy used
    to build the topology is changed; the restraint targets do not depend on it."""
    for chain in st[0]:
        for prev, res in zip(chain, list(chain)[1:]):
            # seqid.num is None only for an unnumbered residue, which Structure.atoms() cannot hold either
            if res.seqid.num - prev.seqid.num > 1:  # type: ignore[operator]
                continue
            for a_name, b_name, ideal in _LINK_ATOMS.values():
                a, b = prev.find_atom(a_name, "*"), res.find_atom(b_name, "*")
                if a is None or b is None:
                    continue
                d = a.pos.dist(b.pos)
                if 1.9 < d < PEPTIDE_BOND_MAX_A:
                    shift = (b.pos - a.pos) * (ideal / d - 1.0)
                    for atom in res:
                        if atom.name == b_name:
                            atom.pos = atom.pos + shift


def _peptide_omegas(arr, peptide_bonds: set[tuple[int, int]]) -> list[tuple[list[int], float]]:
    """(CA, C, N, CA) quadruples of residues joined by one of ``peptide_bonds`` (atom index
    pairs, smaller first) and their target ω (0 or π)."""
    lookup = arr.atom_lookup()
    out = []
    for r in range(len(arr.residue_names) - 1):
        if arr.residue_chain[r] != arr.residue_chain[r + 1]:
            continue
        quad = [lookup.get((r, "CA")), lookup.get((r, "C")), lookup.get((r + 1, "N")), lookup.get((r + 1, "CA"))]
        if any(q is None for q in quad):
            continue
        if (min(quad[1], quad[2]), max(quad[1], quad[2])) not in peptide_bonds:
            continue
        xyz = arr.coords[quad].astype(np.float64)
        omega = _dihedral_np(*xyz)
        out.append((quad, 0.0 if abs(math.degrees(omega)) < CIS_BELOW_DEG else math.pi))
    return out


def _dihedral_np(a, b, c, d) -> float:
    b0, b1, b2 = a - b, c - b, d - c
    b1 = b1 / np.linalg.norm(b1)
    v = b0 - np.dot(b0, b1) * b1
    w = b2 - np.dot(b2, b1) * b1
    return float(np.arctan2(np.dot(np.cross(b1, v), w), np.dot(v, w)))


def _excluded_pairs(bond_index: np.ndarray, n: int, depth: int = 3) -> np.ndarray:
    """Sorted keys ``i * n + j`` (i < j) of atom pairs within ``depth`` bonds (1-2, 1-3, 1-4)."""
    if len(bond_index) == 0:
        return np.zeros(0, dtype=np.int64)
    a = sp.coo_matrix((np.ones(len(bond_index)), (bond_index[:, 0], bond_index[:, 1])), shape=(n, n)).tocsr()
    reach = sp.triu(bond_reach(a + a.T, depth), k=1).tocoo()
    return np.unique(reach.row.astype(np.int64) * n + reach.col.astype(np.int64))


# -- differentiable measurements ----------------------------------------------------------------
def dihedrals(x: torch.Tensor, quads: torch.Tensor) -> torch.Tensor:
    """Dihedral angles (radians, −π..π) of atom quadruples ``(Q, 4)`` in ``x`` ``(N, 3)`` Å."""
    a, b, c, d = (x[quads[:, k]] for k in range(4))
    b0, b1, b2 = a - b, c - b, d - c
    b1 = b1 / b1.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    v = b0 - (b0 * b1).sum(-1, keepdim=True) * b1
    w = b2 - (b2 * b1).sum(-1, keepdim=True) * b1
    return torch.atan2((torch.cross(b1, v, dim=-1) * w).sum(-1), (v * w).sum(-1))


def bond_lengths(x: torch.Tensor, rs: RestraintSet) -> torch.Tensor:
    """``(B,)`` bond lengths in Å."""
    d = x[rs.bond_index[:, 0]] - x[rs.bond_index[:, 1]]
    return torch.sqrt((d * d).sum(-1) + 1e-12)


def bond_angles(x: torch.Tensor, rs: RestraintSet) -> torch.Tensor:
    """``(A,)`` bond angles in radians."""
    u = x[rs.angle_index[:, 0]] - x[rs.angle_index[:, 1]]
    v = x[rs.angle_index[:, 2]] - x[rs.angle_index[:, 1]]
    # atan2 keeps the gradient finite near 0 and π, where acos's is not.
    return torch.atan2(torch.cross(u, v, dim=-1).norm(dim=-1) + 1e-12, (u * v).sum(-1))


def chiral_volumes(x: torch.Tensor, rs: RestraintSet) -> torch.Tensor:
    """``(C,)`` chiral volumes (Å³), gemmi's convention: (a1−c)·((a2−c)×(a3−c))."""
    c = x[rs.chiral_index[:, 0]]
    a1, a2, a3 = (x[rs.chiral_index[:, k]] - c for k in (1, 2, 3))
    return (a1 * torch.cross(a2, a3, dim=-1)).sum(-1)


def plane_deviations(x: torch.Tensor, rs: RestraintSet) -> torch.Tensor:
    """``(P, K)`` distances (Å) of each plane's atoms from its least-squares plane (0 at padding)."""
    if rs.plane_index.numel() == 0:
        return x.new_zeros((0, 1))
    w = rs.plane_mask.to(x.dtype)
    p = x[rs.plane_index]  # (P, K, 3)
    centre = (p * w[..., None]).sum(1) / w.sum(1, keepdim=True)
    q = (p - centre[:, None]) * w[..., None]
    cov = q.transpose(1, 2) @ q  # (P, 3, 3)
    # Tiny isotropic jitter keeps eigh's gradient finite for degenerate (collinear) planes.
    cov = cov + 1e-6 * torch.eye(3, dtype=x.dtype, device=x.device)
    _, vecs = torch.linalg.eigh(cov)
    normal = vecs[:, :, 0]  # smallest eigenvalue
    return (q * normal[:, None, :]).sum(-1) * w


# -- losses -------------------------------------------------------------------------------------
def _mean(z2: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return z2.mean() if z2.numel() else like.new_zeros(())


def bond_loss(x: torch.Tensor, rs: RestraintSet) -> torch.Tensor:
    """Mean of ``((d − d_ideal) / esd)²`` over bonds."""
    return _mean(((bond_lengths(x, rs) - rs.bond_ideal_A) / rs.bond_esd_A) ** 2, x)


def angle_loss(x: torch.Tensor, rs: RestraintSet) -> torch.Tensor:
    """Mean of ``((θ − θ_ideal) / esd)²`` over bond angles."""
    return _mean(((bond_angles(x, rs) - rs.angle_ideal_rad) / rs.angle_esd_rad) ** 2, x)


def plane_loss(x: torch.Tensor, rs: RestraintSet) -> torch.Tensor:
    """Mean over planar atoms of (distance from the plane / esd)²."""
    if rs.plane_index.numel() == 0:
        return x.new_zeros(())
    dev = plane_deviations(x, rs) / rs.plane_esd_A[:, None]
    return (dev**2).sum() / rs.plane_mask.sum()


def chirality_loss(x: torch.Tensor, rs: RestraintSet) -> torch.Tensor:
    """Mean of ``((V − V_ideal) / 0.2 Å³)²`` over chiral centres (signed: an inverted centre costs)."""
    return _mean(((chiral_volumes(x, rs) - rs.chiral_ideal_A3) / CHIRAL_ESD_A3) ** 2, x)


def omega_loss(x: torch.Tensor, rs: RestraintSet) -> torch.Tensor:
    """Peptide ω toward 180° (0° for peptides cis in the starting model), periodic:
    mean of ``2 (1 − cos Δω) / esd²``, which is ``(Δω / esd)²`` for small deviations."""
    if rs.omega_index.numel() == 0:
        return x.new_zeros(())
    d = dihedrals(x, rs.omega_index) - rs.omega_ideal_rad
    esd = math.radians(OMEGA_ESD_DEG)
    return (2.0 * (1.0 - torch.cos(d)) / esd**2).mean()


def bond_rmsd(x: torch.Tensor, rs: RestraintSet) -> float:
    """RMS bond-length deviation from ideal, Å (as ``cryostack validate``)."""
    with torch.no_grad():
        return float(torch.sqrt(((bond_lengths(x, rs) - rs.bond_ideal_A) ** 2).mean()))


def angle_rmsd_deg(x: torch.Tensor, rs: RestraintSet) -> float:
    """RMS bond-angle deviation from ideal, degrees (as ``cryostack validate``)."""
    with torch.no_grad():
        return float(torch.rad2deg(torch.sqrt(((bond_angles(x, rs) - rs.angle_ideal_rad) ** 2).mean())))
