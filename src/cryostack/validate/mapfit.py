"""Map–model fit: the five correlation coefficients of phenix.map_model_cc, local CCs, FSC, Q-score.

Definitions follow Afonine et al., Acta Cryst. D74 (2018) 814–840 (phenix.map_model_cc):

* the model map is the model's structure factors truncated at the map resolution ``d`` (here:
  the density simulator with the model's B-factors, Fourier-truncated at ``1/d``);
* **CC_mask**: over the molecular mask (points within van der Waals radius + 1.1 Å of an atom,
  shrunk by 0.9 Å, as a bulk-solvent mask);
* **CC_box**: over the whole box;
* **CC_volume**: over the ``n`` highest points of the model map, ``n`` = number of mask points;
* **CC_peaks**: over the union of the ``n`` highest points of the model map and of the map;
* **CC_mc / CC_sc / per chain / per residue**: over the points within an atom radius of the
  selected atoms, the radius being ``max(3, min(10, max(d, r_image)))`` Å with ``r_image`` the
  half-width of the central peak of a carbon atom's image at resolution ``d`` and the model's
  mean B.

Q-score follows Pintilie et al., Nat. Methods 17 (2020) 328–334.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import gemmi
import numpy as np
import torch
from scipy.integrate import trapezoid
from scipy.ndimage import distance_transform_edt
from scipy.spatial import cKDTree

from cryostack.density.fourier import frequency_squared
from cryostack.density.metrics import correlation
from cryostack.density.simulate import simulate_density
from cryostack.io.maps import DensityMap
from cryostack.io.models import DNA, PROTEIN, RNA, AtomArrays, Structure

_MAIN_CHAIN = {"N", "CA", "C", "O"}
_NUCLEIC_BACKBONE = {"P", "OP1", "OP2", "OP3", "O5'", "C5'", "C4'", "O4'", "C3'", "O3'", "C2'", "O2'", "C1'"}
SOLVENT_RADIUS_A = 1.1
SHRINK_RADIUS_A = 0.9


# ---------------------------------------------------------------------------------------------
# Model map and masks
# ---------------------------------------------------------------------------------------------
def model_map(structure_atoms: AtomArrays, density: DensityMap, resolution_A: float) -> np.ndarray:
    """The model's map on ``density``'s grid, Fourier-truncated at ``1/resolution_A``.

    Atoms are simulated with their B-factors plus an anti-aliasing blur that is divided out
    again in Fourier space, so the result approximates F_calc(d > resolution) on the grid.
    """
    heavy = ~structure_atoms.is_hydrogen
    vmax = max(density.voxel_size)
    blur_A2 = 110.0 * vmax**2  # aliasing at Nyquist below 1e-3 of the peak
    m = simulate_density(
        torch.as_tensor(structure_atoms.coords[heavy]),
        torch.as_tensor(structure_atoms.atomic_numbers[heavy]),
        density.grid,
        b_factors=torch.as_tensor(structure_atoms.b_factors[heavy]) + blur_A2,
        occupancies=torch.as_tensor(structure_atoms.occupancies[heavy]),
    ).numpy()
    s2 = frequency_squared(density.shape, density.voxel_size)
    weight = np.where(s2 <= 1.0 / resolution_A**2, np.exp(blur_A2 * s2 / 4.0), 0.0)
    f = np.fft.rfftn(m.astype(np.float64)) * weight
    return np.fft.irfftn(f, s=density.shape, axes=(0, 1, 2)).astype(np.float32)


def molecular_mask(atoms: AtomArrays, density: DensityMap) -> np.ndarray:
    """Bulk-solvent-style molecular mask (boolean ``[z, y, x]``).

    A point is solvent if it lies farther than (van der Waals radius + 1.1 Å) from every atom;
    the molecule is what stays more than 0.9 Å from all solvent points. Only the box around
    the atoms is computed; everything beyond it is solvent.
    """
    heavy = ~atoms.is_hydrogen
    coords = atoms.coords[heavy].astype(np.float64)
    radii = np.array([gemmi.Element(e).vdw_r for e in np.asarray(atoms.elements, dtype=object)[heavy]])
    reach = radii.max() + SOLVENT_RADIUS_A
    lo, hi = _subbox(density, coords, reach + 2 * max(density.voxel_size))
    sub_shape = tuple(hi - lo)
    pts = density.voxel_to_angstrom((np.indices(sub_shape).reshape(3, -1) + lo[:, None]).T)
    dist, idx = cKDTree(coords).query(pts, k=8, distance_upper_bound=reach, workers=-1)
    surface = np.where(np.isfinite(dist), dist - radii[np.minimum(idx, len(radii) - 1)], np.inf)
    solvent = (surface.min(axis=1) > SOLVENT_RADIUS_A).reshape(sub_shape)
    to_solvent = distance_transform_edt(~solvent, sampling=density.voxel_size[::-1])
    out = np.zeros(density.shape, dtype=bool)
    out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = (~solvent) & (to_solvent > SHRINK_RADIUS_A)
    return out


def _subbox(density: DensityMap, coords: np.ndarray, margin_A: float) -> tuple[np.ndarray, np.ndarray]:
    """``[z, y, x]`` index bounds (lo inclusive, hi exclusive) of the atoms' box plus a margin, clipped."""
    lo = np.floor(density.angstrom_to_voxel(coords.min(axis=0) - margin_A)).astype(int)
    hi = np.ceil(density.angstrom_to_voxel(coords.max(axis=0) + margin_A)).astype(int) + 1
    return np.clip(lo, 0, density.shape), np.clip(hi, 0, density.shape)


