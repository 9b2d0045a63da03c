"""Peptide-plane turns for Ramachandran outliers (refine.peptide_fit) and the prior's outlier region."""

from __future__ import annotations

import math

import pytest
import torch

from cryostack.geometry.ramachandran_prior import build_rama, rama_energy
from cryostack.geometry.restraints import bond_lengths
from cryostack.refine import RefinementObjective
from cryostack.refine.peptide_fit import _peptides, _turn, fit_peptides, rama_outliers

RES = 3.2


@pytest.fixture(scope="module")
def piece(spike_piece, simulated_map):
    s = spike_piece(30)
    dmap = simulated_map(s, RES)
    return s, RefinementObjective(s, dmap, RES)


def _rows(obj) -> tuple[int, int]:
    """Two Ramachandran rows, apart, with both peptide planes turnable (no proline after)."""
    ok = [k for k in range(len(obj.rama.category)) if len(_peptides(obj, k)) == 2]
    return ok[len(ok) // 3], ok[2 * len(ok) // 3]


def _damaged(obj):
    """The model with the peptide plane after each of :func:`_rows` turned 150°: outliers the map refuses."""
    x = obj.init_coords.clone()
    for k in _rows(obj):
        ca_a, ca_b, atoms, _ = _peptides(obj, k)[1]
        x = _turn(x, ca_a, ca_b, atoms, math.radians(150.0))
    return x


def test_turn_keeps_the_peptide_bonds(piece):
    _, obj = piece
    x = obj.init_coords
    y = _damaged(obj)
    # Both Cα atoms lie on the axis and the plane turns rigidly: every bond keeps its length
    # (only the angles at the two Cα atoms change).
    assert torch.allclose(bond_lengths(y, obj.restraints), bond_lengths(x, obj.restraints), atol=1e-4)


def test_turns_clear_outliers_the_map_refuses(piece):
    _, obj = piece
    start = rama_outliers(obj, obj.init_coords)
    y = _damaged(obj)
    bad = rama_outliers(obj, y)
    assert len(bad) > len(start)
    fitted, stats = fit_peptides(obj, y)
    assert stats["outliers"] == len(bad) and stats["changed"] >= 2
    assert len(rama_outliers(obj, fitted)) <= len(start)
    # The turned planes went back to where the map has them.
    for k in _rows(obj):
        _, _, atoms, _ = _peptides(obj, k)[1]
        assert float((fitted[atoms] - obj.init_coords[atoms]).norm(dim=1).max()) < 0.6


def test_no_outliers_nothing_tried(piece):
    _, obj = piece
    x = obj.init_coords
    if rama_outliers(obj, x):
        pytest.skip("the fragment has an outlier of its own")
    fitted, stats = fit_peptides(obj, x)
    assert stats == {"outliers": 0, "tried": 0, "changed": 0} and fitted is x


def test_prior_is_steep_and_sloped_in_outlier_regions(piece):
    """Outlier (φ, ψ) cost far more than allowed ones, and deep in the empty regions the prior
    still has a gradient (the sloping floor) towards populated ones."""
    s, obj = piece
    rama = build_rama(s.atoms())
    x = _damaged(obj).clone().requires_grad_(True)
    e = rama_energy(x, rama)
    bad = rama_outliers(obj, x.detach())
    good = [k for k in range(len(e)) if k not in bad]
    assert float(e.detach()[bad].min()) > float(e.detach()[good].max()) + 5.0
    e[bad].sum().backward()
    assert float(x.grad.norm()) > 1.0
