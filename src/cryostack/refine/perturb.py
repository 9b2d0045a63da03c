"""Seeded perturbations of a model, the starting points of the refinement demo and benchmarks."""

from __future__ import annotations

import numpy as np

from cryostack.io.models import Structure


def perturb_model(
    structure: Structure,
    noise_A: float,
    shift_A=(0.0, 0.0, 0.0),
    seed: int = 0,
    domain_shift_A: tuple[float, float] | None = None,
    chain_rigid: tuple[float, float] | None = None,
) -> Structure:
    """A copy of ``structure`` with its polymer atoms moved; ligands and waters stay in place.

    Every polymer atom gets Gaussian noise of ``noise_A`` Å per axis plus the rigid ``shift_A``
    (Å, x y z). With ``domain_shift_A = (lo, hi)`` the polymer is also cut into two spatial halves
    at its centre along its longest axis (whole residues) and each half is shifted rigidly by a
    random length in [lo, hi] Å in a random direction, like a misplaced domain. With
    ``chain_rigid = (shift_A, angle_deg)`` every chain is also turned by ``angle_deg`` degrees about
    a random axis through its polymer centre and shifted by ``shift_A`` Å in a random direction,
    like a docked or predicted model whose chains sit a few Å off.
    """
    arr = structure.atoms()
    rng = np.random.default_rng(seed)
    x = arr.coords.astype(np.float64).copy()
    move = arr.is_polymer
    x[move] += rng.normal(0.0, noise_A, (int(move.sum()), 3)) + np.asarray(shift_A, dtype=np.float64)
    if domain_shift_A is not None and move.any():
        centred = x - x[move].mean(0)
        axis = int(np.argmax(np.ptp(x[move], axis=0)))
        n_res = len(arr.residue_names)
        res_sum = np.zeros(n_res)
        np.add.at(res_sum, arr.residue_index, centred[:, axis])
        res_side = res_sum > 0
        for side in (False, True):
            sel = move & (res_side[arr.residue_index] == side)
            d = rng.normal(size=3)
            x[sel] += d / np.linalg.norm(d) * rng.uniform(*domain_shift_A)
    if chain_rigid is not None and move.any():
        shift, angle = float(chain_rigid[0]), np.deg2rad(float(chain_rigid[1]))
        atom_chain = arr.residue_chain[arr.residue_index]
        for c in np.unique(atom_chain[move]):
            sel = move & (atom_chain == c)
            turn_axis, direction = rng.normal(size=3), rng.normal(size=3)
            u = turn_axis / np.linalg.norm(turn_axis)
            K = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
            rot = np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K
            centre = x[sel].mean(0)
            x[sel] = (x[sel] - centre) @ rot.T + centre + direction / np.linalg.norm(direction) * shift
    return structure.with_coordinates(x)
