"""Optimiser-independent stages of refinement, shared by the direct and diffusion optimisers.

* :func:`place` — bring the model into its density before per-atom refinement: rigid groups
  and a few Adam recycles against the map blurred to max(8 Å, 1.5 × resolution)
  (:mod:`cryostack.refine.coarse`), which reach domains displaced by more than the map's
  resolution, then a rigid-body fit at full resolution. The movable atoms are split into
  spatial groups (k-means on residue centres within each chain) and each group's rotation and
  translation are fitted to the objective, which places a roughly positioned model or shifted
  domains far faster than per-atom steps can. At low resolution the groups go from large to
  small (:data:`COARSE_GROUP_RESIDUES`): large groups move whole domains without being pulled
  apart, and smaller ones then fix the parts a large group straddled (a domain boundary rarely
  falls on a k-means boundary). At full resolution one set of about
  :data:`RESIDUES_PER_GROUP` residues per group.
* :func:`fit_rotamers_and_polish` — Adam cannot carry a side chain from one rotamer well to
  another, so the best model goes through :func:`~cryostack.refine.rotamer_fit.fit_rotamers`
  (non-favoured side chains put into their best-scoring Top8000 rotamer) and one short polishing
  pass by the optimiser itself, so bonds, angles and the new side chains settle into the
  density. The polished model is returned unless its total loss exceeds the best earlier loss by
  more than the density-term equivalent of :data:`FIT_CC_TOLERANCE` of correlation: a rotamer
  outlier that the map prefers by a hair is more likely a density artefact than a real strained
  side chain, and a structural biologist would take the validated rotamer for a map fit that is
  the same within noise; a larger loss means the fit went wrong (the map really holds the
  unusual conformation). The first fit moves every rotamer outlier; if that is rejected, a
  second one lets the outliers the density prefers stay, and if that too is rejected the
  earlier model is kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from scipy.cluster.vq import kmeans2

from cryostack.refine.api import RecycleRecord, RefineConfig, recycle_cc, terms_as_floats
from cryostack.refine.coarse import coarse_objective, coarse_resolution_A
from cryostack.refine.objective import RefinementObjective
from cryostack.refine.peptide_fit import fit_peptides
from cryostack.refine.rotamer_fit import fit_rotamers

#: Residues per rigid group in the full-resolution rigid-body stage.
RESIDUES_PER_GROUP = 60
#: Residues per rigid group in the successive rigid fits of the coarse stage. On 6 simulated
#: 3 Å cases with two halves shifted 2–5 Å, (120, 40) after refinement gave CC_mask 0.643 and
#: RMSD to the truth 1.39 Å, against 0.563 / 1.78 Å for one fit with 60. A third pass with ~15
#: residues per group (0.640 / 1.45 Å) pulled short segments apart: lDDT to the deposited model
#: fell on the spike NTD (0.965 → 0.927) and F-actin (0.919 → 0.879) examples.
COARSE_GROUP_RESIDUES = (120, 40)
#: Step sizes of the rigid-body stage's Adam (Å, radians).
RIGID_LR_A, RIGID_LR_RAD = 0.1, 0.01
#: The rotamer-fitted, polished model is returned if its total loss is at most the best earlier
#: loss plus the density weight times this (a correlation difference, dimensionless).
FIT_CC_TOLERANCE = 0.002


def rigid_groups(
    objective: RefinementObjective, seed: int = 0, residues_per_group: int = RESIDUES_PER_GROUP
) -> torch.Tensor:
    """Group id ``(N,)`` of every movable atom (−1 for fixed atoms): spatial k-means per chain,
    about ``residues_per_group`` residues per group."""
    arr = objective.atoms
    movable = objective.movable.cpu().numpy()
    n_res = len(arr.residue_names)
    centres = np.zeros((n_res, 3))
    np.add.at(centres, arr.residue_index, arr.coords.astype(np.float64))
    centres /= np.bincount(arr.residue_index, minlength=n_res).clip(min=1)[:, None]
    res_movable = np.zeros(n_res, dtype=bool)
    res_movable[arr.residue_index[movable]] = True
    group_of_res = np.full(n_res, -1, dtype=np.int64)
    next_id = 0
    rng = np.random.default_rng(seed)
    for c in range(len(arr.chain_ids)):
        res = np.nonzero(res_movable & (arr.residue_chain == c))[0]
        if len(res) == 0:
            continue
        k = max(1, int(round(len(res) / residues_per_group)))
        labels = np.zeros(len(res), dtype=np.int64) if k == 1 else kmeans2(centres[res], k, seed=rng, minit="++")[1]
        _, labels = np.unique(labels, return_inverse=True)
        group_of_res[res] = labels + next_id
        next_id += int(labels.max()) + 1
    groups = np.where(movable, group_of_res[arr.residue_index], -1)
    return torch.as_tensor(groups, device=objective.device)


def _rotation(v: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(G, 3, 3)`` from rotation vectors ``(G, 3)`` (radians), Rodrigues."""
    theta = v.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    k = v / theta
    K = torch.zeros(v.shape[0], 3, 3, dtype=v.dtype, device=v.device)
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -k[:, 2], k[:, 1], -k[:, 0]
    K = K - K.transpose(1, 2)
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand_as(K)
    s, c = torch.sin(theta)[..., None], torch.cos(theta)[..., None]
    return eye + s * K + (1 - c) * (K @ K)


