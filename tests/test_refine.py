"""Refinement: objective (density term), optimiser registry, direct optimiser, refine() and crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryostack.errors import InputError
from cryostack.examples import SPIKE_NTD_MAP, SPIKE_NTD_MODEL
from cryostack.io.maps import read_map
from cryostack.io.models import Structure, read_structure
from cryostack.refine import (
    OPTIMIZERS,
    LossWeights,
    RefineConfig,
    RefinementObjective,
    available_methods,
    check_inputs,
    get_optimizer,
    refine,
)
from cryostack.refine.run import _sub_structure, crop_assignment

RES = 3.2


@pytest.fixture(scope="module")
def piece(spike_piece, simulated_map):
    """The first 15 residues of the spike NTD (a real fragment) and a map simulated from it."""
    s = spike_piece(15)
    return s, simulated_map(s, RES)


def _shifted(s: Structure, shift, noise=0.0, seed=0) -> Structure:
    arr = s.atoms()
    rng = np.random.default_rng(seed)
    return s.with_coordinates(arr.coords + np.asarray(shift) + rng.normal(0, noise, arr.coords.shape))


def test_objective_terms_and_density_gradient(piece):
    s, dmap = piece
    obj = RefinementObjective(s, dmap, RES)
    assert obj.movable.shape == (obj.n_atoms,) and bool(obj.movable.all())
    assert obj.init_coords.shape == (obj.n_atoms, 3)
    total, terms = obj(obj.init_coords)
    assert set(terms) == set(LossWeights().as_dict())
    assert obj.cc(obj.init_coords) > 0.95  # the map was simulated from this model
    # A shifted model fits worse and the density gradient points back.
    x = (obj.init_coords + torch.tensor([1.0, 0.0, 0.0])).requires_grad_(True)
    obj.weights = LossWeights(**{k: 0.0 for k in LossWeights().as_dict()} | {"density": 1.0})
    loss, _ = obj(x)
    assert obj.cc(x.detach()) < obj.cc(obj.init_coords)
    loss.backward()
    assert float(x.grad[:, 0].sum()) > 0  # descent moves atoms back along −x


def test_ligands_and_waters_are_fixed():
    s = read_structure(SPIKE_NTD_MODEL)
    obj = RefinementObjective(s, read_map(SPIKE_NTD_MAP), RES)
    arr = s.atoms()
    assert np.array_equal(obj.movable.numpy(), arr.is_polymer)
    assert (~arr.is_polymer).sum() > 0  # NAG glycans in the example


def test_registry_and_direct_refinement_recovers_shift(piece):
    s, dmap = piece
    assert "direct" in OPTIMIZERS and "direct" in available_methods()
    with pytest.raises(KeyError):
        get_optimizer("no-such-method")
    start = _shifted(s, [0.8, -0.5, 0.4], noise=0.1)
    config = RefineConfig(max_recycles=2, steps_per_recycle=10, rigid_steps=20, seed=1, max_rounds=1)
    calls = []
    refined, result = refine(start, dmap, RES, config, progress=lambda *a, **k: calls.append(a))
    ref = s.atoms().coords
    rmsd = lambda st: float(np.sqrt(((st.atoms().coords - ref) ** 2).sum(1).mean()))  # noqa: E731
    assert rmsd(refined) < 0.7 * rmsd(start)
    assert result.history[result.best_recycle].loss == min(r.loss for r in result.history)
    assert result.history[-1].cc > result.history[0].cc
    assert len(calls) == len(result.history)
    # Same atoms, names, numbering; deterministic given the seed.
    assert refined.atoms().atom_names == s.atoms().atom_names
    quick = RefineConfig(max_recycles=1, steps_per_recycle=3, rigid_steps=3, seed=1, max_rounds=2)
    a, _ = refine(start, dmap, RES, quick)
    b, _ = refine(start, dmap, RES, quick)
    assert np.allclose(a.atoms().coords, b.atoms().coords, atol=1e-5)


def test_rounds_run_until_the_model_stops_moving(piece):
    """Each round starts from the last one's model; rounds stop at the first whose Cα RMS shift is
    below the tolerance, and the record says how far each round moved the model."""
    s, dmap = piece
    start = _shifted(s, [1.2, -0.6, 0.5], noise=0.1)
    quick = dict(max_recycles=2, steps_per_recycle=8, rigid_steps=10, coarse_recycles=0, fit_rotamers=False,
                 refine_b_factors=False, seed=1)  # fmt: skip
    # Tolerance 0: every round runs, and later rounds move the model less than the first.
    _, result = refine(start, dmap, RES, RefineConfig(max_rounds=3, round_tolerance_A=0.0, **quick))
    assert [r.round for r in result.rounds] == [1, 2, 3] and result.converged is False
    shifts = [r.ca_shift_rms_A for r in result.rounds]
    assert shifts[0] > 0.5 and shifts[2] < shifts[0]
    assert {rec.round for rec in result.history} == {1, 2, 3}
    assert result.history[result.best_recycle].round == 3  # the returned model is the last round's
    assert result.n_recycles == sum(r.recycles for r in result.rounds)
    record = result.to_dict()
    assert record["rounds"][0]["ca_shift_rms_A"] == pytest.approx(shifts[0]) and record["converged"] is False
    # A tolerance above what the second round moves stops there, converged.
    _, stopped = refine(start, dmap, RES, RefineConfig(max_rounds=3, round_tolerance_A=shifts[1] + 1e-3, **quick))
    assert len(stopped.rounds) == 2 and stopped.converged is True
    assert stopped.rounds[1].ca_shift_rms_A == pytest.approx(shifts[1], abs=1e-4)  # deterministic given the seed


def test_lbfgs_per_atom_steps_go_further_than_adam(piece):
    """Same number of steps from the same start: L-BFGS ends at a lower total loss and nearer the truth."""
    s, dmap = piece
    start = _shifted(s, [0.6, -0.4, 0.3], noise=0.1)
    quick = dict(max_recycles=2, steps_per_recycle=10, rigid_steps=0, coarse_recycles=0, fit_rotamers=False,
                 refine_b_factors=False, max_rounds=1)  # fmt: skip
    lbfgs, a = refine(start, dmap, RES, RefineConfig(per_atom="lbfgs", **quick))
    adam, b = refine(start, dmap, RES, RefineConfig(per_atom="adam", **quick))
    ref = s.atoms().coords
    rmsd = lambda st: float(np.sqrt(((st.atoms().coords - ref) ** 2).sum(1).mean()))  # noqa: E731
    assert a.history[a.best_recycle].loss < b.history[b.best_recycle].loss
    assert rmsd(lbfgs) < rmsd(start)
    with pytest.raises(ValueError, match="per_atom"):
        refine(start, dmap, RES, RefineConfig(per_atom="newton", max_rounds=1))


def test_early_stopping_stops_at_a_converged_model(piece):
    s, dmap = piece
    config = RefineConfig(
        max_recycles=20, steps_per_recycle=2, rigid_steps=0, lr=0.001, patience=1, min_improvement=0.5, max_rounds=1
    )
    _, result = refine(s, dmap, RES, config)
    assert len(result.history) - 1 < 20


def test_bad_inputs_raise_input_errors(piece):
    s, dmap = piece
    with pytest.raises(InputError, match="resolution"):
        check_inputs(s, dmap, None)
    with pytest.raises(InputError, match="sensible range"):
        check_inputs(s, dmap, 200.0)
    with pytest.raises(InputError, match="outside the map"):
        check_inputs(_shifted(s, [500.0, 0, 0]), dmap, RES)
    st = s.gemmi.clone()
    st[0][0][3].name = "XYZ"  # no dictionary entry
    with pytest.raises(InputError, match="XYZ"):
        check_inputs(Structure(st), dmap, RES)


def test_crops_are_spatial_overlapping_and_cover_every_residue():
    s = read_structure(SPIKE_NTD_MODEL)
    config = RefineConfig(crop_margin_A=6.0)
    import cryostack.refine.run as run

    old = run.RESIDUES_PER_CROP
    run.RESIDUES_PER_CROP = 60
    try:
        core, crops = crop_assignment(s, config)
    finally:
        run.RESIDUES_PER_CROP = old
    arr = s.atoms()
    polymer = np.isin(arr.residue_class, (0, 1, 2))
    assert len(crops) >= 3
    assert np.all(core[polymer] >= 0)
    for cid, residues in crops:
        assert set(np.nonzero(core == cid)[0]) <= set(residues.tolist())  # core inside its crop
        assert len(residues) > (core == cid).sum()  # plus an overlapping shell
        # Spatial, not sequence windows: a crop's core is not one contiguous run of residues.
    runs = [np.count_nonzero(np.diff(np.nonzero(core == cid)[0]) > 1) for cid, _ in crops]
    assert max(runs) >= 1
    sub, index = _sub_structure(s, crops[0][1])
    assert np.allclose(sub.atoms().coords, arr.coords[index])


def test_cropped_refinement_merges_consistently(piece):
    s, dmap = piece
    start = _shifted(s, [0.5, 0.0, 0.0], noise=0.1)
    import cryostack.refine.run as run

    old = run.RESIDUES_PER_CROP
    run.RESIDUES_PER_CROP = 8
    try:
        config = RefineConfig(
            max_recycles=1, steps_per_recycle=10, rigid_steps=10, crop_above_residues=5, crop_margin_A=6.0, max_rounds=1
        )
        refined, result = refine(start, dmap, RES, config)
    finally:
        run.RESIDUES_PER_CROP = old
    assert result.crops >= 2
    from cryostack.geometry.restraints import bond_rmsd, build_restraints

    rs = build_restraints(s)
    x = torch.as_tensor(refined.atoms().coords)
    assert bond_rmsd(x, rs) < 0.03  # seams between crops are not torn
    ref = s.atoms().coords
    assert np.sqrt(((refined.atoms().coords - ref) ** 2).sum(1).mean()) < np.sqrt(
        ((start.atoms().coords - ref) ** 2).sum(1).mean()
    )


def test_crops_build_each_seam_onto_the_kept_coordinates(piece, monkeypatch):
    """Later crops hold earlier crops' cores fixed, so every bond of the merged model (seams
    included) has both ends from one crop's output."""
    s, dmap = piece
    start = _shifted(s, [0.5, 0.0, 0.0], noise=0.1)
    import cryostack.refine.run as run

    monkeypatch.setattr(run, "RESIDUES_PER_CROP", 5)
    indices, calls = [], []
    real_sub, real_get = run._sub_structure, run.get_optimizer

    def sub(structure, residues):
        out = real_sub(structure, residues)
        indices.append(out[1])
        return out

    def get(name):
        opt = real_get(name)

        def recording(obj, config, progress):
            res = opt(obj, config, progress)
            calls.append((obj.movable.cpu().numpy().copy(), obj.init_coords.cpu().numpy().copy(), res.coords))
            return res

        return recording

    monkeypatch.setattr(run, "_sub_structure", sub)
    monkeypatch.setattr(run, "get_optimizer", get)
    config = RefineConfig(
        max_recycles=1,
        steps_per_recycle=3,
        rigid_steps=0,
        coarse_recycles=0,
        fit_rotamers=False,
        crop_above_residues=5,
        crop_margin_A=6.0,
        max_rounds=1,
    )
    refine(start, dmap, RES, config)
    crops, merged = calls[:-1], calls[-1][1]
    assert len(crops) >= 2 and len(merged) == s.n_atoms
    assert crops[0][0].all() and not all(c[0].all() for c in crops[1:])  # later crops hold refined cores fixed
    from cryostack.geometry.restraints import build_restraints

    for a, b in build_restraints(s).bond_index.numpy():
        assert any(
            a in idx and b in idx and np.array_equal(out[np.searchsorted(idx, [a, b])], merged[[a, b]])
            for idx, (_, _, out) in zip(indices, crops)
        ), (a, b)


def test_loss_weights_parse():
    w = LossWeights.parse("density=10, rama=2")
    assert w.density == 10 and w.rama == 2 and w.bond == LossWeights().bond
    with pytest.raises(ValueError):
        LossWeights.parse("nonsense=1")
