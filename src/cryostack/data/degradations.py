"""Degradations that turn a clean simulated map into an experimental-like one.

Each function is small and pure: arrays and explicit parameters in Å / Å² in, a new array out;
randomness only through an explicit ``numpy.random.Generator``. Maps are float ``[z, y, x]``
arrays; voxel sizes are ``(x, y, z)`` Å as everywhere in cryostack. The ranges quoted in the
docstrings are the ones :class:`cryostack.data.synthetic.SimulationConfig` samples by default
(table in ``docs/simulated_data.md``).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter, gaussian_filter1d
from scipy.spatial import cKDTree
from scipy.special import erf

from cryostack.density.fourier import apply_bfactor, frequency_squared
from cryostack.io.maps import DensityMap, GridSpec

#: FSC between two half-maps equals S/(S+N) for signal power S and noise power N per shell, so
#: FSC = t needs S/N = t/(1-t); at t = 0.143 that is 0.167.
FSC_THRESHOLD = 0.143


def _vox3(voxel_size_A) -> tuple[float, float, float]:
    vx, vy, vz = np.broadcast_to(np.asarray(voxel_size_A, dtype=np.float64), 3)
    return (float(vx), float(vy), float(vz))


def _as_map(data: np.ndarray, voxel_size_A) -> DensityMap:
    return DensityMap(data=data, voxel_size=_vox3(voxel_size_A))


# ---------------------------------------------------------------------------------------------
# Atom-level degradations (applied before simulation)
# ---------------------------------------------------------------------------------------------
def perturb_bfactors(
    residue_index: np.ndarray,
    is_backbone: np.ndarray,
    rng: np.random.Generator,
    *,
    global_b_A2: float,
    residue_sd_A2: float = 10.0,
    smoothing_residues: float = 3.0,
    sidechain_extra_A2: float = 10.0,
    atom_sd_A2: float = 3.0,
) -> np.ndarray:
    """Per-atom B-factors ``(N,)`` in Å²: a global blur plus spatially coherent variation.

    ``B = global + residue term + side-chain term + atom term``, clipped at 0:

    * ``global_b_A2``: overall blur of the map beyond its resolution (default range 0–60 Å²);
    * residue term: Gaussian noise of SD ``residue_sd_A2`` (0–20 Å²) smoothed along the residue
      index with a Gaussian of ``smoothing_residues`` (3) residues, so neighbouring residues are
      similarly ordered, as in refined models;
    * side-chain term: atoms off the main chain get ``sidechain_extra_A2`` (0–20 Å²) more;
    * atom term: independent Gaussian noise of SD ``atom_sd_A2`` (3 Å²).

    ``residue_index`` ``(N,)`` indexes residues; ``is_backbone`` ``(N,)`` is True on main-chain atoms.
    """
    residue_index = np.asarray(residue_index, dtype=np.int64)
    n_res = int(residue_index.max()) + 1 if residue_index.size else 0
    per_res = rng.normal(0.0, 1.0, n_res)
    if n_res > 1 and smoothing_residues > 0:
        per_res = gaussian_filter1d(per_res, smoothing_residues, mode="nearest")
        per_res = per_res / max(per_res.std(), 1e-6)
    b = np.full(residue_index.shape, float(global_b_A2))
    if n_res:
        b += residue_sd_A2 * per_res[residue_index]
    b += np.where(np.asarray(is_backbone, dtype=bool), 0.0, sidechain_extra_A2)
    b += rng.normal(0.0, atom_sd_A2, residue_index.shape)
    return np.clip(b, 0.0, None).astype(np.float32)


def missing_density_weights(
    residue_index: np.ndarray,
    residue_chain: np.ndarray,
    is_sidechain: np.ndarray,
    rng: np.random.Generator,
    *,
    n_segments: int = 1,
    segment_length: tuple[int, int] = (4, 12),
    sidechain_fraction: float = 0.15,
    weight_range: tuple[float, float] = (0.0, 0.3),
) -> np.ndarray:
    """Per-atom density weights ``(N,)`` in [0, 1] modelling flexible, poorly resolved parts.

    ``n_segments`` (0–3) runs of ``segment_length`` (4–12) consecutive residues within one chain
    (flexible loops and termini) and the side-chain atoms beyond Cβ of a random
    ``sidechain_fraction`` (0–0.3) of residues get a weight drawn from ``weight_range``
    (0–0.3: removed or down-weighted); all other atoms keep 1. The model keeps these atoms; only
    their density is weakened, as in real maps. ``residue_chain`` ``(R,)`` gives each residue's
    chain; ``is_sidechain`` ``(N,)`` marks atoms beyond Cβ.
    """
    residue_index = np.asarray(residue_index, dtype=np.int64)
    residue_chain = np.asarray(residue_chain, dtype=np.int64)
    n_res = residue_chain.size
    w_res = np.ones(n_res)
    for _ in range(int(n_segments)):
        if n_res == 0:
            break
        length = int(rng.integers(segment_length[0], segment_length[1] + 1))
        start = int(rng.integers(0, n_res))
        chain = residue_chain[start]
        stop = min(start + length, n_res)
        seg = np.arange(start, stop)
        seg = seg[residue_chain[seg] == chain]
        w_res[seg] = rng.uniform(*weight_range)
    w = w_res[residue_index] if residue_index.size else np.ones(0)
    if n_res and sidechain_fraction > 0:
        hit = rng.random(n_res) < sidechain_fraction
        w_side = rng.uniform(*weight_range, n_res)
        sel = np.asarray(is_sidechain, dtype=bool) & hit[residue_index]
        w = np.where(sel, np.minimum(w, w_side[residue_index]), w)
    return w.astype(np.float32)


def ligand_pseudo_atoms(
    coords: np.ndarray,
    rng: np.random.Generator,
    *,
    n_ligands: int = 1,
    atoms_per_ligand: tuple[int, int] = (6, 30),
    bond_length_A: float = 1.5,
    clearance_A: float = 3.2,
    max_tries: int = 50,
) -> tuple[np.ndarray, np.ndarray]:
    """Unmodelled density: ``n_ligands`` (0–3) compact clusters of pseudo-atoms on the surface.

    Each cluster is a self-avoiding random walk of ``atoms_per_ligand`` (6–30) atoms with
    ``bond_length_A`` steps, started next to a random surface atom and kept at least
    ``clearance_A`` from every model atom ``coords`` ``(N, 3)`` Å, like a ligand, glycan or
    detergent molecule bound where the model says nothing. Elements are C (70 %), N (15 %),
    O (15 %). Returns ``(K, 3)`` Å coordinates and ``(K,)`` atomic numbers for the simulator.
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 3)
    out: list[np.ndarray] = []
    if coords.shape[0] == 0 or n_ligands <= 0:
        return np.zeros((0, 3), np.float32), np.zeros(0, np.int64)
    tree = cKDTree(coords)
    centre = coords.mean(axis=0)
    for _ in range(int(n_ligands)):
        n_atoms = int(rng.integers(atoms_per_ligand[0], atoms_per_ligand[1] + 1))
        anchor = coords[rng.integers(0, coords.shape[0])]
        outward = anchor - centre
        local = coords[tree.query_ball_point(anchor, 10.0)]
        if len(local) > 1:
            outward = anchor - local.mean(axis=0)
        outward /= max(np.linalg.norm(outward), 1e-6)
        pos = anchor + outward * (clearance_A + bond_length_A)
        walk: list[np.ndarray] = []
        for _step in range(n_atoms):
            placed = False
            for _try in range(max_tries):
                if not walk:
                    cand = pos
                else:
                    d = rng.normal(size=3)
                    cand = walk[-1] + bond_length_A * d / np.linalg.norm(d)
                far_model = tree.query(cand)[0] >= clearance_A
                far_self = all(np.linalg.norm(cand - p) >= 0.95 * bond_length_A for p in walk[:-1])
                if far_model and far_self:
                    walk.append(cand)
                    placed = True
                    break
                if not walk:
                    pos = pos + outward * 0.5  # push the start outward until it is clear
            if not placed:
                break
        if walk:
            out.append(np.asarray(walk))
    if not out:
        return np.zeros((0, 3), np.float32), np.zeros(0, np.int64)
    xyz = np.concatenate(out).astype(np.float32)
    z = rng.choice(np.array([6, 7, 8]), size=len(xyz), p=[0.7, 0.15, 0.15]).astype(np.int64)
    return xyz, z


