"""Ramachandran validation against the MolProbity Top8000 contours.

Every protein residue with a peptide-bonded neighbour on both sides gets backbone (phi, psi), its
MolProbity category and its Top8000 score; the categories, tables and cut-offs are the reference
in :mod:`cryostack.chem.ramachandran`.

Conventions shared with MolProbity's ``ramalyze`` (results agree residue for residue):

* Residues are the common amino acids (the 20 and MSE); nucleic acids, ligands, waters and
  modified residues are skipped and so break the chain.
* Two residues are linked when C(i-1)–N(i) < 2.0 Å; no (phi, psi) is computed across a gap.
  A residue needs N, CA and C, and so does the following residue.
* Alternate conformations: each altloc of a chain is scanned as its own conformer; a residue
  whose three-residue window involves altloc atoms gets one record per altloc. Statistics
  count each residue once, from its blank or ``A`` conformation.

Reference data: Richardson lab, Duke University — Top8000 reference data (CC-BY 4.0); see
``cryostack/chem/data/rama/README.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gemmi
import numpy as np

from cryostack.chem.conformers import altloc_of, as_model, conformer_atoms, peptide_linked, phi_psi_deg, residue_altlocs
from cryostack.chem.ramachandran import (
    CATEGORIES,
    CATEGORY_LABELS,
    FAVORED_MIN,
    N_BINS,
    OUTLIER_BELOW,
    category,
    classify,
    load_tables,
    score,
)
from cryostack.chem.residues import COMMON_AMINO_ACIDS
from cryostack.validate.residues import ClassifiedCounts, ResidueRecord

#: Atoms whose altlocs define the conformers scanned (main chain, CB and amide H).
_CONFORMER_ATOMS = frozenset({"N", "CA", "C", "O", "CB", "H", "HNO"})


@dataclass(frozen=True)
class RamaResidue(ResidueRecord):
    """One residue (conformation) on the Ramachandran plot; angles in degrees, ``score`` 0–1."""

    chain: str
    number: int | None
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
            cat = category(res.name, nxt_res.name, prev, cur)
            value = score(cat, phi, psi)
            records.append(
                RamaResidue(
                    chain=chain.name,
                    number=res.seqid.num,
                    icode=res.seqid.icode.strip(),
                    name=res.name,
                    altloc=altloc,
                    category=cat,
                    phi_deg=phi,
                    psi_deg=psi,
                    score=value,
                    classification=classify(cat, value),
                )
            )
    return records


def ramachandran(structure: Any) -> RamachandranResult:
    """Ramachandran analysis of the first model of ``structure`` (a cryostack ``Structure``,
    ``gemmi.Structure`` or ``gemmi.Model``)."""
    model = as_model(structure)
    counts = {"favored": 0, "allowed": 0, "outlier": 0}
    counted: set[tuple[str, int | None, str]] = set()
    listed: set[tuple[str, int | None, str]] = set()
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
    """Draw :func:`ramachandran_figure` and save it as a PNG atomically."""
    import matplotlib.pyplot as plt

    from cryostack.io.atomic import atomic_output

    path = Path(path)
    fig = ramachandran_figure(result)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path


def ramachandran_figure(result: RamachandranResult):
    """The six category panels (favoured and allowed regions, residues as points, outliers in
    red and labelled chain/number/name) as a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    tables = load_tables()
    # Bin centres padded by one wrapped bin on each side so the contours close at ±180°.
    centres = np.concatenate(([-181.0], -179.0 + 2.0 * np.arange(N_BINS), [181.0]))
    fig, axes = plt.subplots(2, 3, figsize=(15, 10), constrained_layout=True)
    for ax, cat in zip(axes.flat, CATEGORIES):
        grid = np.pad(tables[cat], 1, mode="wrap").T  # rows: psi, columns: phi
        levels = [OUTLIER_BELOW[cat], FAVORED_MIN, max(1.0, float(grid.max()) + 1e-9)]
        ax.contourf(centres, centres, grid, levels=levels, cmap=ListedColormap(["#d8e8f8", "#9fc5ec"]))
        ax.contour(centres, centres, grid, levels=levels[:2], colors=["#6a9bd1", "#2e6fb7"], linewidths=0.8)
        members = [r for r in result.residues if r.category == cat]
        inliers = [r for r in members if r.classification != "outlier"]
        outliers = [r for r in members if r.classification == "outlier"]
        ax.scatter([r.phi_deg for r in inliers], [r.psi_deg for r in inliers], s=8, c="black", lw=0)
        ax.scatter(
            [r.phi_deg for r in outliers], [r.psi_deg for r in outliers], s=22, c="red", edgecolors="black", lw=0.5
        )
        for r in outliers:
            ax.annotate(
                r.label, (r.phi_deg, r.psi_deg), xytext=(3, 3), textcoords="offset points", fontsize=7, color="darkred"
            )
        ax.set_title(f"{CATEGORY_LABELS[cat]} ({len(members)} residues, {len(outliers)} outliers)")
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
    return fig
