"""Isotropic B-factor (ADP) refinement against the map, after the coordinates.

Refined coordinates alone leave whatever B-factors the input carried: for a predicted model
these are confidence scores (pLDDT), not atomic displacements, and the validation CCs, which
simulate the model with its B-factors as phenix does, then judge a blur that has nothing to do
with the map. This step fits one B per polymer heavy atom (Å²) by maximising the correlation of
the model map with the map over the objective's mask.

The model map is the validation's (:func:`cryostack.density.simulate.fcalc_map`: atoms with
their B-factors and occupancies, Fourier-truncated at ``1/resolution``), differentiable in B.

A free per-atom fit is ill-posed: on real maps it drove B to 0 for some atoms and to several
hundred Å² for their bonded neighbours (side chains absorbing whatever density was missing).
So the fit is

- **bounded**: every fitted B lies in ``[floor, ceiling]`` by construction (a sigmoid between
  the two), see :func:`b_bounds_A2` for the rule;
- **restrained**: bonded atoms get similar B, a harmonic term on ``(B_i − B_j) / σ_ij`` with
  ``σ_ij = SIMILARITY_SD_MIN_A2 + SIMILARITY_SD_FRACTION · mean(B_i, B_j)``, so that the allowed
  step grows with B (a mobile side chain's tip may differ from its Cβ by more Å² than a
  well-ordered backbone), as in the ADP similarity restraints of REFMAC and phenix; plus a weak
  pull of each atom to its residue's mean B, so that poorly defined atoms borrow from their
  residue;
- **reported**: the B distribution before and after (all, main chain, side chain) goes into the
  result (:meth:`AdpResult.to_dict`).

Ligands, waters and other fixed atoms keep their B-factors; hydrogens take the B of the heavy
atom they are bonded to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from cryostack.density.sharpen import guinier_bfactor
from cryostack.density.simulate import fcalc_map
from cryostack.io.models import DNA, PROTEIN, RNA
from cryostack.refine.objective import DENSITY_CUTOFF, pearson

#: Global B steps (Å²) tried for the starting B; those outside the bounds are clipped onto them.
GLOBAL_B_GRID_A2 = (0.0, 10.0, 20.0, 35.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0)
#: Floor of the fitted B per Å² of resolution² (floor = this × d², see :func:`b_bounds_A2`).
FLOOR_PER_RESOLUTION2 = 2.0
#: Floor as a fraction of the map's own Guinier B when the map is not sharpened (see :func:`b_bounds_A2`).
FLOOR_GUINIER_FRACTION = 0.25
#: Ceiling of the fitted B (Å²): beyond this an atom contributes no density at any resolution
#: cryo-EM models are built at, and the value only records that the atom is not in the map.
CEILING_A2 = 400.0
#: ADP similarity of bonded atoms: σ(ΔB) = SD_MIN + FRACTION × mean B of the pair (Å²).
SIMILARITY_SD_MIN_A2 = 2.0
SIMILARITY_SD_FRACTION = 0.3
#: Weight of the bonded-similarity term (mean z² over bonds) against 1 − CC.
SIMILARITY_WEIGHT = 0.1
#: Weak pull of each atom to its residue's mean B: σ = RESIDUE_SD_FRACTION × residue mean (Å²).
RESIDUE_SD_FRACTION = 0.5
#: Weight of the residue-mean pull (mean z² over fitted atoms) against 1 − CC.
RESIDUE_WEIGHT = 0.0005
#: Main-chain atom names (protein and nucleic acid backbone); everything else is "side chain".
_MAIN = frozenset(
    {"N", "CA", "C", "O", "OXT", "P", "OP1", "OP2", "O5'", "C5'", "C4'", "O4'", "C3'", "O3'", "C2'", "O2'", "C1'"}
)
#: Percentiles of the reported B distribution.
_PERCENTILES = (5, 25, 50, 75, 95)


def b_bounds_A2(resolution_A: float, map_guinier_b_A2: float | None = None) -> tuple[float, float]:
    """``(floor, ceiling)`` Å² of the fitted B for a map at ``resolution_A`` Å.

    Rule: ``floor = max(FLOOR_PER_RESOLUTION2 · d², FLOOR_GUINIER_FRACTION · B_map)`` with
    ``B_map`` the map's Guinier B (:func:`cryostack.density.sharpen.guinier_bfactor`, taken as 0
    when negative or unknown); ``ceiling = max(CEILING_A2, 2 · floor)``.

    Why: an atom's B attenuates its amplitude at the resolution limit ``s = 1/d`` by
    ``exp(−B / (4 d²))``; with ``B = 2 d²`` that is ``e^(−1/2) ≈ 0.6``. Below it the model map,
    cut at ``1/d``, hardly changes with B, so the map does not determine B there, and a
    sharpened map (whose fall-off was flattened by post-processing) pulls the fit towards 0 for
    reasons that have nothing to do with the atoms. The resolution term does not look at the
    map's amplitudes, so sharpening cannot move it. When the map is not sharpened its own fall-off
    ``B_map`` (atoms plus imaging envelope) is a second, map-tied bound: an atom sharper than a
    quarter of the whole map's blur is implausible; a sharpened map has ``B_map ≈ 0`` and only the
    resolution term applies. The ceiling keeps disordered atoms at a finite, plausible B.
    """
    floor = FLOOR_PER_RESOLUTION2 * float(resolution_A) ** 2
    if map_guinier_b_A2 is not None and np.isfinite(map_guinier_b_A2):
        floor = max(floor, FLOOR_GUINIER_FRACTION * max(float(map_guinier_b_A2), 0.0))
    return floor, max(CEILING_A2, 2.0 * floor)


def b_distribution(b_A2: np.ndarray, main_chain: np.ndarray, atoms: np.ndarray) -> dict[str, dict[str, float]]:
    """Min, 5/25/50/75/95th percentiles and max of ``b_A2`` over ``atoms`` (bool), for all of
    them and split into main chain / side chain (``main_chain`` bool); empty groups are left out."""
    out: dict[str, dict[str, float]] = {}
    for name, sel in (("all", atoms), ("main_chain", atoms & main_chain), ("side_chain", atoms & ~main_chain)):
        b = np.asarray(b_A2, dtype=np.float64)[sel]
        if b.size == 0:
            continue
        q = np.percentile(b, _PERCENTILES)
        out[name] = {
            "n": int(b.size),
            "min": float(b.min()),
            **{f"p{p:02d}": float(v) for p, v in zip(_PERCENTILES, q, strict=True)},
            "max": float(b.max()),
        }
    return out


def similarity_loss(b_A2: torch.Tensor, bonds: torch.Tensor) -> torch.Tensor:
    """Mean ``z²`` of the bonded ADP similarity restraint, ``z = (B_i − B_j) / σ_ij``.

    ``b_A2`` ``(N,)`` Å²; ``bonds`` ``(M, 2)`` atom indices. ``σ_ij`` is computed from the current
    B without gradient: letting the gradient flow through σ would reward raising B just to
    loosen the restraint.
    """
    if bonds.numel() == 0:
        return b_A2.new_zeros(())
    bi, bj = b_A2[bonds[:, 0]], b_A2[bonds[:, 1]]
    sd = SIMILARITY_SD_MIN_A2 + SIMILARITY_SD_FRACTION * 0.5 * (bi + bj).detach()
    z = (bi - bj) / sd
    return (z * z).mean()


@dataclass
class AdpResult:
    """``b_factors`` ``(N,)`` Å² for every atom (objective order); CC before and after the fit;
    the bounds used and the B distribution of the fitted atoms before and after."""

    b_factors: np.ndarray
    cc_before: float
    cc_after: float
    global_b_A2: float
    steps: int
    b_floor_A2: float = 0.0
    b_ceiling_A2: float = float("inf")
    map_guinier_b_A2: float | None = None
    #: ``{"before": {...}, "after": {...}}``, each from :func:`b_distribution`.
    distribution: dict = field(default_factory=dict)
    #: RMS of ΔB over bonds between fitted atoms, before and after (Å²).
    bonded_delta_b_rms_A2: tuple[float, float] = (float("nan"), float("nan"))
    #: True when the bounded input B-factors fitted better than the fit and were kept.
    kept_input: bool = False

    def to_dict(self) -> dict:
        after = self.distribution.get("after", {}).get("all", {})
        return {
            "cc_before": self.cc_before,
            "cc_after": self.cc_after,
            "global_b_A2": self.global_b_A2,
            "steps": self.steps,
            "b_floor_A2": self.b_floor_A2,
            "b_ceiling_A2": self.b_ceiling_A2,
            "map_guinier_b_A2": self.map_guinier_b_A2,
            # Flat numbers of the fitted atoms after the fit (shown as they are in the report).
            "b_min_A2": after.get("min", float("nan")),
            "b_median_A2": after.get("p50", float("nan")),
            "b_mean_A2": float(self.b_factors.mean()) if self.b_factors.size else float("nan"),
            "b_max_A2": after.get("max", float("nan")),
            "bonded_delta_b_rms_before_A2": self.bonded_delta_b_rms_A2[0],
            "bonded_delta_b_rms_after_A2": self.bonded_delta_b_rms_A2[1],
            "kept_input": self.kept_input,
            "b_distribution_A2": self.distribution,
        }


def refine_b_factors(
    objective,
    coords: torch.Tensor,
    *,
    steps: int = 100,
    lr: float = 0.1,
    similarity_weight: float = SIMILARITY_WEIGHT,
    residue_weight: float = RESIDUE_WEIGHT,
    bounds_A2: tuple[float, float] | None = None,
    cutoff: float = DENSITY_CUTOFF,
) -> AdpResult:
    """Fit one B per polymer heavy atom at fixed ``coords`` ``(N, 3)`` Å, bounded and restrained.

    Uses the objective's map sub-box, mask and normalised target. ``bounds_A2`` overrides the
    ``(floor, ceiling)`` of :func:`b_bounds_A2`. Returns B for every atom in the objective's
    order (fixed and non-polymer atoms keep theirs; hydrogens get their bonded heavy atom's).
    ``cutoff``: the model map's atom truncation; the objective's 10⁻³ gives the same B as the
    simulator's default 10⁻⁵ (0.3 Å² RMS on 4uft) in two thirds of the time.
    """
    arr = objective.atoms
    dev = objective.device
    x = coords.detach().to(dev, torch.float32)
    heavy = objective._heavy
    z = objective._z[heavy]
    grid = objective.box.grid
    res_A = objective.resolution_A
    mask, target = objective.mask, objective.target

    guinier: float | None
    try:
        guinier = guinier_bfactor(objective.box, res_A).b_factor_A2
    except ValueError:  # a box too small for a Guinier fit: the resolution term alone
        guinier = None
    floor, ceiling = bounds_A2 if bounds_A2 is not None else b_bounds_A2(res_A, guinier)
    if not 0.0 <= floor < ceiling:
        raise ValueError(f"B bounds must satisfy 0 ≤ floor < ceiling, got ({floor}, {ceiling}) Å²")

    b_in = torch.as_tensor(np.clip(arr.b_factors, 0.0, None), dtype=torch.float32, device=dev)
    occ = torch.as_tensor(arr.occupancies, dtype=torch.float32, device=dev)[heavy]
    polymer_res = np.isin(arr.residue_class, (PROTEIN, DNA, RNA))
    fitted = torch.as_tensor(polymer_res[arr.residue_index], device=dev) & objective.movable & heavy
    ri = torch.as_tensor(arr.residue_index, device=dev)
    n_res = len(arr.residue_names)
    main_np = np.array([n in _MAIN for n in arr.atom_names], dtype=bool)
    fitted_np = fitted.cpu().numpy()

    # Bonds for the similarity term: between two fitted atoms (a bond to a fixed atom would
    # pull towards a B this step does not own). Hydrogens ride on their heavy atom.
    bonds = objective.restraints.bond_index.to(dev)
    both = fitted[bonds[:, 0]] & fitted[bonds[:, 1]] if bonds.numel() else torch.zeros(0, dtype=torch.bool)
    fit_bonds = bonds[both] if bonds.numel() else bonds.reshape(0, 2)
    rider = torch.arange(arr.n_atoms, device=dev)
    if bonds.numel():
        for h_col, heavy_col in ((0, 1), (1, 0)):
            h_to_heavy = ~heavy[bonds[:, h_col]] & fitted[bonds[:, heavy_col]]
            rider[bonds[h_to_heavy, h_col]] = bonds[h_to_heavy, heavy_col]
    rides = (~heavy) & (rider != torch.arange(arr.n_atoms, device=dev))

    def cc_of(b_all: torch.Tensor) -> torch.Tensor:
        return pearson(fcalc_map(x[heavy], z, b_all[heavy], grid, res_A, occupancies=occ, cutoff=cutoff)[mask], target)

    def bonded_rms(b_all: torch.Tensor) -> float:
        if fit_bonds.numel() == 0:
            return float("nan")
        d = b_all[fit_bonds[:, 0]] - b_all[fit_bonds[:, 1]]
        return float(torch.sqrt((d * d).mean()))

    b_in_bounded = torch.where(fitted, b_in.clamp(floor, ceiling), b_in)
    with torch.no_grad():
        cc_before = float(cc_of(b_in))
        cc_in_bounded = float(cc_of(b_in_bounded))
        # A global B for the fitted atoms first: a coarse search, so Adam starts in the right basin.
        grid_b = sorted({min(max(b, floor), ceiling) for b in GLOBAL_B_GRID_A2})
        trials = [(float(cc_of(torch.where(fitted, torch.full_like(b_in, b), b_in))), b) for b in grid_b]
    b0 = max(trials)[1]

    # B = floor + (ceiling − floor) · sigmoid(p): the bounds hold at every step, with no clamping
    # that would zero the gradient of atoms sitting on a bound.
    span = ceiling - floor
    frac0 = min(max((b0 - floor) / span, 1e-3), 1.0 - 1e-3)
    # p = residue + side-chain increment of the residue + atom. The restraints act on each atom's
    # B, but a whole residue (or side chain) can move with its own parameter: with per-atom
    # parameters only, a restrained fit crawls atom by atom and stops far from the map's optimum.
    p_res = torch.full((n_res,), float(np.log(frac0 / (1.0 - frac0))), device=dev, requires_grad=True)
    p_side = torch.zeros(n_res, device=dev, requires_grad=True)
    p_atom = torch.zeros(arr.n_atoms, device=dev, requires_grad=True)
    side = torch.as_tensor(~main_np, device=dev)
    opt = torch.optim.Adam([p_res, p_side, p_atom], lr=lr)
    counts = torch.bincount(ri[fitted], minlength=n_res).clamp(min=1).to(torch.float32)

    def b_all() -> torch.Tensor:
        p = p_res[ri] + torch.where(side, p_side[ri], 0.0) + p_atom
        b_fit = floor + span * torch.sigmoid(p)
        b = torch.where(fitted, b_fit, b_in)
        return torch.where(rides, b[rider], b)

    def residue_pull(b: torch.Tensor) -> torch.Tensor:
        bf = b[fitted]
        mean = torch.zeros(n_res, device=dev).index_add(0, ri[fitted], bf) / counts
        m = mean[ri[fitted]].detach()
        zr = (bf - mean[ri[fitted]]) / (RESIDUE_SD_FRACTION * m).clamp(min=SIMILARITY_SD_MIN_A2)
        return (zr * zr).mean() if zr.numel() else b.new_zeros(())

    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        b = b_all()
        cc = cc_of(b)
        loss = 1.0 - cc
        if similarity_weight:
            loss = loss + similarity_weight * similarity_loss(b, fit_bonds)
        if residue_weight and bool(fitted.any()):
            loss = loss + residue_weight * residue_pull(b)
        # The restraints trade a little CC for similar neighbours, so the answer is the last
        # iterate (the optimum of the restrained target), not the iterate with the best CC.
        loss.backward()
        opt.step()
    with torch.no_grad():
        b_end = b_all().detach()
        cc_end = float(cc_of(b_end))
    # Never hand back a worse fit than the input B-factors (held to the bounds); with no defined
    # CC at all (an empty mask: every CC is NaN) the bounded input B-factors stay too.
    cc_after, b_out, kept = cc_end, b_end, False
    if not cc_end > cc_in_bounded:
        cc_after, b_out, kept = cc_in_bounded, b_in_bounded, True
    b_np = b_out.cpu().numpy().astype(np.float32)
    b_start = arr.b_factors.astype(np.float32)
    return AdpResult(
        b_factors=b_np,
        cc_before=cc_before,
        cc_after=cc_after,
        global_b_A2=float(b0),
        steps=steps,
        b_floor_A2=float(floor),
        b_ceiling_A2=float(ceiling),
        map_guinier_b_A2=guinier,
        distribution={
            "before": b_distribution(b_start, main_np, fitted_np),
            "after": b_distribution(b_np, main_np, fitted_np),
        },
        bonded_delta_b_rms_A2=(bonded_rms(torch.as_tensor(b_start, device=dev)), bonded_rms(b_out)),
        kept_input=kept,
    )
