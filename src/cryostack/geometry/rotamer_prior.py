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


@dataclass
class _Packed:
    """Every side chain's chi look-up in one batch: the grids concatenated into one flat table and
    each side chain's chis padded to 4 (a padded dimension has one bin and no weight)."""

    quads: torch.Tensor  # (M, 4) atoms of every chi, all groups
    chi_index: torch.Tensor  # (S, 4) row of each side chain's chis in ``quads`` (0 where padded)
    valid: torch.Tensor  # (S, 4) bool
    lower: torch.Tensor  # (S, 4) °
    width: torch.Tensor  # (S, 4) °
    bins: torch.Tensor  # (S, 4) int64
    strides: torch.Tensor  # (S, 4) int64
    offset: torch.Tensor  # (S,) start of the side chain's grid in ``table``
    table: torch.Tensor  # (T,) energies of every grid


def _pack(rot: RotamerSet, device, dtype) -> _Packed:
    quads, chi_index, valid, lower, width, bins, strides, offset, tables = [], [], [], [], [], [], [], [], []
    row = table_start = 0
    for name, q in rot.groups.items():
        table, lo, wd, nb = energy_grid(name)
        s, n, _ = q.shape
        quads.append(q.reshape(-1, 4))
        idx = torch.zeros(s, 4, dtype=torch.int64)
        idx[:, :n] = row + torch.arange(s * n).reshape(s, n)
        row += s * n
        chi_index.append(idx)
        ok = torch.zeros(s, 4, dtype=torch.bool)
        ok[:, :n] = True
        valid.append(ok)
        pad = 4 - n
        lower.append(torch.cat([lo, torch.zeros(pad)]).expand(s, 4))
        width.append(torch.cat([wd, torch.ones(pad)]).expand(s, 4))
        b4 = torch.cat([nb, torch.ones(pad, dtype=torch.int64)])
        bins.append(b4.expand(s, 4))
        st = torch.ones(4, dtype=torch.int64)
        for d in range(2, -1, -1):
            st[d] = st[d + 1] * b4[d + 1]
        strides.append(st.expand(s, 4))
        offset.append(torch.full((s,), table_start, dtype=torch.int64))
        tables.append(table)
        table_start += table.numel()
    return _Packed(
        quads=torch.cat(quads).to(device),
        chi_index=torch.cat(chi_index).to(device),
        valid=torch.cat(valid).to(device),
        lower=torch.cat(lower).to(device=device, dtype=dtype),
        width=torch.cat(width).to(device=device, dtype=dtype),
        bins=torch.cat(bins).to(device),
        strides=torch.cat(strides).to(device),
        offset=torch.cat(offset).to(device),
        table=torch.cat(tables).to(device=device, dtype=dtype),
    )


def rotamer_energy(x: torch.Tensor, rot: RotamerSet) -> torch.Tensor:
    """``(S,)`` prior energies of all side chains (grouped by grid, concatenated)."""
    if not rot.groups:
        return x.new_zeros(0)
    # The term runs at every step: one dihedral evaluation and one 16-corner gather for all side
    # chains of every grid (per-grid look-ups cost ~17 small calls each).
    key = (x.device, x.dtype)
    cache = rot.__dict__.setdefault("_packed", {})
    if key not in cache:
        cache[key] = _pack(rot, x.device, x.dtype)
    p: _Packed = cache[key]
    chis = torch.rad2deg(dihedrals(x, p.quads))[p.chi_index]  # (S, 4)
    u = torch.remainder(chis - p.lower, p.width * p.bins.to(x.dtype)) / p.width - 0.5
    base = torch.floor(u)
    frac = torch.where(p.valid, u - base, torch.zeros_like(u))
    upper = _corners(4).to(x.device)  # (16, 4)
    w = torch.where(upper.bool()[None], frac[:, None, :], 1.0 - frac[:, None, :]).prod(dim=2)  # (S, 16)
    idx = torch.remainder(base.to(torch.int64)[:, None, :] + upper[None], p.bins[:, None, :]) * p.strides[:, None, :]
    return (w * p.table[idx.sum(dim=2) + p.offset[:, None]]).sum(dim=1)


def rotamer_loss(x: torch.Tensor, rot: RotamerSet) -> torch.Tensor:
    """Mean rotamer prior energy over side chains."""
    e = rotamer_energy(x, rot)
    return e.mean() if e.numel() else x.new_zeros(())
