"""Direct coordinate optimisation (the paper's baseline): Adam on the movable atoms' positions.

Each recycle runs ``steps_per_recycle`` Adam steps (the step shrinking from recycle to recycle); after each recycle the total loss is
evaluated and the best coordinates so far are kept. Refinement stops after ``max_recycles`` or
when the best loss has not improved by ``min_improvement`` (relative) for ``patience`` recycles.
"""

from __future__ import annotations

import time

import torch

from cryostack.refine.api import OPTIMIZERS, RecycleRecord, RefineConfig, RefineResult, terms_as_floats
from cryostack.refine.objective import RefinementObjective


#: Adam's step shrinks by this factor each recycle.
LR_DECAY = 0.7


def optimize_direct(objective: RefinementObjective, config: RefineConfig, progress=None) -> RefineResult:
    """Refine ``objective.init_coords`` by Adam on the movable atoms; the best coordinates by loss."""
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    x0 = objective.init_coords.detach()
    movable = objective.movable
    delta = torch.zeros_like(x0[movable], requires_grad=True)
    opt = torch.optim.Adam([delta], lr=config.lr)

    def coords() -> torch.Tensor:
        x = x0.clone()
        x[movable] = x0[movable] + delta
        return x

    with torch.no_grad():
        loss, terms = objective(x0)
    best_loss, best_x, best_recycle = float(loss), x0.clone(), 0
    history = [RecycleRecord(0, float(loss), terms_as_floats(terms), _cc(objective, x0, terms))]
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
        rec = RecycleRecord(recycle, float(loss), terms_as_floats(terms), _cc(objective, x, terms))
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
    return RefineResult(coords=best_x.cpu().numpy(), history=history, method="direct", best_recycle=best_recycle,
                        wall_s=time.perf_counter() - t0)


def _cc(objective: RefinementObjective, x: torch.Tensor, terms: dict) -> float:
    return 1.0 - float(terms["density"]) if objective.weights.density else objective.cc(x)


OPTIMIZERS["direct"] = optimize_direct
