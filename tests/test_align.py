"""Map alignment: a rotated, shifted, mirrored copy of a map is put back, and a reconstruction in
RELION's frame is docked onto a model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryostack.density.align import align_maps, dock_map_on_model, rotate_volumes
from cryostack.density.simulate import simulate_model_map
from cryostack.examples import SPIKE_NTD_MODEL
from cryostack.io.maps import DensityMap, GridSpec
from cryostack.io.models import read_structure

N, VOXEL_A, RES_A = 40, 3.0, 8.0


@pytest.fixture(scope="module")
def model_and_map():
    st = read_structure(SPIKE_NTD_MODEL)
    c = st.atoms().coords
    centre = 0.5 * (c.min(axis=0) + c.max(axis=0))
    grid = GridSpec((N, N, N), (VOXEL_A,) * 3, tuple(centre - 0.5 * N * VOXEL_A))
    return st, simulate_model_map(st, grid, RES_A)


def scrambled(vol: np.ndarray, mirror: bool, seed: int) -> np.ndarray:
    rot = torch.from_numpy(Rotation.random(random_state=seed).as_matrix().astype(np.float32))
    out = rotate_volumes(torch.from_numpy(vol.astype(np.float32)), rot[None])[0].numpy()
    out = np.roll(out, (3, -2, 4), axis=(0, 1, 2))
    return np.flip(out, axis=0).copy() if mirror else out


@pytest.mark.parametrize("mirror", [False, True])
def test_align_maps_undoes_rotation_shift_and_hand(model_and_map, mirror):
    _, ref = model_and_map
    moving = scrambled(ref, mirror, seed=4)
    al = align_maps(ref, moving, n_rotations=1500)
    assert al.mirrored == mirror
    assert al.cc > 0.9 and al.cc - al.cc_other_hand > 0.05
    assert np.corrcoef(al.aligned.ravel(), ref.ravel())[0, 1] > 0.9


def test_dock_puts_a_reconstruction_at_origin_zero_around_the_model(model_and_map):
    st, ref = model_and_map
    recon = DensityMap(data=scrambled(ref, True, seed=9), voxel_size=(VOXEL_A,) * 3, origin=(0.0, 0.0, 0.0))
    docked, al = dock_map_on_model(recon, st, RES_A)
    assert al.mirrored and docked.shape == recon.shape and docked.voxel_size == recon.voxel_size
    # the model's atoms now sit in the docked map's density
    at_atoms = docked.data[tuple(np.round(docked.angstrom_to_voxel(st.atoms().coords)).astype(int).T)]
    assert at_atoms.mean() > docked.data.mean() + 1.0 * docked.data.std()