def rigid_fit(
    objective: RefinementObjective,
    x0: torch.Tensor,
    steps: int,
    seed: int = 0,
    residues_per_group: int = RESIDUES_PER_GROUP,
) -> torch.Tensor:
    """Coordinates after fitting one rotation and translation per rigid group to the objective."""
    groups = rigid_groups(objective, seed, residues_per_group)
    sel = groups >= 0
    g = groups[sel]
    n_groups = int(g.max()) + 1 if g.numel() else 0
    if n_groups == 0 or steps <= 0:
        return x0
    pts = x0[sel]
    centre = torch.zeros(n_groups, 3, dtype=x0.dtype, device=x0.device).index_add_(0, g, pts)
    centre = centre / torch.bincount(g, minlength=n_groups).clamp(min=1)[:, None].to(x0.dtype)
    rot = torch.full((n_groups, 3), 1e-6, dtype=x0.dtype, device=x0.device, requires_grad=True)
    trans = torch.zeros(n_groups, 3, dtype=x0.dtype, device=x0.device, requires_grad=True)
    opt = torch.optim.Adam([{"params": [trans], "lr": RIGID_LR_A}, {"params": [rot], "lr": RIGID_LR_RAD}])

    def coords() -> torch.Tensor:
        r = _rotation(rot)[g]
        moved = (r @ (pts - centre[g])[..., None]).squeeze(-1) + centre[g] + trans[g]
        x = x0.clone()
        x[sel] = moved
        return x

    best, best_x = None, x0
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        x = coords()
        loss, _ = objective(x)
        value = float(loss.detach())
        if best is None or value < best:
            best, best_x = value, x.detach()
        loss.backward()
        opt.step()
    return best_x


def place(objective: RefinementObjective, start: torch.Tensor, config: RefineConfig) -> torch.Tensor:
    """``(N, 3)`` Å: ``start`` after the coarse stage (``config.coarse_recycles``: rigid groups,
    then that many Adam recycles, against the density blurred to :func:`coarse_resolution_A`) and
    the full-resolution rigid-body fit (``config.rigid_steps``). Nothing here is kept by loss; the
    per-atom stages that follow decide."""
    x0 = start
    if config.coarse_recycles:
        coarse = coarse_objective(objective, coarse_resolution_A(objective.resolution_A))
        for size in COARSE_GROUP_RESIDUES if config.rigid_steps else ():
            x0 = rigid_fit(coarse, x0, config.rigid_steps, config.seed, size)
        x0 = adam_steps(coarse, x0, config.coarse_recycles * config.steps_per_recycle, config.lr)
    return rigid_fit(objective, x0, config.rigid_steps, config.seed) if config.rigid_steps else x0


