"""Top8000 Ramachandran reference: the six MolProbity categories, their tables and cut-offs.

Method (Lovell et al. 2003, Proteins 50:437; Williams et al. 2018, Protein Sci 27:293): every
protein residue with a peptide-bonded neighbour on both sides falls in one of six categories,
each with its own reference distribution:

========  =================================================================
general   not Gly, Pro, Ile or Val, and not before a Pro
gly       glycine (symmetrised distribution)
cispro    proline with a cis-like peptide (-90° < omega < 90°)
transpro  other prolines
prepro    residue before a proline (not Gly or Pro)
ileval    isoleucine or valine, not before a proline
========  =================================================================

The score at (phi, psi) is the percentile value of the category's table, bilinearly
interpolated between 2° bin centres (odd degrees, wrapping at ±180°). Favoured: score ≥ 0.02;
outlier: score < 0.0005 (general), < 0.002 (cis-Pro), < 0.001 (others); allowed in between.

The tables are read by the validator (:mod:`cryostack.validate.ramachandran`) and by the
refinement prior (:mod:`cryostack.geometry.ramachandran_prior`).

Reference data: Richardson lab, Duke University — Top8000 reference data (CC-BY 4.0); see
``data/rama/README.md``.
"""

from __future__ import annotations

import functools
import math
from importlib import resources

import gemmi
import numpy as np

from cryostack.chem.conformers import omega_deg

#: Category keys, in MolProbity's order.
CATEGORIES: tuple[str, ...] = ("general", "gly", "cispro", "transpro", "prepro", "ileval")
#: Human labels of the categories.
CATEGORY_LABELS: dict[str, str] = {
    "general": "General",
    "gly": "Gly",
    "cispro": "cis-Pro",
    "transpro": "trans-Pro",
    "prepro": "pre-Pro",
    "ileval": "Ile/Val",
}
#: Score at or above which a residue is favoured (all categories).
FAVORED_MIN = 0.02
#: Score below which a residue is an outlier, per category.
OUTLIER_BELOW: dict[str, float] = {
    "general": 0.0005,
    "gly": 0.001,
    "cispro": 0.002,
    "transpro": 0.001,
    "prepro": 0.001,
    "ileval": 0.001,
}

N_BINS = 180
_TABLE_FILE = "top8000_rama.npz"


@functools.lru_cache(maxsize=1)
def load_tables() -> dict[str, np.ndarray]:
    """The six Top8000 tables: category → ``(180, 180)`` array ``[phi_bin, psi_bin]``,
    bin ``k`` centred at ``-179 + 2k`` degrees (read-only)."""
    ref = resources.files("cryostack.chem").joinpath("data", "rama", _TABLE_FILE)
    with resources.as_file(ref) as path, np.load(path) as npz:
        tables = {key: np.array(npz[key], dtype=np.float64) for key in CATEGORIES}
    for table in tables.values():
        if table.shape != (N_BINS, N_BINS):
            raise ValueError(f"corrupt Ramachandran table in {_TABLE_FILE}: shape {table.shape}")
        table.flags.writeable = False
    return tables


def _axis_cell(angle_deg: float) -> tuple[int, int, float]:
    """Bins bracketing ``angle_deg`` and the fraction of the way from the lower to the upper
    bin centre. Centres lie at odd degrees; the angle is first wrapped into [-180, 180]."""
    x = angle_deg
    while x > 180.0:
        x -= 360.0
    while x < -180.0:
        x += 360.0
    lower_deg = 2.0 * math.floor((x - 1.0) / 2.0) + 1.0  # largest odd integer ≤ x
    lower_bin = int((lower_deg + 179.0) // 2.0) % N_BINS
    return lower_bin, (lower_bin + 1) % N_BINS, (x - lower_deg) / 2.0


def grid_score(table: np.ndarray, phi_deg: float, psi_deg: float) -> float:
    """Bilinear interpolation of a Ramachandran table at (phi, psi) in degrees."""
    i0, i1, tx = _axis_cell(phi_deg)
    j0, j1, ty = _axis_cell(psi_deg)
    low = table[i0, j0] + (table[i1, j0] - table[i0, j0]) * tx
    high = table[i0, j1] + (table[i1, j1] - table[i0, j1]) * tx
    return float(low + (high - low) * ty)


def score(category: str, phi_deg: float, psi_deg: float) -> float:
    """Top8000 score (0–1, a percentile fraction) of (phi, psi) in ``category``."""
    return grid_score(load_tables()[category], phi_deg, psi_deg)


def classify(category: str, value: float) -> str:
    """``"favored"``, ``"allowed"`` or ``"outlier"`` for a score in ``category``."""
    if value >= FAVORED_MIN:
        return "favored"
    return "allowed" if value >= OUTLIER_BELOW[category] else "outlier"


def category(name: str, next_name: str, prev_atoms: dict[str, gemmi.Atom], atoms: dict[str, gemmi.Atom]) -> str:
    """MolProbity category of a residue, given its name, the next residue's and the atoms
    needed for the proline peptide torsion."""
    if name == "GLY":
        return "gly"
    if name == "PRO":
        # omega needs a complete C, CA, N previous residue; without it the Pro counts as trans.
        omega = omega_deg(prev_atoms, atoms) if {"N", "CA", "C"} <= prev_atoms.keys() else None
        return "cispro" if omega is not None and -90.0 < omega < 90.0 else "transpro"
    if next_name == "PRO":
        return "prepro"
    if name in ("ILE", "VAL"):
        return "ileval"
    return "general"
