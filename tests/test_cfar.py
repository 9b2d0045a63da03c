"""Conical FSC and cFAR on simulated half maps whose orientation coverage is known.

The main pair of tests reconstructs half maps the way a real refinement does, from noisy
projections, by the projection-slice theorem: each image's 2D transform is the central section of
the ground truth's 3D transform (:func:`cryostack.density.projection.extract_slices`), complex
Gaussian noise is added to it independently per image and per half set, and the sections are
inserted back into a 3D transform (nearest voxel, averaged per voxel). Views spread uniformly over
the sphere fill Fourier space evenly, so cFAR is near 1; views all from one direction (a few
degrees' spread) fill only the central plane perpendicular to the beam, the cones about the beam
hold nothing but noise, and cFAR is near 0. Voxels no section reached would be exactly zero in
both halves; a faint independent white noise stands in for the residual noise a real
reconstruction has there.

A second group adds direction-dependent noise straight in Fourier space on a non-cubic box with
anisotropic voxels, where the least-measured direction is known exactly in 1/Å, to check that the
cones are laid out in physical (x, y, z) directions.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cryostack.density.cfar import (
    CFAR_SEVERE_THRESHOLD,
    CFARResult,
    cfar,
    cone_directions,
    conical_fsc,
    plot_fsc_sphere,
)
from cryostack.density.fsc import fsc_curve
from cryostack.density.projection import FourierVolume, euler_to_matrix, extract_slices
from cryostack.errors import InputError

BOX = 64
VOXEL_A = 2.0
N_VIEWS = 400  # per half set
IMAGE_NOISE = 50.0  # std of each Fourier component of an image (the truth's DC is ~4000)


def _blobs(shape_zyx: tuple[int, int, int], voxel_xyz: tuple[float, float, float], seed: int) -> np.ndarray:
    """A protein-like density: 40 Gaussian blobs (σ 2–4 Å) within ~12 Å of the box centre."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape_zyx
    vx, vy, vz = voxel_xyz
    z = (np.arange(nz) - nz // 2)[:, None, None] * vz
    y = (np.arange(ny) - ny // 2)[None, :, None] * vy
    x = (np.arange(nx) - nx // 2)[None, None, :] * vx
    out = np.zeros(shape_zyx)
    for _ in range(40):
        cx, cy, cz = rng.normal(0.0, 12.0, 3)
        sigma = rng.uniform(2.0, 4.0)
        out += np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2))
    return out


def _reconstruct(volume: FourierVolume, matrices: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
    """A half map from noisy central sections at poses ``matrices``: nearest-voxel direct Fourier
    insertion, each voxel the mean of the section values that landed on it (0 where none did)."""
    n = BOX
    sections = extract_slices(volume, matrices, n).numpy()  # (B, n, n//2 + 1), DC at [0, 0]
    ky, kx = np.meshgrid(np.fft.fftfreq(n) * n, np.fft.rfftfreq(n) * n, indexing="ij")
    inside = kx**2 + ky**2 <= (n / 2) ** 2
    values = sections[:, inside]
    values = values + IMAGE_NOISE * (rng.normal(size=values.shape) + 1j * rng.normal(size=values.shape))
    # A section of pose A samples the volume transform at Aᵀ (kx, ky, 0), in grid steps here.
    a = matrices.numpy()
    k = np.einsum("mi,bij->bmj", np.stack([kx[inside], ky[inside]], axis=1), a[:, :2, :])
    idx = np.rint(k).astype(np.int64)
    total = np.zeros(n**3, dtype=complex)
    count = np.zeros(n**3)
    # Insert each value and its Friedel mate, so the transform stays that of a real map.
    for sign, v in ((1, values), (-1, np.conj(values))):
        ix, iy, iz = ((sign * idx[..., j]) % n for j in range(3))
        flat = ((iz * n + iy) * n + ix).ravel()
        total += np.bincount(flat, weights=v.real.ravel(), minlength=n**3)
        total += 1j * np.bincount(flat, weights=v.imag.ravel(), minlength=n**3)
        count += np.bincount(flat, minlength=n**3)
    transform = np.where(count > 0, total / np.maximum(count, 1), 0.0).reshape(n, n, n)
    half = np.fft.fftshift(np.fft.ifftn(transform).real)
    return half + 1e-4 * half.std() * rng.standard_normal(half.shape)


def _half_maps(rot_deg: np.ndarray, tilt_deg: np.ndarray, psi_deg: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    truth = torch.tensor(_blobs((BOX,) * 3, (VOXEL_A,) * 3, seed=7), dtype=torch.float32)
    volume = FourierVolume.from_volume(truth)
    halves = []
    for h in range(2):
        part = slice(h * N_VIEWS, (h + 1) * N_VIEWS)
        matrices = euler_to_matrix(
            torch.tensor(rot_deg[part]), torch.tensor(tilt_deg[part]), torch.tensor(psi_deg[part])
        )
        halves.append(_reconstruct(volume, matrices, rng))
    return tuple(halves)


def _angle_deg(u: np.ndarray, axis: np.ndarray) -> float:
    """Angle between the lines along ``u`` and ``axis`` (0–90°)."""
    c = abs(float(u @ axis)) / (np.linalg.norm(u) * np.linalg.norm(axis))
    return float(np.degrees(np.arccos(min(c, 1.0))))


#: The single view: its beam direction (x, y, z) in the map is the third row of RELION's matrix.
SINGLE_VIEW_DEG = (30.0, 50.0, 0.0)


def _views(uniform_fraction: float, seed: int) -> CFARResult:
    """cFAR of half maps from ``2 × N_VIEWS`` views: the given fraction uniform over the sphere, the
    rest the single view with a 2° spread (in-plane rotations are free: they do not move the section)."""
    rng = np.random.default_rng(seed)
    n = 2 * N_VIEWS
    rot = SINGLE_VIEW_DEG[0] + rng.normal(0, 2, n)
    tilt = SINGLE_VIEW_DEG[1] + rng.normal(0, 2, n)
    psi = rng.uniform(-180, 180, n)
    spread = rng.random(n) < uniform_fraction
    rot[spread] = rng.uniform(-180, 180, spread.sum())
    tilt[spread] = np.degrees(np.arccos(rng.uniform(-1, 1, spread.sum())))  # uniform over the sphere
    h1, h2 = _half_maps(rot, tilt, psi, seed=seed + 1)
    return cfar(h1, h2, VOXEL_A)


@pytest.fixture(scope="module")
def uniform_views() -> CFARResult:
    return _views(1.0, seed=11)


@pytest.fixture(scope="module")
def single_view() -> CFARResult:
    return _views(0.0, seed=21)


# --------------------------------------------------------------------------------------------
# Reconstructions from projections
# --------------------------------------------------------------------------------------------
def test_uniform_views_give_cfar_near_one(uniform_views):
    r = uniform_views
    assert r.cfar > 0.8
    assert 4.0 < r.global_resolution_A < 12.0  # the noise was chosen to put it mid-band
    assert not r.to_dict()["anisotropic"]


def test_single_view_gives_cfar_near_zero(single_view):
    r = single_view
    assert r.cfar < CFAR_SEVERE_THRESHOLD
    assert r.to_dict()["severely_anisotropic"]
    beam = euler_to_matrix(*SINGLE_VIEW_DEG).numpy()[2]
    # The cones about the beam hold no section: next to no area. The best cones lie in the section.
    along_beam = int(np.argmax(np.abs(r.directions @ beam)))
    assert r.areas_per_A[along_beam] < 0.1 * r.areas_per_A.max()
    assert _angle_deg(r.best_direction, beam) > 60.0
    # In the section's plane the map is as good as the uniform one's; along the beam it is noise.
    assert np.nanmin(r.direction_resolution_A) < 8.0
    assert r.direction_resolution_A[along_beam] > 2.0 * np.nanmin(r.direction_resolution_A)


def test_cfar_grows_as_views_fill_the_sphere(single_view, uniform_views):
    mostly_one_view = _views(0.1, seed=31)  # 90 % one view, 10 % spread over the sphere
    assert single_view.cfar < mostly_one_view.cfar < uniform_views.cfar


# --------------------------------------------------------------------------------------------
# Direction-dependent noise on a non-cubic box with anisotropic voxels
# --------------------------------------------------------------------------------------------
SHAPE = (40, 56, 48)  # z, y, x
VOXEL_XYZ = (2.0, 1.6, 2.4)  # x, y, z Å: box edges 96, 89.6, 96 Å
#: (x, y, z). Were the cones laid out in voxel-index frequencies this axis would appear 11° off, and
#: with the array's (z, y, x) order taken for (x, y, z) 40° off.
MISSING_AXIS = np.array([0.3, 1.0, 1.0]) / np.linalg.norm([0.3, 1.0, 1.0])


def _noisy_pair(strength: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Truth plus independent noise per half whose power grows toward ``MISSING_AXIS`` in 1/Å:
    noise std × (1 + strength · cos²(angle to the axis))."""
    rng = np.random.default_rng(seed)
    truth = _blobs(SHAPE, VOXEL_XYZ, seed=3)
    nz, ny, nx = SHAPE
    vx, vy, vz = VOXEL_XYZ
    s = np.stack(
        np.broadcast_arrays(
            np.fft.rfftfreq(nx, d=vx)[None, None, :],
            np.fft.fftfreq(ny, d=vy)[None, :, None],
            np.fft.fftfreq(nz, d=vz)[:, None, None],
        ),
        axis=-1,
    )
    norm = np.linalg.norm(s, axis=-1)
    cos = np.divide(s @ MISSING_AXIS, norm, out=np.zeros_like(norm), where=norm > 0)
    gain = 1.0 + strength * cos**2
    halves = []
    for _ in range(2):
        noise = np.fft.rfftn(rng.standard_normal(SHAPE)) * gain * 0.03
        halves.append(np.fft.irfftn(np.fft.rfftn(truth) + noise, s=SHAPE))
    return halves[0], halves[1]


def test_worst_cones_lie_along_the_noisy_direction_in_angstrom_space():
    r = cfar(*_noisy_pair(strength=10.0, seed=1), VOXEL_XYZ)
    assert 0.2 < r.cfar < 0.6
    # Areas are flat near the axis (cos²), so the single worst cone wanders among its neighbours;
    # the principal axis of the area deficit pins the direction down to a degree or two.
    deficit = r.areas_per_A.max() - r.areas_per_A
    axis = np.linalg.eigh((r.directions * deficit[:, None]).T @ r.directions)[1][:, -1]
    assert _angle_deg(axis, MISSING_AXIS) < 5.0
    assert _angle_deg(r.worst_direction, MISSING_AXIS) < 30.0
    assert _angle_deg(r.best_direction, MISSING_AXIS) > 60.0
    # Per direction, the resolution is worst along the axis and best across it.
    order = np.argsort([_angle_deg(d, MISSING_AXIS) for d in r.directions])
    res = r.direction_resolution_A
    assert np.nanmean(res[order[:10]]) > 1.3 * np.nanmean(res[order[-10:]])


def test_isotropic_noise_on_anisotropic_voxels_gives_cfar_near_one():
    r = cfar(*_noisy_pair(strength=0.0, seed=2), VOXEL_XYZ)
    assert r.cfar > 0.8


def test_identical_half_maps_have_unit_cfsc_and_cfar_one():
    m = _blobs(SHAPE, VOXEL_XYZ, seed=5)
    r = cfar(m, m.copy(), VOXEL_XYZ, n_directions=30)
    finite = r.cfsc[np.isfinite(r.cfsc)]
    np.testing.assert_allclose(finite, 1.0, atol=1e-9)
    assert r.cfar == pytest.approx(1.0)
    np.testing.assert_allclose(r.global_fsc, 1.0, atol=1e-9)


def _full_grid_conical_fsc(h1, h2, axis, cone_half_angle_deg, width):
    """Reference: the same cone FSC over the full complex ``fftn`` grid (no half-space weights)."""
    f1, f2 = np.fft.fftn(h1), np.fft.fftn(h2)
    nz, ny, nx = h1.shape
    vx, vy, vz = VOXEL_XYZ
    s = np.stack(
        np.broadcast_arrays(
            np.fft.fftfreq(nx, d=vx)[None, None, :],
            np.fft.fftfreq(ny, d=vy)[None, :, None],
            np.fft.fftfreq(nz, d=vz)[:, None, None],
        ),
        axis=-1,
    )
    norm = np.linalg.norm(s, axis=-1)
    cos = np.abs(np.divide(s @ axis, norm, out=np.zeros_like(norm), where=norm > 0))
    inside = (cos >= np.cos(np.radians(cone_half_angle_deg)) - 1e-6) & (norm > 0)
    shell = np.floor(norm / width + 0.5).astype(int)[inside]
    num = np.bincount(shell, weights=(f1 * np.conj(f2)).real[inside])
    d1 = np.bincount(shell, weights=np.abs(f1[inside]) ** 2)
    d2 = np.bincount(shell, weights=np.abs(f2[inside]) ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty shells of the cone: NaN
        return num / np.sqrt(d1 * d2)


def test_conical_fsc_matches_a_full_grid_reference_and_fsc_curve_shells():
    h1, h2 = _noisy_pair(strength=3.0, seed=4)
    axes = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.3, -0.8, 0.5]])
    freq, curves = conical_fsc(h1, h2, VOXEL_XYZ, axes, 30.0)
    freq_global, global_fsc = fsc_curve(h1, h2, VOXEL_XYZ)
    np.testing.assert_allclose(freq, freq_global)
    width = freq[0]
    for axis, curve in zip(axes, curves):
        ref = _full_grid_conical_fsc(h1, h2, axis / np.linalg.norm(axis), 30.0, width)[1 : len(freq) + 1]
        ok = np.isfinite(curve)
        assert ok[len(ok) // 3 :].all()  # only the first, sparse shells are left out
        np.testing.assert_allclose(curve[ok], ref[ok], atol=1e-9)
    # A 90° cone is every voxel: the global FSC, up to fsc_curve's unit weight on the kx = 0 plane.
    _, whole = conical_fsc(h1, h2, VOXEL_XYZ, axes[:1], 90.0)
    np.testing.assert_allclose(whole[0], global_fsc, atol=0.05)


def test_cone_directions_cover_the_sphere_with_their_antipodes():
    d = cone_directions(100)
    assert d.shape == (100, 3) and np.all(d[:, 2] > 0)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0)
    probes = np.random.default_rng(0).standard_normal((5000, 3))
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    nearest = np.degrees(np.arccos(np.abs(probes @ d.T).max(axis=1)))
    assert nearest.max() < 12.0  # every axis is well inside some 20° cone


def test_mask_multiplies_both_halves():
    h1, h2 = _noisy_pair(strength=3.0, seed=6)
    plain = cfar(h1, h2, VOXEL_XYZ, n_directions=20)
    ones = cfar(h1, h2, VOXEL_XYZ, n_directions=20, mask=np.ones(SHAPE))
    assert ones.cfar == pytest.approx(plain.cfar)
    # Outside a sphere around the blobs the halves are pure noise: masking it out raises the FSC.
    nz, ny, nx = SHAPE
    z, y, x = np.ogrid[:nz, :ny, :nx]
    r2 = ((x - nx // 2) * VOXEL_XYZ[0]) ** 2 + ((y - ny // 2) * VOXEL_XYZ[1]) ** 2 + ((z - nz // 2) * VOXEL_XYZ[2]) ** 2
    masked = cfar(h1, h2, VOXEL_XYZ, n_directions=20, mask=(r2 < 30.0**2).astype(float))
    assert masked.global_resolution_A < plain.global_resolution_A


# --------------------------------------------------------------------------------------------
# Outputs and refusals
# --------------------------------------------------------------------------------------------
def test_summary_is_strict_json(single_view):
    d = single_view.to_dict(curves=True)
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert back["cfar"] == pytest.approx(single_view.cfar)
    assert len(back["per_direction"]["areas_per_A"]) == back["n_directions"] == len(back["cfsc"])
    assert None in back["cfsc"][0]  # the sparse first shells: NaN written as null


def test_plot_writes_a_png(uniform_views, tmp_path):
    out = plot_fsc_sphere(uniform_views, tmp_path / "sub" / "cfar.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["cfar.png"]  # no temporary file left


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"half2": np.zeros((16, 16, 17))}, "differ in shape"),
        ({"half1": np.zeros((16, 16)), "half2": np.zeros((16, 16))}, "3D"),
        ({"half1": np.zeros((4, 16, 16)), "half2": np.zeros((4, 16, 16))}, "too small"),
        ({"voxel_size": 0.0}, "voxel size"),
        ({"cone_half_angle_deg": 0.0}, "cone_half_angle_deg"),
        ({"cone_half_angle_deg": 120.0}, "cone_half_angle_deg"),
        ({"n_directions": 1}, "n_directions"),
        ({"fsc_threshold": 1.5}, "fsc_threshold"),
        ({"mask": np.ones((16, 16, 15))}, "mask shape"),
    ],
)
def test_bad_inputs_raise_input_error(kwargs, message):
    rng = np.random.default_rng(0)
    args = {"half1": rng.standard_normal((16, 16, 16)), "half2": rng.standard_normal((16, 16, 16)), "voxel_size": 1.0}
    args.update(kwargs)
    half1, half2, voxel_size = args.pop("half1"), args.pop("half2"), args.pop("voxel_size")
    with pytest.raises(InputError, match=message):
        cfar(half1, half2, voxel_size, **args)


def test_uncorrelated_half_maps_are_refused():
    m = _blobs((32, 32, 32), (2.0,) * 3, seed=9)
    with pytest.raises(InputError, match="no signal"):
        cfar(m, -m, 2.0)


def test_conical_fsc_refuses_bad_directions():
    m = np.ones((16, 16, 16))
    with pytest.raises(InputError, match="directions"):
        conical_fsc(m, m, 1.0, np.zeros((3, 3)))
    with pytest.raises(InputError, match="directions"):
        conical_fsc(m, m, 1.0, np.ones((3, 2)))


def test_cones_too_narrow_for_the_box_are_refused():
    m = _blobs((32, 32, 32), (2.0,) * 3, seed=9)
    with pytest.raises(InputError, match="wider cones"):
        cfar(m, m, 2.0, cone_half_angle_deg=3.0)
