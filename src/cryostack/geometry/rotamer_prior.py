"""A smooth side-chain rotamer prior from the Top8000 chi grids (the grids ``cryostack validate`` uses).

Energy of a side chain: ``−log(p̃ + ε)`` where ``p̃`` is its residue type's Top8000 percentile
grid (:func:`cryostack.chem.rotamers.load_grid`) smoothed with a periodic Gaussian (one cell)
and interpolated multilinearly in the chi angles, wrapping in every dimension; the grids'
ranges fold symmetric side chains (Phe/Tyr χ2, Asp χ2, Glu χ3) as in validation.

Reference data: Richardson lab, Duke University — Top8000 reference data (CC-BY 4.0).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from cryostack.chem.residues import RESIDUE_ATOM_ALIASES
from cryostack.chem.rotamers import CHI_ATOMS, GRID_OF, load_grid
from cryostack.geometry.restraints import dihedrals

#: Floor added to the percentile before the log.
EPSILON = 1e-3
#: Smoothing, in grid cells.
SMOOTH_CELLS = 1.0


@functools.cache
def energy_grid(grid_name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flattened energy table and its spec (lower °, cell width °, bins) of one rotamer grid."""
    grid = load_grid(grid_name)
    smooth = gaussian_filter(grid.values, sigma=SMOOTH_CELLS, mode="wrap")
    energy = -np.log(np.clip(smooth, 0.0, None) + EPSILON)
    return (
        torch.as_tensor(energy.ravel(), dtype=torch.float32),
        torch.as_tensor(grid.spec.lower, dtype=torch.float32),
        torch.as_tensor(grid.spec.width_deg, dtype=torch.float32),
        torch.as_tensor(grid.spec.n_bins, dtype=torch.int64),
    )


@dataclass
class RotamerSet:
    """Side chains grouped by grid: grid name → ``(S, n_chi, 4)`` atom quadruples."""

    groups: dict[str, torch.Tensor]

    def to(self, device) -> RotamerSet:
        return RotamerSet({k: v.to(device) for k, v in self.groups.items()})

    def subset(self, new_index: torch.Tensor) -> RotamerSet:
        out = {}
        for k, q in self.groups.items():
            ok = (new_index[q] >= 0).flatten(1).all(1)
            if ok.any():
                out[k] = new_index[q[ok]]
        return RotamerSet(out)

    @property
    def n_residues(self) -> int:
        return sum(int(v.shape[0]) for v in self.groups.values())


def chi_quads(lookup: dict, r: int, name: str) -> list[list[int]] | None:
    """Atom indices ``[[a, b, c, d], ...]`` of residue ``r``'s chi angles (``name`` its residue
    name, ``lookup`` from :meth:`AtomArrays.atom_lookup`), or ``None`` if it has no chi
    definition or misses a chi atom."""
    quads = CHI_ATOMS.get(name)
    if quads is None:
        return None
    rows: list[list[int]] = []
    for quad in quads:
        ids = [lookup.get((r, a), lookup.get((r, RESIDUE_ATOM_ALIASES.get((name, a), "")))) for a in quad]
        if any(i is None for i in ids):
            return None
        rows.append(cast("list[int]", ids))  # no None (checked above)
    return rows


def build_rotamers(arr) -> RotamerSet:
    """Chi quadruples of every complete side chain with a Top8000 grid (first altloc)."""
    lookup = arr.atom_lookup()
    groups: dict[str, list] = {}
    for r, name in enumerate(arr.residue_names):
        rows = chi_quads(lookup, r, name)
        if rows is not None:
            groups.setdefault(GRID_OF[name], []).append(rows)
    return RotamerSet({k: torch.as_tensor(np.asarray(v, dtype=np.int64)) for k, v in groups.items()})


@functools.cache
def _corners(n: int) -> torch.Tensor:
    """``(2ⁿ, n)`` 0/1 offsets of the corners of an n-d grid cell."""
    return torch.tensor([[(c >> d) & 1 for d in range(n)] for c in range(1 << n)], dtype=torch.int64)


def _interpolate(table: torch.Tensor, lower, width, bins, chis_deg: torch.Tensor) -> torch.Tensor:
    """Multilinear, wrapping interpolation of a flattened n-d table at ``(S, n)`` angles (°)."""
    span = width * bins.to(width.dtype)
    u = torch.remainder(chis_deg - lower, span) / width - 0.5
    base = torch.floor(u)
    frac = u - base
    base = base.to(torch.int64)
    n = chis_deg.shape[1]
    strides = torch.ones(n, dtype=torch.int64, device=table.device)
    for d in range(n - 2, -1, -1):
        strides[d] = strides[d + 1] * bins[d + 1]
    # All 2ⁿ corners at once: one gather instead of 2ⁿ small ones (this term runs every step).
    upper = _corners(n).to(table.device)  # (C, n)
    w = torch.where(upper.bool()[None], frac[:, None, :], 1.0 - frac[:, None, :]).prod(dim=2)  # (S, C)
    idx = (torch.remainder(base[:, None, :] + upper[None], bins) * strides).sum(dim=2)  # (S, C)
    return (w * table[idx]).sum(dim=1)


def rotamer_energy(x: torch.Tensor, rot: RotamerSet) -> torch.Tensor:
    """``(S,)`` prior energies of all side chains (grouped by grid, concatenated)."""
    if not rot.groups:
        return x.new_zeros(0)
    # One dihedral evaluation for every chi of every group, then one table look-up per grid.
    quads = [q.reshape(-1, 4) for q in rot.groups.values()]
    chis_all = torch.rad2deg(dihedrals(x, torch.cat(quads)))
    out, start = [], 0
    for (name, q), flat in zip(rot.groups.items(), quads):
        table, lower, width, bins = (t.to(x.device) for t in energy_grid(name))
        s, n, _ = q.shape
        chis = chis_all[start : start + flat.shape[0]].reshape(s, n)
        start += flat.shape[0]
        out.append(_interpolate(table.to(x.dtype), lower.to(x.dtype), width.to(x.dtype), bins, chis))
    return torch.cat(out)


def rotamer_loss(x: torch.Tensor, rot: RotamerSet) -> torch.Tensor:
    """Mean rotamer prior energy over side chains."""
    e = rotamer_energy(x, rot)
    return e.mean() if e.numel() else x.new_zeros(())
