"""Seeded model perturbation (the demo's and the refinement benchmark's starting models)."""

from __future__ import annotations

import numpy as np

from cryostack.examples import SPIKE_NTD_MODEL
from cryostack.io.models import read_structure
from cryostack.pipeline.demo import NOISE_A, SHIFT_A
from cryostack.refine.perturb import perturb_model


def test_perturbation_is_seeded_and_moves_only_polymer_atoms():
    s = read_structure(SPIKE_NTD_MODEL)
    arr = s.atoms()
    a, b, c = (perturb_model(s, NOISE_A, SHIFT_A, seed=k).atoms() for k in (0, 0, 1))
    assert np.array_equal(a.coords, b.coords)
    assert not np.allclose(a.coords, c.coords)
    fixed = ~arr.is_polymer
    assert fixed.sum() > 0 and np.allclose(a.coords[fixed], arr.coords[fixed], atol=1e-3)
    d = a.coords[~fixed] - arr.coords[~fixed]
    assert np.allclose(d.mean(axis=0), SHIFT_A, atol=0.05)
    assert abs(float((d - d.mean(axis=0)).std()) - NOISE_A) < 0.02


def test_domain_shifts_move_two_halves_rigidly_by_the_requested_length():
    s = read_structure(SPIKE_NTD_MODEL)
    arr = s.atoms()
    moved = perturb_model(s, 0.0, seed=3, domain_shift_A=(2.0, 5.0)).atoms()
    d = (moved.coords - arr.coords)[arr.is_polymer].astype(np.float64)
    shifts = np.unique(np.round(d, 2), axis=0)
    assert len(shifts) == 2  # each half moves as one rigid body
    lengths = np.linalg.norm(shifts, axis=1)
    assert np.all((lengths >= 2.0 - 0.01) & (lengths <= 5.0 + 0.01))
    # whole residues move together
    res = arr.residue_index[arr.is_polymer]
    side = np.all(np.isclose(d, shifts[0], atol=0.01), axis=1)
    for r in np.unique(res):
        assert len(set(side[res == r])) == 1
