"""Model-building scores of a model against a reference in the same frame (no superposition).

What a crystallographer's ``chain_comparison`` reports for a traced model, plus the bond and
angle losses of E3-CryoFold's benchmark:

* ``ca_within_3A``: fraction of reference residues with a model Cα within 3 Å;
* ``sequence_match``: among those, the fraction whose nearest model residue has the same name;
* ``bond_loss_A`` / ``angle_loss_rad`` (only with a residue correspondence): mean absolute
  difference between model and reference of the backbone bond lengths (N–Cα, Cα–C, C–N⁺) and
  bond angles (N–Cα–C, Cα–C–N⁺, C–N⁺–Cα⁺) of corresponding residues.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from cryostack.io.models import Structure

WITHIN_A = 3.0


def backbone_table(structure: Structure) -> tuple[np.ndarray, list[str], list[str]]:
    """``(R, 3, 3)`` N, Cα, C (NaN where missing), residue names and chain names, in file order."""
    rows, names, chains = [], [], []
    for ch in structure.model:
        for res in ch:
            ca = res.find_atom("CA", "*")
            if ca is None or res.het_flag == "H":
                continue
            xyz = []
            for a in ("N", "CA", "C"):
                atom = res.find_atom(a, "*")
                xyz.append(atom.pos.tolist() if atom is not None else [np.nan] * 3)
            rows.append(xyz)
            names.append(res.name)
            chains.append(ch.name)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3, 3), names, chains


def _angle(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    u, v = a - b, c - b
    cos = (u * v).sum(-1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
    return np.arccos(np.clip(cos, -1.0, 1.0))


def backbone_geometry(bb: np.ndarray, chains: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per residue: bond lengths ``(R, 3)`` Å and angles ``(R, 3)`` rad (NaN where the next residue
    is missing or in another chain, or more than 2 Å away from a peptide bond)."""
    n, ca, c = bb[:, 0], bb[:, 1], bb[:, 2]
    r = len(bb)
    bonds = np.full((r, 3), np.nan)
    angles = np.full((r, 3), np.nan)
    bonds[:, 0] = np.linalg.norm(n - ca, axis=1)
    bonds[:, 1] = np.linalg.norm(ca - c, axis=1)
    angles[:, 0] = _angle(n, ca, c)
    if r > 1:
        same = np.array([chains[i] == chains[i + 1] for i in range(r - 1)])
        nxt_n, nxt_ca = n[1:], ca[1:]
        bonds[:-1, 2] = np.where(same, np.linalg.norm(c[:-1] - nxt_n, axis=1), np.nan)
        angles[:-1, 1] = np.where(same, _angle(ca[:-1], c[:-1], nxt_n), np.nan)
        angles[:-1, 2] = np.where(same, _angle(c[:-1], nxt_n, nxt_ca), np.nan)
    return bonds, angles


def tracing_scores(model: Structure, reference: Structure, pairs: np.ndarray | None = None) -> dict[str, float]:
    """Scores of ``model`` against ``reference`` as placed (see the module docstring).

    ``pairs`` ``(P, 2)``: rows of model and reference residues (in :func:`backbone_table` order)
    that correspond, for the bond and angle losses; without it those are not computed.
    """
    mb, mnames, mchains = backbone_table(model)
    rb, rnames, rchains = backbone_table(reference)
    out: dict[str, float] = {"reference_residues": float(len(rb)), "model_residues": float(len(mb))}
    m_ca = mb[:, 1]
    ok = np.isfinite(m_ca).all(axis=1)
    if len(rb) == 0 or not ok.any():
        out.update(ca_within_3A=0.0, sequence_match=float("nan"))
        return out
    tree = cKDTree(m_ca[ok])
    d, j = tree.query(rb[:, 1])
    near = d <= WITHIN_A
    model_rows = np.flatnonzero(ok)[j]
    out["ca_within_3A"] = float(near.mean())
    out["sequence_match"] = (
        float(np.mean([mnames[model_rows[i]] == rnames[i] for i in np.flatnonzero(near)]))
        if near.any()
        else float("nan")
    )
    if pairs is not None and len(pairs):
        mbond, mang = backbone_geometry(mb, mchains)
        rbond, rang = backbone_geometry(rb, rchains)
        p = np.asarray(pairs, dtype=np.int64)
        out["bond_loss_A"] = float(np.nanmean(np.abs(mbond[p[:, 0]] - rbond[p[:, 1]])))
        out["angle_loss_rad"] = float(np.nanmean(np.abs(mang[p[:, 0]] - rang[p[:, 1]])))
    return out