# ---------------------------------------------------------------------------------------------
# Map-level degradations
# ---------------------------------------------------------------------------------------------
def noise_amplitude(s_per_A: np.ndarray, noise_bfactor_A2: float, resolution_A: float) -> np.ndarray:
    """Relative noise amplitude at spatial frequency ``s`` (1/Å).

    ``exp(-B_noise s² / 4)`` up to ``1 / resolution_A`` and flat beyond. Negative
    ``noise_bfactor_A2`` makes noise rise with frequency, as in the solvent of deposited
    (sharpened) maps: between 10 Å and the resolution the solvent noise power of EMD-0775 and
    EMD-2867 rises like ``B_noise`` ≈ −30 to −37 Å² (``docs/simulated_data.md``). Sharpening
    stops at the resolution, hence the flat part. Default range −40 to 0 Å².
    """
    s = np.minimum(np.asarray(s_per_A, dtype=np.float64), 1.0 / float(resolution_A))
    return np.exp(-float(noise_bfactor_A2) * s**2 / 4.0)


def coloured_noise(
    shape_zyx: tuple[int, ...],
    voxel_size_A,
    rng: np.random.Generator,
    *,
    noise_bfactor_A2: float,
    resolution_A: float,
) -> np.ndarray:
    """Gaussian noise ``[z, y, x]`` whose amplitude spectrum is :func:`noise_amplitude` (unscaled)."""
    vox = _vox3(voxel_size_A)
    white = rng.standard_normal(shape_zyx)
    s = np.sqrt(frequency_squared(shape_zyx, vox))
    f = np.fft.rfftn(white) * noise_amplitude(s, noise_bfactor_A2, resolution_A)
    return np.fft.irfftn(f, s=shape_zyx, axes=(0, 1, 2))


