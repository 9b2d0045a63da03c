"""Ideal Cβ position term: Cβ pulled to where the backbone (N, CA, C) puts it.

The ideal Cβ is built exactly as :mod:`cryostack.chem.cbeta` builds it (MolProbity's
cbetadev: two constructions from the backbone, averaged, put back at the ideal CA–CB distance),
but in PyTorch, so the term moves both the backbone and Cβ. The deviation is the distance in Å;
validation flags ≥ 0.25 Å.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cryostack.chem.cbeta import ideal_geometry

#: Deviation (Å) treated as one standard deviation by the loss (validation's outlier cut is 0.25 Å).
CBETA_SIGMA_A = 0.1


@dataclass
class CbetaSet:
    """Residues with N, CA, C, CB: ``index`` ``(R, 4)`` and ideal geometry ``(R, 5)``
    (CA–CB Å; C–CA–CB, N–C–CA–CB, N–CA–CB, C–N–CA–CB in radians)."""

    index: torch.Tensor
    ideal: torch.Tensor

    def to(self, device, dtype=torch.float32) -> CbetaSet:
        return CbetaSet(self.index.to(device), self.ideal.to(device, dtype))

    def subset(self, new_index: torch.Tensor) -> CbetaSet:
        ok = (new_index[self.index] >= 0).all(1)
        return CbetaSet(new_index[self.index[ok]], self.ideal[ok])


def build_cbeta(arr) -> CbetaSet:
    """Cβ quadruples (N, CA, C, CB) of the protein residues of :class:`AtomArrays` ``arr``."""
    from cryostack.io.models import PROTEIN

    lookup = arr.atom_lookup()
    idx, ideal = [], []
    for r, name in enumerate(arr.residue_names):
        if arr.residue_class[r] != PROTEIN or name == "GLY":
            continue
        q = [lookup.get((r, a)) for a in ("N", "CA", "C", "CB")]
        if any(v is None for v in q):
            continue
        n, ca, c, cb = arr.coords[q].astype(np.float64)
        vol = float(np.dot(n - ca, np.cross(cb - ca, c - ca)))
        g = ideal_geometry(name, vol)
        idx.append(q)
        ideal.append([g.ca_cb_A, *np.radians([g.c_ca_cb_deg, g.n_c_ca_cb_deg, g.n_ca_cb_deg, g.c_n_ca_cb_deg])])
    return CbetaSet(
        torch.as_tensor(np.asarray(idx, dtype=np.int64).reshape(-1, 4)),
        torch.as_tensor(np.asarray(ideal, dtype=np.float32).reshape(-1, 5)),
    )


def place(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, bond, angle, dihedral) -> torch.Tensor:
    """Positions D ``(R, 3)`` with |CD| = bond (Å), angle B–C–D and dihedral A–B–C–D (radians)."""
    bc = c - b
    bc = bc / bc.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    normal = torch.cross(b - a, bc, dim=-1)
    normal = normal / normal.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    m = torch.cross(normal, bc, dim=-1)
    local = torch.stack(
        [-torch.cos(angle), torch.sin(angle) * torch.cos(dihedral), torch.sin(angle) * torch.sin(dihedral)], -1
    )
    return c + bond[:, None] * (local[:, 0:1] * bc + local[:, 1:2] * m + local[:, 2:3] * normal)


def ideal_cbeta_positions(x: torch.Tensor, cb: CbetaSet) -> torch.Tensor:
    """``(R, 3)`` ideal Cβ positions (Å) from the backbone in ``x``."""
    n, ca, c = (x[cb.index[:, k]] for k in range(3))
    g = cb.ideal
    p1 = place(n, c, ca, g[:, 0], g[:, 1], g[:, 2])
    p2 = place(c, n, ca, g[:, 0], g[:, 3], g[:, 4])
    mean = (p1 + p2) / 2.0
    v = mean - ca
    return ca + v * (g[:, 0:1] / v.norm(dim=-1, keepdim=True).clamp(min=1e-8))


def cbeta_deviations(x: torch.Tensor, cb: CbetaSet) -> torch.Tensor:
    """``(R,)`` Cβ deviations (Å) from the ideal position."""
    d = x[cb.index[:, 3]] - ideal_cbeta_positions(x, cb)
    return torch.sqrt((d * d).sum(-1) + 1e-12)


def cbeta_loss(x: torch.Tensor, cb: CbetaSet) -> torch.Tensor:
    """Mean of (deviation / 0.1 Å)² over residues."""
    if cb.index.numel() == 0:
        return x.new_zeros(())
    d = x[cb.index[:, 3]] - ideal_cbeta_positions(x, cb)
    return ((d * d).sum(-1) / CBETA_SIGMA_A**2).mean()
