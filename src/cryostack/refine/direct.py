"""Direct coordinate optimisation (the paper's baseline): Adam on the movable atoms' positions.

A coarse stage comes first (``RefineConfig.coarse_recycles``; :mod:`cryostack.refine.coarse`):
rigid groups and a few Adam recycles against the density blurred to max(8 Å, 1.5 × resolution),
which reaches domains displaced by more than the map's resolution. Then, at full resolution, a
rigid-body stage: the movable atoms are split into spatial groups (k-means on
residue centres within each chain, about :data:`RESIDUES_PER_GROUP` residues each) and each
group's rotation and translation are fitted to the objective, which places a roughly
positioned model or shifted domains in their density far faster than per-atom steps can.
Then each recycle runs ``steps_per_recycle`` Adam steps (the step shrinking from recycle to recycle); after each recycle the total loss is
evaluated and the best coordinates so far are kept. Refinement stops after ``max_recycles`` or
when the best loss has not improved by ``min_improvement`` (relative) for ``patience`` recycles.

Rotamer fitting (``RefineConfig.fit_rotamers``): Adam cannot carry a side chain from one rotamer
well to another, so the best model then goes through :func:`~cryostack.refine.rotamer_fit.fit_rotamers`
(non-favoured side chains put into their best-scoring Top8000 rotamer) and one short polishing recycle
(``steps_per_recycle`` Adam steps, the step falling linearly from ``POLISH_LR_FACTOR × lr`` to zero)
so bonds, angles and the new side chains settle into the density. Both stages are recorded in the
history (``stage`` ``"rotamer_fit"`` and ``"polish"``). The polished model is returned unless its total
loss exceeds the best earlier loss by more than the density-term equivalent of
:data:`FIT_CC_TOLERANCE` of correlation: a rotamer outlier that the map prefers by a hair is
more likely a density artefact than a real strained side chain, and a structural biologist would
take the validated rotamer for a map fit that is the same within noise; a larger loss means the
fit went wrong (the map really holds the unusual conformation) and the earlier model is kept.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from scipy.cluster.vq import kmeans2

from cryostack.refine.api import OPTIMIZERS, RecycleRecord, RefineConfig, RefineResult, recycle_cc, terms_as_floats
from cryostack.refine.coarse import coarse_objective, coarse_resolution_A
from cryostack.refine.objective import RefinementObjective
from cryostack.refine.rotamer_fit import fit_rotamers


#: Adam's step shrinks by this factor each recycle.
LR_DECAY = 0.7
#: Residues per rigid group in the rigid-body stage.
RESIDUES_PER_GROUP = 60
#: Step sizes of the rigid-body stage's Adam (Å, radians).
RIGID_LR_A, RIGID_LR_RAD = 0.1, 0.01
#: The polishing recycle after rotamer fitting starts at this fraction of ``RefineConfig.lr``.
POLISH_LR_FACTOR = 0.2
#: The rotamer-fitted, polished model is returned if its total loss is at most the best earlier
#: loss plus the density weight times this (a correlation difference, dimensionless).
FIT_CC_TOLERANCE = 0.002


def rigid_groups(objective: RefinementObjective, seed: int = 0) -> torch.Tensor:
    """Group id ``(N,)`` of every movable atom (−1 for fixed atoms): spatial k-means per chain."""
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
        k = max(1, int(round(len(res) / RESIDUES_PER_GROUP)))
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


def rigid_fit(objective: RefinementObjective, x0: torch.Tensor, steps: int, seed: int = 0) -> torch.Tensor:
    """Coordinates after fitting one rotation and translation per rigid group to the objective."""
    groups = rigid_groups(objective, seed)
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


def optimize_direct(objective: RefinementObjective, config: RefineConfig, progress=None) -> RefineResult:
    """Refine ``objective.init_coords`` by Adam on the movable atoms; the best coordinates by loss."""
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    start = objective.init_coords.detach()
    movable = objective.movable
    x0 = _coarse_stage(objective, start, config) if config.coarse_recycles else start
    x0 = rigid_fit(objective, x0, config.rigid_steps, config.seed) if config.rigid_steps else x0
    delta = torch.zeros_like(x0[movable], requires_grad=True)
    opt = torch.optim.Adam([delta], lr=config.lr)

    def coords() -> torch.Tensor:
        x = x0.clone()
        x[movable] = x0[movable] + delta
        return x

    with torch.no_grad():
        loss, terms = objective(start)
    history = [RecycleRecord(0, float(loss), terms_as_floats(terms), recycle_cc(objective, start, terms))]
    best_loss, best_x, best_recycle = float(loss), start.clone(), 0
    if progress is not None:
        progress(0, float(loss), history[0].terms, history[0].cc)
    stale = 0
    for recycle in range(1, config.max_recycles + 1):
        # Later recycles take smaller steps: large moves first, then settle the geometry.
        for group in opt.param_groups:
            group["lr"] = config.lr * LR_DECAY ** (recycle - 1)
        for _ in range(config.steps_per_recycle):
            opt.zero_grad(set_to_none=True)
            loss, _ = objective(coords())
            loss.backward()
            opt.step()
        with torch.no_grad():
            x = coords()
            loss, terms = objective(x)
        rec = RecycleRecord(recycle, float(loss), terms_as_floats(terms), recycle_cc(objective, x, terms))
        history.append(rec)
        if progress is not None:
            progress(recycle, rec.loss, rec.terms, rec.cc)
        if rec.loss < best_loss - config.min_improvement * abs(best_loss):
            best_loss, best_x, best_recycle, stale = rec.loss, x.clone(), recycle, 0
        else:
            if rec.loss < best_loss:
                best_loss, best_x, best_recycle = rec.loss, x.clone(), recycle
            stale += 1
            if stale >= config.patience:
                break
    fit_stats = None
    if config.fit_rotamers:
        best_x, best_recycle, fit_stats = _fit_rotamers_and_polish(objective, config, best_x, best_loss, best_recycle,
                                                                   history, progress)
    history[0].stage = "start"
    return RefineResult(coords=best_x.cpu().numpy(), history=history, method="direct", best_recycle=best_recycle,
                        wall_s=time.perf_counter() - t0, rotamer_fit=fit_stats)


def _coarse_stage(objective: RefinementObjective, start: torch.Tensor, config: RefineConfig) -> torch.Tensor:
    """Rigid groups, then ``coarse_recycles`` Adam recycles, against the density blurred to
    :func:`coarse_resolution_A`: brings displaced domains within reach of the full-resolution
    stages. Nothing here is kept by loss; the full-resolution stages that follow decide."""
    coarse = coarse_objective(objective, coarse_resolution_A(objective.resolution_A))
    x0 = rigid_fit(coarse, start, config.rigid_steps, config.seed) if config.rigid_steps else start
    return adam_steps(coarse, x0, config.coarse_recycles * config.steps_per_recycle, config.lr)


def adam_steps(objective: RefinementObjective, x0: torch.Tensor, steps: int, lr: float,
               *, decay_to_zero: bool = False) -> torch.Tensor:
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


def _record(objective, x, history, stage, progress) -> RecycleRecord:
    with torch.no_grad():
        loss, terms = objective(x)
    rec = RecycleRecord(len(history), float(loss), terms_as_floats(terms), recycle_cc(objective, x, terms), stage)
    history.append(rec)
    if progress is not None:
        progress(rec.recycle, rec.loss, rec.terms, rec.cc)
    return rec


def _fit_rotamers_and_polish(objective, config, best_x, best_loss, best_recycle, history, progress):
    """Rotamer fitting on ``best_x`` and one polishing recycle; returns the model to keep, its
    history index and the fitting stats (with ``kept``: whether the fitted model was returned)."""
    t0 = time.perf_counter()
    fitted, stats = fit_rotamers(objective, best_x)
    stats["fit_s"] = time.perf_counter() - t0
    stats["kept"] = False
    if stats["changed"] == 0:
        return best_x, best_recycle, stats
    _record(objective, fitted, history, "rotamer_fit", progress)
    polished = adam_steps(objective, fitted, max(1, config.steps_per_recycle), config.lr * POLISH_LR_FACTOR,
                          decay_to_zero=True)
    rec = _record(objective, polished, history, "polish", progress)
    stats["fit_and_polish_s"] = time.perf_counter() - t0
    w = getattr(objective.weights, "density", 1.0) or 1.0
    if rec.loss <= best_loss + w * FIT_CC_TOLERANCE:
        stats["kept"] = True
        return polished, rec.recycle, stats
    return best_x, best_recycle, stats


OPTIMIZERS["direct"] = optimize_direct
