"""The demo's perturbation (the full demo run is exercised by tests/test_cli.py::test_demo_runs)."""

from __future__ import annotations

import numpy as np

from cryostack.cli.demo import NOISE_A, SHIFT_A, perturb
from cryostack.examples import SPIKE_NTD_MODEL
from cryostack.io.models import read_structure


def test_perturbation_is_seeded_and_moves_only_polymer_atoms():
    s = read_structure(SPIKE_NTD_MODEL)
    arr = s.atoms()
    a, b, c = perturb(s, seed=0).atoms(), perturb(s, seed=0).atoms(), perturb(s, seed=1).atoms()
    assert np.array_equal(a.coords, b.coords)
    assert not np.allclose(a.coords, c.coords)
    fixed = ~arr.is_polymer
    assert fixed.sum() > 0 and np.allclose(a.coords[fixed], arr.coords[fixed], atol=1e-3)
    d = a.coords[~fixed] - arr.coords[~fixed]
    assert np.allclose(d.mean(axis=0), SHIFT_A, atol=0.05)
    assert abs(float((d - d.mean(axis=0)).std()) - NOISE_A) < 0.02
