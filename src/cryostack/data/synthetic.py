"""Simulated (map, model) training pairs: an experimental-like map, a sharp target map, the model.

One item is a cube of ``crop_voxels`` voxels at ``voxel_size_A`` cut around part of a structure
(randomly rotated by default). The input map is the core simulator's density of the atoms with
sampled B-factors, missing and extra density, then local blur, solvent/detergent, coloured noise
at the target resolution and masking artefacts (:mod:`cryostack.data.degradations`). The target
map is the clean model map at a high resolution on the same grid, for map enhancement. Every
random choice comes from one generator seeded by ``(seed, epoch, index)`` (:func:`item_seed`),
so items are reproducible whatever process or DataLoader worker makes them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, cast

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from cryostack.chem.residues import AMINO_ACIDS, ATOM37, canonical_residue, main_chain_mask
from cryostack.data import degradations as dg
from cryostack.density.fourier import low_pass
from cryostack.density.masks import sphere_mask
from cryostack.density.simulate import simulate_density
from cryostack.io.maps import DensityMap, GridSpec
from cryostack.io.models import WATER, AtomArrays, Structure

#: Residue types of :attr:`SimulatedItem.residue_type`: the 20 standard amino acids
#: (:data:`cryostack.chem.residues.AMINO_ACIDS`); anything else is ``UNKNOWN_RESIDUE``.
RESIDUE_TYPES = AMINO_ACIDS
UNKNOWN_RESIDUE = len(RESIDUE_TYPES)
_RES_ID = {n: i for i, n in enumerate(RESIDUE_TYPES)}
_ATOM_ID = {n: i for i, n in enumerate(ATOM37)}

Range = tuple[float, float]

#: The per-atom and per-residue arrays of a :class:`SimulatedItem`, as stored by ``to_arrays``.
_ARRAY_FIELDS = (
    "atom_coords", "atom_element", "atom_name37", "atom_residue", "atom_density_weight", "atom_b_A2",
    "residue_type", "residue_number", "residue_chain", "residue_source",
)  # fmt: skip

#: What each item records about how it was made (always all present, 0 when not applied, so
#: items batch with the default collate). Flags are 0/1; ``mask`` is 0 none, 1 soft, 2 hard.
PARAM_KEYS = (
    "resolution_A", "global_b_A2", "missing_density", "ligands", "ligand_atoms", "local_resolution",
    "local_b_max_A2", "micelle", "blobs", "noise_bfactor_A2", "noise_scale", "noise_sd", "postprocess",
    "mask", "box_edge", "source_atoms",
)  # fmt: skip


@dataclass
class SimulationConfig:
    """What to simulate and how to degrade it; ``(lo, hi)`` pairs are sampled uniformly per item.

    Units are in the names (Å, Å², voxels). ``*_prob`` fields are the probability that an item
    gets that degradation. Defaults are documented in ``docs/simulated_data.md``.
    """

    resolution_A: Range = (3.0, 6.0)
    voxel_size_A: float = 1.0
    crop_voxels: int = 64
    target_resolution_A: float | None = None  # None: 2 × voxel size (Nyquist)
    random_rotation: bool = True
    simulate_margin_A: float = 12.0  # atoms this far outside the crop still add density inside it
    # B-factors (Å²)
    global_b_A2: Range = (0.0, 60.0)
    residue_b_sd_A2: Range = (0.0, 20.0)
    sidechain_extra_b_A2: Range = (0.0, 20.0)
    # noise: coloured, FSC(two noisy copies) = 0.143 at the item's resolution when noise_scale = 1
    noise_bfactor_A2: Range = (-40.0, 0.0)
    noise_scale: Range = (1.0, 1.0)
    postprocess_prob: float = 0.7  # roll-off past the resolution, as in deposited maps
    postprocess_width_per_A: Range = (0.012, 0.035)
    postprocess_floor: Range = (0.03, 0.1)
    # local resolution variation: extra B up to local_b_max_A2 across the box
    local_resolution_prob: float = 0.5
    local_b_max_A2: Range = (20.0, 100.0)
    # missing density
    missing_density_prob: float = 0.5
    missing_segments: tuple[int, int] = (0, 3)
    missing_sidechain_fraction: Range = (0.0, 0.3)
    missing_weight: Range = (0.0, 0.3)
    # extra density
    ligand_prob: float = 0.3
    n_ligands: tuple[int, int] = (1, 3)
    atoms_per_ligand: tuple[int, int] = (6, 30)
    # solvent and detergent (density relative to the protein's mean density)
    micelle_prob: float = 0.15
    micelle_density: Range = (0.3, 0.6)
    micelle_thickness_A: Range = (10.0, 18.0)
    micelle_height_A: Range = (25.0, 40.0)
    blob_prob: float = 0.3
    n_blobs: tuple[int, int] = (1, 8)
    blob_density: Range = (0.2, 0.6)
    # masking
    soft_mask_prob: float = 0.3
    hard_mask_prob: float = 0.1
    mask_radius_A: Range = (3.0, 8.0)
    mask_edge_A: Range = (3.0, 10.0)
    box_edge_prob: float = 0.1
    box_edge_max_fraction: float = 0.25
    # batching: pad (and if needed truncate) atoms / residues to a fixed count; None = variable
    max_atoms: int | None = None
    max_residues: int | None = None

    def __post_init__(self) -> None:
        lo, hi = (float(v) for v in self.resolution_A)
        if not (0 < lo <= hi):
            raise ValueError(f"resolution range must be 0 < lo <= hi (Å), got {self.resolution_A}")
        if lo < 2.0 * self.voxel_size_A - 1e-9:
            raise ValueError(
                f"resolution {lo} Å is finer than Nyquist (2 × {self.voxel_size_A} Å voxels); use smaller voxels"
            )
        if self.crop_voxels < 8:
            raise ValueError(f"crop must be at least 8 voxels, got {self.crop_voxels}")

    @property
    def target_resolution(self) -> float:
        """Resolution of the sharp target map (Å)."""
        nyq = 2.0 * self.voxel_size_A
        return max(nyq, float(self.target_resolution_A)) if self.target_resolution_A else nyq

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SimulationConfig:
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kwargs)


def item_seed(seed: int, index: int, epoch: int = 0) -> np.random.SeedSequence:
    """The seed of item ``index``: independent of worker, process and generation order."""
    return np.random.SeedSequence([int(seed), int(epoch), int(index)])


@dataclass
class SimulatedItem:
    """One simulated pair on a ``C³`` grid and the part of the model inside it.

    Atom arrays have ``M`` rows (heavy atoms inside the crop), residue arrays ``R`` rows
    (residues with at least one such atom). Coordinates are Å in the frame of the maps
    (the input structure rotated: ``x' = rotation @ x + translation``).
    """

    input_map: DensityMap  # experimental-like, z-scored
    target_map: DensityMap  # clean model map at the target resolution, divided by its SD
    atom_coords: np.ndarray  # (M, 3) float32 Å
    atom_element: np.ndarray  # (M,) int64 atomic number
    atom_name37: np.ndarray  # (M,) int64 index into ATOM37, -1 otherwise
    atom_residue: np.ndarray  # (M,) int64 index into the residue arrays
    atom_density_weight: np.ndarray  # (M,) float32 weight of the atom's density in the input map
    atom_b_A2: np.ndarray  # (M,) float32 B-factor used for the input map
    residue_type: np.ndarray  # (R,) int64 index into RESIDUE_TYPES, UNKNOWN_RESIDUE otherwise
    residue_number: np.ndarray  # (R,) int64 author numbering
    residue_chain: np.ndarray  # (R,) int64 chain index in the structure
    residue_source: np.ndarray  # (R,) int64 residue index in the source structure
    rotation: np.ndarray  # (3, 3)
    translation: np.ndarray  # (3,) Å
    params: dict[str, float] = field(default_factory=dict)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays (for ``.npz`` files and tensors)."""
        out = {
            "input_map": self.input_map.data,
            "target_map": self.target_map.data,
            "origin_A": np.asarray(self.input_map.origin, np.float32),
            "voxel_size_A": np.asarray(self.input_map.voxel_size, np.float32),
            "rotation": self.rotation.astype(np.float32),
            "translation": self.translation.astype(np.float32),
        }
        for name in _ARRAY_FIELDS:
            out[name] = getattr(self, name)
        for k, v in self.params.items():
            out[f"param_{k}"] = np.asarray(v, dtype=np.float32)
        return out

    @classmethod
    def from_arrays(cls, d) -> SimulatedItem:
        vox, origin = tuple(d["voxel_size_A"].tolist()), tuple(d["origin_A"].tolist())
        # origins lie on the voxel lattice
        nstart = cast("tuple[int, int, int]", tuple(int(round(o / v)) for o, v in zip(origin, vox)))
        return cls(
            input_map=DensityMap(data=d["input_map"], voxel_size=vox, origin=origin, nstart=nstart),
            target_map=DensityMap(data=d["target_map"], voxel_size=vox, origin=origin, nstart=nstart),
            rotation=np.asarray(d["rotation"], np.float64),
            translation=np.asarray(d["translation"], np.float64),
            params={k[6:]: float(d[k]) for k in d if k.startswith("param_")},
            **{k: np.asarray(d[k]) for k in _ARRAY_FIELDS},
        )


def _u(rng: np.random.Generator, r) -> float:
    return float(rng.uniform(r[0], r[1])) if r[1] > r[0] else float(r[0])


def _i(rng: np.random.Generator, r) -> int:
    return int(rng.integers(r[0], r[1] + 1))


def _crop_grid(coords: np.ndarray, cfg: SimulationConfig, rng: np.random.Generator) -> GridSpec:
    """A ``C³`` grid on the lattice of voxel multiples, holding the whole model if it fits, else part."""
    vox = cfg.voxel_size_A
    extent = cfg.crop_voxels * vox
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    pad = 2.0 * vox
    anchor = coords[rng.integers(0, coords.shape[0])]
    centre = np.empty(3)
    for a in range(3):
        c_min, c_max = hi[a] - extent / 2 + pad, lo[a] + extent / 2 - pad
        if c_min <= c_max:  # fits along this axis: keep it all inside
            centre[a] = rng.uniform(c_min, c_max)
        else:
            centre[a] = anchor[a] + np.clip(rng.normal(0.0, extent / 8), -extent / 4, extent / 4)
    origin = np.floor((centre - extent / 2) / vox) * vox
    n = cfg.crop_voxels
    return GridSpec((n, n, n), (vox,) * 3, tuple(origin))


def _inside(grid: GridSpec, coords: np.ndarray, margin_A: float = 0.0) -> np.ndarray:
    idx = grid.angstrom_to_voxel(coords)  # z, y, x fractional
    m = margin_A / np.asarray(grid.voxel_size)[::-1]
    return np.all((idx >= -0.5 - m) & (idx < np.asarray(grid.shape) - 0.5 + m), axis=1)


def _sim(coords, z, grid, resolution_A, b=None, occ=None) -> np.ndarray:
    if len(coords) == 0:
        return np.zeros(grid.shape, np.float32)
    with torch.no_grad():
        m = simulate_density(
            torch.as_tensor(np.asarray(coords, np.float32)),
            torch.as_tensor(np.asarray(z, np.int64)),
            grid,
            resolution_A=resolution_A,
            b_factors=None if b is None else torch.as_tensor(np.asarray(b, np.float32)),
            occupancies=None if occ is None else torch.as_tensor(np.asarray(occ, np.float32)),
        )
    return m.numpy()


def simulate_item(atoms: AtomArrays, config: SimulationConfig, seed: np.random.SeedSequence | int) -> SimulatedItem:
    """Simulate one (input map, target map, model crop) item from a structure's atoms.

    Deterministic given ``seed`` (use :func:`item_seed`). Hydrogens and waters are ignored.
    """
    cfg = config
    rng = np.random.default_rng(seed)
    p: dict[str, float] = dict.fromkeys(PARAM_KEYS, 0.0)
    keep = (~atoms.is_hydrogen) & (atoms.residue_class[atoms.residue_index] != WATER)
    if not keep.any():
        raise ValueError("structure has no heavy non-water atoms")
    src_ids = np.flatnonzero(keep)
    xyz0 = atoms.coords[keep].astype(np.float64)
    centre0 = xyz0.mean(axis=0)
    rot = Rotation.random(random_state=rng).as_matrix() if cfg.random_rotation else np.eye(3)
    translation = centre0 - rot @ centre0  # rotate about the centre: the model stays where it was
    xyz = xyz0 @ rot.T + translation
    res_idx = atoms.residue_index[keep]
    names = np.asarray(atoms.atom_names, dtype=object)[keep]
    backbone = main_chain_mask(atoms)[keep]
    sidechain = (~backbone) & (names != "CB")
    z = atoms.atomic_numbers[keep]

    d = _u(rng, cfg.resolution_A)
    p["resolution_A"] = d
    grid = _crop_grid(xyz, cfg, rng)
    near = _inside(grid, xyz, cfg.simulate_margin_A)
    inside = _inside(grid, xyz)

    # atom-level degradations
    p["global_b_A2"] = _u(rng, cfg.global_b_A2)
    b = dg.perturb_bfactors(
        res_idx, backbone, rng,
        global_b_A2=p["global_b_A2"],
        residue_sd_A2=_u(rng, cfg.residue_b_sd_A2),
        sidechain_extra_A2=_u(rng, cfg.sidechain_extra_b_A2),
    )  # fmt: skip
    weight = np.ones(len(xyz), np.float32)
    p["missing_density"] = float(rng.random() < cfg.missing_density_prob)
    if p["missing_density"]:
        weight = dg.missing_density_weights(
            res_idx, atoms.residue_chain, sidechain, rng,
            n_segments=_i(rng, cfg.missing_segments),
            sidechain_fraction=_u(rng, cfg.missing_sidechain_fraction),
            weight_range=cfg.missing_weight,
        )  # fmt: skip
    lig_xyz, lig_z = np.zeros((0, 3)), np.zeros(0, np.int64)
    p["ligands"] = float(rng.random() < cfg.ligand_prob)
    if p["ligands"] and inside.any():
        lig_xyz, lig_z = dg.ligand_pseudo_atoms(
            xyz[inside], rng, n_ligands=_i(rng, cfg.n_ligands), atoms_per_ligand=cfg.atoms_per_ligand
        )
        p["ligand_atoms"] = float(len(lig_xyz))
    lig_b = np.full(len(lig_xyz), p["global_b_A2"] + 20.0, np.float32)

    # the clean signal (core simulator), then map-level degradations
    sim_xyz = np.concatenate([xyz[near], lig_xyz])
    signal = _sim(
        sim_xyz, np.concatenate([z[near], lig_z]), grid, d,
        b=np.concatenate([b[near], lig_b]),
        occ=np.concatenate([weight[near], np.ones(len(lig_xyz), np.float32)]),
    )  # fmt: skip
    vox = grid.voxel_size
    box = DensityMap(data=np.zeros(grid.shape, np.float32), voxel_size=vox, origin=grid.origin)
    envelope = sphere_mask(xyz[inside], 3.0, box) if inside.any() else np.zeros(grid.shape, bool)
    level = float(signal[envelope].mean()) if envelope.any() else float(signal.max())

    p["local_resolution"] = float(rng.random() < cfg.local_resolution_prob)
    if p["local_resolution"]:
        p["local_b_max_A2"] = _u(rng, cfg.local_b_max_A2)
        field_b = dg.bfactor_field(grid.shape, vox, rng, b_range_A2=(0.0, p["local_b_max_A2"]))
        signal = dg.blur_with_bfactor_field(signal, vox, field_b)
    p["micelle"] = float(rng.random() < cfg.micelle_prob)
    if p["micelle"] and inside.any():
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        centre = xyz[inside].mean(axis=0)
        height = _u(rng, cfg.micelle_height_A)
        rel = xyz[inside] - centre
        h = rel @ axis
        radial = np.linalg.norm(rel - h[:, None] * axis, axis=1)[np.abs(h) < height / 2]
        inner = float(np.percentile(radial, 80)) if radial.size else 10.0
        belt = dg.micelle_belt(
            grid, centre, axis, inner_radius_A=inner, thickness_A=_u(rng, cfg.micelle_thickness_A), height_A=height
        )
        belt = low_pass(DensityMap(belt, vox), max(d, 8.0)).data  # detergent is never well resolved
        signal = signal + _u(rng, cfg.micelle_density) * level * belt
    p["blobs"] = float(rng.random() < cfg.blob_prob)
    if p["blobs"]:
        solvent = ~sphere_mask(xyz[near], 4.0, box) if near.any() else np.ones(grid.shape, bool)
        blobs = dg.solvent_blobs(grid, rng, n_blobs=_i(rng, cfg.n_blobs), allowed=solvent)
        signal = signal + _u(rng, cfg.blob_density) * level * blobs

    p["noise_bfactor_A2"] = _u(rng, cfg.noise_bfactor_A2)
    p["noise_scale"] = _u(rng, cfg.noise_scale)
    noisy, p["noise_sd"] = dg.add_resolution_noise(
        signal, vox, d, rng, noise_bfactor_A2=p["noise_bfactor_A2"], noise_scale=p["noise_scale"]
    )
    p["noise_sd"] /= max(level, 1e-12)  # in units of the mean protein density
    p["postprocess"] = float(rng.random() < cfg.postprocess_prob)
    if p["postprocess"]:
        noisy = dg.postprocess_filter(
            noisy, vox, d, width_per_A=_u(rng, cfg.postprocess_width_per_A), floor=_u(rng, cfg.postprocess_floor)
        )

    u = rng.random()
    p["mask"] = 0.0
    if u < cfg.soft_mask_prob + cfg.hard_mask_prob and inside.any():
        hard = u < cfg.hard_mask_prob
        p["mask"] = 2.0 if hard else 1.0
        inside_mask = sphere_mask(xyz[near], _u(rng, cfg.mask_radius_A), box)
        edge = 0.0 if hard else _u(rng, cfg.mask_edge_A)
        noisy = noisy * dg.soft_mask(inside_mask, vox, edge_A=edge)
    p["box_edge"] = float(rng.random() < cfg.box_edge_prob)
    if p["box_edge"]:
        depth = int(rng.integers(1, max(2, int(cfg.box_edge_max_fraction * cfg.crop_voxels) + 1)))
        noisy = dg.box_edge(
            noisy, axis=int(rng.integers(0, 3)), from_start=bool(rng.random() < 0.5), depth_voxels=depth, fill=0.0
        )
    sd = float(noisy.std())
    input_data = (noisy - noisy.mean()) / sd if sd > 0 else noisy - noisy.mean()

    target = _sim(xyz[near], z[near], grid, cfg.target_resolution)
    t_sd = float(target.std())
    target = target / t_sd if t_sd > 0 else target

    # model crop
    ids = np.flatnonzero(inside)
    residues, local = np.unique(res_idx[ids], return_inverse=True)
    rnames = [canonical_residue(atoms.residue_names[r]) for r in residues]
    (ox, oy, oz), (vx, vy, vz) = grid.origin, vox
    nstart = (int(round(ox / vx)), int(round(oy / vy)), int(round(oz / vz)))
    item = SimulatedItem(
        input_map=DensityMap(input_data.astype(np.float32), vox, grid.origin, nstart=nstart),
        target_map=DensityMap(target.astype(np.float32), vox, grid.origin, nstart=nstart),
        atom_coords=xyz[ids].astype(np.float32),
        atom_element=z[ids].astype(np.int64),
        atom_name37=np.array([_ATOM_ID.get(n, -1) for n in names[ids]], dtype=np.int64),
        atom_residue=local.astype(np.int64),
        atom_density_weight=weight[ids].astype(np.float32),
        atom_b_A2=b[ids].astype(np.float32),
        residue_type=np.array([_RES_ID.get(n, UNKNOWN_RESIDUE) for n in rnames], dtype=np.int64),
        residue_number=atoms.residue_numbers[residues].astype(np.int64),
        residue_chain=atoms.residue_chain[residues].astype(np.int64),
        residue_source=residues.astype(np.int64),
        rotation=rot,
        translation=translation,
        params=p,
    )
    item.params["source_atoms"] = float(len(src_ids))
    return item


def item_structure(structure: Structure, item: SimulatedItem) -> Structure:
    """The part of ``structure`` in ``item`` (residues with an atom in the crop), moved into the map frame."""
    arr = structure.atoms()
    moved = structure.with_coordinates(arr.coords.astype(np.float64) @ item.rotation.T + item.translation)
    keep = set(int(r) for r in item.residue_source)
    st = moved.gemmi
    flat = 0
    marks = []
    for ci, chain in enumerate(st[0]):
        for ri in range(len(chain)):
            if flat not in keep:
                marks.append((ci, ri))
            flat += 1
    for ci, ri in reversed(marks):
        del st[0][ci][ri]
    st.remove_empty_chains()
    return Structure(st, source=None)


__all__ = [
    "ATOM37",
    "RESIDUE_TYPES",
    "UNKNOWN_RESIDUE",
    "SimulatedItem",
    "SimulationConfig",
    "item_seed",
    "item_structure",
    "simulate_item",
]
