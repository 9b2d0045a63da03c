"""Particle simulator: CTF and projection conventions, determinism, junk labels, output files, and
the end-to-end proof that poses, shifts and CTF mean what RELION reads (``relion_reconstruct``)."""

from __future__ import annotations

import dataclasses
import math
import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from cryostack.density.ctf import ctf_2d, ctf_zero_frequencies, electron_wavelength_A
from cryostack.density.fsc import fsc_curve, fsc_resolution
from cryostack.density.projection import (
    FourierVolume,
    euler_to_matrix,
    extract_slices,
    extract_slices_teamtomo,
    images_from_rfft,
    matrix_to_euler,
    phase_shift,
    project,
)
from cryostack.examples import SPIKE_NTD_MODEL
from cryostack.io.models import read_structure
from cryostack.particles import (
    JUNK_TYPES,
    ParticleSimulator,
    SimulationConfig,
    assign_labels,
    simulate_particles,
    source_from_map,
    source_from_structure,
)

RELION = shutil.which("relion_reconstruct")
needs_relion = pytest.mark.skipif(
    RELION is None or shutil.which("relion_project") is None,
    reason="RELION (relion_reconstruct, relion_project) is not installed",
)


@pytest.fixture(scope="module")
def ntd():
    return read_structure(SPIKE_NTD_MODEL)


@pytest.fixture(scope="module")
def ntd_source_2A(ntd):
    return source_from_structure(ntd, 2.0, 4.0, name="ntd")