def postprocess_filter(
    data: np.ndarray, voxel_size_A, resolution_A: float, *, width_per_A: float = 0.025, floor: float = 0.05
) -> np.ndarray:
    """Post-processing low-pass: amplitudes kept to ``1/resolution_A``, then a Gaussian roll-off.

    Beyond ``s_d = 1/d`` amplitudes are multiplied by ``floor + (1 - floor) exp(-(s - s_d)² / 2w²)``
    with ``w = width_per_A`` (default range 0.012–0.035 1/Å) and ``floor`` (0.03–0.1): the
    solvent noise of EMD-0775 and EMD-2867 falls 5–20× in power within 0.02–0.05 1/Å past the
    resolution and levels off about 100× below its peak. Applied to signal and noise alike, it
    leaves the half-map FSC unchanged.
    """
    vox = _vox3(voxel_size_A)
    s = np.sqrt(frequency_squared(data.shape, vox))
    s_d = 1.0 / float(resolution_A)
    over = np.clip(s - s_d, 0.0, None)
    w = float(floor) + (1.0 - float(floor)) * np.exp(-(over**2) / (2.0 * float(width_per_A) ** 2))
    out = np.fft.irfftn(np.fft.rfftn(data.astype(np.float64)) * w, s=data.shape, axes=(0, 1, 2))
    return out.astype(np.float32)


def _band_power(data: np.ndarray, s: np.ndarray, s0: float, half_width: float) -> float:
    band = np.abs(s - s0) <= half_width
    if not band.any():
        raise ValueError(f"no Fourier samples at {1 / s0:.2f} Å on this grid")
    return float(np.mean(np.abs(np.fft.rfftn(data)[band]) ** 2))


def noise_sigma_for_resolution(
    signal: np.ndarray, noise: np.ndarray, voxel_size_A, resolution_A: float, *, fsc_threshold: float = FSC_THRESHOLD
) -> float:
    """Factor for ``noise`` so that two independent noisy copies of ``signal`` have FSC = threshold at 1/d.

    The signal and noise powers are compared in a shell one Fourier sample wide around
    ``1 / resolution_A``; ``signal + k·noise`` then has the spectral SNR ``t/(1-t)`` there.
    """
    vox = _vox3(voxel_size_A)
    s = np.sqrt(frequency_squared(signal.shape, vox))
    s0 = 1.0 / float(resolution_A)
    if s0 > 1.0 / (2.0 * max(vox)) + 1e-9:
        raise ValueError(f"resolution {resolution_A} Å is finer than Nyquist of {max(vox)} Å voxels")
    half = 0.5 / max(n * v for n, v in zip(signal.shape[::-1], vox))
    p_sig = _band_power(signal.astype(np.float64), s, s0, half)
    p_noise = _band_power(noise.astype(np.float64), s, s0, half)
    snr = fsc_threshold / (1.0 - fsc_threshold)
    return float(np.sqrt(p_sig / (snr * p_noise))) if p_noise > 0 else 0.0


