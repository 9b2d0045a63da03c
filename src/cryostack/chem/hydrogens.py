"""Riding hydrogens: where the monomer library puts each H, as a function of its heavy neighbours.

MolProbity's clashscore counts overlaps of a model *with hydrogens* (on refined cryo-EM models,
nearly every clash involves one), so a refinement that keeps only heavy atoms apart leaves most
of them. Each hydrogen is placed once by gemmi from the CCP4 dictionaries (electron-cloud X–H
distances, as the clashscore places them) and stored in a local frame of three heavy atoms: its
parent X, a heavy neighbour A of X and a third atom B (another neighbour of X, else a neighbour
of A). :meth:`RidingHydrogens.positions` rebuilds every H from the current heavy-atom
coordinates, differentiably, so the H rides on the heavy atoms as the refinement moves them.
Rotatable hydrogens (methyl, OH) keep the torsion they were placed with relative to B.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import gemmi
import numpy as np
from scipy import sparse

from cryostack.chem.contacts import H_NONPOLAR_RADIUS_A, H_POLAR_RADIUS_A, bond_reach
from cryostack.chem.monlib import atom_key, topology
from cryostack.io.models import Structure

if TYPE_CHECKING:  # torch is imported where it is used: validation imports this module without it
    import torch


def add_riding_hydrogens(structure: Structure) -> tuple[gemmi.Structure, gemmi.Topo, list[str]]:
    """A copy of the first model with every hydrogen re-placed from the monomer library.

    Returns ``(copy, topology, missing)`` as :func:`cryostack.chem.monlib.topology` does: residues
    without a dictionary are left out of the copy. Waters get no hydrogens. Positions use the
    dictionaries' electron-cloud X–H distances. Links the file does not declare (a disulfide in an
    AlphaFold model) are found by distance first, so that no H is put on a linked S or N.
    Raises ``InputError`` where gemmi cannot place them.
    """
    return topology(structure, h_change=gemmi.HydrogenChange.ReAddButWater, automatic_links=True)


@dataclass
class RidingHydrogens:
    """Hydrogens riding on heavy atoms (indices into :meth:`Structure.atoms` order).

    ``frame`` ``(H, 3)``: parent X, neighbour A and third atom B of each H; ``local`` ``(H, 3)`` Å:
    the H's offset from X in the orthonormal frame (e1 along X→A, e2 in the X-A-B plane);
    ``polar`` ``(H,)``: the parent is N, O or S; ``radii_A`` ``(H,)``: Probe's H radius.
    """

    frame: torch.Tensor
    local: torch.Tensor
    polar: np.ndarray
    radii_A: np.ndarray

    @property
    def parent(self) -> np.ndarray:
        return self.frame[:, 0].cpu().numpy()

    def __len__(self) -> int:
        return int(self.frame.shape[0])

    def to(self, device) -> RidingHydrogens:
        return RidingHydrogens(self.frame.to(device), self.local.to(device), self.polar, self.radii_A)

    def excluded_pairs(self, bond_index: np.ndarray, n_atoms: int) -> np.ndarray:
        """Keys ``i * (N + H) + j`` (i < j) of the pairs with a hydrogen that never clash: hydrogens
        are numbered after the ``n_atoms`` atoms, and a pair within four bonds (Probe's rule when
        one atom is a hydrogen) is excluded. ``bond_index`` ``(B, 2)``: bonds among the atoms."""
        n, m = n_atoms, len(self)
        total = n + m
        b = np.asarray(bond_index, dtype=np.int64).reshape(-1, 2)
        adj = sparse.coo_matrix((np.ones(len(b)), (b[:, 0], b[:, 1])), shape=(n, n)).tocsr()
        adj = ((adj + adj.T) > 0).astype(np.int32)
        parent = sparse.coo_matrix((np.ones(m), (np.arange(m), self.parent)), shape=(m, n)).tocsr()
        # H to atom: the atom within 3 bonds of the parent; H to H: parents within 2 bonds.
        h_atom = (parent @ bond_reach(adj, 3)).tocoo()
        h_h = sparse.triu(parent @ bond_reach(adj, 2) @ parent.T, k=1).tocoo()
        keys = [
            h_atom.col.astype(np.int64) * total + (n + h_atom.row.astype(np.int64)),
            (n + h_h.row.astype(np.int64)) * total + (n + h_h.col.astype(np.int64)),
        ]
        return np.unique(np.concatenate(keys))

    def positions(self, coords: torch.Tensor) -> torch.Tensor:
        """``(H, 3)`` Å hydrogen positions for heavy-atom ``coords`` ``(N, 3)``; differentiable."""
        x, a, b = (coords[self.frame[:, k]] for k in range(3))
        e1, e2, e3 = _frame(x, a, b)
        loc = self.local.to(coords.dtype)
        return x + loc[:, :1] * e1 + loc[:, 1:2] * e2 + loc[:, 2:3] * e3


def _frame(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    import torch

    e1 = torch.nn.functional.normalize(a - x, dim=-1)
    v = b - x
    e2 = torch.nn.functional.normalize(v - (v * e1).sum(-1, keepdim=True) * e1, dim=-1)
    return e1, e2, torch.linalg.cross(e1, e2)


def riding_hydrogens(structure: Structure) -> RidingHydrogens:
    """The dictionary hydrogens of ``structure``'s heavy atoms, in frames of those heavy atoms.

    Hydrogens whose parent has no heavy neighbour to build a frame from (an isolated ion), or whose
    residue has no dictionary, are left out; waters get none.
    """
    import torch

    arr = structure.atoms()
    index: dict[tuple, int] = {}
    i = 0
    for chain in structure.model:
        for res in chain:
            for atom in res:
                index[atom_key(atom)] = i
                i += 1
    h_st, topo, _ = add_riding_hydrogens(structure)
    heavy_nb: dict[int, list[int]] = {}
    h_parent: list[tuple[int, gemmi.Atom]] = []
    for bond in topo.bonds:
        p, q = bond.atoms[0], bond.atoms[1]
        if p.is_hydrogen() == q.is_hydrogen():
            if not p.is_hydrogen():
                ip, iq = index.get(atom_key(p)), index.get(atom_key(q))
                if ip is not None and iq is not None:
                    heavy_nb.setdefault(ip, []).append(iq)
                    heavy_nb.setdefault(iq, []).append(ip)
            continue
        h, parent = (p, q) if p.is_hydrogen() else (q, p)
        ip = index.get(atom_key(parent))
        if ip is not None and h.altloc in ("\0", "A"):
            h_parent.append((ip, h))
    frames, h_xyz = [], []
    for ip, h in h_parent:
        nbs = heavy_nb.get(ip, [])
        if not nbs:
            continue
        a = nbs[0]
        b = nbs[1] if len(nbs) > 1 else next((n for n in heavy_nb.get(a, []) if n != ip), None)
        if b is None:
            continue
        frames.append((ip, a, b))
        h_xyz.append(h.pos.tolist())
    frame = torch.as_tensor(np.array(frames, dtype=np.int64).reshape(-1, 3))
    xyz = torch.as_tensor(arr.coords, dtype=torch.float64)
    x, a_xyz, b_xyz = (xyz[frame[:, k]] for k in range(3))
    d = torch.as_tensor(np.array(h_xyz, dtype=np.float64).reshape(-1, 3)) - x
    local = torch.stack([(d * e).sum(-1) for e in _frame(x, a_xyz, b_xyz)], dim=-1)
    polar = [arr.elements[ip].upper() in ("N", "O", "S") for ip, _, _ in frames]
    polar_np = np.array(polar, dtype=bool)
    return RidingHydrogens(
        frame=frame,
        local=local.to(torch.float32),
        polar=polar_np,
        radii_A=np.where(polar_np, H_POLAR_RADIUS_A, H_NONPOLAR_RADIUS_A),
    )
