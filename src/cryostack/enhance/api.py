"""Enhance a 4–8 Å map with the trained U-Net; the output sits in the input's exact frame.

``enhance_map`` works on a :class:`~cryostack.io.maps.DensityMap`; ``enhance_files`` adds file
handling (half maps, checks, atomic writes). The network never sees the input's own sampling:
the map goes to 1 Å/voxel, through overlapping tiles, and back onto the input's grid (same
shape, voxel size, origin, NSTART and axis order).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryostack.density.checks import check_half_maps, check_map_values
from cryostack.density.ops import resample_like
from cryostack.enhance.featurize import (
    NETWORK_VOXEL_A,
    Tiling,
    normalization,
    normalize,
    rotate_cube,
    to_network_grid,
    unrotate_cube,
)
from cryostack.enhance.model import EnhanceUNet, load_enhancer
from cryostack.errors import InputError
from cryostack.io.atomic import check_writable
from cryostack.io.maps import DensityMap, peek_map_size, read_map, write_map

#: The packaged checkpoint used when none is given.
DEFAULT_MODEL = "map_enhancer_v1"
#: Resolutions the shipped network was trained on (Å).
TRAINED_RESOLUTION_A = (4.0, 8.0)
#: Outside this range the output is a guess and the user is warned (a little slack above the
#: trained range: 8–10 Å maps still gain from it, see the model card).
WARN_RESOLUTION_A = (4.0, 10.0)
#: Largest map handled in memory, in voxels at 1 Å (about 0.5 GiB per float32 copy).
MAX_NETWORK_VOXELS = 512**3
#: Test-time views (cube rotations) in the order they are used: spread over the 24.
VIEW_ROTATIONS = (0, 13, 6, 23, 9, 18, 3, 16)


@dataclass
class EnhanceConfig:
    """Inference settings (tiles in voxels at 1 Å)."""

    tile: int = 64
    core: int = 50
    batch: int = 2
    views: int = 1  # rotated passes averaged into the output
    confidence_views: int = 4  # passes when a confidence map is asked for (at least 2)
    device: str = "cpu"


@dataclass
class EnhanceResult:
    """The enhanced map (input frame, normalised units: 1 ≈ the 99.9th percentile of a clean
    model map), the optional confidence map, and what was done."""

    enhanced: DensityMap
    confidence: DensityMap | None = None
    info: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def check_network_size(n_xyz, voxel_size_A, source: str | Path | None) -> None:
    """Refuse a map whose 1 Å copy would exceed :data:`MAX_NETWORK_VOXELS` (whole-map work in memory)."""
    n_net = int(np.prod(np.floor((np.asarray(n_xyz) - 1) * np.asarray(voxel_size_A) / NETWORK_VOXEL_A) + 1))
    if n_net > MAX_NETWORK_VOXELS:
        raise InputError(
            source,
            f"the map is {n_net / 1e6:.0f} M voxels at {NETWORK_VOXEL_A:g} Å (limit {MAX_NETWORK_VOXELS / 1e6:.0f} M,"
            " tiling from disk is not implemented): box it around the molecule first",
        )


def load_model(checkpoint: str | Path | None = None, device: str = "cpu") -> EnhanceUNet:
    """A checkpoint file, or the packaged :data:`DEFAULT_MODEL` when ``None``."""
    if checkpoint is None:
        from cryostack.learn.registry import packaged_checkpoint

        checkpoint = packaged_checkpoint(DEFAULT_MODEL)
    return load_enhancer(checkpoint, map_location=device).to(device)


@torch.no_grad()
def _predict(
    model: EnhanceUNet, data: np.ndarray, tiling: Tiling, rotation: int, cfg: EnhanceConfig, tick: Callable[[], None]
) -> np.ndarray:
    padded = tiling.padded(data)
    out = np.zeros(data.shape, np.float32)
    starts = list(tiling.starts())
    dev = torch.device(cfg.device)
    for b0 in range(0, len(starts), cfg.batch):
        chunk = starts[b0 : b0 + cfg.batch]
        tiles = [tiling.cut(padded, s) for s in chunk]
        live = [k for k, t in enumerate(tiles) if np.any(t)]  # all-zero tiles (masked solvent) stay zero
        if live:
            x = np.stack([np.ascontiguousarray(rotate_cube(tiles[k], rotation)) for k in live])
            y = model(torch.from_numpy(x)[:, None].to(dev), None)[:, 0].float().cpu().numpy()
            for j, k in enumerate(live):
                tiling.paste(out, chunk[k], np.ascontiguousarray(unrotate_cube(y[j], rotation)))
        for _ in chunk:
            tick()
    return out


def enhance_map(
    density: DensityMap,
    model: EnhanceUNet,
    cfg: EnhanceConfig | None = None,
    *,
    resolution_A: float | None = None,
    confidence: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> EnhanceResult:
    """Enhance ``density``; ``progress(done, total)`` is called per tile."""
    cfg = cfg or EnhanceConfig()
    t0 = time.perf_counter()
    check_map_values(density)
    warnings: list[str] = []
    lo, hi = TRAINED_RESOLUTION_A
    if resolution_A is not None and not WARN_RESOLUTION_A[0] <= resolution_A <= WARN_RESOLUTION_A[1]:
        warnings.append(
            f"resolution {resolution_A:g} Å is outside the trained range {lo:g}–{hi:g} Å: check the output against the input"
        )
    vox = np.asarray(density.voxel_size)
    if not np.allclose(vox, vox[0], rtol=1e-4):
        warnings.append(f"non-cubic voxels {tuple(float(v) for v in vox)} Å: resampled to {NETWORK_VOXEL_A:g} Å cubes")
    check_network_size(density.shape[::-1], vox, density.source)
    grid = to_network_grid(density)
    scaling = normalization(grid.data)
    x = normalize(grid.data, scaling)
    if model.cfg.multiple and (cfg.tile % model.cfg.multiple):
        raise ValueError(f"tile {cfg.tile} must be a multiple of {model.cfg.multiple}")
    tiling = Tiling(grid.shape, cfg.tile, cfg.core)
    n_views = max(cfg.views, cfg.confidence_views if confidence else 1)
    if confidence and n_views < 2:
        raise ValueError("a confidence map needs at least 2 views")
    total, done = n_views * len(tiling), 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    model.eval()
    mean = np.zeros(grid.shape, np.float64)
    sq = np.zeros(grid.shape, np.float64) if confidence else None
    for v in range(n_views):
        pred = _predict(model, x, tiling, VIEW_ROTATIONS[v % len(VIEW_ROTATIONS)], cfg, tick)
        mean += pred
        if sq is not None:
            sq += pred.astype(np.float64) ** 2
    mean /= n_views
    enhanced = resample_like(grid.with_data(mean.astype(np.float32)), density)
    conf_map = None
    if sq is not None:
        sd = np.sqrt(np.maximum(sq / n_views - mean**2, 0.0)).astype(np.float32)
        conf_map = resample_like(grid.with_data(sd), density, order=1)
        conf_map.data = np.maximum(conf_map.data, 0.0)  # the anti-alias low-pass can dip below zero
    info = {
        "input_shape_zyx": list(density.shape),
        "input_voxel_size_A": list(density.voxel_size),
        "network_voxel_size_A": NETWORK_VOXEL_A,
        "network_shape_zyx": list(grid.shape),
        "tiles": len(tiling),
        "tile_voxels": cfg.tile,
        "core_voxels": cfg.core,
        "views": n_views,
        "normalisation": {"offset": scaling.offset, "scale": scaling.scale},
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    return EnhanceResult(enhanced, conf_map, info, warnings)


def enhance_files(
    map_path: str | Path | None,
    out: str | Path,
    *,
    half_maps: tuple[str | Path, str | Path] | None = None,
    resolution_A: float | None = None,
    confidence_out: str | Path | None = None,
    checkpoint: str | Path | None = None,
    cfg: EnhanceConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EnhanceResult:
    """Read, enhance, write. With ``half_maps`` their average is enhanced (``map_path`` may then be
    ``None``; if given, the halves must share its grid). Outputs are written atomically and never
    over an input."""
    cfg = cfg or EnhanceConfig()
    inputs = [Path(p) for p in ([map_path] if map_path else []) + list(half_maps or [])]
    if not inputs:
        raise InputError(None, "give a map or two half maps")
    outs = [Path(out)] + ([Path(confidence_out)] if confidence_out else [])
    for o in outs:
        check_writable(o)
        if any(o.resolve() == p.resolve() for p in inputs):
            raise InputError(o, "output would overwrite an input")
    for p in inputs:  # from the header, before any data is loaded
        size = peek_map_size(p)
        if size is not None:
            check_network_size(size[0], size[1], p)
    model = load_model(checkpoint, cfg.device)
    density = read_map(map_path) if map_path else None
    if half_maps:
        h1, h2 = (read_map(p) for p in half_maps)
        ref = density or h1
        check_half_maps(ref, [h1, h2])
        if np.array_equal(h1.data, h2.data):
            raise InputError(half_maps[1], "the two half maps are identical")
        avg = ref.with_data((0.5 * (h1.data + h2.data)).astype(np.float32))
        density = avg
    assert density is not None
    result = enhance_map(
        density, model, cfg, resolution_A=resolution_A, confidence=confidence_out is not None, progress=progress
    )
    result.info["input"] = [str(p) for p in inputs]
    result.info["used"] = "half-map average" if half_maps else "map"
    write_map(result.enhanced, out, protect=tuple(inputs))
    if confidence_out and result.confidence is not None:
        write_map(result.confidence, confidence_out, protect=tuple(inputs))
    return result