def add_resolution_noise(
    signal: np.ndarray,
    voxel_size_A,
    resolution_A: float,
    rng: np.random.Generator,
    *,
    noise_bfactor_A2: float = -30.0,
    noise_scale: float = 1.0,
    fsc_threshold: float = FSC_THRESHOLD,
) -> tuple[np.ndarray, float]:
    """``signal`` plus coloured noise whose level makes the half-map FSC reach 0.143 at ``resolution_A``.

    Noise has the shape of :func:`noise_amplitude`; its level is set per map from the signal's
    own power at 1/d (:func:`noise_sigma_for_resolution`), so the spectral SNR falls with
    frequency and two copies with independent noise cross ``fsc_threshold`` at the target
    resolution. ``noise_scale`` (default 1) multiplies the noise amplitude: > 1 moves the
    crossing to lower resolution. Returns the noisy map (float32) and the noise
    standard deviation in map units.
    """
    noise = coloured_noise(
        signal.shape, voxel_size_A, rng, noise_bfactor_A2=noise_bfactor_A2, resolution_A=resolution_A
    )
    k = noise_sigma_for_resolution(signal, noise, voxel_size_A, resolution_A, fsc_threshold=fsc_threshold)
    noise *= k * float(noise_scale)
    return (signal + noise).astype(np.float32), float(noise.std())


def bfactor_field(
    shape_zyx: tuple[int, int, int],
    voxel_size_A,
    rng: np.random.Generator,
    *,
    b_range_A2: tuple[float, float],
    correlation_length_A: float = 15.0,
    radial_weight: float = 0.5,
    centre_zyx: np.ndarray | None = None,
) -> np.ndarray:
    """A smooth extra-B field ``[z, y, x]`` in Å² spanning ``b_range_A2`` (default 0 to 20–100 Å²).

    Mix of a random field smoothed over ``correlation_length_A`` (15 Å) and, with weight
    ``radial_weight`` (0.5), the distance from ``centre_zyx`` (default: box centre) — in real
    maps the periphery is usually worse resolved than the core.
    """
    vox = _vox3(voxel_size_A)
    sigma_vox = [correlation_length_A / v for v in vox[::-1]]
    rnd = gaussian_filter(rng.standard_normal(shape_zyx), sigma_vox, mode="wrap")
    rnd = (rnd - rnd.min()) / max(rnd.max() - rnd.min(), 1e-12)
    if centre_zyx is None:
        centre_zyx = (np.asarray(shape_zyx) - 1) / 2.0
    idx = np.indices(shape_zyx, dtype=np.float64)
    r = np.sqrt(sum(((idx[a] - centre_zyx[a]) * vox[::-1][a]) ** 2 for a in range(3)))
    r = r / max(r.max(), 1e-12)
    field = (1.0 - radial_weight) * rnd + radial_weight * r
    field = (field - field.min()) / max(field.max() - field.min(), 1e-12)
    return (b_range_A2[0] + (b_range_A2[1] - b_range_A2[0]) * field).astype(np.float32)


def blur_with_bfactor_field(data: np.ndarray, voxel_size_A, b_field_A2: np.ndarray, *, n_levels: int = 5) -> np.ndarray:
    """Spatially varying blur: each voxel takes the map blurred by its own extra B (Å²).

    The map is blurred globally at ``n_levels`` B values spanning the field, and each voxel
    interpolates linearly between the two copies that bracket its B, so local resolution varies
    smoothly across the box.
    """
    b_lo, b_hi = float(b_field_A2.min()), float(b_field_A2.max())
    if b_hi - b_lo < 1e-6:
        return apply_bfactor(_as_map(data, voxel_size_A), b_lo).data
    levels = np.linspace(b_lo, b_hi, max(2, int(n_levels)))
    copies = [apply_bfactor(_as_map(data, voxel_size_A), float(b)).data for b in levels]
    pos = (b_field_A2 - b_lo) / (levels[1] - levels[0])
    lo = np.clip(np.floor(pos).astype(np.int64), 0, len(levels) - 2)
    frac = (pos - lo).astype(np.float32)
    out = np.zeros_like(data, dtype=np.float32)
    for k in range(len(levels) - 1):
        sel = lo == k
        out[sel] = (1 - frac[sel]) * copies[k][sel] + frac[sel] * copies[k + 1][sel]
    return out


