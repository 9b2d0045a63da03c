"""Simulated training pairs: degradations (each a pure function) and whole items."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from cryostack.chem.residues import main_chain_mask
from cryostack.data import degradations as dg
from cryostack.data.synthetic import (
    ATOM37,
    PARAM_KEYS,
    RESIDUE_TYPES,
    SimulatedItem,
    SimulationConfig,
    item_seed,
    item_structure,
    simulate_item,
)
from cryostack.density.fourier import apply_bfactor, frequency_squared
from cryostack.density.fsc import fsc_curve, fsc_resolution
from cryostack.density.metrics import correlation
from cryostack.density.simulate import simulate_density
from cryostack.io.maps import DensityMap, GridSpec
from cryostack.io.models import read_structure

ROOT = Path(__file__).resolve().parents[1]
PDB_1OZ7 = ROOT / "tests" / "data" / "reference" / "1OZ7_promod.pdb.gz"
DOCS = ROOT / "docs" / "simulated_data.md"


@pytest.fixture(scope="module")
def structure():
    return read_structure(PDB_1OZ7)


@pytest.fixture(scope="module")
def atoms(structure):
    return structure.atoms()


def _signal(atoms, voxel_A: float, n: int, resolution_A: float, b_A2: float = 30.0) -> np.ndarray:
    c = atoms.coords
    grid = GridSpec((n,) * 3, (voxel_A,) * 3, tuple(c.mean(0) - n * voxel_A / 2))
    with torch.no_grad():
        return simulate_density(
            torch.as_tensor(c), torch.as_tensor(atoms.atomic_numbers), grid,
            resolution_A=resolution_A, b_factors=torch.full((len(c),), b_A2),
        ).numpy()  # fmt: skip


# -- noise: the FSC of two noisy copies crosses 0.143 at the target resolution ----------------
@pytest.mark.parametrize(
    "voxel_A, n, resolution_A, noise_b",
    [(1.0, 48, 3.0, -40.0), (1.0, 48, 4.5, -20.0), (1.5, 40, 7.0, 0.0)],
)
def test_two_noisy_copies_cross_fsc_0143_at_target_resolution(atoms, voxel_A, n, resolution_A, noise_b):
    signal = _signal(atoms, voxel_A, n, resolution_A)
    rng = np.random.default_rng(7)
    half1, _ = dg.add_resolution_noise(signal, voxel_A, resolution_A, rng, noise_bfactor_A2=noise_b)
    half2, _ = dg.add_resolution_noise(signal, voxel_A, resolution_A, rng, noise_bfactor_A2=noise_b)
    freq, fsc = fsc_curve(half1, half2, (voxel_A,) * 3)
    measured = fsc_resolution(freq, fsc, 0.143)
    assert measured == pytest.approx(resolution_A, rel=0.10)
    # the post-processing roll-off acts on signal and noise alike: the crossing stays put
    f1 = dg.postprocess_filter(half1, voxel_A, resolution_A, width_per_A=0.02, floor=0.05)
    f2 = dg.postprocess_filter(half2, voxel_A, resolution_A, width_per_A=0.02, floor=0.05)
    freq, fsc_f = fsc_curve(f1, f2, (voxel_A,) * 3)
    assert fsc_resolution(freq, fsc_f, 0.143) == pytest.approx(measured, rel=0.03)
    # SNR falls with frequency: FSC well above threshold at half the resolution's frequency
    assert np.interp(0.5 / resolution_A, freq, fsc) > 0.6


def test_more_noise_moves_the_crossing_to_lower_resolution(atoms):
    signal = _signal(atoms, 1.0, 48, 4.0)
    res = []
    for scale in (1.0, 2.0):
        rng = np.random.default_rng(3)
        h1, _ = dg.add_resolution_noise(signal, 1.0, 4.0, rng, noise_scale=scale)
        h2, _ = dg.add_resolution_noise(signal, 1.0, 4.0, rng, noise_scale=scale)
        res.append(fsc_resolution(*fsc_curve(h1, h2, (1.0,) * 3), 0.143))
    assert res[1] > res[0] * 1.05


def test_coloured_noise_spectrum_follows_noise_bfactor_and_is_flat_past_resolution():
    shape, vox, d, b_noise = (64, 64, 64), (1.0, 1.0, 1.0), 3.0, -40.0
    noise = dg.coloured_noise(shape, vox, np.random.default_rng(0), noise_bfactor_A2=b_noise, resolution_A=d)
    power = np.abs(np.fft.rfftn(noise)) ** 2
    s = np.sqrt(frequency_squared(shape, vox))

    def band(s0):
        return power[np.abs(s - s0) < 0.01].mean()

    # power ∝ exp(-B s²/2) below 1/d: rises by exp(40 (0.3² − 0.1²)/2) ≈ 5.0
    assert band(0.3) / band(0.1) == pytest.approx(np.exp(-b_noise * (0.3**2 - 0.1**2) / 2), rel=0.1)
    assert band(0.45) / band(0.36) == pytest.approx(1.0, rel=0.1)


def test_postprocess_filter_keeps_low_frequencies_and_rolls_off_to_floor():
    rng = np.random.default_rng(1)
    white = rng.standard_normal((48, 48, 48)).astype(np.float32)
    out = dg.postprocess_filter(white, 1.0, 4.0, width_per_A=0.02, floor=0.05)
    s = np.sqrt(frequency_squared(white.shape, (1.0,) * 3))
    ratio = np.abs(np.fft.rfftn(out)) / np.maximum(np.abs(np.fft.rfftn(white)), 1e-12)
    assert np.allclose(ratio[s <= 0.25], 1.0, atol=1e-4)
    assert np.allclose(ratio[s > 0.45], 0.05, atol=2e-3)


# -- atom-level degradations ------------------------------------------------------------------
def test_perturbed_bfactors_are_positive_coherent_and_higher_on_side_chains(atoms):
    rng = np.random.default_rng(0)
    b = dg.perturb_bfactors(
        atoms.residue_index,
        main_chain_mask(atoms),
        rng,
        global_b_A2=40.0,
        residue_sd_A2=10.0,
        sidechain_extra_A2=15.0,
        atom_sd_A2=2.0,
    )
    assert b.shape == (atoms.n_atoms,) and b.min() >= 0
    assert b[~main_chain_mask(atoms)].mean() - b[main_chain_mask(atoms)].mean() == pytest.approx(15.0, abs=3.0)
    per_res = np.bincount(atoms.residue_index, weights=b) / np.bincount(atoms.residue_index)
    # smoothed along the chain: neighbouring residues agree far better than random pairs
    assert np.corrcoef(per_res[:-1], per_res[1:])[0, 1] > 0.7
    again = dg.perturb_bfactors(
        atoms.residue_index,
        main_chain_mask(atoms),
        np.random.default_rng(0),
        global_b_A2=40.0,
        residue_sd_A2=10.0,
        sidechain_extra_A2=15.0,
        atom_sd_A2=2.0,
    )
    assert np.array_equal(b, again)


def test_missing_density_weakens_segments_within_one_chain_and_side_chains(atoms):
    names = np.asarray(atoms.atom_names)
    side = ~main_chain_mask(atoms) & (names != "CB")
    w = dg.missing_density_weights(
        atoms.residue_index,
        atoms.residue_chain,
        side,
        np.random.default_rng(4),
        n_segments=2,
        segment_length=(6, 6),
        sidechain_fraction=0.2,
        weight_range=(0.0, 0.3),
    )
    assert w.shape == (atoms.n_atoms,) and w.min() >= 0 and w.max() <= 1
    weak = w < 1
    assert weak.any()
    # backbone atoms are only weakened inside whole loop segments: every such residue lies in
    # at most two runs of ≤ 6 residues in a single chain each
    weak_bb_res = np.unique(atoms.residue_index[weak & main_chain_mask(atoms)])
    assert 0 < len(weak_bb_res) <= 12
    runs = np.split(weak_bb_res, np.flatnonzero(np.diff(weak_bb_res) > 1) + 1)
    assert all(len(set(atoms.residue_chain[r])) == 1 for r in runs)
    # about 20 % of residues lose their side chain beyond Cβ
    frac = len(np.unique(atoms.residue_index[weak & side])) / len(atoms.residue_names)
    assert 0.1 < frac < 0.35
    assert np.all(w[names == "CB"][~np.isin(atoms.residue_index[names == "CB"], weak_bb_res)] == 1)


def test_ligand_pseudo_atoms_sit_on_the_surface_without_clashes(atoms):
    xyz, z = dg.ligand_pseudo_atoms(atoms.coords, np.random.default_rng(2), n_ligands=3, atoms_per_ligand=(10, 20))
    assert 3 * 5 <= len(xyz) <= 60 and set(np.unique(z)) <= {6, 7, 8}
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(atoms.coords).query(xyz)
    assert dist.min() >= 3.2 - 1e-6
    assert dist.max() < 40.0  # bound to the molecule, not floating away
    steps = np.linalg.norm(np.diff(xyz, axis=0), axis=1)
    assert np.isclose(steps, 1.5, atol=1e-4).mean() > 0.8  # consecutive atoms bonded (except between ligands)


# -- map-level degradations -------------------------------------------------------------------
def test_bfactor_field_blur_matches_global_blur_where_field_is_at_its_levels(atoms):
    signal = _signal(atoms, 1.0, 40, 3.0)
    field = np.zeros(signal.shape, np.float32)
    field[:, :, 20:] = 120.0
    out = dg.blur_with_bfactor_field(signal, 1.0, field, n_levels=3)
    blurred = apply_bfactor(DensityMap(signal, (1.0,) * 3), 120.0).data
    assert np.allclose(out[:, :, :20], signal[:, :, :20], atol=1e-4 * signal.max())
    assert np.allclose(out[:, :, 20:], blurred[:, :, 20:], atol=1e-4 * signal.max())
    rng = np.random.default_rng(0)
    f = dg.bfactor_field((32, 32, 32), 1.0, rng, b_range_A2=(10.0, 90.0), radial_weight=1.0)
    assert f.min() == pytest.approx(10.0) and f.max() == pytest.approx(90.0)
    assert f[16, 16, 16] < 15.0 and f[0, 0, 0] > 85.0  # periphery worse than the core


def test_micelle_belt_is_a_ring_around_the_axis():
    grid = GridSpec((60, 60, 60), (1.0, 1.0, 1.0), (-30.0, -30.0, -30.0))
    belt = dg.micelle_belt(
        grid, np.zeros(3), np.array([0.0, 0.0, 1.0]), inner_radius_A=12.0, thickness_A=10.0, height_A=20.0, edge_A=1.0
    )

    def at(x, y, z):
        k, j, i = np.rint(grid.angstrom_to_voxel(np.array([x, y, z]))).astype(int)
        return belt[k, j, i]

    assert at(17, 0, 0) > 0.95 and at(0, 17, 5) > 0.95  # in the ring
    assert at(0, 0, 0) < 0.01 and at(5, 0, 0) < 0.01  # where the protein sits
    assert at(17, 0, 18) < 0.01 and at(27, 0, 0) < 0.01  # above the slab, outside the ring


def test_masks_and_box_edge():
    inside = np.zeros((30, 30, 30), bool)
    inside[10:20, 10:20, 10:20] = True
    hard = dg.soft_mask(inside, 1.0, edge_A=0.0)
    assert set(np.unique(hard)) == {0.0, 1.0}
    soft = dg.soft_mask(inside, 1.0, edge_A=5.0)
    assert np.all(soft[inside] == 1) and soft[15, 15, 22] == pytest.approx(0.5 * (1 + np.cos(np.pi * 3 / 5)))
    assert soft[15, 15, 26] == 0 and np.all(np.diff(soft[15, 15, 19:]) <= 0)
    data = np.ones((10, 10, 10), np.float32)
    cut = dg.box_edge(data, axis=2, from_start=False, depth_voxels=3)
    assert np.all(cut[:, :, 7:] == 0) and np.all(cut[:, :, :7] == 1) and np.all(data == 1)


def test_solvent_blobs_only_start_where_allowed():
    grid = GridSpec((30, 30, 30), (1.0, 1.0, 1.0))
    allowed = np.zeros(grid.shape, bool)
    allowed[:, :, :5] = True
    blobs = dg.solvent_blobs(grid, np.random.default_rng(0), n_blobs=4, allowed=allowed)
    assert blobs.max() >= 0.99  # peaks sit on voxels
    assert np.unravel_index(blobs.argmax(), grid.shape)[2] < 5
    assert blobs[:, :, 20:].max() < 1e-3


# -- whole items ------------------------------------------------------------------------------
SMALL = dict(crop_voxels=32, voxel_size_A=1.5, resolution_A=(4.0, 7.0))


def test_item_is_deterministic_and_differs_between_indices(atoms):
    cfg = SimulationConfig(**SMALL)
    a = simulate_item(atoms, cfg, item_seed(5, 0))
    b = simulate_item(atoms, cfg, item_seed(5, 0))
    c = simulate_item(atoms, cfg, item_seed(5, 1))
    for k, v in a.to_arrays().items():
        assert np.array_equal(v, b.to_arrays()[k]), k
    assert not np.array_equal(a.input_map.data, c.input_map.data)
    assert set(a.params) == set(PARAM_KEYS)


def test_item_maps_models_and_units(atoms):
    cfg = SimulationConfig(
        **SMALL,
        ligand_prob=1.0,
        missing_density_prob=1.0,
        local_resolution_prob=1.0,
        soft_mask_prob=0.0,
        hard_mask_prob=0.0,
        box_edge_prob=0.0,
    )
    item = simulate_item(atoms, cfg, item_seed(0, 3))
    m, t = item.input_map, item.target_map
    assert m.shape == t.shape == (32, 32, 32)
    assert m.voxel_size == t.voxel_size == (1.5, 1.5, 1.5) and m.origin == t.origin
    assert np.allclose(np.asarray(m.origin) / 1.5, np.rint(np.asarray(m.origin) / 1.5))  # on the voxel lattice
    assert np.allclose(np.asarray(m.nstart) * 1.5, m.origin)
    assert abs(float(m.data.mean())) < 1e-4 and float(m.data.std()) == pytest.approx(1.0, rel=1e-3)
    assert 4.0 <= item.params["resolution_A"] <= 7.0 and item.params["ligand_atoms"] > 0
    # every returned atom lies in the box, and the density is where the atoms are
    idx = m.angstrom_to_voxel(item.atom_coords)
    assert np.all(idx > -0.5) and np.all(idx < 31.5)
    assert m.interpolate(item.atom_coords).mean() > m.data.mean() + 0.5
    assert correlation(m.data, t.data) > 0.3
    # the rotation is a proper rotation and maps the source atoms onto the item's atoms
    assert np.allclose(item.rotation @ item.rotation.T, np.eye(3), atol=1e-6)
    assert np.linalg.det(item.rotation) == pytest.approx(1.0)
    heavy = ~atoms.is_hydrogen
    first = atoms.coords[heavy][np.isin(atoms.residue_index[heavy], item.residue_source)]
    moved = first @ item.rotation.T + item.translation
    assert np.min(np.linalg.norm(moved - item.atom_coords[0], axis=1)) < 1e-3
    # residue and atom vocabularies
    names = [atoms.residue_names[r] for r in item.residue_source]
    assert [RESIDUE_TYPES[k] for k in item.residue_type] == names
    assert np.all(item.atom_name37 >= 0) and ATOM37[item.atom_name37[0]] in ("N", "CA", "C", "O", "CB")
    assert item.atom_residue.max() == len(item.residue_type) - 1
    assert (item.atom_density_weight < 1).any()


def test_item_round_trips_through_arrays_and_writes_the_cropped_model(structure, atoms, tmp_path):
    item = simulate_item(atoms, SimulationConfig(**SMALL), item_seed(1, 2))
    back = SimulatedItem.from_arrays(item.to_arrays())
    assert np.array_equal(back.input_map.data, item.input_map.data) and back.params == pytest.approx(item.params)
    st = item_structure(structure, back)
    path = st.write(tmp_path / "crop.cif")
    crop = read_structure(path).atoms()
    assert len(crop.residue_names) == len(item.residue_type)
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(crop.coords).query(item.atom_coords)
    assert dist.max() < 1e-3  # every item atom is in the written model, in the map frame


def test_config_rejects_resolution_beyond_nyquist_and_docs_list_every_field():
    with pytest.raises(ValueError, match="Nyquist"):
        SimulationConfig(resolution_A=(2.0, 4.0), voxel_size_A=1.5)
    cfg = SimulationConfig(**SMALL)
    assert SimulationConfig.from_dict(cfg.to_dict()) == cfg
    text = DOCS.read_text()
    missing = [f.name for f in dataclasses.fields(SimulationConfig) if f"`{f.name}`" not in text]
    assert not missing, f"fields not documented in {DOCS.name}: {missing}"
