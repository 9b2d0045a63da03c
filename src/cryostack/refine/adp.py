"""Isotropic B-factor (ADP) refinement against the map, after the coordinates.

Refined coordinates alone leave whatever B-factors the input carried: for a predicted model
these are confidence scores (pLDDT), not atomic displacements, and the validation CCs, which
simulate the model with its B-factors as phenix does, then judge a blur that has nothing to do
with the map. This step fits one B per polymer residue plus a side-chain increment (both ≥ 0,
Å²) by maximising the correlation of the model map with the map over the objective's mask.

The model map is the validation's (:func:`cryostack.density.simulate.fcalc_map`: atoms with
their B-factors and occupancies, Fourier-truncated at ``1/resolution``), differentiable in B. Neighbouring residues' B are tied by a weak restraint (differences of
:data:`NEIGHBOUR_SD_A2` cost one unit, like a z-score), so that B varies smoothly along the chain
and poorly defined residues borrow from their neighbours. Ligands, waters and other fixed atoms
keep their B-factors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cryostack.density.simulate import fcalc_map
from cryostack.io.models import DNA, PROTEIN, RNA
from cryostack.refine.objective import pearson

#: B steps tried for the starting global B (Å²).
GLOBAL_B_GRID_A2 = (0.0, 10.0, 20.0, 35.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0)
#: Spread of B between sequence neighbours that costs one unit (Å²).
NEIGHBOUR_SD_A2 = 15.0
#: Weight of the neighbour restraint against 1 − CC (per residue pair, averaged).
NEIGHBOUR_WEIGHT = 0.002
#: Main-chain atom names (protein and nucleic acid backbone); everything else is "side chain".
_MAIN = frozenset(
    {"N", "CA", "C", "O", "OXT", "P", "OP1", "OP2", "O5'", "C5'", "C4'", "O4'", "C3'", "O3'", "C2'", "O2'", "C1'"}
)
#: B (Å²) steps are taken in units of this, so Adam's step is in a sensible range.
_SCALE_A2 = 10.0


@dataclass
class AdpResult:
    """``b_factors`` ``(N,)`` Å² for every atom (objective order); CC before and after the fit."""

    b_factors: np.ndarray
    cc_before: float
    cc_after: float
    global_b_A2: float
    steps: int

    def to_dict(self) -> dict:
        b = self.b_factors
        return {
            "cc_before": self.cc_before,
            "cc_after": self.cc_after,
            "global_b_A2": self.global_b_A2,
            "steps": self.steps,
            "b_min_A2": float(b.min()),
            "b_mean_A2": float(b.mean()),
            "b_max_A2": float(b.max()),
        }


def refine_b_factors(objective, coords: torch.Tensor, *, steps: int = 100, lr: float = 0.2) -> AdpResult:
    """Fit per-residue B (main chain) and a side-chain increment at fixed ``coords`` ``(N, 3)`` Å.

    Uses the objective's map sub-box, mask and normalised target. Returns B for every atom in the
    objective's order (fixed and non-polymer atoms keep theirs; hydrogens get their residue's).
    """
    arr = objective.atoms
    dev = objective.device
    x = coords.detach().to(dev, torch.float32)
    heavy = objective._heavy
    z = objective._z[heavy]
    grid = objective.box.grid
    res_A = objective.resolution_A
    mask, target = objective.mask, objective.target
    b_in = torch.as_tensor(np.clip(arr.b_factors, 0.0, None), dtype=torch.float32, device=dev)
    occ = torch.as_tensor(arr.occupancies, dtype=torch.float32, device=dev)[heavy]

    polymer_res = np.isin(arr.residue_class, (PROTEIN, DNA, RNA))
    fitted = torch.as_tensor(polymer_res[arr.residue_index], device=dev) & objective.movable
    ri = torch.as_tensor(arr.residue_index, device=dev)
    side = torch.as_tensor(np.array([n not in _MAIN for n in arr.atom_names]), device=dev)
    n_res = len(arr.residue_names)

    def cc_of(b_all: torch.Tensor) -> torch.Tensor:
        return pearson(fcalc_map(x[heavy], z, b_all[heavy], grid, res_A, occupancies=occ)[mask], target)

    with torch.no_grad():
        cc_before = float(cc_of(b_in))
        # A global B for the fitted atoms first: a coarse search, so Adam starts in the right basin.
        trials = [(float(cc_of(torch.where(fitted, torch.full_like(b_in, b), b_in))), b) for b in GLOBAL_B_GRID_A2]
    b0 = max(trials)[1]

    inv = lambda b: float(np.log(np.expm1(max(b, 1e-3) / _SCALE_A2)))  # noqa: E731  (softplus⁻¹)
    p_main = torch.full((n_res,), inv(b0), device=dev, requires_grad=True)
    p_side = torch.full((n_res,), inv(1.0), device=dev, requires_grad=True)
    opt = torch.optim.Adam([p_main, p_side], lr=lr)
    chain = torch.as_tensor(arr.residue_chain, device=dev)
    neighbours = (chain[1:] == chain[:-1]) & torch.as_tensor(polymer_res[1:] & polymer_res[:-1], device=dev)

    def b_all() -> tuple[torch.Tensor, torch.Tensor]:
        b_main = _SCALE_A2 * torch.nn.functional.softplus(p_main)
        b_res = b_main[ri] + torch.where(side, _SCALE_A2 * torch.nn.functional.softplus(p_side)[ri], 0.0)
        return torch.where(fitted, b_res, b_in), b_main

    best: tuple[float, torch.Tensor | None] = (-2.0, None)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        b, b_main = b_all()
        cc = cc_of(b)
        d = (b_main[1:] - b_main[:-1])[neighbours] / NEIGHBOUR_SD_A2
        loss = (1.0 - cc) + NEIGHBOUR_WEIGHT * (d * d).mean() if d.numel() else 1.0 - cc
        if float(cc.detach()) > best[0]:
            best = (float(cc.detach()), b.detach().clone())
        loss.backward()
        opt.step()
    with torch.no_grad():
        b, _ = b_all()
        cc_end = float(cc_of(b))
    if cc_end > best[0]:
        best = (cc_end, b.detach().clone())
    cc_after, b_best = best
    # Never hand back a worse fit than the input B-factors; with no defined CC at all (an empty
    # mask: every CC is NaN, so nothing beat the -2 start) the input B-factors stay too.
    if b_best is None or not cc_after > cc_before:
        cc_after, b_best = cc_before, b_in
    return AdpResult(
        b_factors=b_best.cpu().numpy().astype(np.float32),
        cc_before=cc_before,
        cc_after=cc_after,
        global_b_A2=float(b0),
        steps=steps,
    )