def sphere_mask(coords: np.ndarray, radius_A: float, density: DensityMap, chunk: int = 2048) -> np.ndarray:
    """Boolean ``[z, y, x]`` mask of grid points within ``radius_A`` of any of ``coords`` ``(N, 3)``."""
    out = np.zeros(density.shape, dtype=bool)
    if len(coords) == 0:
        return out
    vox = np.asarray(density.voxel_size)
    h = np.ceil(radius_A / vox).astype(int) + 1  # x, y, z
    off = np.stack(np.meshgrid(*[np.arange(-k, k + 1) for k in h[::-1]], indexing="ij"), -1).reshape(-1, 3)  # z, y, x
    shape = np.array(density.shape)
    off_A = (off[:, ::-1] * vox).astype(np.float32)  # (K, 3) x, y, z
    for s0 in range(0, len(coords), chunk):
        c = coords[s0 : s0 + chunk].astype(np.float64)
        base = np.rint(density.angstrom_to_voxel(c)).astype(int)  # (m, 3) z, y, x
        delta = (c - density.voxel_to_angstrom(base)).astype(np.float32)  # atom relative to its voxel
        d2 = ((off_A[None] - delta[:, None, :]) ** 2).sum(-1)  # (m, K)
        idx = base[:, None, :] + off[None]  # (m, K, 3)
        near = (d2 <= radius_A**2) & np.all((idx >= 0) & (idx < shape), axis=-1)
        z, y, x = idx[near].T
        out[z, y, x] = True
    return out


def atom_radius_for_cc(resolution_A: float, mean_b_A2: float) -> float:
    """phenix's atom radius for local CCs: ``max(3, min(10, max(d, r_image)))`` in Å."""
    return float(max(3.0, min(10.0, max(resolution_A, image_radius(resolution_A, mean_b_A2)))))


