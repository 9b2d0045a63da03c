"""Map operations keep Å positions; Fourier filters act in 1/Å."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryostack.density import fourier, ops
from cryostack.density.metrics import correlation
from cryostack.density.simulate import simulate_density
from cryostack.examples import SPIKE_NTD_MAP
from cryostack.io.maps import DensityMap, GridSpec, read_map

ATOMS = torch.tensor([[10.0, 12.0, 9.0], [15.5, 11.0, 14.0], [12.0, 16.0, 12.5]])
Z = torch.tensor([6, 8, 16])


def _sim(grid: GridSpec, resolution: float = 4.0, b: float = 0.0) -> DensityMap:
    m = simulate_density(ATOMS, Z, grid, resolution_A=resolution, b_factors=torch.full((3,), b))
    return DensityMap(m.numpy(), grid.voxel_size, grid.origin)


@pytest.fixture
def spike() -> DensityMap:
    return read_map(SPIKE_NTD_MAP)


def test_crop_and_pad_keep_angstrom_positions(spike):
    probe = spike.voxel_to_angstrom(np.array([[20, 17, 30], [5, 33, 2]]))
    for start, shape in [((3, 4, 5), (30, 25, 30)), ((-6, -2, 10), (60, 50, 20))]:
        boxed = ops.crop_or_pad(spike, start, shape)
        np.testing.assert_allclose(boxed.interpolate(probe), spike.interpolate(probe), rtol=1e-6)
    padded = ops.crop_or_pad(spike, (-5, -5, -5), tuple(n + 10 for n in spike.shape))
    assert padded.data[:5].max() == 0 and padded.data[5:-5, 5:-5, 5:-5].tolist() == spike.data.tolist()


def test_crop_moves_nstart_of_nstart_maps():
    m = DensityMap(np.zeros((10, 10, 10)), (2.0, 2.0, 2.0), origin=(-20.0, -20.0, -20.0), nstart=(-10, -10, -10))
    c = ops.crop_or_pad(m, (1, 2, 3), (4, 4, 4))
    assert c.nstart == (-7, -8, -9)
    assert c.origin == pytest.approx((-14.0, -16.0, -18.0))


def test_box_around_atoms_covers_margin(spike):
    coords = spike.voxel_to_angstrom(np.array([[10, 10, 10], [20, 25, 30]]))
    boxed = ops.box_around(spike, coords, margin_A=3.0)
    lo = np.asarray(boxed.origin)
    hi = lo + (np.asarray(boxed.shape[::-1]) - 1) * np.asarray(boxed.voxel_size)
    assert np.all(lo <= coords.min(0) - 3.0 + 1e-6) and np.all(hi >= coords.max(0) + 3.0 - 1e-6)
    np.testing.assert_allclose(boxed.interpolate(coords), spike.interpolate(coords), rtol=1e-6, atol=1e-6)


def test_resample_matches_direct_simulation():
    fine = _sim(GridSpec((30, 30, 30), (0.8,) * 3), resolution=5.0)
    coarse = ops.resample(fine, 1.2)
    direct = _sim(coarse.grid, resolution=5.0)
    assert coarse.origin == fine.origin
    assert correlation(coarse.data, direct.data) > 0.995


def test_resample_anisotropic_to_isotropic():
    aniso = _sim(GridSpec((24, 30, 36), (0.7, 0.8, 1.0)), resolution=5.0)
    iso = ops.resample(aniso, 0.9)
    assert iso.voxel_size == (0.9, 0.9, 0.9)
    assert correlation(iso.data, _sim(iso.grid, resolution=5.0).data) > 0.995


def test_bfactor_blur_equals_simulating_with_that_bfactor():
    grid = GridSpec((40, 40, 40), (0.6,) * 3)
    sharp = _sim(grid, resolution=2.0, b=10.0)
    blurred = fourier.apply_bfactor(sharp, 60.0)
    assert correlation(blurred.data, _sim(grid, resolution=2.0, b=70.0).data) > 0.999
    # Sharpening undoes the blur within the resolution limit it is given.
    back = fourier.apply_bfactor(blurred, -60.0, resolution_A=2.0)
    assert correlation(back.data, fourier.low_pass(sharp, 2.0).data) > 0.999


def test_low_pass_removes_high_frequencies(spike):
    out = fourier.low_pass(spike, 8.0)
    f = np.abs(np.fft.rfftn(out.data))
    s2 = fourier.frequency_squared(spike.shape, spike.voxel_size)
    assert f[s2 > (1 / 8.0) ** 2].max() < 1e-3 * f.max()
    assert out.origin == spike.origin and out.voxel_size == spike.voxel_size


def test_percentile_normalisation(spike):
    n = ops.normalize_percentile(spike, 1, 99)
    assert n.data.min() == 0.0 and n.data.max() == 1.0
    assert np.mean(n.data >= 1.0) == pytest.approx(0.01, abs=0.005)
