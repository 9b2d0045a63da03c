"""Coarse-to-fine density: the same objective compared at a lower resolution.

A domain displaced by more than about the map's resolution has almost no overlap with its own
density, so at full resolution the density term gives it no gradient toward home. Blurring both
maps to a coarser resolution widens that capture range; refinement programs fit rigid bodies at
low resolution first for this reason. The coarse objective shares the restraints, priors and
clash term of the original and differs only in its density term: the experimental sub-box
low-passed and resampled to ``resolution / 3`` Å voxels (so the simulator's cost per atom stays
as at full resolution), a mask as wide as the sub-box allows, and model maps simulated at the
coarse resolution.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from cryostack.density.fourier import low_pass
from cryostack.density.masks import sphere_mask
from cryostack.density.ops import resample
from cryostack.refine.objective import RefinementObjective


def coarse_resolution_A(resolution_A: float) -> float:
    """Resolution (Å) of the coarse stage: 1.5 × the map's, and never finer than 8 Å."""
    return max(8.0, 1.5 * float(resolution_A))


def coarse_objective(objective: RefinementObjective, resolution_A: float) -> RefinementObjective:
    """A copy of ``objective`` whose density term works at ``resolution_A`` (Å, ≥ the original's)."""
    res = float(resolution_A)
    if res < objective.resolution_A:
        raise ValueError(f"coarse resolution {res} Å is finer than the objective's {objective.resolution_A} Å")
    box = objective.box
    vox = max(res / 3.0, max(box.voxel_size))
    coarse_box = resample(low_pass(box, res), vox)
    heavy = objective._heavy.cpu().numpy()
    start = objective.init_coords.cpu().numpy()[heavy].astype(np.float64)
    # The widest mask around the starting model that the sub-box holds (the sub-box was cut with
    # a margin of at least the original mask radius).
    lo = np.asarray(box.origin, dtype=np.float64)
    hi = lo + (np.asarray(box.shape[::-1]) - 1) * np.asarray(box.voxel_size)
    room = float(min((start.min(0) - lo).min(), (hi - start.max(0)).min()))
    radius = max(objective.mask_radius_A, room)
    mask = sphere_mask(start, radius, coarse_box)
    vals = coarse_box.data[mask].astype(np.float64)
    if vals.size < 10 or vals.std() == 0:
        return objective  # nothing to gain at low resolution; keep the original
    target = (coarse_box.data[mask] - vals.mean()) / vals.std()
    out = copy.copy(objective)
    out.resolution_A = res
    out.mask_radius_A = radius
    out.box = coarse_box
    out.mask = torch.as_tensor(mask, device=objective.device)
    out.target = torch.as_tensor(target.astype(np.float32), device=objective.device)
    return out
