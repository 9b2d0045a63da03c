"""Discrete peptide-plane turns for Ramachandran outliers: the backbone's counterpart of rotamer fitting.

A backbone that starts 0.5–1 Å off (a docked or predicted model, a noisy start) leaves some
residues with φ or ψ in the empty parts of the Ramachandran plot, and gradient steps do not bring
them back. The prior is flat there (the Top8000 tables hold no data to give a slope), its weight
is a mean over all residues, so one outlier costs the objective little, and turning a peptide
plane by 100° or more passes through strained, clashing states that every step refuses. On the
damaged benchmark starts 5–6 % of residues stayed outliers after refinement.

So, like :mod:`cryostack.refine.rotamer_fit` for side chains, each outlier gets discrete moves:
each of the two peptide planes that carry its φ and ψ (atoms C(i−1), O(i−1), N(i), and C(i),
O(i), N(i+1)) is turned rigidly about the axis through its two flanking Cα atoms, in
:data:`TURN_STEP_DEG` steps round the circle. The turn keeps the peptide's own bonds and angles
and moves φ of one residue and ψ of the other together (a "peptide flip" at 180°). Candidates
that leave either residue an outlier are dropped; of the rest, the map decides: the one with the
best density fit plus contacts (the same density and clash terms as the objective) is taken,
if it fits the map at least about as well as the outlier did (:data:`DENSITY_TOLERANCE`). The
bond angles at the two Cα atoms are strained by the turn, so the caller polishes the model and
keeps it by the total loss, as after rotamer fitting.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from cryostack.chem.ramachandran import CATEGORIES, classify, score
from cryostack.geometry.ramachandran_prior import phi_psi

#: Step of the trial turns of a peptide plane about its Cα–Cα axis (degrees).
TURN_STEP_DEG = 30.0
#: A turn is taken only if the density term (weighted, 1 − CC units × weight) rises by at most
#: this fraction of its weight: the map must not clearly prefer the outlier.
DENSITY_TOLERANCE = 0.0005


def _outlier_flags(rama, x: torch.Tensor, rows: list[int] | None = None) -> dict[int, bool]:
    """``{row: is outlier}`` of Ramachandran rows ``rows`` (all by default) at ``x`` (validation's rule)."""
    with torch.no_grad():
        phi, psi = phi_psi(x, rama)
    phi_deg, psi_deg = np.degrees(phi.cpu().numpy()), np.degrees(psi.cpu().numpy())
    cats = rama.category.cpu().numpy()
    out = {}
    for k in range(len(cats)) if rows is None else rows:
        cat = CATEGORIES[cats[k]]
        out[k] = classify(cat, score(cat, phi_deg[k], psi_deg[k])) == "outlier"
    return out


def rama_outliers(objective, x: torch.Tensor) -> list[int]:
    """Rows of ``objective.rama`` whose (φ, ψ) at ``x`` are Ramachandran outliers."""
    if objective.rama.category.numel() == 0:
        return []
    return [k for k, bad in _outlier_flags(objective.rama, x).items() if bad]


def _tables(objective) -> tuple[dict, dict[int, int], np.ndarray]:
    """The objective's atom look-up ``(residue, name) → atom``, Ramachandran row of each residue and
    movable mask, built once per objective (every outlier's planes are looked up in them)."""
    cached = objective.__dict__.get("_peptide_tables")
    if cached is None:
        row_of = {int(r): i for i, r in enumerate(objective.rama.residue.cpu().tolist())}
        cached = (objective.atoms.atom_lookup(), row_of, objective.movable.cpu().numpy())
        objective.__dict__["_peptide_tables"] = cached
    return cached


def _peptides(objective, k: int) -> list[tuple[int, int, list[int], list[int]]]:
    """The peptide planes of Ramachandran row ``k``: ``(Cα before, Cα after, [C, O, N], rows whose
    φ/ψ the turn changes)``, for the plane before the residue and the plane after; planes with an
    atom missing or fixed, or ending in a proline's N, are left out."""
    arr = objective.atoms
    lookup, row_of, movable = _tables(objective)
    c_prev, n_i, ca_i, c_i = (int(v) for v in objective.rama.phi_index[k])
    n_next = int(objective.rama.psi_index[k, 3])
    r = int(arr.residue_index[ca_i])
    out = []
    for ca_a, c, n, ca_b, res_a, res_b in (
        (lookup.get((r - 1, "CA")), c_prev, n_i, ca_i, r - 1, r),
        (ca_i, c_i, n_next, lookup.get((r + 1, "CA")), r, r + 1),
    ):
        o = lookup.get((int(arr.residue_index[c]), "O"))
        # A proline's N is bonded into its ring (N–CD): turning it would break the ring.
        if ca_a is None or ca_b is None or o is None or arr.residue_names[int(arr.residue_index[n])] == "PRO":
            continue
        atoms = [c, o, n]
        if all(movable[a] for a in atoms):
            rows = [row_of[q] for q in (res_a, res_b) if q in row_of]
            out.append((ca_a, ca_b, atoms, rows))
    return out


def _turn(x: torch.Tensor, ca_a: int, ca_b: int, atoms: list[int], angle_rad: float) -> torch.Tensor:
    """``x`` with ``atoms`` turned by ``angle_rad`` about the axis Cα_a → Cα_b (Rodrigues)."""
    origin = x[ca_a]
    k = x[ca_b] - origin
    k = k / k.norm().clamp(min=1e-8)
    v = x[atoms] - origin
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    turned = v * c + torch.linalg.cross(k.expand_as(v), v) * s + k * (v @ k)[:, None] * (1 - c)
    y = x.clone()
    y[atoms] = origin + turned
    return y


def _map_and_contacts(objective, x: torch.Tensor) -> float:
    """Weighted density and clash terms of the objective at ``x``: what a turn is judged by."""
    w = objective.weights
    total = w.density * (1.0 - float(objective.correlation(x))) if w.density else 0.0
    if w.clash:
        total += w.clash * float(objective.clash(x))
    if objective.clash_h is not None:
        total += w.clash_h * float(objective.clash_h(objective.with_hydrogens(x)))
    return total


def fit_peptides(objective, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """``x`` with a peptide plane turned at each Ramachandran outlier where a turn clears it.

    Outliers are visited in chain order, each with the model as left by the turns before it.
    Returns the coordinates and ``{"outliers": n, "tried": candidates scored, "changed": planes
    turned}``.
    """
    outliers = rama_outliers(objective, x)
    stats = {"outliers": len(outliers), "tried": 0, "changed": 0}
    if not outliers:
        return x, stats
    angles = [math.radians(a) for a in np.arange(TURN_STEP_DEG, 360.0, TURN_STEP_DEG)]
    tolerance = DENSITY_TOLERANCE * (objective.weights.density or 1.0)
    with torch.no_grad():
        current = _map_and_contacts(objective, x)
        for k in outliers:
            if not _outlier_flags(objective.rama, x, [k])[k]:  # cleared by an earlier turn
                continue
            best = None
            for ca_a, ca_b, atoms, rows in _peptides(objective, k):
                for angle in angles:
                    y = _turn(x, ca_a, ca_b, atoms, angle)
                    if any(_outlier_flags(objective.rama, y, rows).values()):
                        continue
                    value = _map_and_contacts(objective, y)
                    stats["tried"] += 1
                    if value <= current + tolerance and (best is None or value < best[0]):
                        best = (value, y)
            if best is not None:
                current, x = best
                stats["changed"] += 1
    return x, stats
