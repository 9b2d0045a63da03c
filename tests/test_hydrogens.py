"""Riding hydrogens: placed as gemmi places them, carried by the heavy atoms, and kept apart by the clash term."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from cryostack.chem.hydrogens import add_riding_hydrogens, riding_hydrogens
from cryostack.refine import LossWeights, RefineConfig, refine
from cryostack.refine.objective import RefinementObjective
from cryostack.validate.clashes import all_atom_clashes

RES = 3.0


@pytest.fixture(scope="module")
def piece(spike_piece, simulated_map):
    s = spike_piece(20)
    return s, simulated_map(s, RES)


def test_riding_hydrogens_sit_where_gemmi_puts_them_and_ride_rigidly(piece):
    s, _ = piece
    rh = riding_hydrogens(s)
    x = torch.as_tensor(s.atoms().coords, dtype=torch.float64)
    h = rh.positions(x).numpy()
    h_st, _, _ = add_riding_hydrogens(s)
    placed = np.array([a.pos.tolist() for ch in h_st[0] for r in ch for a in r if a.is_hydrogen()])
    assert len(h) == len(placed) > 100
    assert cKDTree(placed).query(h)[0].max() < 1e-3
    parent_d = np.linalg.norm(h - x.numpy()[rh.parent], axis=1)
    assert np.all((parent_d > 0.8) & (parent_d < 1.0))  # electron-cloud X–H distances
    # Move the heavy atoms rigidly: every H moves with them.
    rot = torch.as_tensor(Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix())
    moved = x @ rot.T + torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64)
    expect = torch.as_tensor(h) @ rot.T + torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64)
    assert torch.allclose(rh.positions(moved), expect, atol=1e-6)


def test_pairs_within_four_bonds_of_a_hydrogen_are_excluded(piece):
    s, dmap = piece
    arr = s.atoms()
    obj = RefinementObjective(s, dmap, RES)
    rh, n = obj.riding, arr.n_atoms
    total = n + len(rh)
    keys = set(rh.excluded_pairs(obj.restraints.bond_index.cpu().numpy(), n).tolist())
    parent = rh.parent
    names = np.asarray(arr.atom_names)
    h_of = {i: n + k for k, i in enumerate(parent)}
    ca = next(i for i in range(n) if names[i] == "CA" and i in h_of)  # the HA of a residue
    ha = h_of[ca]
    assert min(ca, ha) * total + max(ca, ha) in keys  # its parent
    n_idx = ca - 1 if names[ca - 1] == "N" else None
    if n_idx is not None:
        assert n_idx * total + ha in keys
    same_parent = [n + k for k, p in enumerate(parent) if p == parent[0]]
    if len(same_parent) > 1:
        assert same_parent[0] * total + same_parent[1] in keys


def test_refining_with_riding_hydrogens_leaves_fewer_all_atom_clashes(spike_piece, simulated_map):
    # 40 residues and 60 steps: on 20 residues and 30 steps both runs end with the same 2–4
    # clashes, too few to tell the term's effect from noise.
    s = spike_piece(40)
    dmap = simulated_map(s, RES)
    config = RefineConfig(max_recycles=3, steps_per_recycle=20, rigid_steps=0, coarse_recycles=0, fit_rotamers=False,
                          fit_peptides=False, refine_b_factors=False, max_rounds=1)  # fmt: skip
    counts = {"with": 0, "without": 0}
    for seed in (4, 5):
        rng = np.random.default_rng(seed)
        start = s.with_coordinates(s.atoms().coords + rng.normal(0, 0.4, s.atoms().coords.shape))
        with_h, _ = refine(start, dmap, RES, config, LossWeights())
        without_h, _ = refine(start, dmap, RES, config, LossWeights(clash_h=0.0))
        counts["with"] += len(all_atom_clashes(with_h).clashes)
        counts["without"] += len(all_atom_clashes(without_h).clashes)
    assert counts["with"] < counts["without"]
    obj = RefinementObjective(start, dmap, RES)
    _, terms = obj(obj.init_coords)
    assert float(terms["clash_h"]) > 0
    assert RefinementObjective(start, dmap, RES, LossWeights(clash_h=0.0)).riding is None