def image_radius(resolution_A: float, b_iso_A2: float, element: str = "C") -> float:
    """Half-width (Å) of the central peak of an atom's Fourier image at resolution ``d``.

    The image is the radial inverse transform of the electron form factor times
    ``exp(-B s²/4)``, truncated at ``s = 1/d``. The radius is where the profile first rises,
    turns negative or falls to 1/100 of its peak.
    """
    coef = gemmi.Element(element).c4322
    s = np.linspace(0.0, 1.0 / resolution_A, 2000)
    f = sum(a * np.exp(-b * s**2 / 4.0) for a, b in zip(coef.a, coef.b)) * np.exp(-b_iso_A2 * s**2 / 4.0)
    r = np.arange(0.0, max(15.0, resolution_A), 0.01)
    # rho(r) = ∫ 4π s² f(s) sin(2π s r)/(2π s r) ds
    kernel = np.sinc(2.0 * np.outer(r, s))  # numpy sinc(x) = sin(πx)/(πx)
    rho = trapezoid(4.0 * np.pi * s**2 * f * kernel, s, axis=1)
    peak = rho[0]
    for i in range(1, len(r)):
        if rho[i] > rho[i - 1] or rho[i] < 0 or peak / rho[i] > 100.0:
            return float(r[i - 1])
    return float(r[-1])


def _cc(a: np.ndarray, b: np.ndarray) -> float | None:
    """Correlation, or ``None`` where it is undefined (fewer than 2 points, a flat map)."""
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return None
    return correlation(a, b)


def _top_n(values: np.ndarray, n: int) -> np.ndarray:
    """Boolean selection of values ≥ the n-th largest (ties included, as phenix)."""
    n = int(min(max(n, 1), values.size - 1))
    cutoff = np.partition(values, values.size - 1 - n)[values.size - 1 - n]
    return values >= cutoff