def micelle_belt(
    grid: GridSpec,
    centre_A: np.ndarray,
    axis: np.ndarray,
    *,
    inner_radius_A: float,
    thickness_A: float = 12.0,
    height_A: float = 30.0,
    edge_A: float = 3.0,
) -> np.ndarray:
    """Unit-density detergent micelle / nanodisc belt ``[z, y, x]`` around ``axis`` through ``centre_A``.

    The belt is the ring ``inner_radius_A < r < inner_radius_A + thickness_A`` (distance from the
    axis; thickness 10–18 Å) and ``|h| < height_A / 2`` (along the axis; 25–40 Å, a membrane's
    hydrophobic slab), with error-function edges ``edge_A`` (3 Å) wide. Scale it by the detergent
    density (default 0.3–0.6 of the protein's mean density) before adding.
    """
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    idx = np.indices(grid.shape).reshape(3, -1).T
    xyz: np.ndarray = grid.voxel_to_angstrom(idx) - np.asarray(centre_A, dtype=np.float64)
    h = xyz @ axis
    r = np.linalg.norm(xyz - h[:, None] * axis[None, :], axis=1)

    def step(x):  # 0 → 1 across x = 0 over about edge_A
        return 0.5 * (1.0 + erf(x / max(edge_A, 1e-6)))

    ring = step(r - inner_radius_A) * step(inner_radius_A + thickness_A - r)
    slab = step(h + height_A / 2) * step(height_A / 2 - h)
    return (ring * slab).reshape(grid.shape).astype(np.float32)


def solvent_blobs(
    grid: GridSpec,
    rng: np.random.Generator,
    *,
    n_blobs: int,
    radius_range_A: tuple[float, float] = (2.0, 5.0),
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """Unit-peak Gaussian blobs ``[z, y, x]`` (Gaussian σ = radius/2) at random voxels.

    Stand-ins for unresolved solvent, detergent or aggregated junk: ``n_blobs`` (0–8) blobs of
    radius ``radius_range_A`` (2–5 Å), centred only where ``allowed`` (boolean ``[z, y, x]``,
    e.g. outside the molecule) is True.
    """
    out = np.zeros(grid.shape, dtype=np.float32)
    cand = np.flatnonzero(allowed) if allowed is not None else np.arange(out.size)
    if n_blobs <= 0 or cand.size == 0:
        return out
    centres = np.unravel_index(rng.choice(cand, size=int(n_blobs)), grid.shape)
    vox = np.asarray(grid.voxel_size)[::-1]
    idx = np.indices(grid.shape, dtype=np.float64)
    for c in zip(*centres):
        sigma = rng.uniform(*radius_range_A) / 2.0
        d2 = sum(((idx[a] - c[a]) * vox[a]) ** 2 for a in range(3))
        out += np.exp(-d2 / (2 * sigma**2)).astype(np.float32)
    return out


def soft_mask(inside: np.ndarray, voxel_size_A, *, edge_A: float) -> np.ndarray:
    """Float mask ``[z, y, x]`` in [0, 1]: 1 on ``inside`` (boolean), cosine fall-off over ``edge_A``.

    ``edge_A = 0`` gives a hard (binary) mask, which leaves sharp steps and ringing in the
    masked map; soft edges of 3–10 Å are typical of post-processing masks.
    """
    inside = np.asarray(inside, dtype=bool)
    if edge_A <= 0:
        return inside.astype(np.float32)
    dist = distance_transform_edt(~inside, sampling=_vox3(voxel_size_A)[::-1])
    ramp = np.where(dist < edge_A, 0.5 * (1.0 + np.cos(np.pi * np.clip(dist / edge_A, 0, 1))), 0.0)
    return np.where(inside, 1.0, ramp).astype(np.float32)


def box_edge(data: np.ndarray, *, axis: int, from_start: bool, depth_voxels: int, fill: float = 0.0) -> np.ndarray:
    """The map with a slab of ``depth_voxels`` (default up to 1/4 of the box) set to ``fill``.

    Models a crop reaching past the edge of the original box: zero padding with a hard step
    where the experimental map ends. ``axis`` is 0, 1 or 2 of ``[z, y, x]``.
    """
    out = np.array(data, dtype=np.float32, copy=True)
    depth = int(np.clip(depth_voxels, 0, out.shape[axis]))
    if depth == 0:
        return out
    sl = [slice(None)] * 3
    sl[axis] = slice(0, depth) if from_start else slice(out.shape[axis] - depth, None)
    out[tuple(sl)] = fill
    return out
