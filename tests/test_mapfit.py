"""Map–model fit: CCs against a brute-force computation, model map against gemmi F_calc, FSC, Q-score."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest
import torch

from cryostack.density.fsc import fsc_curve, fsc_resolution
from cryostack.density.masks import sphere_mask
from cryostack.density.simulate import simulate_density
from cryostack.examples import SPIKE_NTD_MAP, SPIKE_NTD_MODEL
from cryostack.io.maps import DensityMap, GridSpec, read_map
from cryostack.io.models import read_structure
from cryostack.validate import mapfit


@pytest.fixture(scope="module")
def small_case():
    """The first 12 residues of the spike NTD model in a map simulated from them plus noise."""
    st = read_structure(SPIKE_NTD_MODEL)
    g = st.gemmi.clone()
    chain = g[0][0]
    for i in reversed(range(12, len(chain))):
        del chain[i]
    from cryostack.io.models import Structure

    small = Structure(g)
    atoms = small.atoms()
    lo = np.floor(atoms.coords.min(0) - 6.0)
    n = np.ceil((atoms.coords.max(0) + 6.0 - lo) / 1.0).astype(int)
    grid = GridSpec(tuple(n[::-1]), (1.0, 1.0, 1.0), tuple(lo))
    clean = simulate_density(
        torch.tensor(atoms.coords),
        torch.tensor(atoms.atomic_numbers),
        grid,
        resolution_A=3.5,
        b_factors=torch.tensor(atoms.b_factors),
    ).numpy()
    noisy = clean + np.random.default_rng(0).normal(0, 0.3 * clean.std(), clean.shape).astype(np.float32)
    return small, DensityMap(noisy, grid.voxel_size, grid.origin)


def _brute_mask(atoms, density):
    """Bulk-solvent mask by explicit loops over voxels and atoms."""
    pts = density.voxel_to_angstrom(np.indices(density.shape).reshape(3, -1).T)
    radii = np.array([gemmi.Element(e).vdw_r for e in atoms.elements])
    surf = np.full(len(pts), np.inf)
    for xyz, r in zip(atoms.coords, radii):
        surf = np.minimum(surf, np.linalg.norm(pts - xyz, axis=1) - r)
    solvent = surf > 1.1
    sol_pts = pts[solvent]
    keep = np.zeros(len(pts), dtype=bool)
    for i in np.nonzero(~solvent)[0]:
        keep[i] = np.min(np.linalg.norm(sol_pts - pts[i], axis=1)) > 0.9
    return keep.reshape(density.shape)


def test_five_ccs_match_brute_force(small_case):
    structure, density = small_case
    atoms = structure.atoms()
    fit = mapfit.map_model_fit(structure, density, 3.5, compute_q=False)
    calc = mapfit.model_map(atoms, density, 3.5).ravel()
    obs = density.data.ravel()
    mask = _brute_mask(atoms, density).ravel()
    n = int(mask.sum())
    assert np.array_equal(mask, mapfit.molecular_mask(atoms, density).ravel())
    top_calc = np.argsort(-calc, kind="stable")[:n]
    top_obs = np.argsort(-obs, kind="stable")[:n]
    union = np.union1d(top_calc, top_obs)
    cc = lambda sel: np.corrcoef(obs[sel], calc[sel])[0, 1]  # noqa: E731
    assert fit.cc_mask == pytest.approx(cc(mask), abs=1e-6)
    assert fit.cc_box == pytest.approx(np.corrcoef(obs, calc)[0, 1], abs=1e-6)
    assert fit.cc_volume == pytest.approx(cc(top_calc), abs=2e-3)
    assert fit.cc_peaks == pytest.approx(cc(union), abs=2e-3)
    # Main-chain CC: points within the atom radius of N, CA, C, O.
    pts = density.voxel_to_angstrom(np.indices(density.shape).reshape(3, -1).T)
    mc = np.isin(atoms.atom_names, ["N", "CA", "C", "O"])
    near = np.zeros(len(pts), dtype=bool)
    for xyz in atoms.coords[mc]:
        near |= np.linalg.norm(pts - xyz, axis=1) <= fit.atom_radius_A
    assert fit.cc_mc == pytest.approx(cc(near), abs=1e-6)


def test_model_map_matches_gemmi_fcalc(small_case):
    """Our Fourier-truncated model map agrees with gemmi's structure factors FFT'd at d_min."""
    structure, density = small_case
    atoms = structure.atoms()
    ours = mapfit.model_map(atoms, density, 3.5)
    st = structure.gemmi.clone()
    st[0].transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), gemmi.Vec3(*(-np.asarray(density.origin)))))
    nz, ny, nx = density.shape
    st.cell = gemmi.UnitCell(nx * 1.0, ny * 1.0, nz * 1.0, 90, 90, 90)
    st.spacegroup_hm = "P 1"
    dc = gemmi.DensityCalculatorE()
    dc.d_min = 3.5
    dc.set_grid_cell_and_spacegroup(st)
    dc.grid.set_size(nx, ny, nz)
    dc.grid.fill(0)
    dc.blur = 40.0
    dc.add_model_density_to_grid(st[0])
    dc.grid.symmetrize_sum()
    f = np.fft.rfftn(np.array(dc.grid, copy=True).transpose(2, 1, 0).astype(np.float64))
    from cryostack.density.fourier import frequency_squared

    s2 = frequency_squared(density.shape, density.voxel_size)
    ref = np.fft.irfftn(f * np.where(s2 <= 1 / 3.5**2, np.exp(40.0 * s2 / 4), 0), s=density.shape, axes=(0, 1, 2))
    assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.99


def test_scores_respond_to_fit(small_case):
    structure, density = small_case
    good = mapfit.map_model_fit(structure, density, 3.5)
    moved = structure.with_coordinates(structure.atoms().coords + np.array([1.5, -1.0, 0.5]))
    bad = mapfit.map_model_fit(moved, density, 3.5)
    assert good.cc_mask > 0.8 and good.cc_mask > bad.cc_mask + 0.2
    assert good.q_score > bad.q_score + 0.2
    assert good.fsc05_resolution < bad.fsc05_resolution or bad.fsc05_resolution is None


def test_q_score_decreases_with_resolution(small_case):
    structure, _ = small_case
    atoms = structure.atoms()
    qs = []
    for res in (2.0, 4.0, 7.0):
        grid = GridSpec((40, 40, 40), (0.7,) * 3, tuple(atoms.coords.mean(0) - 14.0))
        m = simulate_density(
            torch.tensor(atoms.coords), torch.tensor(atoms.atomic_numbers), grid, resolution_A=res
        ).numpy()
        qs.append(np.nanmean(mapfit.q_scores(atoms, DensityMap(m, grid.voxel_size, grid.origin))))
    assert qs[0] > qs[1] > qs[2]
    assert qs[0] > 0.7


def test_fsc_of_identical_and_independent_maps():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(32, 30, 28)).astype(np.float32)
    freq, fsc = fsc_curve(a, a, (1.2, 1.2, 1.2))
    assert np.allclose(fsc, 1.0)
    assert freq[-1] == pytest.approx(1 / 2.4, rel=0.05)
    _, fsc2 = fsc_curve(a, rng.normal(size=a.shape), (1.2, 1.2, 1.2))
    assert np.abs(fsc2[3:]).max() < 0.25


def test_fsc_resolution_interpolates():
    freq = np.array([0.1, 0.2, 0.3, 0.4])
    fsc = np.array([0.9, 0.7, 0.3, 0.1])
    assert fsc_resolution(freq, fsc, 0.5) == pytest.approx(1 / 0.25)


def test_image_radius_grows_with_resolution_and_b():
    assert mapfit.image_radius(2.0, 20) < mapfit.image_radius(4.0, 20) < mapfit.image_radius(8.0, 20)
    assert mapfit.atom_radius_for_cc(2.0, 20) == 3.0
    assert mapfit.atom_radius_for_cc(12.0, 20) == 12.0 or mapfit.atom_radius_for_cc(12.0, 20) == 10.0


def test_real_spike_map():
    fit = mapfit.map_model_fit(read_structure(SPIKE_NTD_MODEL), read_map(SPIKE_NTD_MAP), 3.2)
    assert 0.3 < fit.cc_mask < 1.0 and fit.atoms_outside_map_fraction < 0.01
    assert len(fit.per_residue) == 201 and fit.per_chain[0]["chain"] == "A"


@pytest.mark.parametrize("margin_A", [4.0, -1.5])
def test_masks_on_fine_anisotropic_grid(margin_A):
    """Molecular and sphere masks on 0.45 × 0.5 × 0.6 Å voxels (the 0.9 Å shrink then spans
    several voxels) equal direct computations: distances to every atom, and a Euclidean
    distance transform for the shrink; also when the box cuts through the model."""
    from scipy.ndimage import distance_transform_edt

    from cryostack.io.models import Structure

    g = read_structure(SPIKE_NTD_MODEL).gemmi.clone()
    chain = g[0][0]
    for i in reversed(range(4, len(chain))):
        del chain[i]
    atoms = Structure(g).atoms()
    vox = (0.45, 0.5, 0.6)
    lo = atoms.coords.min(0) - margin_A
    n = np.ceil((atoms.coords.max(0) + margin_A - lo) / vox).astype(int)
    density = DensityMap(np.zeros(tuple(n[::-1]), np.float32), vox, tuple(lo + 0.123))
    pts = density.voxel_to_angstrom(np.indices(density.shape).reshape(3, -1).T)
    d = np.linalg.norm(pts[:, None, :] - atoms.coords[None].astype(np.float64), axis=-1)  # (P, N)
    radii = np.array([gemmi.Element(e).vdw_r for e in atoms.elements])
    solvent = ((d - radii) > 1.1).all(axis=1).reshape(density.shape)
    expected = ~solvent & (distance_transform_edt(~solvent, sampling=vox[::-1]) > 0.9)
    assert np.array_equal(mapfit.molecular_mask(atoms, density), expected)
    near = (d <= 2.7).any(axis=1).reshape(density.shape)
    assert np.array_equal(sphere_mask(atoms.coords, 2.7, density), near)


def test_q_score_undefined_near_the_box_edge(small_case):
    """Atoms whose 2 Å sampling shells leave the box get NaN, not a score from zero padding."""
    structure, density = small_case
    atoms = structure.atoms()
    cut = density.with_data(density.data[:, :, :-9].copy())  # drop 9 Å of the box along x
    q = mapfit.q_scores(atoms, cut)
    x_max = cut.origin[0] + (cut.shape[2] - 1) * cut.voxel_size[0]
    near_edge = atoms.coords[:, 0] > x_max - 2.0
    assert near_edge.any() and (~near_edge).any()
    assert np.isnan(q[near_edge]).all() and np.isfinite(q[~near_edge]).all()
    fit = mapfit.map_model_fit(structure, cut, 3.5)
    assert fit.q_score_undefined_atoms == int(near_edge.sum())