# ---------------------------------------------------------------------------------------------
# FSC
# ---------------------------------------------------------------------------------------------
def fsc_curve(map1: np.ndarray, map2: np.ndarray, voxel_size: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Fourier shell correlation. Returns shell centres (1/Å) and FSC values.

    Shells are ``1 / (box edge)`` wide along the longest box edge, up to Nyquist of the
    coarsest axis, so anisotropic voxels and non-cubic boxes are handled in 1/Å.
    """
    f1 = np.fft.rfftn(map1.astype(np.float64))
    f2 = np.fft.rfftn(map2.astype(np.float64))
    s = np.sqrt(frequency_squared(map1.shape, voxel_size))
    extent = max(n * v for n, v in zip(map1.shape[::-1], voxel_size))
    width = 1.0 / extent
    s_max = 1.0 / (2.0 * max(voxel_size))
    shell = np.floor(s / width + 0.5).astype(np.int64)
    n_shells = int(np.floor(s_max / width + 0.5)) + 1
    keep = shell < n_shells
    shell, f1, f2 = shell[keep], f1[keep], f2[keep]
    num = np.bincount(shell, weights=(f1 * np.conj(f2)).real, minlength=n_shells)
    d1 = np.bincount(shell, weights=np.abs(f1) ** 2, minlength=n_shells)
    d2 = np.bincount(shell, weights=np.abs(f2) ** 2, minlength=n_shells)
    with np.errstate(invalid="ignore", divide="ignore"):
        fsc = np.where((d1 > 0) & (d2 > 0), num / np.sqrt(d1 * d2), 0.0)
    freq = np.arange(n_shells) * width
    return freq[1:], fsc[1:]


def fsc_resolution(freq: np.ndarray, fsc: np.ndarray, threshold: float) -> float | None:
    """Resolution (Å) where the FSC first falls below ``threshold`` (linear interpolation)."""
    below = np.nonzero(fsc < threshold)[0]
    if below.size == 0:
        return float(1.0 / freq[-1])
    i = int(below[0])
    if i == 0:
        return None
    f0, f1, c0, c1 = freq[i - 1], freq[i], fsc[i - 1], fsc[i]
    s = f0 + (c0 - threshold) * (f1 - f0) / (c0 - c1)
    return float(1.0 / s)


# ---------------------------------------------------------------------------------------------
# Q-score
# ---------------------------------------------------------------------------------------------
def q_scores(
    atoms: AtomArrays,
    density: DensityMap,
    *,
    sigma_ref_A: float = 0.6,
    radius_step_A: float = 0.1,
    radius_max_A: float = 2.0,
    points_per_shell: int = 8,
    candidates_per_shell: int = 16,
    seed: int = 0,
) -> np.ndarray:
    """Q-score of every heavy atom (NaN for hydrogens); Pintilie et al. 2020.

    Map values are sampled on shells of radius 0, 0.1, …, 2.0 Å around each atom, using only
    points closer to that atom than to any other atom (up to 8 per shell), and correlated
    (about the mean) with the reference profile ``A exp(-r²/(2σ²)) + B``, σ = 0.6 Å,
    ``A = mean + 10 sd`` and ``B = mean − sd`` of the map.
    """
    heavy_idx = np.nonzero(~atoms.is_hydrogen)[0]
    xyz = atoms.coords[heavy_idx].astype(np.float32)
    n = len(xyz)
    out = np.full(atoms.n_atoms, np.nan)
    if n == 0:
        return out
    rng = np.random.default_rng(seed)
    radii = np.arange(radius_step_A, radius_max_A + 1e-9, radius_step_A)
    # Fibonacci sphere of candidate directions, randomly rotated per shell.
    k = np.arange(candidates_per_shell) + 0.5
    theta = np.arccos(1 - 2 * k / candidates_per_shell)
    phi = np.pi * (1 + 5**0.5) * k
    sphere = np.stack([np.cos(phi) * np.sin(theta), np.sin(phi) * np.sin(theta), np.cos(theta)], axis=1)

    mean, sd = float(density.data.mean()), float(density.data.std())
    a_ref, b_ref = mean + 10 * sd, mean - sd
    tree = cKDTree(xyz)
    neighbours = tree.query_ball_point(xyz, r=2 * radius_max_A + 0.1, workers=-1)
    max_nb = max(len(nb) for nb in neighbours)
    nb_idx = np.full((n, max_nb), -1, dtype=np.int64)
    for i, nb in enumerate(neighbours):
        nb_idx[i, : len(nb)] = nb

    u_all = [density.interpolate(xyz)[:, None].repeat(points_per_shell, axis=1)]  # r = 0
    v_all = [np.full((n, points_per_shell), a_ref + b_ref)]
    w_all = [np.ones((n, points_per_shell), dtype=bool)]
    chunk = 4096
    for r in radii:
        rot = _random_rotation(rng)
        dirs = (sphere @ rot.T * r).astype(np.float32)  # (C, 3)
        u_r = np.zeros((n, points_per_shell))
        w_r = np.zeros((n, points_per_shell), dtype=bool)
        for s0 in range(0, n, chunk):
            sl = slice(s0, min(n, s0 + chunk))
            pts = xyz[sl, None, :] + dirs[None]  # (m, C, 3)
            nb = nb_idx[sl]  # (m, K)
            nb_xyz = np.where(nb[..., None] >= 0, xyz[np.maximum(nb, 0)], np.inf)  # (m, K, 3)
            d_nb = np.linalg.norm(pts[:, :, None, :] - nb_xyz[:, None, :, :], axis=-1)  # (m, C, K)
            self_mask = nb[:, None, :] == np.arange(sl.start, sl.stop)[:, None, None]
            d_nb = np.where(self_mask, np.inf, d_nb)
            ok = (d_nb.min(axis=2) >= r)  # closer to this atom than to any other
            # Take the first points_per_shell valid candidates.
            order = np.argsort(~ok, axis=1, kind="stable")[:, :points_per_shell]
            chosen_ok = np.take_along_axis(ok, order, axis=1)
            chosen = np.take_along_axis(pts, order[..., None], axis=1)  # (m, P, 3)
            vals = density.interpolate(chosen.reshape(-1, 3)).reshape(chosen.shape[:2])
            u_r[sl], w_r[sl] = vals, chosen_ok
        u_all.append(u_r)
        v_all.append(np.full((n, points_per_shell), a_ref * math.exp(-(r**2) / (2 * sigma_ref_A**2)) + b_ref))
        w_all.append(w_r)
    u = np.concatenate(u_all, axis=1)
    v = np.concatenate(v_all, axis=1)
    w = np.concatenate(w_all, axis=1).astype(np.float64)
    cnt = w.sum(axis=1)
    um = (u * w).sum(axis=1) / cnt
    vm = (v * w).sum(axis=1) / cnt
    du, dv = (u - um[:, None]) * w, (v - vm[:, None]) * w
    den = np.sqrt((du * du).sum(axis=1) * (dv * dv).sum(axis=1))
    q = np.where(den > 0, (du * dv).sum(axis=1) / np.where(den > 0, den, 1), np.nan)
    out[heavy_idx] = q
    return out


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
        ]
    )


# ---------------------------------------------------------------------------------------------
# The whole map–model section
# ---------------------------------------------------------------------------------------------
@dataclass
class MapModelFit:
    resolution_A: float
    atom_radius_A: float
    cc_mask: float | None
    cc_box: float | None
    cc_volume: float | None
    cc_peaks: float | None
    cc_mc: float | None
    cc_sc: float | None
    q_score: float | None
    fsc05_resolution: float | None
    fsc_freq: np.ndarray
    fsc: np.ndarray
    per_chain: list[dict] = field(default_factory=list)
    per_residue: list[dict] = field(default_factory=list)
    half_map_fsc_freq: np.ndarray | None = None
    half_map_fsc: np.ndarray | None = None
    half_map_fsc0143_resolution: float | None = None
    atoms_outside_map_fraction: float = 0.0

    def to_dict(self) -> dict:
        d = {
            "resolution": self.resolution_A,
            "atom_radius": self.atom_radius_A,
            "cc_mask": self.cc_mask,
            "cc_box": self.cc_box,
            "cc_volume": self.cc_volume,
            "cc_peaks": self.cc_peaks,
            "cc_mc": self.cc_mc,
            "cc_sc": self.cc_sc,
            "q_score": self.q_score,
            "fsc05_resolution": self.fsc05_resolution,
            "fsc_curve": {"spatial_frequency_per_A": self.fsc_freq.tolist(), "fsc": self.fsc.tolist()},
            "atoms_outside_map_fraction": self.atoms_outside_map_fraction,
            "per_chain": self.per_chain,
            "per_residue": self.per_residue,
        }
        if self.half_map_fsc is not None:
            d["half_map_fsc0143_resolution"] = self.half_map_fsc0143_resolution
            d["half_map_fsc_curve"] = {
                "spatial_frequency_per_A": self.half_map_fsc_freq.tolist(),
                "fsc": self.half_map_fsc.tolist(),
            }
        return d


def map_model_fit(
    structure: Structure,
    density: DensityMap,
    resolution_A: float,
    *,
    half_maps: tuple[DensityMap, DensityMap] | None = None,
    compute_q: bool = True,
) -> MapModelFit:
    """All map–model fit numbers for ``structure`` in ``density`` at ``resolution_A``."""
    atoms = structure.atoms()
    heavy = ~atoms.is_hydrogen
    mcalc = model_map(atoms, density, resolution_A)
    mobs = density.data
    flat_obs, flat_calc = mobs.ravel(), mcalc.ravel()

    mask = molecular_mask(atoms, density).ravel()
    n_inside = int(mask.sum())
    cc_mask = _cc(flat_obs[mask], flat_calc[mask])
    cc_box = _cc(flat_obs, flat_calc)
    sel_v = _top_n(flat_calc, n_inside)
    cc_volume = _cc(flat_obs[sel_v], flat_calc[sel_v])
    sel_p = sel_v | _top_n(flat_obs, n_inside)
    cc_peaks = _cc(flat_obs[sel_p], flat_calc[sel_p])

    radius = atom_radius_for_cc(resolution_A, float(atoms.b_factors[heavy].mean()))
    names = np.asarray(atoms.atom_names, dtype=object)
    rclass = atoms.residue_class[atoms.residue_index]
    is_protein = rclass == PROTEIN
    is_nucleic = np.isin(rclass, (DNA, RNA))
    main = heavy & ((is_protein & np.isin(names, list(_MAIN_CHAIN))) | (is_nucleic & np.isin(names, list(_NUCLEIC_BACKBONE))))
    side = heavy & (is_protein | is_nucleic) & ~main

    def local_cc(sel: np.ndarray) -> float | None:
        m = sphere_mask(atoms.coords[sel], radius, density).ravel()
        return _cc(flat_obs[m], flat_calc[m]) if m.any() else None

    cc_mc = local_cc(main) if main.any() else None
    cc_sc = local_cc(side) if side.any() else None

    q = q_scores(atoms, density) if compute_q else np.full(atoms.n_atoms, np.nan)

    per_chain = []
    for ci, cid in enumerate(atoms.chain_ids):
        sel = heavy & (atoms.chain_index == ci)
        if sel.any():
            per_chain.append({"chain": cid, "cc": local_cc(sel), "q_score": _nanmean(q[sel]), "n_atoms": int(sel.sum())})
    per_residue = _per_residue(atoms, heavy, density, mobs, mcalc, radius, q)

    # Map–model FSC within the atom-radius mask (phenix: both maps masked).
    fmask = sphere_mask(atoms.coords[heavy], radius, density)
    freq, fsc = fsc_curve(mobs * fmask, mcalc * fmask, density.voxel_size)
    # Beyond the model map's resolution the model has no signal; report the curve up to it.
    keep = freq <= 1.0 / resolution_A + 1e-9
    fsc05 = fsc_resolution(freq[keep], fsc[keep], 0.5)

    idx_all = density.angstrom_to_voxel(atoms.coords)
    outside = np.any((idx_all < 0) | (idx_all > np.array(density.shape) - 1), axis=1)

    result = MapModelFit(
        resolution_A=resolution_A,
        atom_radius_A=radius,
        cc_mask=cc_mask,
        cc_box=cc_box,
        cc_volume=cc_volume,
        cc_peaks=cc_peaks,
        cc_mc=cc_mc,
        cc_sc=cc_sc,
        q_score=_nanmean(q[heavy]) if compute_q else None,
        fsc05_resolution=fsc05,
        fsc_freq=freq,
        fsc=fsc,
        per_chain=per_chain,
        per_residue=per_residue,
        atoms_outside_map_fraction=float(outside.mean()),
    )
    if half_maps is not None:
        h1, h2 = half_maps
        hf, hfsc = fsc_curve(h1.data, h2.data, h1.voxel_size)
        result.half_map_fsc_freq, result.half_map_fsc = hf, hfsc
        result.half_map_fsc0143_resolution = fsc_resolution(hf, hfsc, 0.143)
    return result


def _per_residue(atoms, heavy, density, mobs, mcalc, radius, q) -> list[dict]:
    """CC within ``radius`` of each residue's atoms (on a small local box) and mean Q-score."""
    out = []
    order = np.argsort(atoms.residue_index, kind="stable")
    bounds = np.searchsorted(atoms.residue_index[order], np.arange(len(atoms.residue_names) + 1))
    for ri in range(len(atoms.residue_names)):
        ids = order[bounds[ri] : bounds[ri + 1]]
        ids = ids[heavy[ids]]
        if ids.size == 0:
            continue
        c = atoms.coords[ids].astype(np.float64)
        lo, hi = _subbox(density, c, radius + max(density.voxel_size))
        cc = None
        if np.all(hi > lo):
            sub = np.indices(tuple(hi - lo)).reshape(3, -1).T + lo
            pts = density.voxel_to_angstrom(sub)
            near = (np.linalg.norm(pts[:, None, :] - c[None], axis=-1) <= radius).any(axis=1)
            z, y, x = sub[near].T
            cc = _cc(mobs[z, y, x], mcalc[z, y, x])
        out.append(
            {
                "chain": atoms.chain_ids[atoms.residue_chain[ri]],
                "number": int(atoms.residue_numbers[ri]),
                "icode": atoms.insertion_codes[ri],
                "name": atoms.residue_names[ri],
                "cc": cc,
                "q_score": _nanmean(q[ids]),
            }
        )
    return out


def _nanmean(x: np.ndarray) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else None
