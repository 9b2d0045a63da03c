"""Rigid alignment of one map onto another: global rotation search, both hands, best shift.

A reconstruction from particles comes out in an arbitrary orientation, position and — from a
de novo initial model — possibly the wrong hand. :func:`align_maps` puts it onto a reference
on the same cubic grid (a model's simulated map, a known structure): random rotations on a
coarse copy (Fourier-cropped) for both hands, the best circular shift of each found by FFT
cross-correlation, then small turns about the winner at full size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cryostack.density.fourier import fourier_crop_or_pad


@dataclass
class MapAlignment:
    """``aligned``: the moving map on the fixed map's grid (``(N, N, N)``, z, y, x). ``mirrored``:
    the moving map's hand was flipped (its z axis reversed) first. ``cc``: full-box correlation
    with the fixed map after alignment; ``cc_other_hand``: the best correlation of the other
    hand in the coarse search (how clearly the hand was decided)."""

    aligned: np.ndarray
    mirrored: bool
    cc: float
    cc_other_hand: float
    rotation: np.ndarray  # (3, 3), in the (x, y, z) grid-sample convention of torch
    shift_voxels: tuple[int, int, int]  # (z, y, x) circular shift applied after rotation

    def apply(self, vol: np.ndarray) -> np.ndarray:
        """The same mirror, rotation and shift applied to another map on the moving map's grid
        (a half map of the aligned reconstruction)."""
        v = np.flip(vol, axis=0) if self.mirrored else vol
        rot = torch.from_numpy(self.rotation.astype(np.float32))[None]
        out = rotate_volumes(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)), rot)[0].numpy()
        return np.roll(out, shift=tuple(-s for s in self.shift_voxels), axis=(0, 1, 2))

    def to_dict(self) -> dict:
        return {
            "mirrored": self.mirrored,
            "cc": round(self.cc, 4),
            "cc_other_hand": round(self.cc_other_hand, 4),
            "rotation": self.rotation.round(5).tolist(),
            "shift_voxels": list(self.shift_voxels),
        }


def rotate_volumes(vol: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """``vol`` ``(D, H, W)`` resampled (trilinear) under each rotation ``rot`` ``(B, 3, 3)`` about
    the box centre; returns ``(B, D, H, W)``."""
    theta = torch.cat([rot, torch.zeros(len(rot), 3, 1, dtype=rot.dtype)], dim=2)
    grid = torch.nn.functional.affine_grid(theta, [len(rot), 1, *vol.shape], align_corners=False)
    return torch.nn.functional.grid_sample(vol.expand(len(rot), 1, *vol.shape), grid, align_corners=False)[:, 0]


def best_shift_cc(batch: torch.Tensor, ref_f: torch.Tensor, ref_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Best circular-shift correlation of each volume in ``batch`` ``(B, D, H, W)`` with the
    reference (its ``rfftn`` of the mean-subtracted map and ``std · √n``), and that shift's flat index."""
    f = torch.fft.rfftn(batch - batch.mean(dim=(1, 2, 3), keepdim=True), dim=(1, 2, 3))
    corr = torch.fft.irfftn(f * ref_f.conj(), s=batch.shape[1:], dim=(1, 2, 3))
    norms = batch.flatten(1).std(dim=1) * np.sqrt(batch[0].numel()) * ref_norm
    best, idx = corr.flatten(1).max(dim=1)
    return best / norms.clamp_min(1e-12), idx


def _reference(vol: np.ndarray) -> tuple[torch.Tensor, float]:
    t = torch.from_numpy(np.ascontiguousarray(vol, dtype=np.float32))
    t = t - t.mean()
    return torch.fft.rfftn(t), float(t.std()) * float(np.sqrt(t.numel()))


