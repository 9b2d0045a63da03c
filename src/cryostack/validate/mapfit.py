"""Map–model fit: the five correlation coefficients of phenix.map_model_cc, local CCs, FSC, Q-score.

Definitions follow Afonine et al., Acta Cryst. D74 (2018) 814–840 (phenix.map_model_cc):

* the model map is the model's structure factors truncated at the map resolution ``d`` (here:
  the density simulator with the model's B-factors, Fourier-truncated at ``1/d``);
* **CC_mask**: over the molecular mask (points within van der Waals radius + 1.1 Å of an atom,
  shrunk by 0.9 Å, as a bulk-solvent mask);
* **CC_box**: over the whole box;
* **CC_volume**: over the ``n`` highest points of the model map, ``n`` = number of mask points;
* **CC_peaks**: over the union of the ``n`` highest points of the model map and of the map
  (map density the model does not account for, as for one subunit in a filament map, lowers
  it, even below zero, while CC_mask stays high);
* **CC_mc / CC_sc / per chain / per residue**: over the points within an atom radius of the
  selected atoms, the radius being ``max(3, min(10, max(d, r_image)))`` Å with ``r_image`` the
  half-width of the central peak of a carbon atom's image at resolution ``d`` and the model's
  mean B.

Q-score follows Pintilie et al., Nat. Methods 17 (2020) 328–334.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import gemmi
import numpy as np
import torch
from scipy.integrate import trapezoid
from scipy.ndimage import binary_erosion
from scipy.spatial import cKDTree

from cryostack.chem.residues import NUCLEIC_BACKBONE, PROTEIN_MAIN_CHAIN
from cryostack.density.fsc import fsc_average, fsc_curve, fsc_resolution, fsc_shell_counts
from cryostack.density.masks import sphere_points
from cryostack.density.metrics import correlation
from cryostack.density.simulate import fcalc_map
from cryostack.io.maps import DensityMap
from cryostack.io.models import DNA, PROTEIN, RNA, AtomArrays, Structure
from cryostack.validate.stages import Stages, stage

SOLVENT_RADIUS_A = 1.1
SHRINK_RADIUS_A = 0.9


# ---------------------------------------------------------------------------------------------
# Model map and masks
# ---------------------------------------------------------------------------------------------
def model_map(structure_atoms: AtomArrays, density: DensityMap, resolution_A: float) -> np.ndarray:
    """The model's map on ``density``'s grid, Fourier-truncated at ``1/resolution_A``
    (:func:`cryostack.density.simulate.fcalc_map`: atoms with their B-factors and occupancies,
    hydrogens left out), approximating F_calc(d > resolution) on the grid."""
    heavy = ~structure_atoms.is_hydrogen
    with _torch_threads(1), torch.no_grad():
        m = fcalc_map(
            torch.as_tensor(structure_atoms.coords[heavy]),
            torch.as_tensor(structure_atoms.atomic_numbers[heavy]),
            torch.as_tensor(structure_atoms.b_factors[heavy]),
            density.grid,
            resolution_A,
            occupancies=torch.as_tensor(structure_atoms.occupancies[heavy]),
        )
    return m.numpy().astype(np.float32)


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run torch CPU ops on ``n`` threads inside the block.

    The simulator's many small kernels gain little from a second thread, and when other jobs
    share the cores its busy-waiting thread pool made the model map 5–8× slower (measured on
    the 2-core machine: 2.6 s on one thread against 11–19 s on two). Results are identical.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def molecular_mask(atoms: AtomArrays, density: DensityMap) -> np.ndarray:
    """Bulk-solvent-style molecular mask (boolean ``[z, y, x]``).

    A point is solvent if it lies farther than (van der Waals radius + 1.1 Å) from every atom;
    the molecule is what stays more than 0.9 Å from all solvent points.
    """
    heavy = ~atoms.is_hydrogen
    coords = atoms.coords[heavy].astype(np.float64)
    radii = np.array([gemmi.Element(e).vdw_r for e in np.asarray(atoms.elements, dtype=object)[heavy]])
    not_solvent = np.zeros(density.shape, dtype=bool)
    flat = not_solvent.ravel()
    for r in np.unique(radii):
        flat[sphere_points(coords[radii == r], float(r) + SOLVENT_RADIUS_A, density)[1]] = True
    if not flat.any():
        return not_solvent
    # "More than 0.9 Å from every solvent point" is an erosion by the ball of grid offsets within
    # 0.9 Å (distances as the Euclidean distance transform measures them); outside the map
    # counts as molecule, as it does for that transform.
    vox = np.asarray(density.voxel_size[::-1], dtype=np.float64)  # z, y, x
    h = np.floor(SHRINK_RADIUS_A / vox).astype(int)
    grid = np.indices(tuple(2 * h + 1)).reshape(3, -1).T - h
    ball = (np.sqrt(((grid * vox) ** 2).sum(axis=1)) <= SHRINK_RADIUS_A).reshape(tuple(2 * h + 1))
    where = np.nonzero(not_solvent)
    lo = np.maximum(np.array([w.min() for w in where]) - h - 1, 0)
    hi = np.minimum(np.array([w.max() for w in where]) + h + 2, density.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    out = np.zeros(density.shape, dtype=bool)
    out[box] = binary_erosion(not_solvent[box], structure=ball, border_value=1)
    return out


def _voxels_by_group(
    group_of_pair: np.ndarray, voxels: np.ndarray, n_voxels: int, n_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct voxels of each of ``n_groups`` groups, ascending: ``(starts, voxels)`` with group
    ``g``'s voxels at ``voxels[starts[g]:starts[g + 1]]``; ``group_of_pair`` gives each pair's group."""
    key = np.unique(group_of_pair.astype(np.int64) * n_voxels + voxels)
    starts = np.searchsorted(key, np.arange(n_groups + 1, dtype=np.int64) * n_voxels)
    return starts, key % n_voxels


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
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return correlation(a, b)