def adam_steps(
    objective: RefinementObjective, x0: torch.Tensor, steps: int, lr: float, *, decay_to_zero: bool = False
) -> torch.Tensor:
    """``(N, 3)`` coordinates after ``steps`` Adam steps on the movable atoms from ``x0``;
    ``decay_to_zero`` lets the step fall linearly to zero (the last moves too small to disturb
    settled geometry)."""
    movable = objective.movable
    delta = torch.zeros_like(x0[movable], requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)

    def coords() -> torch.Tensor:
        x = x0.clone()
        x[movable] = x0[movable] + delta
        return x

    for step in range(steps):
        if decay_to_zero:
            for group in opt.param_groups:
                group["lr"] = lr * (1.0 - step / steps)
        opt.zero_grad(set_to_none=True)
        loss, _ = objective(coords())
        loss.backward()
        opt.step()
    with torch.no_grad():
        return coords()


def record(objective, x: torch.Tensor, history: list, stage: str, progress) -> RecycleRecord:
    """Evaluate ``x``, append its :class:`RecycleRecord` (``stage``) to ``history`` and report it."""
    with torch.no_grad():
        loss, terms = objective(x)
    rec = RecycleRecord(len(history), float(loss), terms_as_floats(terms), recycle_cc(objective, x, terms), stage)
    history.append(rec)
    if progress is not None:
        progress(rec.recycle, rec.loss, rec.terms, rec.cc, stage=stage)
    return rec


def fit_rotamers_and_polish(
    objective: RefinementObjective,
    best_x: torch.Tensor,
    best_loss: float,
    best_recycle: int,
    history: list,
    progress,
    polish: Callable[[torch.Tensor], torch.Tensor],
):
    """Rotamer fitting on ``best_x``, then ``polish(fitted) → (N, 3)`` (one short pass of the
    optimiser's own); returns the model to keep, its history index and the fitting stats (with
    ``kept``: whether the fitted model was returned)."""
    t0 = time.perf_counter()
    # First every outlier leaves its conformation; if the map rejects that as a whole, the
    # outliers the density prefers may stay (a second, lenient fit).
    for keep_outliers in (False, True):
        fitted, stats = fit_rotamers(objective, best_x, keep_outliers=keep_outliers)
        stats["fit_s"] = time.perf_counter() - t0
        stats["kept"] = False
        stats["outliers_kept_as_candidates"] = keep_outliers
        if stats["changed"] == 0:
            return best_x, best_recycle, stats
        polished, rec, kept = _polish_and_judge(objective, fitted, "rotamer_fit", best_loss, history, progress, polish)
        stats["fit_and_polish_s"] = time.perf_counter() - t0
        if kept:
            stats["kept"] = True
            return polished, rec.recycle, stats
    return best_x, best_recycle, stats


def _polish_and_judge(
    objective: RefinementObjective,
    fitted: torch.Tensor,
    stage: str,
    best_loss: float,
    history: list,
    progress,
    polish: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, RecycleRecord, bool]:
    """Record ``fitted`` (as ``stage``), polish it and record that; returns the polished model, its
    record and whether to keep it: its total loss is at most ``best_loss`` plus the density weight
    times :data:`FIT_CC_TOLERANCE`."""
    record(objective, fitted, history, stage, progress)
    polished = polish(fitted)
    rec = record(objective, polished, history, "polish", progress)
    w = getattr(objective.weights, "density", 1.0) or 1.0
    return polished, rec, rec.loss <= best_loss + w * FIT_CC_TOLERANCE


def fit_peptides_and_polish(
    objective: RefinementObjective,
    best_x: torch.Tensor,
    best_loss: float,
    best_recycle: int,
    history: list,
    progress,
    polish: Callable[[torch.Tensor], torch.Tensor],
):
    """Peptide-plane turns for Ramachandran outliers (:func:`~cryostack.refine.peptide_fit.fit_peptides`),
    then ``polish``; returns the model to keep, its history index, its loss and the stats
    (``kept``), kept by the same rule as :func:`fit_rotamers_and_polish`."""
    t0 = time.perf_counter()
    fitted, stats = fit_peptides(objective, best_x)
    stats["kept"] = False
    stats["fit_s"] = time.perf_counter() - t0
    if stats["changed"] == 0:
        return best_x, best_recycle, best_loss, stats
    polished, rec, kept = _polish_and_judge(objective, fitted, "peptide_fit", best_loss, history, progress, polish)
    stats["fit_and_polish_s"] = time.perf_counter() - t0
    if kept:
        stats["kept"] = True
        return polished, rec.recycle, rec.loss, stats
    return best_x, best_recycle, best_loss, stats
