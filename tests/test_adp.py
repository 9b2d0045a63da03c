"""B-factor refinement (refine/adp.py): per-residue B fitted to the map at fixed coordinates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryostack.density.simulate import fcalc_map, grid_around_atoms
from cryostack.io.maps import DensityMap
from cryostack.refine import RefineConfig, RefinementObjective, refine
from cryostack.refine.adp import refine_b_factors
from cryostack.validate.mapfit import model_map

RES = 3.5


@pytest.fixture(scope="module")
def case(spike_piece):
    """Residues 1–20 of the spike NTD; a map from B = 20 Å² (first 10 residues) and 90 Å² (rest)."""
    s = spike_piece(20)
    arr = s.atoms()
    true_b = np.where(arr.residue_index < 10, 20.0, 90.0).astype(np.float32)
    truth = s.with_coordinates(arr.coords, b_factors=true_b)
    grid = grid_around_atoms(arr.coords, 1.0, margin_A=8.0)
    dmap = DensityMap(data=np.zeros(grid.shape, np.float32), voxel_size=grid.voxel_size, origin=grid.origin)
    data = model_map(truth.atoms(), dmap, RES)
    dmap = DensityMap(data=data, voxel_size=grid.voxel_size, origin=grid.origin)
    start = s.with_coordinates(arr.coords, b_factors=np.full(arr.n_atoms, 50.0, np.float32))
    return start, dmap, true_b


def test_torch_model_map_matches_validation(case):
    start, dmap, true_b = case
    arr = start.atoms()
    h = ~arr.is_hydrogen
    ours = fcalc_map(
        torch.as_tensor(arr.coords[h]),
        torch.as_tensor(arr.atomic_numbers[h]),
        torch.as_tensor(true_b[h]),
        dmap.grid,
        RES,
    ).numpy()
    ref = model_map(start.with_coordinates(arr.coords, b_factors=true_b).atoms(), dmap, RES)
    assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.9999


def test_fitted_b_follows_the_map(case):
    start, dmap, true_b = case
    obj = RefinementObjective(start, dmap, RES)
    r = refine_b_factors(obj, obj.init_coords)
    assert r.cc_after > r.cc_before + 0.01
    arr = start.atoms()
    main = np.isin(np.asarray(arr.atom_names), ["N", "CA", "C", "O"])
    low, high = r.b_factors[main & (true_b == 20.0)], r.b_factors[main & (true_b == 90.0)]
    assert np.median(low) < 40.0 < 70.0 < np.median(high)
    assert np.all(r.b_factors >= 0)


def test_refine_writes_fitted_b_and_can_skip_it(case):
    start, dmap, _ = case
    quick = dict(max_recycles=1, steps_per_recycle=3, rigid_steps=0, coarse_recycles=0, fit_rotamers=False)
    refined, result = refine(start, dmap, RES, RefineConfig(b_factor_steps=30, **quick))
    assert result.adp is not None and result.adp["cc_after"] >= result.adp["cc_before"]
    assert not np.allclose(refined.atoms().b_factors, 50.0)
    kept, result = refine(start, dmap, RES, RefineConfig(refine_b_factors=False, **quick))
    assert result.adp is None and np.allclose(kept.atoms().b_factors, 50.0)
