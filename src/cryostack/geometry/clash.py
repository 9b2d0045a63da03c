"""Soft non-bonded repulsion with a periodically rebuilt neighbour list.

Atom pairs more than three bonds apart (1-2, 1-3 and 1-4 pairs excluded, from the restraint
bond graph) are pushed apart when closer than the sum of their van der Waals radii (the
heavy-atom radii of :mod:`cryostack.chem.contacts`) minus an allowed overlap; N/O pairs that
can hydrogen-bond may come to 2.6 Å. The penalty is ``(overlap / 0.1 Å)²`` per pair, summed and
divided by the number of atoms. Validation counts a clash at an overlap of 0.4 Å; the default
allowed overlap here (0.25 Å) keeps a margin below it.

With riding hydrogens (``hydrogens=True``) the term also covers hydrogens, with Probe's H radii,
a polar H and an N/O acceptor allowed :data:`~cryostack.chem.contacts.HBOND_OVERLAP_A` more overlap
(a hydrogen bond), and ``pairs_with`` limiting it to pairs that hold a hydrogen (the heavy pairs
being another term's): MolProbity's clashscore counts contacts of a model with hydrogens, and
nearly every clash of a refined model involves one.

The pair list (scipy ``cKDTree``) holds every pair within the largest contact distance plus a
skin; :class:`ClashTerm` rebuilds it when any atom has moved more than half the skin.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

from cryostack.chem.contacts import HBOND_ELEMENTS, HBOND_OVERLAP_A, VDW_RADII_A

ALLOWED_OVERLAP_A = 0.25
HBOND_CONTACT_A = 2.6
CLASH_SIGMA_A = 0.1
SKIN_A = 1.5


class ClashTerm:
    """Soft clash penalty over ``(N, 3)`` coordinates; call with coordinates to get the loss."""

    def __init__(
        self,
        elements: list[str],
        excluded_pairs: torch.Tensor | np.ndarray,
        *,
        active: np.ndarray | None = None,
        altlocs: list[str] | None = None,
        allowed_overlap_A: float = ALLOWED_OVERLAP_A,
        skin_A: float = SKIN_A,
        hydrogens: bool = False,
        radii_A: np.ndarray | None = None,
        polar_h: np.ndarray | None = None,
        pairs_with: np.ndarray | None = None,
    ):
        """``hydrogens``: hydrogens take part (else only heavy atoms do); ``radii_A`` ``(N,)``
        overrides the element radii; ``polar_h`` ``(N,)`` marks hydrogens on N/O/S (hydrogen-bond
        donors); ``pairs_with`` ``(N,)`` keeps only pairs with at least one marked atom."""
        el = [e.upper() for e in elements]
        self.n = len(el)
        self.radii = np.array([VDW_RADII_A.get(e, 1.8) for e in el]) if radii_A is None else np.asarray(radii_A)
        self.polar = np.array([e in HBOND_ELEMENTS for e in el])
        self.polar_h = np.zeros(self.n, dtype=bool) if polar_h is None else np.asarray(polar_h, bool)
        self.pairs_with = None if pairs_with is None else np.asarray(pairs_with, bool)
        heavy = np.array([e not in ("H", "D") for e in el])
        allowed = np.ones(self.n, dtype=bool) if hydrogens else heavy
        self.active = allowed if active is None else (np.asarray(active, bool) & allowed)
        self.excluded = np.asarray(excluded_pairs.cpu().numpy() if torch.is_tensor(excluded_pairs) else excluded_pairs)
        self.altlocs = np.array(
            [a if a not in ("\0", " ", "") else "" for a in (altlocs or [""] * self.n)], dtype=object
        )
        self.allowed_overlap_A = allowed_overlap_A
        self.skin_A = skin_A
        self._ref: np.ndarray | None = None
        self.rebuilds = 0

    def _rebuild(self, xyz: np.ndarray, device) -> None:
        ids = np.nonzero(self.active)[0]
        cutoff = 2 * self.radii.max() - self.allowed_overlap_A + self.skin_A
        pairs = cKDTree(xyz[ids]).query_pairs(r=cutoff, output_type="ndarray")
        i, j = ids[pairs[:, 0]], ids[pairs[:, 1]]
        i, j = np.minimum(i, j), np.maximum(i, j)
        keep = ~np.isin(i.astype(np.int64) * self.n + j, self.excluded)
        a_i, a_j = self.altlocs[i], self.altlocs[j]
        keep &= ~((a_i != "") & (a_j != "") & (a_i != a_j))  # alternative conformers never meet
        if self.pairs_with is not None:
            keep &= self.pairs_with[i] | self.pairs_with[j]
        i, j = i[keep], j[keep]
        target = self.radii[i] + self.radii[j] - self.allowed_overlap_A
        hb = self.polar[i] & self.polar[j]
        target = np.where(hb, np.minimum(target, HBOND_CONTACT_A), target)
        h_bond = (self.polar_h[i] & self.polar[j]) | (self.polar_h[j] & self.polar[i])
        target = np.where(h_bond, target - HBOND_OVERLAP_A, target)
        # Until the next rebuild no atom moves more than half the skin, so a pair can close by at
        # most one skin: pairs farther apart than that cannot touch and are dropped (two thirds
        # of the candidates once riding hydrogens, with their short radii, are in).
        near = np.linalg.norm(xyz[i] - xyz[j], axis=1) < target + self.skin_A
        i, j, target = i[near], j[near], target[near]
        self.i = torch.as_tensor(i, device=device)
        self.j = torch.as_tensor(j, device=device)
        self.target = torch.as_tensor(target, device=device, dtype=torch.float32)
        self._ref = xyz.copy()
        self.rebuilds += 1

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        xyz = x.detach().cpu().numpy()
        # Euclidean displacement: the pair list's guarantee is about distances, not coordinates.
        if self._ref is None or (((xyz - self._ref) ** 2).sum(axis=1).max() > (self.skin_A / 2) ** 2):
            self._rebuild(xyz, x.device)
        if self.i.numel() == 0:
            return x.new_zeros(())
        d = (x[self.i] - x[self.j]).norm(dim=-1)
        over = torch.relu(self.target.to(x.dtype) - d)
        return (over / CLASH_SIGMA_A).pow(2).sum() / max(int(self.active.sum()), 1)

    def n_clashes(self, x: torch.Tensor, overlap_A: float = 0.4) -> int:
        """Pairs (in the current list) overlapping by at least ``overlap_A`` beyond the vdW sum."""
        with torch.no_grad():
            self(x)
            d = (x[self.i] - x[self.j]).norm(dim=-1)
            return int(((self.target + self.allowed_overlap_A - d) >= overlap_A).sum())
