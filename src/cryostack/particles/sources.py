"""What the particles are images of: a structure or a map, as a volume at the particle pixel size.

Every source becomes a cube of ``v`` voxels (``v`` even) at exactly the particle pixel size in Å,
holding the particle with its centre at voxel ``v // 2``: the box is as large as the particle
needs, not the image box and never a fixed size, so one source serves any image box (projections
are sampled on the image grid, :mod:`cryostack.density.projection`).

* A structure is simulated by the core simulator (:func:`cryostack.density.simulate.simulate_density`,
  5-Gaussian electron scattering factors, resolution blur ``B = 4 d²``) directly on that grid;
  hydrogens and waters are left out. Its centre is the mean position of its atoms.
* A map is interpolated onto that grid in Å (low-passed to the new Nyquist first when the pixel
  grows), its centre is the centroid of the density above ``mean + 3 SD``, and everything beyond
  the particle's radius (plus a soft 6 Å edge) is set to zero so that box edges and solvent noise
  do not project.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.ndimage import map_coordinates

from cryostack.density.projection import FourierVolume
from cryostack.density.simulate import simulate_density
from cryostack.errors import InputError
from cryostack.io.maps import DensityMap, GridSpec

#: Water residues are not part of a particle's density (they are the ice).
_WATER = {"HOH", "WAT", "DOD", "H2O"}


@dataclass
class ParticleSource:
    """A particle as a volume ``(v, v, v)`` ``[z, y, x]`` at ``pixel_size_A``, centre at voxel ``v // 2``.

    ``radius_A``: radius of the particle about its centre; ``density``: the mean map value inside
    it (the unit of junk specimens); ``atoms``/``atomic_numbers``: ``(N, 3)`` Å positions relative
    to the centre and their elements (structures only: fragments and scaled copies are
    re-simulated from them); ``centre_A``: the centre in the input's own frame (x, y, z Å).
    """

    name: str
    kind: str  # "structure" or "map"
    volume: torch.Tensor
    pixel_size_A: float
    radius_A: float
    density: float
    centre_A: tuple[float, ...]
    resolution_A: float | None = None
    atoms: np.ndarray | None = None
    atomic_numbers: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    _fourier: FourierVolume | None = field(default=None, repr=False)

    @property
    def edge_px(self) -> int:
        return int(self.volume.shape[-1])

    @property
    def fourier(self) -> FourierVolume:
        """The padded transform that projections are sliced from (computed once)."""
        if self._fourier is None:
            self._fourier = FourierVolume.from_volume(self.volume, pad_factor=2.0)
        return self._fourier

    def grid(self, origin_centre_A: tuple[float, float, float] | None = None) -> GridSpec:
        """The volume's grid, placed so its centre voxel sits at ``origin_centre_A`` (default: the input frame)."""
        c = np.asarray(self.centre_A if origin_centre_A is None else origin_centre_A)
        v = self.edge_px
        return GridSpec((v, v, v), (self.pixel_size_A,) * 3, tuple(c - (v // 2) * self.pixel_size_A))


def _even_edge(diameter_A: float, pixel_size_A: float) -> int:
    n = int(math.ceil(diameter_A / pixel_size_A))
    return max(8, n + (n % 2))


def _blur_margin_A(resolution_A: float | None) -> float:
    # Atom form factors reach ~2 Å; a resolution blur has SD 0.225 d: 3 SD more.
    return 3.0 + (0.7 * resolution_A if resolution_A else 0.0)


def _mean_inside(volume: torch.Tensor) -> float:
    v = volume[volume > 0.1 * volume.max()]
    return float(v.mean()) if v.numel() else float(volume.abs().mean())


def source_from_atoms(
    coords_A: np.ndarray,
    atomic_numbers: np.ndarray,
    pixel_size_A: float,
    resolution_A: float | None,
    *,
    name: str,
    centre_A: np.ndarray | None = None,
    info: dict | None = None,
) -> ParticleSource:
    """A source simulated from atoms ``(N, 3)`` Å (centred on their mean unless ``centre_A`` is given)."""
    coords = np.asarray(coords_A, dtype=np.float64).reshape(-1, 3)
    z = np.asarray(atomic_numbers, dtype=np.int64).reshape(-1)
    if coords.shape[0] == 0:
        raise InputError(None, f"source {name!r} has no atoms to simulate")
    centre = coords.mean(axis=0) if centre_A is None else np.asarray(centre_A, dtype=np.float64)
    rel = coords - centre
    radius = float(np.sqrt((rel**2).sum(axis=1)).max())
    v = _even_edge(2.0 * (radius + _blur_margin_A(resolution_A)), pixel_size_A)
    o = -(v // 2) * pixel_size_A
    grid = GridSpec((v, v, v), (pixel_size_A,) * 3, (o, o, o))
    with torch.no_grad():
        volume = simulate_density(
            torch.as_tensor(rel, dtype=torch.float32), torch.as_tensor(z), grid, resolution_A=resolution_A
        )
    return ParticleSource(
        name=name,
        kind="structure",
        volume=volume.contiguous(),
        pixel_size_A=float(pixel_size_A),
        radius_A=radius,
        density=_mean_inside(volume),
        centre_A=tuple(float(c) for c in centre),
        resolution_A=resolution_A,
        atoms=rel.astype(np.float32),
        atomic_numbers=z,
        info=dict(info or {}),
    )


def source_from_structure(structure, pixel_size_A: float, resolution_A: float | None, *, name: str) -> ParticleSource:
    """A source from a :class:`~cryostack.io.models.Structure` (first model; no hydrogens or waters)."""
    arr = structure.atoms()
    res_names = np.asarray(arr.residue_names, dtype=object)[arr.residue_index] if arr.n_atoms else np.array([])
    keep = ~arr.is_hydrogen & ~np.isin(res_names, list(_WATER))
    if not keep.any():
        raise InputError(structure.source, "model has no non-hydrogen, non-water atoms to simulate particles from")
    return source_from_atoms(
        arr.coords[keep],
        arr.atomic_numbers[keep],
        pixel_size_A,
        resolution_A,
        name=name,
        info={"n_atoms": int(keep.sum()), "file": structure.source},
    )


def _soft_sphere(v: int, radius_px: float, edge_px: float) -> torch.Tensor:
    c = torch.arange(v, dtype=torch.float32) - v // 2
    r = torch.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    t = torch.clamp((r - radius_px) / edge_px, 0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * t))


def source_from_map(
    density: DensityMap, pixel_size_A: float, *, name: str, resolution_A: float | None = None
) -> ParticleSource:
    """A source from a map, resampled in Å to ``pixel_size_A`` and masked around the particle.

    ``resolution_A`` (optional) low-passes the map to that resolution as well.
    """
    from cryostack.density.fourier import low_pass

    data = density.data
    std = float(data.std())
    if not np.isfinite(std) or std == 0:
        raise InputError(density.source, "map is flat; nothing to project")
    mask = data > data.mean() + 3.0 * std
    if mask.sum() < 10:
        mask = data > 0.5 * data.max()
    idx = np.argwhere(mask)  # [z, y, x]
    w = data[mask].astype(np.float64)
    centre_zyx = (idx * w[:, None]).sum(axis=0) / w.sum()
    centre = density.voxel_to_angstrom(centre_zyx)  # (x, y, z) Å
    pos = density.voxel_to_angstrom(idx)
    radius = float(np.sqrt(((pos - centre) ** 2).sum(axis=1)).max())
    src = density
    coarsest = float(max(density.voxel_size))
    cut = 2.0 * pixel_size_A if pixel_size_A > coarsest * (1 + 1e-6) else None
    if resolution_A is not None:
        cut = max(cut or 0.0, float(resolution_A))
    if cut is not None:
        src = low_pass(density, cut)
    edge_A = 6.0
    v = _even_edge(2.0 * (radius + edge_A + 2.0 * pixel_size_A), pixel_size_A)
    axis = (np.arange(v) - v // 2) * pixel_size_A
    zz, yy, xx = np.meshgrid(axis, axis, axis, indexing="ij")
    xyz = np.stack([xx + centre[0], yy + centre[1], zz + centre[2]], axis=-1)
    frac = density.angstrom_to_voxel(xyz.reshape(-1, 3)).T
    vol = map_coordinates(src.data, frac, order=3, mode="constant", cval=0.0).reshape(v, v, v).astype(np.float32)
    volume = torch.from_numpy(vol)
    sphere = _soft_sphere(v, radius / pixel_size_A, edge_A / pixel_size_A)
    # The solvent level at the mask edge becomes 0, so the masked particle sits on a flat zero background.
    shell = (sphere > 0.05) & (sphere < 0.95)
    level = float(volume[shell].median()) if bool(shell.any()) else 0.0
    volume = (volume - level) * sphere
    return ParticleSource(
        name=name,
        kind="map",
        volume=volume.contiguous(),
        pixel_size_A=float(pixel_size_A),
        radius_A=radius,
        density=_mean_inside(volume),
        centre_A=tuple(float(c) for c in centre),
        resolution_A=resolution_A,
        info={"file": density.source, "map_voxel_size_A": list(density.voxel_size)},
    )


# --------------------------------------------------------------------------------------------
# Variants for junk: fragments and scaled copies
# --------------------------------------------------------------------------------------------
def fragment_of(source: ParticleSource, rng: np.random.Generator, *, name: str) -> ParticleSource:
    """A random part of ``source``: everything within a sphere around a random atom (or voxel),
    holding 15–60 % of the particle, re-centred on its own centroid (as a picker would)."""
    if source.atoms is not None and source.atomic_numbers is not None:
        xyz = source.atoms.astype(np.float64)
        for _ in range(50):
            target = rng.uniform(0.15, 0.6)
            seed_atom = xyz[rng.integers(len(xyz))]
            d = np.sqrt(((xyz - seed_atom) ** 2).sum(axis=1))
            cut = np.quantile(d, target)  # the sphere holding that fraction of the atoms
            keep = d <= cut
            if keep.sum() >= 3:
                break
        part = source_from_atoms(
            xyz[keep],
            source.atomic_numbers[keep],
            source.pixel_size_A,
            source.resolution_A,
            name=name,
            info={"fraction": float(keep.mean()), "parent": source.name},
        )
        return part
    vol = source.volume
    v = source.edge_px
    inside = torch.nonzero(vol > 0.1 * vol.max()).float()
    fraction = rng.uniform(0.15, 0.6)
    seed_vox = inside[int(rng.integers(len(inside)))]
    d = torch.sqrt(((inside - seed_vox) ** 2).sum(dim=1))
    cut = float(torch.quantile(d, fraction))
    c = torch.arange(v, dtype=torch.float32)
    r = torch.sqrt(
        (c[:, None, None] - seed_vox[0]) ** 2
        + (c[None, :, None] - seed_vox[1]) ** 2
        + (c[None, None, :] - seed_vox[2]) ** 2
    )
    piece = vol * torch.clamp((cut + 1.5 - r) / 3.0, 0.0, 1.0)
    w = piece.clamp_min(0)
    grid = torch.stack(torch.meshgrid(c, c, c, indexing="ij"), dim=-1)
    com = (grid * w[..., None]).sum(dim=(0, 1, 2)) / w.sum()
    from scipy.ndimage import shift as nd_shift

    moved = nd_shift(piece.numpy(), (v // 2 - com).numpy(), order=3, mode="constant", cval=0.0)
    frac = float(w.sum() / vol.clamp_min(0).sum())
    return ParticleSource(
        name=name,
        kind="map",
        volume=torch.from_numpy(moved.astype(np.float32)),
        pixel_size_A=source.pixel_size_A,
        radius_A=source.radius_A,
        density=source.density,
        centre_A=source.centre_A,
        resolution_A=source.resolution_A,
        info={"fraction": frac, "parent": source.name},
    )


def scaled_copy(source: ParticleSource, factor: float, *, name: str) -> ParticleSource:
    """``source`` scaled about its centre by ``factor`` (a particle of the wrong size)."""
    if source.atoms is not None and source.atomic_numbers is not None:
        out = source_from_atoms(
            source.atoms * factor,
            source.atomic_numbers,
            source.pixel_size_A,
            source.resolution_A,
            name=name,
            centre_A=np.zeros(3),
            info={"scale": factor, "parent": source.name},
        )
        return out
    v = source.edge_px
    nv = _even_edge(v * factor * source.pixel_size_A, source.pixel_size_A)
    axis = (np.arange(nv) - nv // 2) / factor + v // 2
    zz, yy, xx = np.meshgrid(axis, axis, axis, indexing="ij")
    vol = map_coordinates(source.volume.numpy(), [zz, yy, xx], order=3, mode="constant", cval=0.0)
    return ParticleSource(
        name=name,
        kind="map",
        volume=torch.from_numpy(vol.astype(np.float32)),
        pixel_size_A=source.pixel_size_A,
        radius_A=source.radius_A * factor,
        density=source.density,
        centre_A=source.centre_A,
        resolution_A=source.resolution_A,
        info={"scale": factor, "parent": source.name},
    )


def reference_map(source: ParticleSource, box_px: int) -> DensityMap:
    """The source on a ``box_px³`` grid with its centre at voxel ``box_px // 2``: what a perfect
    reconstruction of the good particles gives, placed in the input's frame (it overlays the input
    model or map in a viewer)."""
    v = source.edge_px
    out = torch.zeros(box_px, box_px, box_px)
    lo_src = max(0, v // 2 - box_px // 2)
    lo_dst = max(0, box_px // 2 - v // 2)
    n = min(v - lo_src, box_px - lo_dst)
    out[lo_dst : lo_dst + n, lo_dst : lo_dst + n, lo_dst : lo_dst + n] = source.volume[
        lo_src : lo_src + n, lo_src : lo_src + n, lo_src : lo_src + n
    ]
    px = source.pixel_size_A
    cx, cy, cz = (float(c) - (box_px // 2) * px for c in source.centre_A)
    return DensityMap(data=out.numpy(), voxel_size=(px, px, px), origin=(cx, cy, cz))


def corpus_sources(
    corpus,
    split: str,
    n_chains: int,
    pixel_size_A: float,
    resolution_A: float | None,
    *,
    seed: int = 0,
    min_residues: int = 50,
    max_radius_A: float | None = None,
    allow_test: bool = False,
) -> list[ParticleSource]:
    """``n_chains`` chains drawn at random (from ``seed``) from a corpus split, as sources.

    Chains shorter than ``min_residues`` are skipped, and so are chains whose radius exceeds
    ``max_radius_A`` (e.g. half the particle box) when given.
    """
    idx = corpus.split_indices(split, allow_test=allow_test)
    lengths = corpus.lengths[idx]
    idx = idx[lengths >= min_residues]
    if len(idx) == 0:
        raise InputError(None, f"corpus split {split!r} has no chain of at least {min_residues} residues")
    order = np.random.default_rng([int(seed), 7]).permutation(idx)
    out: list[ParticleSource] = []
    for i in order:
        record = corpus.chain(int(i), allow_test=allow_test)
        src = source_from_structure(
            record.to_structure(), pixel_size_A, resolution_A, name=f"{record.pdb_id}_{record.chain_id}"
        )
        if max_radius_A is not None and src.radius_A > max_radius_A:
            continue
        src.info.update({"corpus_index": int(i), "split": split, "residues": len(record)})
        out.append(src)
        if len(out) == n_chains:
            break
    if len(out) < n_chains:
        raise InputError(None, f"corpus split {split!r} has only {len(out)} usable chains, {n_chains} requested")
    return out
