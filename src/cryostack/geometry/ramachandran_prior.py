"""A smooth Ramachandran prior from the Top8000 contours (the tables ``cryostack validate`` uses).

Energy of a residue at (φ, ψ): ``−log(p̃ + ε)`` where ``p̃`` is its category's Top8000 percentile
table (:func:`cryostack.chem.ramachandran.load_tables`) smoothed with a periodic Gaussian
and interpolated bicubically (``torch.nn.functional.grid_sample`` on a wrap-padded table), so the
gradient is continuous and points from outlier and allowed regions into the favoured ones.
Where the tables hold no data, ``ε`` itself slopes towards the populated regions (the table
smoothed by 30°), and beyond validation's outlier line the energy rises 25 times faster: a flat,
cheap outlier region let refinement of damaged starts keep 5–6 % outliers.
Categories follow MolProbity's (general, Gly, cis-/trans-Pro, pre-Pro, Ile/Val) and are fixed
from the starting model.

Reference data: Richardson lab, Duke University — Top8000 reference data (CC-BY 4.0).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from cryostack.chem.ramachandran import CATEGORIES, OUTLIER_BELOW, load_tables
from cryostack.chem.residues import COMMON_AMINO_ACIDS
from cryostack.geometry.restraints import PEPTIDE_BOND_MAX_A, _dihedral_np, dihedrals

#: Floor added to the percentile before the log, well below validation's outlier lines (5·10⁻⁴
#: to 2·10⁻³), so that the outlier region stands above the allowed one.
EPSILON = 1e-4
#: Width (degrees) of the Gaussian that spreads the populated regions into a sloping floor.
FUNNEL_DEG = 30.0
#: Lowest value of that floor relative to EPSILON (bounds the energy of the emptiest regions).
FUNNEL_FLOOR = 1e-3
#: How many times faster the energy rises beyond validation's outlier line than the table says.
#: With the floor 10⁻³ (flat outlier regions, a mean over all residues) 5–6 % of residues stayed
#: outliers when refining damaged starts (0.7 Å noise, 3 Å/5° per chain); with this and the
#: peptide turns, 0–0.8 % (docs/refine.md), at the same map fit.
OUTLIER_STEEPNESS = 25.0
#: Width (degrees) of the periodic Gaussian smoothing the 2° tables.
SMOOTH_DEG = 4.0
_PAD = 4  # bins of wrap padding around the 180 × 180 table (bicubic needs 2)


@functools.lru_cache(maxsize=4)
def energy_tables(smooth_deg: float = SMOOTH_DEG) -> torch.Tensor:
    """``(6, 180 + 2·pad, 180 + 2·pad)`` energies ``[category, psi_bin, phi_bin]`` (wrap-padded)."""
    out = []
    for cat in CATEGORIES:
        raw = load_tables()[cat]
        table = gaussian_filter(raw, sigma=smooth_deg / 2.0, mode="wrap")  # [phi, psi]
        # In the empty regions the floor itself slopes down towards the populated ones (the table
        # smoothed by FUNNEL_DEG), so an outlier far from any data still has a gradient.
        broad = gaussian_filter(raw, sigma=FUNNEL_DEG / 2.0, mode="wrap")
        floor = EPSILON * np.clip(broad / broad.max(), FUNNEL_FLOOR, None)
        energy = -np.log(np.clip(table, 0.0, None) + floor)
        # Beyond validation's outlier line the energy rises OUTLIER_STEEPNESS times faster.
        edge = -np.log(OUTLIER_BELOW[cat] + EPSILON)
        energy = np.where(energy > edge, edge + OUTLIER_STEEPNESS * (energy - edge), energy)
        out.append(np.pad(energy.T, _PAD, mode="wrap"))
    return torch.as_tensor(np.stack(out), dtype=torch.float32)


@dataclass
class RamaSet:
    """Residues with a (φ, ψ): atom quadruples and their Top8000 category index."""

    phi_index: torch.Tensor  # (R, 4) C(i-1), N, CA, C
    psi_index: torch.Tensor  # (R, 4) N, CA, C, N(i+1)
    category: torch.Tensor  # (R,) int64 into CATEGORIES
    residue: torch.Tensor  # (R,) int64 residue index (AtomArrays)

    def to(self, device) -> RamaSet:
        return RamaSet(*(t.to(device) for t in (self.phi_index, self.psi_index, self.category, self.residue)))

    def subset(self, new_index: torch.Tensor) -> RamaSet:
        """Keep residues whose atoms all map (``new_index[i] ≥ 0``); re-index."""
        ok = (new_index[self.phi_index] >= 0).all(1) & (new_index[self.psi_index] >= 0).all(1)
        return RamaSet(
            new_index[self.phi_index[ok]], new_index[self.psi_index[ok]], self.category[ok], self.residue[ok]
        )


def build_rama(arr) -> RamaSet:
    """(φ, ψ) quadruples and categories of the protein residues of :class:`AtomArrays` ``arr``."""
    lookup = arr.atom_lookup()
    names = arr.residue_names
    xyz = arr.coords.astype(np.float64)

    def linked(r: int) -> bool:  # residue r peptide-bonded to r + 1
        if r < 0 or r + 1 >= len(names) or arr.residue_chain[r] != arr.residue_chain[r + 1]:
            return False
        if names[r] not in COMMON_AMINO_ACIDS or names[r + 1] not in COMMON_AMINO_ACIDS:
            return False
        c, n = lookup.get((r, "C")), lookup.get((r + 1, "N"))
        return c is not None and n is not None and bool(np.linalg.norm(xyz[c] - xyz[n]) < PEPTIDE_BOND_MAX_A)

    phi, psi, cat, res = [], [], [], []
    for r, name in enumerate(names):
        if name not in COMMON_AMINO_ACIDS or not (linked(r - 1) and linked(r)):
            continue
        q_phi = [lookup.get((r - 1, "C")), lookup.get((r, "N")), lookup.get((r, "CA")), lookup.get((r, "C"))]
        q_psi = [lookup.get((r, "N")), lookup.get((r, "CA")), lookup.get((r, "C")), lookup.get((r + 1, "N"))]
        if any(q is None for q in q_phi + q_psi):
            continue
        phi.append(q_phi)
        psi.append(q_psi)
        res.append(r)
        cat.append(CATEGORIES.index(_category(arr, lookup, r, xyz)))
    t = lambda v: torch.as_tensor(np.asarray(v, dtype=np.int64).reshape(-1, 4))  # noqa: E731
    return RamaSet(
        t(phi),
        t(psi),
        torch.as_tensor(np.asarray(cat, dtype=np.int64)),
        torch.as_tensor(np.asarray(res, dtype=np.int64)),
    )


def _category(arr, lookup, r: int, xyz: np.ndarray) -> str:
    name = arr.residue_names[r]
    if name == "GLY":
        return "gly"
    if name == "PRO":
        q = [lookup.get((r - 1, "CA")), lookup.get((r - 1, "C")), lookup.get((r, "N")), lookup.get((r, "CA"))]
        if all(v is not None for v in q) and abs(math.degrees(_dihedral_np(*xyz[q]))) < 90.0:
            return "cispro"
        return "transpro"
    if r + 1 < len(arr.residue_names) and arr.residue_names[r + 1] == "PRO":
        return "prepro"
    if name in ("ILE", "VAL"):
        return "ileval"
    return "general"


def phi_psi(x: torch.Tensor, rama: RamaSet) -> tuple[torch.Tensor, torch.Tensor]:
    """``(R,)`` φ and ψ in radians."""
    return dihedrals(x, rama.phi_index), dihedrals(x, rama.psi_index)


def rama_energy(x: torch.Tensor, rama: RamaSet) -> torch.Tensor:
    """``(R,)`` prior energies ``−log(p̃ + ε)`` at the residues' (φ, ψ) (differentiable)."""
    if rama.category.numel() == 0:
        return x.new_zeros(0)
    phi, psi = phi_psi(x, rama)
    table = energy_tables().to(x.device, x.dtype)
    n = table.shape[-1]

    def norm(angle: torch.Tensor) -> torch.Tensor:
        deg = torch.remainder(torch.rad2deg(angle) + 180.0, 360.0) - 180.0
        u = (deg + 179.0) / 2.0 + _PAD  # padded bin coordinate; bin k centred at -179 + 2k degrees
        return 2.0 * u / (n - 1) - 1.0  # align_corners=True

    grid = torch.stack([norm(phi), norm(psi)], dim=-1)[None, None]  # x → phi (W), y → psi (H)
    vals = F.grid_sample(table[None], grid, mode="bicubic", align_corners=True, padding_mode="border")
    vals = vals[0, :, 0, :]  # (6, R)
    return vals.gather(0, rama.category[None]).squeeze(0)


def rama_loss(x: torch.Tensor, rama: RamaSet) -> torch.Tensor:
    """Mean Ramachandran prior energy over residues (0 at the most populated regions)."""
    e = rama_energy(x, rama)
    return e.mean() if e.numel() else x.new_zeros(())
