"""Coarse-to-fine density (refine/coarse.py): a blurred copy of the objective widens the capture range."""

from __future__ import annotations

import numpy as np
import pytest

from cryostack.refine import RefinementObjective
from cryostack.refine.coarse import coarse_objective, coarse_resolution_A

RES = 3.0


@pytest.fixture(scope="module")
def case(spike_piece, simulated_map):
    """Residues 1–40 of the spike NTD, a 3 Å map simulated from them (10 Å margin), and a start
    shifted rigidly by 4 Å (beyond the capture range at 3 Å)."""
    truth = spike_piece(40)
    dmap = simulated_map(truth, RES, noise=0.0, margin_A=10.0)
    start = truth.with_coordinates(truth.atoms().coords + np.array([4.0, 0.0, 0.0]))
    return truth, dmap, start


def test_coarse_resolution_rule():
    assert coarse_resolution_A(3.0) == 8.0 and coarse_resolution_A(6.6) == pytest.approx(9.9)


def test_coarse_objective_sees_a_4A_shift_and_shares_the_restraints(case):
    truth, dmap, start = case
    fine = RefinementObjective(start, dmap, RES)
    coarse = coarse_objective(fine, coarse_resolution_A(RES))
    assert coarse.restraints is fine.restraints and coarse.resolution_A == 8.0
    assert min(coarse.box.voxel_size) == pytest.approx(8.0 / 3.0)
    assert coarse.mask_radius_A >= fine.mask_radius_A
    x = fine.init_coords.clone().requires_grad_(True)
    loss, _ = coarse(x)
    loss.backward()
    g = x.grad[fine.movable].mean(0)
    # The coarse density pulls the whole piece back along −x (the shift was +4 Å in x).
    assert g[0] > 0 and g[0] > 2 * g[1:].abs().max()
    with pytest.raises(ValueError):
        coarse_objective(fine, 2.0)


def test_coarse_rigid_stage_recovers_a_shift_the_fine_one_cannot(case):
    from cryostack.refine.stages import rigid_fit

    truth, dmap, start = case
    fine = RefinementObjective(start, dmap, RES)
    ref = truth.atoms().coords
    rmsd = lambda x: float(np.sqrt(((x.numpy() - ref) ** 2).sum(1).mean()))  # noqa: E731
    fine_only = rigid_fit(fine, fine.init_coords, 40)
    coarse_then_fine = rigid_fit(fine, rigid_fit(coarse_objective(fine, 8.0), fine.init_coords, 40), 40)
    assert rmsd(coarse_then_fine) < 0.5 * rmsd(fine_only)
    assert rmsd(coarse_then_fine) < 1.0


def test_coarse_groups_go_from_large_to_small_and_pull_two_shifted_halves_back(spike_piece, simulated_map):
    """Two spatial halves of a 160-residue piece shifted 3 Å apart in different directions: the
    coarse stage's successive rigid fits (one group, then groups of about 40 residues) halve the
    error. (Against one fit with the full-resolution group size this toy is a coin toss, since it
    hinges on where k-means puts the group boundaries; the benchmark's simulated cases decided
    the sizes, see :data:`~cryostack.refine.stages.COARSE_GROUP_RESIDUES`.)"""
    from cryostack.refine import RefineConfig
    from cryostack.refine.perturb import perturb_model
    from cryostack.refine.stages import COARSE_GROUP_RESIDUES, place, rigid_groups

    truth = spike_piece(160)
    dmap = simulated_map(truth, RES, noise=0.0, margin_A=10.0)
    start = perturb_model(truth, 0.0, seed=3, domain_shift_A=(3.0, 3.0))
    obj = RefinementObjective(start, dmap, RES)
    assert [int(rigid_groups(obj, 0, n).max()) + 1 for n in COARSE_GROUP_RESIDUES] == [1, 4]
    ref = truth.atoms().coords
    rmsd = lambda x: float(np.sqrt(((x.numpy() - ref) ** 2).sum(1).mean()))  # noqa: E731
    placed = place(obj, obj.init_coords, RefineConfig(coarse_recycles=1, steps_per_recycle=10))
    assert rmsd(obj.init_coords) > 2.9
    assert rmsd(placed) < 0.6 * rmsd(obj.init_coords)