def _top_n(values: np.ndarray, n: int) -> np.ndarray:
    """Boolean selection of values ≥ the n-th largest (ties included, as phenix)."""
    n = int(min(max(n, 1), values.size - 1))
    cutoff = np.partition(values, values.size - 1 - n)[values.size - 1 - n]
    return values >= cutoff


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
    """Q-score of every heavy atom (NaN for hydrogens and for atoms within ``radius_max_A`` of
    the box edge or outside it); Pintilie et al. 2020.

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
    # Ordered pairs of distinct atoms (i, j) near enough that j can be closer than r_max to a
    # point on a shell of i: |x_i - x_j| < 2 r_max.
    pairs = cKDTree(xyz).query_pairs(2 * radius_max_A + 0.1, output_type="ndarray")
    pair_i = np.concatenate([pairs[:, 0], pairs[:, 1]])
    pair_j = np.concatenate([pairs[:, 1], pairs[:, 0]])
    d_ij = (xyz[pair_i].astype(np.float64) - xyz[pair_j]).astype(np.float32)
    d2_ij = (d_ij**2).sum(axis=1)

    n_shells = len(radii) + 1
    # Samples laid out as (atom, shell, slot); the k-th slot of a shell holds the k-th valid
    # candidate (in candidate order); unused slots have weight 0 and value 0.
    u = np.zeros((n, n_shells, points_per_shell))
    w = np.zeros((n, n_shells, points_per_shell), dtype=bool)
    v = np.empty((n, n_shells, points_per_shell))
    u[:, 0, :] = density.interpolate(xyz)[:, None]  # r = 0
    w[:, 0, :] = True
    v[:, 0, :] = a_ref + b_ref
    row_parts, shell_parts, slot_parts, where = [], [], [], []
    for s_i, r in enumerate(radii, start=1):
        rot = _random_rotation(rng)
        dirs = (sphere @ rot.T * r).astype(np.float32)  # (C, 3)
        # A candidate x_i + v is closer to atom j than r when |x_i - x_j + v|² - r² < 0, i.e.
        # |d|² + 2 d·v < 0 with d = x_i - x_j. Pairs near that bound are re-measured exactly as
        # the points are stored (float32), so rounding decides nothing here.
        near = np.nonzero(d2_ij < (2 * r + 0.1) ** 2)[0]  # farther pairs: |d|² + 2 d·v ≥ 0.1 |d| > 0.02 Å²
        d = d_ij[near]
        excess = d[:, 0, None] * dirs[:, 0]  # (P, C) Å², float32: the 0.01 Å² margin dwarfs its rounding
        excess += d[:, 1, None] * dirs[:, 1]
        excess += d[:, 2, None] * dirs[:, 2]
        excess *= 2.0
        excess += d2_ij[near, None]
        p_idx, c_idx = np.nonzero(excess < 0.01)
        i, j = pair_i[near[p_idx]], pair_j[near[p_idx]]
        closer = np.linalg.norm((xyz[i] + dirs[c_idx]) - xyz[j], axis=-1) < r
        ok = np.ones((n, candidates_per_shell), dtype=bool)
        ok[i[closer], c_idx[closer]] = False
        # The first points_per_shell valid candidates of each atom fill its slots in order.
        rank = np.cumsum(ok, axis=1) - 1
        a_idx, c_sel = np.nonzero(ok & (rank < points_per_shell))
        row_parts.append(a_idx)
        shell_parts.append(np.full(a_idx.size, s_i))
        slot_parts.append(rank[a_idx, c_sel])
        where.append(xyz[a_idx] + dirs[c_sel])
        v[:, s_i, :] = a_ref * math.exp(-(r**2) / (2 * sigma_ref_A**2)) + b_ref
    rows, shells, slots = np.concatenate(row_parts), np.concatenate(shell_parts), np.concatenate(slot_parts)
    u[rows, shells, slots] = density.interpolate(np.concatenate(where))
    w[rows, shells, slots] = True
    u, v, w = u.reshape(n, -1), v.reshape(n, -1), w.reshape(n, -1).astype(np.float64)
    cnt = w.sum(axis=1)
    um = (u * w).sum(axis=1) / cnt
    vm = (v * w).sum(axis=1) / cnt
    du, dv = (u - um[:, None]) * w, (v - vm[:, None]) * w
    den = np.sqrt((du * du).sum(axis=1) * (dv * dv).sum(axis=1))
    q = np.where(den > 0, (du * dv).sum(axis=1) / np.where(den > 0, den, 1), np.nan)
    # Samples beyond the box would read as zeros and distort the profile: atoms closer to the
    # box edge than radius_max_A get no Q-score.
    idx = density.angstrom_to_voxel(xyz)
    reach = radius_max_A / np.asarray(density.voxel_size[::-1])
    complete = np.all((idx - reach >= 0) & (idx + reach <= np.array(density.shape) - 1), axis=1)
    q[~complete] = np.nan
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
    q_score_undefined_atoms: int = 0  # heavy atoms without a Q-score (near or beyond the box edge)
    #: The model map against each half map (:func:`model_vs_half_maps`), ``None`` without half maps.
    model_vs_half_maps: dict | None = None

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
            "q_score_undefined_atoms": self.q_score_undefined_atoms,
            "per_chain": self.per_chain,
            "per_residue": self.per_residue,
        }
        if self.half_map_fsc is not None:
            assert self.half_map_fsc_freq is not None  # the half-map curve and its frequencies are set together
            d["half_map_fsc0143_resolution"] = self.half_map_fsc0143_resolution
            d["half_map_fsc_curve"] = {
                "spatial_frequency_per_A": self.half_map_fsc_freq.tolist(),
                "fsc": self.half_map_fsc.tolist(),
            }
        if self.model_vs_half_maps is not None:
            d["model_vs_half_maps"] = self.model_vs_half_maps
        return d


def map_model_fit(
    structure: Structure,
    density: DensityMap,
    resolution_A: float,
    *,
    half_maps: tuple[DensityMap, DensityMap] | None = None,
    compute_q: bool = True,
    atoms: AtomArrays | None = None,
    stages: Stages | None = None,
) -> MapModelFit:
    """All map–model fit numbers for ``structure`` in ``density`` at ``resolution_A``.

    ``atoms`` may pass ``structure.atoms()`` when the caller already has it; ``stages``
    records the time of each step.
    """
    atoms = structure.atoms() if atoms is None else atoms
    heavy = ~atoms.is_hydrogen
    with stage(stages, "model map"):
        mcalc = model_map(atoms, density, resolution_A)
    mobs = density.data
    flat_obs, flat_calc = mobs.ravel(), mcalc.ravel()

    with stage(stages, "molecular mask"):
        mask = molecular_mask(atoms, density).ravel()
    with stage(stages, "CC mask/box/volume/peaks"):
        n_inside = int(mask.sum())
        cc_mask = _cc(flat_obs[mask], flat_calc[mask])
        cc_box = _cc(flat_obs, flat_calc)
        sel_v = _top_n(flat_calc, n_inside)
        cc_volume = _cc(flat_obs[sel_v], flat_calc[sel_v])
        sel_p = sel_v | _top_n(flat_obs, n_inside)
        cc_peaks = _cc(flat_obs[sel_p], flat_calc[sel_p])
        del sel_v, sel_p, mask
    with stage(stages, "Q-score"):
        q = q_scores(atoms, density) if compute_q else np.full(atoms.n_atoms, np.nan)
    with stage(stages, "local CCs"):
        radius = atom_radius_for_cc(resolution_A, float(atoms.b_factors[heavy].mean()))
        names = np.asarray(atoms.atom_names, dtype=object)
        rclass = atoms.residue_class[atoms.residue_index]
        is_protein = rclass == PROTEIN
        is_nucleic = np.isin(rclass, (DNA, RNA))
        main = heavy & (
            (is_protein & np.isin(names, list(PROTEIN_MAIN_CHAIN)))
            | (is_nucleic & np.isin(names, list(NUCLEIC_BACKBONE)))
        )
        side = heavy & (is_protein | is_nucleic) & ~main

        # Grid points near each heavy atom, found once and shared by every local CC and the FSC mask.
        heavy_rows = np.nonzero(heavy)[0]
        pair_atom, pair_voxel = sphere_points(atoms.coords[heavy_rows], radius, density)
        pair_atom = heavy_rows[pair_atom]
        n_vox = flat_obs.size

        def near_atoms(sel: np.ndarray) -> np.ndarray:
            m = np.zeros(n_vox, dtype=bool)
            m[pair_voxel[sel[pair_atom]]] = True
            return m

        def local_cc(voxels: np.ndarray) -> float | None:
            return _cc(flat_obs[voxels], flat_calc[voxels])

        cc_mc = local_cc(near_atoms(main)) if main.any() else None
        cc_sc = local_cc(near_atoms(side)) if side.any() else None

        per_chain = []
        starts, voxels = _voxels_by_group(atoms.chain_index[pair_atom], pair_voxel, n_vox, len(atoms.chain_ids))
        for ci, cid in enumerate(atoms.chain_ids):
            sel = heavy & (atoms.chain_index == ci)
            if sel.any():
                cc = local_cc(voxels[starts[ci] : starts[ci + 1]])
                per_chain.append({"chain": cid, "cc": cc, "q_score": _nanmean(q[sel]), "n_atoms": int(sel.sum())})
        starts, voxels = _voxels_by_group(atoms.residue_index[pair_atom], pair_voxel, n_vox, len(atoms.residue_names))
        per_residue = _per_residue(atoms, heavy, q, [local_cc(voxels[a:b]) for a, b in zip(starts[:-1], starts[1:])])

    with stage(stages, "FSC"):
        # Map–model FSC within the atom-radius mask (phenix: both maps masked).
        fmask = near_atoms(heavy).reshape(density.shape)
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
        q_score_undefined_atoms=int((~np.isfinite(q[heavy])).sum()) if compute_q else 0,
    )
    if half_maps is not None:
        h1, h2 = half_maps
        with stage(stages, "half-map FSC"):
            hf, hfsc = fsc_curve(h1.data, h2.data, h1.voxel_size)
        result.half_map_fsc_freq, result.half_map_fsc = hf, hfsc
        result.half_map_fsc0143_resolution = fsc_resolution(hf, hfsc, 0.143)
        with stage(stages, "model vs half-map FSC"):
            result.model_vs_half_maps = model_vs_half_maps(atoms, half_maps, resolution_A, mcalc=mcalc, mask=fmask)
    return result


def model_vs_half_maps(
    atoms: AtomArrays,
    half_maps: tuple[DensityMap, DensityMap],
    resolution_A: float,
    *,
    mcalc: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> dict:
    """FSC of the model map against each half map, within the atom-radius mask of the map–model
    FSC (both maps masked), and its average over the shells up to ``1/resolution_A`` weighted by
    the shell's number of Fourier coefficients (REFMAC's and servalcat's FSCaverage).

    When the model was refined against half map 1 only, these are FSC_work (half 1) and FSC_free
    (half 2), and ``half1_minus_half2`` (the gap) measures overfitting to half 1's noise.
    ``mcalc`` (:func:`model_map` on the halves' grid) and ``mask`` (boolean ``[z, y, x]``) may
    be passed when the caller has them. Returns ``half1_average``, ``half2_average``,
    ``half1_minus_half2``, ``average_up_to_A`` and both curves (``half1_curve``,
    ``half2_curve``: ``spatial_frequency_per_A`` and ``fsc``).
    """
    h1, h2 = half_maps
    if mcalc is None:
        mcalc = model_map(atoms, h1, resolution_A)
    if mask is None:
        heavy = ~atoms.is_hydrogen
        radius = atom_radius_for_cc(resolution_A, float(atoms.b_factors[heavy].mean()))
        mask = np.zeros(h1.shape, dtype=bool)
        mask.ravel()[sphere_points(atoms.coords[heavy], radius, h1)[1]] = True
    counts = fsc_shell_counts(h1.shape, h1.voxel_size)
    out: dict = {"average_up_to_A": float(resolution_A)}
    calc = mcalc * mask
    for name, half in (("half1", h1), ("half2", h2)):
        freq, curve = fsc_curve(half.data * mask, calc, half.voxel_size)
        out[f"{name}_average"] = fsc_average(freq, curve, counts, resolution_A)
        out[f"{name}_curve"] = {"spatial_frequency_per_A": freq.tolist(), "fsc": curve.tolist()}
    a1, a2 = out["half1_average"], out["half2_average"]
    out["half1_minus_half2"] = None if a1 is None or a2 is None else a1 - a2
    return out


def _per_residue(atoms: AtomArrays, heavy: np.ndarray, q: np.ndarray, ccs: list[float | None]) -> list[dict]:
    """Per-residue records: local CC (given, one per residue) and mean Q-score of heavy atoms."""
    out = []
    order = np.argsort(atoms.residue_index, kind="stable")
    bounds = np.searchsorted(atoms.residue_index[order], np.arange(len(atoms.residue_names) + 1))
    for ri in range(len(atoms.residue_names)):
        ids = order[bounds[ri] : bounds[ri + 1]]
        ids = ids[heavy[ids]]
        if ids.size == 0:
            continue
        out.append(
            {
                "chain": atoms.chain_ids[atoms.residue_chain[ri]],
                "number": int(atoms.residue_numbers[ri]),
                "icode": atoms.insertion_codes[ri],
                "name": atoms.residue_names[ri],
                "cc": ccs[ri],
                "q_score": _nanmean(q[ids]),
            }
        )
    return out


def _nanmean(x: np.ndarray) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else None