def _asymmetric_volume(d: int) -> np.ndarray:
    """Three Gaussian blobs of different sizes: no symmetry, so any convention error shows."""
    z, y, x = np.meshgrid(*[np.arange(d) - d // 2] * 3, indexing="ij")
    v = (
        np.exp(-((x - 6) ** 2 + 0.5 * (y + 2) ** 2 + 2 * (z - 3) ** 2) / 18.0)
        + 0.7 * np.exp(-((x + 7) ** 2 + (y - 8) ** 2 + (z + 2) ** 2) / 6.0)
        + 0.4 * np.exp(-(x**2 + (y - 1) ** 2 + (z + 9) ** 2) / 5.0)
    )
    return v.astype(np.float32)


def _relion_ctf(u, v, angle_deg, kv, cs_mm, ac, px, shape, b=0.0, phase_deg=0.0):
    """RELION's CTF written out from its definition (ctf.h), for comparison."""
    lam = 12.2643247 / math.sqrt(kv * 1e3 * (1 + kv * 1e3 * 0.978466e-6))
    h, w = shape
    fy = np.fft.fftfreq(h, d=px)[:, None]
    fx = np.fft.rfftfreq(w, d=px)[None, :]
    u2 = fx**2 + fy**2
    ang = np.arctan2(fy, fx) - np.radians(angle_deg)
    deltaf = -((u + v) / 2 + (u - v) / 2 * np.cos(2 * ang))  # RELION's sign: underfocus negative here
    k1 = math.pi * lam
    k2 = math.pi / 2 * cs_mm * 1e7 * lam**3
    k3 = math.atan(ac / math.sqrt(1 - ac**2))
    gamma = k1 * deltaf * u2 + k2 * u2**2 - math.radians(phase_deg) - k3
    return -np.sin(gamma) * np.exp(-b / 4 * u2)


# --------------------------------------------------------------------------------------------
# CTF
# --------------------------------------------------------------------------------------------
def test_wavelength():
    assert float(electron_wavelength_A(300.0)) == pytest.approx(0.019687, abs=2e-6)
    assert float(electron_wavelength_A(200.0)) == pytest.approx(0.025079, abs=2e-6)


def test_ctf_zero_crossings_at_analytic_frequencies():
    n, px, df = 1024, 1.0, 20000.0
    for cs in (0.0, 2.7):
        ctf = ctf_2d(df, df, 0.0, 300.0, cs, 0.1, px, (n, n))[0].double().numpy()  # along +x
        s = np.fft.rfftfreq(n, d=px)
        crossings = np.nonzero(np.sign(ctf[:-1]) != np.sign(ctf[1:]))[0]
        found = s[crossings] + (s[1] - s[0]) * ctf[crossings] / (ctf[crossings] - ctf[crossings + 1])
        expected = ctf_zero_frequencies(df, 300.0, cs, 0.1, n_zeros=6)
        assert np.allclose(found[:6], expected, atol=2e-4), (found[:6], expected)
    # Without Cs the k-th zero is at s² = (kπ − arctan(A/√(1−A²))) / (π λ Δf).
    lam = float(electron_wavelength_A(300.0))
    k3 = math.atan(0.1 / math.sqrt(0.99))
    zeros = ctf_zero_frequencies(df, 300.0, 0.0, 0.1, n_zeros=3)
    assert zeros == pytest.approx([math.sqrt((k * math.pi - k3) / (math.pi * lam * df)) for k in (1, 2, 3)], rel=1e-9)


def test_ctf_equals_relions_definition_with_astigmatism_and_envelope():
    shape, px = (96, 96), 1.3
    for u, v, ang, b, ph in ((18000.0, 15000.0, 33.0, 60.0, 0.0), (12000.0, 14500.0, 121.0, 0.0, 20.0)):
        ours = ctf_2d(u, v, ang, 300.0, 2.7, 0.07, px, shape, b_factor_A2=b, phase_shift_deg=ph).double().numpy()
        ref = _relion_ctf(u, v, ang, 300.0, 2.7, 0.07, px, shape, b=b, phase_deg=ph)
        assert np.abs(ours - ref).max() < 2e-3
    batch = ctf_2d(
        torch.tensor([18000.0, 12000.0]),
        torch.tensor([15000.0, 14500.0]),
        torch.tensor([33.0, 121.0]),
        300.0,
        2.7,
        0.07,
        px,
        shape,
    )
    assert batch.shape == (2, 96, 49)


def test_ctf_defocus_u_lies_along_the_angle():
    """Along the direction at rlnDefocusAngle from +x the CTF is that of defocus U; 90° away, V's."""
    from scipy.ndimage import map_coordinates

    n, px = 512, 1.0
    u, v, ang = 20000.0, 12000.0, 30.0
    full = np.fft.fftshift(ctf_2d(u, v, ang, 300.0, 2.7, 0.1, px, (n, n), rfft=False).double().numpy())
    s = np.linspace(0.005, 0.08, 200)  # 1/Å
    for theta, df in ((ang, u), (ang + 90.0, v)):
        t = math.radians(theta)
        rows = n // 2 + s * math.sin(t) * n * px
        cols = n // 2 + s * math.cos(t) * n * px
        along = map_coordinates(full, [rows, cols], order=3)
        iso = ctf_2d(df, df, 0.0, 300.0, 2.7, 0.1, px, (n, n))[0].double().numpy()
        expected = np.interp(s, np.fft.rfftfreq(n, d=px), iso)
        assert np.abs(along - expected).max() < 0.05, theta


def test_ctf_of_particle_heights_equals_full_ctf():
    from cryostack.density.ctf import ctf_2d_defocus_offsets

    dz = torch.tensor([0.0, 150.0, -300.0])
    for u, v, ang in ((15000.0, 13000.0, 30.0), (12000.0, 14000.0, 100.0)):
        fast = ctf_2d_defocus_offsets(
            u, v, ang, 300.0, 2.7, 0.1, 1.2, (128, 128), dz, phase_shift_deg=10.0, b_factor_A2=50.0
        )
        full = ctf_2d(u + dz, v + dz, ang, 300.0, 2.7, 0.1, 1.2, (128, 128), phase_shift_deg=10.0, b_factor_A2=50.0)
        assert (fast - full).abs().max() < 1e-4


# --------------------------------------------------------------------------------------------
# Projection
# --------------------------------------------------------------------------------------------
def test_euler_matrix_round_trip():
    rng = np.random.default_rng(0)
    ang = torch.tensor(
        np.stack([rng.uniform(-180, 180, 100), rng.uniform(0, 180, 100), rng.uniform(-180, 180, 100)], 1)
    )
    a = euler_to_matrix(ang[:, 0], ang[:, 1], ang[:, 2])
    assert torch.allclose(a @ a.transpose(-1, -2), torch.eye(3, dtype=a.dtype).expand(100, 3, 3), atol=1e-12)
    assert torch.allclose(euler_to_matrix(*matrix_to_euler(a)), a, atol=1e-10)
    # RELION: tilt about y after rot about z; rot=90 sends x to -y in the rotated frame.
    assert torch.allclose(
        euler_to_matrix(90.0, 0.0, 0.0),
        torch.tensor([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]], dtype=torch.float64),
        atol=1e-12,
    )


def test_fast_slices_equal_torch_fourier_slice():
    vol = torch.from_numpy(_asymmetric_volume(32))
    fv = FourierVolume.from_volume(vol)
    rng = np.random.default_rng(1)
    a = euler_to_matrix(
        torch.tensor(rng.uniform(-180, 180, 8)),
        torch.tensor(rng.uniform(0, 180, 8)),
        torch.tensor(rng.uniform(-180, 180, 8)),
    )
    ours = extract_slices(fv, a, fv.padded_size)
    ref = extract_slices_teamtomo(fv.rfft, a)
    # The two differ only in how they treat the last half voxel before Nyquist in 3D (zero plane
    # vs border value), where the transform is ~1e-4 of its peak; inside 0.45 cycles/pixel: equal.
    p = fv.padded_size
    k = torch.sqrt(torch.fft.fftfreq(p)[:, None] ** 2 + torch.fft.rfftfreq(p)[None, :] ** 2)
    inner = k <= 0.45
    assert (ours - ref)[:, inner].abs().max() / ref.abs().max() < 1e-5
    assert (ours - ref).abs().max() / ref.abs().max() < 1e-3


def test_projection_of_a_known_object():
    d = 48
    z, y, x = np.meshgrid(*[np.arange(d) - d // 2] * 3, indexing="ij")
    r0 = np.array([7.0, -4.0, 3.0])  # x, y, z voxels
    blob = np.exp(-((x - r0[0]) ** 2 + (y - r0[1]) ** 2 + (z - r0[2]) ** 2) / (2 * 2.0**2)).astype(np.float32)
    angles = np.array([[0.0, 0.0, 0.0], [30.0, 60.0, -45.0], [-120.0, 150.0, 80.0]])
    imgs = project(
        torch.from_numpy(blob), torch.tensor(angles[:, 0]), torch.tensor(angles[:, 1]), torch.tensor(angles[:, 2])
    ).numpy()
    yy, xx = np.meshgrid(np.arange(d) - d // 2, np.arange(d) - d // 2, indexing="ij")
    for img, a in zip(imgs, euler_to_matrix(*torch.tensor(angles).T).numpy()):
        # The projection keeps the mass, up to the sinc² gridding pre-correction (as in RELION's
        # projector): right for samples between grid points, it lifts those on grid points (DC
        # always) by 1/sinc² of where the density lies, 3 % here, seen as a faint flat offset.
        assert img.sum() == pytest.approx(blob.sum(), rel=0.04)
        w = np.where(img > 0.01 * img.max(), img, 0.0)
        centre = np.array([(w * xx).sum(), (w * yy).sum()]) / w.sum()
        assert np.allclose(centre, (a @ r0)[:2], atol=0.03)  # the blob at r0 appears at (A r0)_xy
    # A sphere projects the same from every direction.
    sphere = np.exp(-(x**2 + y**2 + z**2) / (2 * 4.0**2)).astype(np.float32)
    p = project(
        torch.from_numpy(sphere), torch.tensor(angles[:, 0]), torch.tensor(angles[:, 1]), torch.tensor(angles[:, 2])
    ).numpy()
    assert np.abs(p - p[0]).max() < 0.01 * p.max()  # trilinear interpolation at 2× padding: < 1 %


def test_phase_shift_moves_content_by_plus_shift():
    d = 64
    yy, xx = np.meshgrid(np.arange(d) - d // 2, np.arange(d) - d // 2, indexing="ij")
    img = np.exp(-(xx**2 + yy**2) / 18.0).astype(np.float32)
    ft = torch.fft.rfft2(torch.fft.ifftshift(torch.from_numpy(img)))[None]
    moved = images_from_rfft(phase_shift(ft, torch.tensor([[3.5, -2.25]]), 1.5))[0].numpy()
    centre = np.array([(moved * xx).sum(), (moved * yy).sum()]) / moved.sum()
    assert np.allclose(centre * 1.5, [3.5, -2.25], atol=1e-3)


@needs_relion
def test_projection_and_ctf_equal_relion_project(tmp_path):
    """``relion_project`` with origin o and CTF equals our projection with shift −o and ctf_2d."""
    d, px, n = 48, 2.0, 5
    vol = _asymmetric_volume(d)
    with mrcfile.new(tmp_path / "vol.mrc") as m:
        m.set_data(vol)
        m.voxel_size = px
    rng = np.random.default_rng(3)
    ang = np.stack([rng.uniform(-180, 180, n), rng.uniform(0, 180, n), rng.uniform(-180, 180, n)], 1)
    origin = rng.uniform(-6, 6, (n, 2))
    u = rng.uniform(8000, 20000, n)
    v = u - rng.uniform(500, 3000, n)
    angle = rng.uniform(0, 180, n)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["g1"],
            "rlnAmplitudeContrast": [0.1],
            "rlnSphericalAberration": [2.7],
            "rlnVoltage": [300.0],
            "rlnImagePixelSize": [px],
            "rlnImageSize": [d],
            "rlnImageDimensionality": [2],
        }
    )
    parts = pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@none.mrcs" for i in range(n)],
            "rlnOpticsGroup": 1,
            "rlnAngleRot": ang[:, 0],
            "rlnAngleTilt": ang[:, 1],
            "rlnAnglePsi": ang[:, 2],
            "rlnOriginXAngst": origin[:, 0],
            "rlnOriginYAngst": origin[:, 1],
            "rlnDefocusU": u,
            "rlnDefocusV": v,
            "rlnDefocusAngle": angle,
        }
    )
    starfile.write({"optics": optics, "particles": parts}, tmp_path / "ang.star")
    subprocess.run(
        ["relion_project", "--i", "vol.mrc", "--o", "proj", "--ang", "ang.star", "--ctf"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    relion = mrcfile.read(tmp_path / "proj.mrcs")
    fv = FourierVolume.from_volume(torch.from_numpy(vol))
    a = euler_to_matrix(*torch.tensor(ang).T)
    ft = phase_shift(extract_slices(fv, a, d), torch.tensor(-origin), px)
    ours = images_from_rfft(
        ft * ctf_2d(torch.tensor(u), torch.tensor(v), torch.tensor(angle), 300.0, 2.7, 0.1, px, (d, d))
    ).numpy()
    for o, r in zip(ours, relion):
        assert np.corrcoef(o.ravel(), r.ravel())[0, 1] > 0.999
        assert (o * r).sum() / (o * o).sum() == pytest.approx(1.0, abs=0.01)  # same units: sums of voxels


# --------------------------------------------------------------------------------------------
# Simulator
# --------------------------------------------------------------------------------------------
def test_preferred_orientation_concentrates_views():
    from cryostack.particles.poses import preferred_poses, preferred_view_directions

    rng = np.random.default_rng(0)
    views = preferred_view_directions(rng, 3)
    poses = preferred_poses(rng, 4000, views, spread_deg=5.0, uniform_fraction=0.1)
    rot, tilt = np.radians(poses[:, 0]), np.radians(poses[:, 1])
    d = np.stack([np.sin(tilt) * np.cos(rot), np.sin(tilt) * np.sin(rot), np.cos(tilt)], axis=1)
    # The viewing direction of a RELION pose is the third row of A.
    a = euler_to_matrix(*torch.tensor(poses).T).numpy()
    assert np.allclose(a[:, 2], d, atol=1e-9)
    near = (np.degrees(np.arccos(np.clip(d @ views.T, -1, 1))) < 20).any(axis=1)
    assert 0.88 < near.mean() < 0.95  # 90 % concentrated, plus the few uniform ones that land nearby


def test_labels_have_exact_fractions():
    w = SimulationConfig(junk_weights=(("fragment", 2.0), ("carbon_edge", 1.0))).junk_type_weights()
    labels = assign_labels(0, 1000, 0.3, w)
    counts = {t: int((labels == i).sum()) for i, t in enumerate(JUNK_TYPES)}
    assert counts["good"] == 700 and counts["fragment"] == 200 and counts["carbon_edge"] == 100
    assert sum(counts.values()) == 1000
    assert not np.array_equal(labels, assign_labels(1, 1000, 0.3, w))


def test_junk_types_present_and_labelled(ntd):
    cfg = SimulationConfig(
        n_particles=180, box_px=64, pixel_size_A=2.0, snr=0.1, junk_fraction=0.5, particles_per_micrograph=60
    )
    src = source_from_structure(ntd, 2.0, cfg.effective_resolution_A, name="ntd")
    sim = ParticleSimulator(cfg, [src], seed=4)
    table = pd.concat([sim.simulate_group(g).table for g in range(sim.n_groups)], ignore_index=True)
    counts = table["rlnCryostackJunkType"].value_counts()
    assert counts["good"] == 90
    for t in JUNK_TYPES[1:]:
        assert counts[t] == 10, t
    by = table.groupby("rlnCryostackJunkType")
    assert (by["rlnCryostackComponents"].min()[["empty_ice", "carbon_edge", "ice_blob", "crystalline_ice"]] == 0).all()
    assert by["rlnCryostackComponents"].min()["aggregate"] >= 2 and by["rlnCryostackComponents"].min()["overlap"] >= 2
    assert (by["rlnCryostackComponents"].max()[["good", "fragment", "wrong_size", "off_centre"]] == 1).all()
    frag = table[table.rlnCryostackJunkType == "fragment"]["rlnCryostackPartFraction"]
    assert frag.between(0.1, 0.65).all()
    scale = table[table.rlnCryostackJunkType == "wrong_size"]["rlnCryostackScale"]
    assert (scale.between(0.55, 0.8) | scale.between(1.25, 1.6)).all()
    off = table[table.rlnCryostackJunkType == "off_centre"]
    dist = np.hypot(off.rlnOriginXAngst, off.rlnOriginYAngst)
    assert (dist >= 0.3 * 64 * 2.0 - 1e-6).all()
    good = table[table.rlnCryostackJunkType == "good"]
    junk = table[table.rlnCryostackJunkType != "good"]
    assert good.rlnCryostackQuality.between(0.5, 1.0).all() and (junk.rlnCryostackQuality < 0.31).all()
    assert good.rlnCryostackSNR.std() > 0  # a continuous label, not a constant


def test_determinism_by_seed(ntd_source_2A, tmp_path):
    cfg = SimulationConfig(
        n_particles=90, box_px=48, pixel_size_A=2.0, snr=0.2, junk_fraction=0.4, particles_per_micrograph=30
    )
    a = ParticleSimulator(cfg, [ntd_source_2A], seed=7).simulate_group(2)
    b = ParticleSimulator(cfg, [ntd_source_2A], seed=7).simulate_group(2)  # a micrograph alone, no earlier ones
    assert np.array_equal(a.images, b.images) and a.table.equals(b.table)
    c = ParticleSimulator(cfg, [ntd_source_2A], seed=8).simulate_group(2)
    assert not np.array_equal(a.images, c.images)
    # Stack size does not change any image or truth: chunks are reproducible on their own.
    r1 = simulate_particles(cfg, [ntd_source_2A], tmp_path / "one", seed=7, progress=False, write_cs=False)
    r2 = simulate_particles(
        dataclasses.replace(cfg, stack_size=30),
        [ntd_source_2A],
        tmp_path / "three",
        seed=7,
        progress=False,
        write_cs=False,
    )
    s1, s2 = starfile.read(r1.star_path)["particles"], starfile.read(r2.star_path)["particles"]
    assert s2.rlnImageName.str.split("@").str[1].nunique() == 3
    truth = [c for c in s1.columns if c != "rlnImageName"]
    pd.testing.assert_frame_equal(s1[truth], s2[truth])
    i1 = mrcfile.read(tmp_path / "one" / "particles_0000.mrcs")
    i2 = np.concatenate([mrcfile.read(tmp_path / "three" / f"particles_{k:04d}.mrcs") for k in range(3)])
    assert np.array_equal(i1, i2)
    assert np.array_equal(i1[60:90], a.images)
    # Worker processes (one thread each) give the same dataset, up to float rounding of threads.
    r3 = simulate_particles(
        cfg, [ntd_source_2A], tmp_path / "workers", seed=7, progress=False, write_cs=False, workers=2
    )
    s3 = starfile.read(r3.star_path)["particles"]
    pd.testing.assert_frame_equal(s1.drop(columns="rlnCryostackSNR"), s3.drop(columns="rlnCryostackSNR"))
    assert np.allclose(s1.rlnCryostackSNR, s3.rlnCryostackSNR, rtol=1e-5)
    i3 = mrcfile.read(tmp_path / "workers" / "particles_0000.mrcs")
    assert np.abs(i1 - i3).max() < 1e-5 * np.abs(i1).max()


def test_noise_level_and_snr(ntd_source_2A):
    cfg = SimulationConfig(
        n_particles=300,
        box_px=64,
        pixel_size_A=2.0,
        snr=0.1,
        junk_fraction=0.2,
        junk_weights=(("empty_ice", 1.0),),
        particles_per_micrograph=100,
    )
    sim = ParticleSimulator(cfg, [ntd_source_2A], seed=2)
    batches = [sim.simulate_group(g, keep_clean=True) for g in range(3)]
    table = pd.concat([b.table for b in batches], ignore_index=True)
    images = np.concatenate([b.images for b in batches])
    empty = (table.rlnCryostackJunkType == "empty_ice").to_numpy()
    var = images[empty].var(axis=(1, 2)) / table.rlnCryostackNoiseFactor.to_numpy()[empty]
    assert np.median(var) == pytest.approx(1.0, rel=0.1)  # images are in units of the noise SD
    good_snr = table.rlnCryostackSNR[~empty]
    assert 0.5 * cfg.snr < good_snr.median() < 2.0 * cfg.snr
    clean = np.concatenate([b.clean for b in batches])
    assert np.abs(clean[empty]).max() == 0.0


def test_map_source_is_resampled_in_angstrom(ntd, tmp_path):
    from cryostack.density.simulate import grid_around_atoms, simulate_model_map
    from cryostack.io.maps import DensityMap

    grid = grid_around_atoms(ntd.atoms().coords, 1.0, margin_A=10.0)
    dmap = DensityMap(
        data=simulate_model_map(ntd, grid, 4.0, use_b_factors=False), voxel_size=grid.voxel_size, origin=grid.origin
    )
    from_map = source_from_map(dmap, 1.7, name="map")
    from_model = source_from_structure(ntd, 1.7, 4.0, name="model")
    assert from_map.pixel_size_A == 1.7 and from_map.edge_px % 2 == 0
    assert np.allclose(from_map.centre_A, from_model.centre_A, atol=1.5)
    vol = from_map.volume.clamp_min(0)
    c = torch.arange(from_map.edge_px, dtype=torch.float32) - from_map.edge_px // 2
    com = [(vol.sum(dim=dims) * c).sum() / vol.sum() for dims in ((1, 2), (0, 2), (0, 1))]
    assert max(abs(float(x)) for x in com) < 0.5  # centred at voxel v // 2, in 1.7 Å voxels
    assert from_map.radius_A == pytest.approx(from_model.radius_A, abs=6.0)


def test_star_and_cs_columns(ntd_source_2A, tmp_path):
    from cryostack.io.particles import read_particles

    cfg = SimulationConfig(
        n_particles=40,
        box_px=48,
        pixel_size_A=2.0,
        snr=0.1,
        junk_fraction=0.5,
        particles_per_micrograph=20,
        voltage_kV=(300.0, 200.0),
    )
    res = simulate_particles(cfg, [ntd_source_2A], tmp_path / "out", seed=0, progress=False)
    blocks = starfile.read(res.star_path)
    optics, parts = blocks["optics"], blocks["particles"]
    assert {
        "rlnOpticsGroup",
        "rlnOpticsGroupName",
        "rlnVoltage",
        "rlnSphericalAberration",
        "rlnAmplitudeContrast",
        "rlnImagePixelSize",
        "rlnImageSize",
        "rlnImageDimensionality",
    } <= set(optics.columns)
    assert set(optics.rlnVoltage) == {300.0, 200.0} and (optics.rlnImageSize == 48).all()
    relion = [
        "rlnImageName",
        "rlnMicrographName",
        "rlnOpticsGroup",
        "rlnAngleRot",
        "rlnAngleTilt",
        "rlnAnglePsi",
        "rlnOriginXAngst",
        "rlnOriginYAngst",
        "rlnDefocusU",
        "rlnDefocusV",
        "rlnDefocusAngle",
        "rlnPhaseShift",
        "rlnCtfBfactor",
        "rlnRandomSubset",
    ]
    assert set(relion) <= set(parts.columns)
    assert {"rlnCryostackJunkType", "rlnCryostackQuality", "rlnCryostackSNR", "rlnCryostackSource"} <= set(
        parts.columns
    )
    assert parts.rlnImageName.iloc[0] == "000001@particles_0000.mrcs"
    assert (parts.rlnDefocusU >= parts.rlnDefocusV).all()
    pset = read_particles(res.star_path)
    stack = mrcfile.read(res.out_dir / "particles_0000.mrcs")
    assert np.array_equal(pset.images([0, 39]), stack[[0, 39]])
    cs = np.load(res.cs_path)
    assert len(cs) == 40 and "cryostack/junk_type" in cs.dtype.names and "alignments3D/pose" in cs.dtype.names
    from_cs = read_particles(res.cs_path)
    assert np.allclose(from_cs.particles.rlnOriginXAngst, parts.rlnOriginXAngst, atol=1e-4)
    manifest = __import__("json").loads(res.manifest_path.read_text())
    assert manifest["counts"]["good"] == 20 and manifest["seed"] == 0 and "torch-ctf" in manifest["versions"]


def test_cli_checks_arguments_and_refuses_overwrite(tmp_path):
    from cryostack.cli.main import main

    def run(*args):
        with pytest.raises(SystemExit) as exc:
            main(["particles", "simulate", "--model", str(SPIKE_NTD_MODEL), "--out", str(tmp_path / "o"), *args])
        return exc.value.code

    assert run("--box", "63") == 2
    assert run("--pixel-size", "-1") == 2
    assert run("--snr", "0") == 2
    assert run("--junk", "1.5") == 2
    assert run("--n", "0") == 2
    assert not (tmp_path / "o").exists()  # nothing written before the checks
    main(
        [
            "particles",
            "simulate",
            "--model",
            str(SPIKE_NTD_MODEL),
            "--out",
            str(tmp_path / "o"),
            "--n",
            "12",
            "--box",
            "32",
            "--pixel-size",
            "3",
            "--junk",
            "0.5",
            "--no-progress",
        ]
    )
    assert (tmp_path / "o" / "particles.star").is_file()
    assert run("--n", "12", "--box", "32", "--pixel-size", "3") == 2  # already holds a dataset


def test_cli_map_and_corpus_sources(ntd, tmp_path):
    from cryostack.cli.main import main
    from cryostack.density.simulate import grid_around_atoms, simulate_model_map
    from cryostack.io.maps import DensityMap, write_map

    grid = grid_around_atoms(ntd.atoms().coords, 1.0, margin_A=8.0)
    data = simulate_model_map(ntd, grid, 5.0, use_b_factors=False)
    map_path = write_map(DensityMap(data=data, voxel_size=grid.voxel_size, origin=grid.origin), tmp_path / "ntd.mrc")
    main(
        [
            "particles",
            "simulate",
            "--map",
            str(map_path),
            "--out",
            str(tmp_path / "m"),
            "--n",
            "10",
            "--box",
            "40",
            "--pixel-size",
            "2.5",
            "--no-progress",
        ]
    )
    ref = mrcfile.read(tmp_path / "m" / "reference_map.mrc")
    assert ref.shape == (40, 40, 40)
    with mrcfile.open(tmp_path / "m" / "reference_map.mrc") as m:
        assert float(m.voxel_size.x) == pytest.approx(2.5)
    corpus = Path(__file__).parent / "data" / "corpus_sample"
    main(
        [
            "particles",
            "simulate",
            "--corpus",
            str(corpus),
            "--corpus-chains",
            "2",
            "--out",
            str(tmp_path / "c"),
            "--n",
            "10",
            "--box",
            "40",
            "--pixel-size",
            "3",
            "--no-progress",
        ]
    )
    parts = starfile.read(tmp_path / "c" / "particles.star")["particles"]
    assert parts.rlnCryostackSource.nunique() == 2
    assert (tmp_path / "c" / "reference_map_1.mrc").is_file()


# --------------------------------------------------------------------------------------------
# The key test: RELION reconstructs the source from the simulated particles
# --------------------------------------------------------------------------------------------
def _reconstruct(folder: Path, star: str, out: str) -> np.ndarray:
    subprocess.run(
        ["relion_reconstruct", "--i", star, "--o", out, "--ctf"], cwd=folder, check=True, capture_output=True
    )
    return mrcfile.read(folder / out)


@needs_relion
def test_relion_reconstructs_the_source_from_true_poses_and_ctf(ntd_source_2A, tmp_path):
    """1,000 noise-free good particles (box 64, 2 Å, uniform poses, centring shifts SD 4 Å,
    astigmatism 500–1,500 Å, B envelope): RELION's reconstruction with the written poses and CTF
    must match the source density (FSC ≥ 0.5) to at least 4 × pixel = 8 Å. The same after
    ``.cs`` → STAR. With the origins negated it must fail: the shift sign is tested, not assumed."""
    from cryostack.io.particles import read_particles, write_star

    px = 2.0
    cfg = SimulationConfig(
        n_particles=1000,
        box_px=64,
        pixel_size_A=px,
        snr=math.inf,
        shift_sigma_A=4.0,
        astigmatism_range_A=(500.0, 1500.0),
        defocus_range_A=(8000.0, 20000.0),
        particles_per_micrograph=100,
    )
    res = simulate_particles(cfg, [ntd_source_2A], tmp_path, seed=1, progress=False)
    ref = mrcfile.read(tmp_path / "reference_map.mrc")

    def resolution(rec):
        freq, fsc = fsc_curve(rec, ref, (px, px, px))
        return fsc_resolution(freq, fsc, 0.5), fsc

    star_res, fsc = resolution(_reconstruct(tmp_path, "particles.star", "rec.mrc"))
    print(
        f"relion_reconstruct from particles.star: FSC 0.5 at {star_res:.2f} Å (target ≤ {4 * px} Å); "
        f"min FSC to Nyquist {fsc.min():.3f}"
    )
    assert star_res <= 4 * px

    write_star(read_particles(res.cs_path), tmp_path / "from_cs.star")
    cs_res, _ = resolution(_reconstruct(tmp_path, "from_cs.star", "rec_cs.mrc"))
    print(f"relion_reconstruct after .cs -> STAR: FSC 0.5 at {cs_res:.2f} Å")
    assert cs_res <= 4 * px

    blocks = starfile.read(tmp_path / "particles.star")
    flipped = blocks["particles"].copy()
    flipped[["rlnOriginXAngst", "rlnOriginYAngst"]] *= -1
    starfile.write({"optics": blocks["optics"], "particles": flipped}, tmp_path / "flipped.star")
    bad_res, _ = resolution(_reconstruct(tmp_path, "flipped.star", "rec_flipped.mrc"))
    print(f"with the origin signs flipped: FSC 0.5 at {bad_res} Å")
    assert bad_res is None or bad_res > 2 * 4 * px


@needs_relion
@pytest.mark.slow
def test_relion_reconstructs_noisy_particles_with_junk_excluded(ntd, tmp_path):
    """Noisy data (SNR 1, box 64, 1.4 Å, 2,000 images of which 20 % junk): the good particles
    alone still give FSC ≥ 0.5 to 4 × pixel."""
    px = 1.4
    src = source_from_structure(ntd, px, 2 * px, name="ntd")
    cfg = SimulationConfig(
        n_particles=2000, box_px=64, pixel_size_A=px, snr=1.0, junk_fraction=0.2, particles_per_micrograph=200
    )
    res = simulate_particles(cfg, [src], tmp_path, seed=3, progress=False)
    blocks = starfile.read(res.star_path)
    good = blocks["particles"][blocks["particles"].rlnCryostackJunkType == "good"]
    starfile.write({"optics": blocks["optics"], "particles": good}, tmp_path / "good.star")
    rec = _reconstruct(tmp_path, "good.star", "rec_good.mrc")
    freq, fsc = fsc_curve(rec, mrcfile.read(tmp_path / "reference_map.mrc"), (px, px, px))
    res_A = fsc_resolution(freq, fsc, 0.5)
    print(f"noisy good particles: FSC 0.5 at {res_A:.2f} Å (target ≤ {4 * px:.1f} Å)")
    assert res_A <= 4 * px