def align_maps(
    fixed: np.ndarray,
    moving: np.ndarray,
    *,
    coarse_px: int = 32,
    n_rotations: int = 3000,
    n_local: int = 300,
    local_sd_rad: float = 0.05,
    seed: int = 0,
) -> MapAlignment:
    """``moving`` rotated, shifted and (if that fits better) mirrored onto ``fixed``; both cubic
    ``(N, N, N)`` on the same voxel size. Deterministic given ``seed``."""
    from scipy.spatial.transform import Rotation

    if fixed.shape != moving.shape or len(set(fixed.shape)) != 1:
        raise ValueError(f"maps must be cubic and of one shape, got {fixed.shape} and {moving.shape}")
    n = fixed.shape[0]
    small = min(coarse_px, n)
    ref_f, ref_norm = _reference(fourier_crop_or_pad(fixed, small))
    rots = torch.from_numpy(Rotation.random(n_rotations, random_state=seed).as_matrix().astype(np.float32))
    best_by_hand: dict[bool, tuple[float, torch.Tensor]] = {}
    for hand in (False, True):
        vol = np.flip(moving, axis=0) if hand else moving
        coarse = torch.from_numpy(np.ascontiguousarray(fourier_crop_or_pad(np.ascontiguousarray(vol), small), dtype=np.float32))  # fmt: skip
        top = (-2.0, rots[0])
        for lo in range(0, n_rotations, 200):
            cc, _ = best_shift_cc(rotate_volumes(coarse, rots[lo : lo + 200]), ref_f, ref_norm)
            i = int(cc.argmax())
            if float(cc[i]) > top[0]:
                top = (float(cc[i]), rots[lo + i])
        best_by_hand[hand] = top
    hand = best_by_hand[True][0] > best_by_hand[False][0]
    rot = best_by_hand[hand][1]
    vol_t = torch.from_numpy(np.ascontiguousarray(np.flip(moving, axis=0) if hand else moving, dtype=np.float32))
    full_f, full_norm = _reference(fixed)
    turns = Rotation.from_rotvec(np.random.default_rng(seed).normal(scale=local_sd_rad, size=(n_local, 3)))
    cands = torch.cat([rot[None], torch.from_numpy(turns.as_matrix().astype(np.float32)) @ rot], dim=0)
    best_cc, best_rot, best_idx = -2.0, rot, 0
    for lo in range(0, len(cands), 50):
        cc, idx = best_shift_cc(rotate_volumes(vol_t, cands[lo : lo + 50]), full_f, full_norm)
        i = int(cc.argmax())
        if float(cc[i]) > best_cc:
            best_cc, best_rot, best_idx = float(cc[i]), cands[lo + i], int(idx[i])
    aligned = rotate_volumes(vol_t, best_rot[None])[0].numpy()
    shift = tuple(int(s) for s in np.unravel_index(best_idx, aligned.shape))
    # corr[s] pairs moving(x + s) with fixed(x)
    aligned = np.roll(aligned, shift=tuple(-s for s in shift), axis=(0, 1, 2))
    return MapAlignment(
        aligned=aligned,
        mirrored=bool(hand),
        cc=best_cc,
        cc_other_hand=best_by_hand[not hand][0],
        rotation=best_rot.numpy().astype(np.float64),
        shift_voxels=(shift[0], shift[1], shift[2]),
    )


def dock_map_on_model(density, structure, resolution_A: float, *, seed: int = 0):
    """A reconstruction put into a model's frame: ``density`` (a cubic :class:`DensityMap`, e.g.
    RELION's output at origin 0) aligned onto the model's simulated map on a grid of the same
    shape and voxel size centred on the model. Returns ``(docked DensityMap, MapAlignment)``;
    the docked map's origin places it around the model, the model is not moved."""
    from cryostack.density.simulate import simulate_model_map
    from cryostack.errors import InputError
    from cryostack.io.maps import DensityMap, GridSpec

    n = density.shape[0]
    if len(set(density.shape)) != 1 or len(set(np.round(density.voxel_size, 4))) != 1:
        raise InputError(density.source, f"docking needs a cubic map with cubic voxels, got {density.shape[::-1]}")
    v = float(density.voxel_size[0])
    coords = structure.atoms().coords
    extent = float((coords.max(axis=0) - coords.min(axis=0)).max())
    if extent > n * v:
        raise InputError(structure.source, f"the model spans {extent:.0f} Å, more than the {n * v:.0f} Å map box")
    centre = 0.5 * (coords.min(axis=0) + coords.max(axis=0))
    ox, oy, oz = (float(c) for c in np.round((centre - 0.5 * n * v) / v) * v)
    origin = (ox, oy, oz)
    grid = GridSpec((n, n, n), (v, v, v), origin)
    model_map = simulate_model_map(structure, grid, resolution_A)
    al = align_maps(model_map, density.data, seed=seed)
    docked = DensityMap(data=al.aligned.astype(np.float32), voxel_size=(v, v, v), origin=origin)
    return docked, al
