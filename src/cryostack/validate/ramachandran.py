"""Ramachandran validation against the MolProbity Top8000 contours.

Method (Lovell et al. 2003, Proteins 50:437; Williams et al. 2018, Protein Sci 27:293): every
protein residue with a peptide-bonded neighbour on both sides gets backbone (phi, psi); the
residue falls in one of six categories, each with its own reference distribution:

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

Conventions shared with MolProbity's ``ramalyze`` (results agree residue for residue):

* Residues are the common amino acids (the 20 and MSE); nucleic acids, ligands, waters and
  modified residues are skipped and so break the chain.
* Two residues are linked when C(i-1)–N(i) < 2.0 Å; no (phi, psi) is computed across a gap.
  A residue needs N, CA and C, and so does the following residue.
* Alternate conformations: each altloc of a chain is scanned as its own conformer; a residue
  whose three-residue window involves altloc atoms gets one record per altloc. Statistics
  count each residue once, from its blank or ``A`` conformation.

Reference data: Richardson lab, Duke University — Top8000 reference data (CC-BY 4.0); see
``data/rama/README.md``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import gemmi
import numpy as np

from cryostack.validate.residues import (
    COMMON_AMINO_ACIDS,
    ClassifiedCounts,
    ResidueRecord,
    altloc_of,
    as_model,
    conformer_atoms,
    omega_deg,
    peptide_linked,
    phi_psi_deg,
    residue_altlocs,
)

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

#: Atoms whose altlocs define the conformers scanned (main chain, CB and amide H).
_CONFORMER_ATOMS = frozenset({"N", "CA", "C", "O", "CB", "H", "HNO"})
_N_BINS = 180
_TABLE_FILE = "top8000_rama.npz"


@functools.lru_cache(maxsize=1)
def load_tables() -> dict[str, np.ndarray]:
    """The six Top8000 tables: category → ``(180, 180)`` array ``[phi_bin, psi_bin]``,
    bin ``k`` centred at ``-179 + 2k`` degrees (read-only)."""
    ref = resources.files("cryostack.validate").joinpath("data", "rama", _TABLE_FILE)
    with resources.as_file(ref) as path, np.load(path) as npz:
        tables = {key: np.array(npz[key], dtype=np.float64) for key in CATEGORIES}
    for table in tables.values():
        if table.shape != (_N_BINS, _N_BINS):
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
    lower_bin = int((lower_deg + 179.0) // 2.0) % _N_BINS
    return lower_bin, (lower_bin + 1) % _N_BINS, (x - lower_deg) / 2.0


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


@dataclass(frozen=True)
class RamaResidue(ResidueRecord):
    """One residue (conformation) on the Ramachandran plot; angles in degrees, ``score`` 0–1."""

    chain: str
    number: int
    icode: str
    name: str
    altloc: str
    category: str
    phi_deg: float
    psi_deg: float
    score: float
    classification: str

    def outlier_dict(self) -> dict[str, Any]:
        return {
            **self.ref.as_dict(),
            "category": self.category,
            "phi": round(self.phi_deg, 2),
            "psi": round(self.psi_deg, 2),
            "score": self.score,
        }


@dataclass
class RamachandranResult(ClassifiedCounts):
    """Ramachandran statistics of a model.

    ``residues`` holds every evaluated residue, one record per alternate conformation where
    altlocs are involved; ``n_residues`` and the percentages count each residue once (its blank
    or ``A`` conformation), as MolProbity does.
    """

    residues: list[RamaResidue] = field(default_factory=list)


def _category(name: str, next_name: str, prev_atoms: dict, atoms: dict) -> str:
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


def _chain_records(chain: gemmi.Chain) -> list[RamaResidue]:
    """All Ramachandran records of one chain (every conformer, duplicates included)."""
    amino = [res for res in chain if res.name in COMMON_AMINO_ACIDS]
    altlocs = residue_altlocs(a for res in amino for a in res if a.name in _CONFORMER_ATOMS) or [""]
    backbone = frozenset({"N", "CA", "C"})
    records = []
    for conformer in altlocs:
        seq = []
        for res in amino:
            atoms = conformer_atoms(res, conformer, _CONFORMER_ATOMS)
            if atoms:
                seq.append((res, atoms))
        for (_, prev), (res, cur), (nxt_res, nxt) in zip(seq, seq[1:], seq[2:]):
            if not (peptide_linked(prev, cur) and peptide_linked(cur, nxt)):
                continue
            if not (backbone <= cur.keys() and backbone <= nxt.keys()):
                continue
            angles = phi_psi_deg(prev, cur, nxt)
            if angles is None:
                continue
            phi, psi = angles
            involved = list(cur.values()) + [prev["C"], nxt["N"]]
            altloc = next((altloc_of(a) for a in involved if altloc_of(a)), "")
            category = _category(res.name, nxt_res.name, prev, cur)
            value = score(category, phi, psi)
            records.append(
                RamaResidue(
                    chain=chain.name,
                    number=res.seqid.num,
                    icode=res.seqid.icode.strip(),
                    name=res.name,
                    altloc=altloc,
                    category=category,
                    phi_deg=phi,
                    psi_deg=psi,
                    score=value,
                    classification=classify(category, value),
                )
            )
    return records


def ramachandran(structure: Any) -> RamachandranResult:
    """Ramachandran analysis of the first model of ``structure`` (a cryostack ``Structure``,
    ``gemmi.Structure`` or ``gemmi.Model``)."""
    model = as_model(structure)
    counts = {"favored": 0, "allowed": 0, "outlier": 0}
    counted: set[tuple[str, int, str]] = set()
    listed: set[tuple[str, int, str]] = set()
    residues: list[RamaResidue] = []
    chain_order: dict[str, int] = {}
    for chain in model:
        chain_order.setdefault(chain.name, len(chain_order))
        for rec in _chain_records(chain):
            key = (rec.chain, rec.number, rec.icode)
            if rec.altloc in ("", "A") and key not in counted:
                counted.add(key)
                counts[rec.classification] += 1
            if rec.altloc or key not in listed:
                residues.append(rec)
                listed.add(key)
    residues.sort(key=lambda r: (chain_order[r.chain], r.number, r.icode, r.altloc))
    return RamachandranResult(
        n_residues=len(counted),
        n_favored=counts["favored"],
        n_allowed=counts["allowed"],
        n_outliers=counts["outlier"],
        residues=residues,
    )


def plot_ramachandran(result: RamachandranResult, path: str | Path, *, dpi: int = 120) -> Path:
    """Draw the six category panels (favoured and allowed regions, residues as points,
    outliers in red and labelled chain/number/name) and save a PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from cryostack.io.atomic import atomic_output

    path = Path(path)
    tables = load_tables()
    # Bin centres padded by one wrapped bin on each side so the contours close at ±180°.
    centres = np.concatenate(([-181.0], -179.0 + 2.0 * np.arange(_N_BINS), [181.0]))
    fig, axes = plt.subplots(2, 3, figsize=(15, 10), constrained_layout=True)
    for ax, category in zip(axes.flat, CATEGORIES):
        grid = np.pad(tables[category], 1, mode="wrap").T  # rows: psi, columns: phi
        levels = [OUTLIER_BELOW[category], FAVORED_MIN, max(1.0, float(grid.max()) + 1e-9)]
        ax.contourf(centres, centres, grid, levels=levels, cmap=ListedColormap(["#d8e8f8", "#9fc5ec"]))
        ax.contour(centres, centres, grid, levels=levels[:2], colors=["#6a9bd1", "#2e6fb7"], linewidths=0.8)
        members = [r for r in result.residues if r.category == category]
        inliers = [r for r in members if r.classification != "outlier"]
        outliers = [r for r in members if r.classification == "outlier"]
        ax.scatter([r.phi_deg for r in inliers], [r.psi_deg for r in inliers], s=8, c="black", lw=0)
        ax.scatter([r.phi_deg for r in outliers], [r.psi_deg for r in outliers], s=22, c="red", edgecolors="black", lw=0.5)
        for r in outliers:
            ax.annotate(r.label, (r.phi_deg, r.psi_deg), xytext=(3, 3), textcoords="offset points", fontsize=7, color="darkred")
        ax.set_title(f"{CATEGORY_LABELS[category]} ({len(members)} residues, {len(outliers)} outliers)")
        ax.set_xlim(-180, 180)
        ax.set_ylim(-180, 180)
        ax.set_xticks(range(-180, 181, 60))
        ax.set_yticks(range(-180, 181, 60))
        ax.set_xlabel("phi (°)")
        ax.set_ylabel("psi (°)")
        ax.set_aspect("equal")
        ax.axhline(0, color="grey", lw=0.4)
        ax.axvline(0, color="grey", lw=0.4)
    fig.suptitle(
        f"Ramachandran: {result.favored_pct:.2f}% favoured, {result.outlier_pct:.2f}% outliers "
        f"({result.n_residues} residues; Top8000 contours, Richardson lab)"
    )
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path
