"""Seeded model perturbation (the demo's and the refinement benchmark's starting models)."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_chain_rigid_errors_turn_and_shift_each_chain_by_the_requested_amounts():
    s = read_structure(SPIKE_NTD_MODEL)
    arr = s.atoms()
    moved = perturb_model(s, 0.0, seed=2, chain_rigid=(3.0, 5.0)).atoms()
    p = arr.is_polymer
    a, b = arr.coords[p].astype(np.float64), moved.coords[p].astype(np.float64)
    assert np.linalg.norm(b.mean(0) - a.mean(0)) == pytest.approx(3.0, abs=1e-3)  # the centre moves 3 Å
    # Rigid: distances within the chain are kept; the rotation is 5° (Kabsch on the centred atoms).
    i = np.random.default_rng(0).choice(len(a), 200, replace=False)
    assert np.allclose(
        np.linalg.norm(a[i, None] - a[None, i], axis=-1), np.linalg.norm(b[i, None] - b[None, i], axis=-1), atol=2e-3
    )
    u, _, vt = np.linalg.svd((b - b.mean(0)).T @ (a - a.mean(0)))
    angle = np.degrees(np.arccos((np.trace(u @ vt) - 1) / 2))
    assert angle == pytest.approx(5.0, abs=0.05)
    assert np.allclose(moved.coords[~p], arr.coords[~p], atol=1e-3)  # ligands stay
