"""B-factor refinement (refine/adp.py): per-residue B fitted to the map at fixed coordinates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryostack.density.simulate import fcalc_map, grid_around_atoms
from cryostack.io.maps import DensityMap
from cryostack.refine import RefineConfig, RefinementObjective, refine
from cryostack.refine.adp import CEILING_A2, b_bounds_A2, refine_b_factors, similarity_loss
from cryostack.report.before_after import b_factor_rows, report_rows, text_report
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
    quick = dict(
        max_recycles=1, steps_per_recycle=3, rigid_steps=0, coarse_recycles=0, fit_rotamers=False, max_rounds=1
    )
    refined, result = refine(start, dmap, RES, RefineConfig(b_factor_steps=30, **quick))
    assert result.adp is not None and result.adp["cc_after"] >= result.adp["cc_before"]
    assert not np.allclose(refined.atoms().b_factors, 50.0)
    kept, result = refine(start, dmap, RES, RefineConfig(refine_b_factors=False, **quick))
    assert result.adp is None and np.allclose(kept.atoms().b_factors, 50.0)


def test_bounds_follow_the_rule_and_hold(case):
    start, dmap, _ = case
    # The floor: 2 d² for a sharpened map (Guinier B ≤ 0), a quarter of the map's Guinier B when higher.
    assert b_bounds_A2(3.0, -50.0) == (18.0, CEILING_A2)
    assert b_bounds_A2(3.0, None) == (18.0, CEILING_A2)
    assert b_bounds_A2(3.0, 200.0)[0] == 50.0
    obj = RefinementObjective(start, dmap, RES)
    r = refine_b_factors(obj, obj.init_coords, steps=30, bounds_A2=(30.0, 60.0))
    arr = start.atoms()
    fitted = ~arr.is_hydrogen
    assert r.b_floor_A2 == 30.0 and r.b_ceiling_A2 == 60.0
    assert np.all(r.b_factors[fitted] >= 30.0 - 1e-3) and np.all(r.b_factors[fitted] <= 60.0 + 1e-3)
    d = refine_b_factors(obj, obj.init_coords, steps=30)
    assert d.b_floor_A2 >= 2.0 * RES**2 and d.b_ceiling_A2 >= 300.0
    assert np.all(d.b_factors[fitted] >= d.b_floor_A2 - 1e-3) and np.all(d.b_factors[fitted] <= d.b_ceiling_A2 + 1e-3)
    with pytest.raises(ValueError, match="floor < ceiling"):
        refine_b_factors(obj, obj.init_coords, steps=1, bounds_A2=(60.0, 30.0))


def test_bonded_pair_with_very_different_b_ends_closer(case):
    # The restraint alone: a bonded pair at 20 and 200 Å² is pulled together; the pull is symmetric,
    # so the pair's mean stays put.
    b = torch.tensor([20.0, 200.0], requires_grad=True)
    opt = torch.optim.SGD([b], lr=50.0)
    for _ in range(50):
        opt.zero_grad()
        similarity_loss(b, torch.tensor([[0, 1]])).backward()
        opt.step()
    b = b.detach()
    assert abs(float(b[1] - b[0])) < 90.0 and abs(float(b.sum()) - 220.0) < 1e-3
    # In the fit (a map from B = 20 and 90 Å² halves): with the similarity restraint bonded atoms
    # end with a much smaller ΔB than in a free per-atom fit.
    start, dmap, _ = case
    obj = RefinementObjective(start, dmap, RES)
    free = refine_b_factors(obj, obj.init_coords, steps=60, similarity_weight=0.0, residue_weight=0.0)
    tied = refine_b_factors(obj, obj.init_coords, steps=60)
    assert tied.bonded_delta_b_rms_A2[1] < 0.7 * free.bonded_delta_b_rms_A2[1]
    assert tied.cc_after > tied.cc_before


def test_record_holds_the_b_distribution(case):
    start, dmap, _ = case
    quick = dict(
        max_recycles=1, steps_per_recycle=3, rigid_steps=0, coarse_recycles=0, fit_rotamers=False, max_rounds=1
    )
    _, result = refine(start, dmap, RES, RefineConfig(b_factor_steps=20, **quick))
    adp = result.to_dict()["adp"]
    dist = adp["b_distribution_A2"]
    keys = {"n", "min", "p05", "p25", "p50", "p75", "p95", "max"}
    for when in ("before", "after"):
        for group in ("all", "main_chain", "side_chain"):
            assert set(dist[when][group]) == keys
            q = [dist[when][group][k] for k in ("min", "p05", "p25", "p50", "p75", "p95", "max")]
            assert q == sorted(q)
    assert dist["before"]["all"]["p50"] == 50.0
    assert adp["b_floor_A2"] <= dist["after"]["all"]["min"] <= dist["after"]["all"]["max"] <= adp["b_ceiling_A2"]
    rows = b_factor_rows(adp)
    assert rows["B median (Å²)"][:2] == (50.0, dist["after"]["all"]["p50"])
    assert "B side chain range (Å²)" in rows and b_factor_rows(None) == {}
    text = text_report(report_rows({}, {}, rows), "t")
    assert "B main chain median (Å²)" in text and "50.0–50.0" in text
