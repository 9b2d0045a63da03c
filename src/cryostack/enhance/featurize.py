"""Maps → network tiles and back: physical sampling, normalisation, overlapping tiles, stitching.

No network code here. The enhancer works on a 1 Å/voxel grid whatever the input's voxel size
(never a fixed cube): the map is resampled to 1 Å, offset by its mean and scaled by its 99.9th
percentile, cut into overlapping ``tile³`` cubes of which only the central ``core³`` voxels are
kept, and the stitched result is resampled back onto the input's own grid.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from cryostack.density.ops import resample
from cryostack.io.maps import DensityMap

#: The grid the network was trained on (Å/voxel).
NETWORK_VOXEL_A = 1.0
#: Percentile whose value becomes 1 after normalisation (CryoSAMU's choice).
SCALE_PERCENTILE = 99.9


def to_network_grid(density: DensityMap, voxel_size_A: float = NETWORK_VOXEL_A) -> DensityMap:
    """The map resampled to ``voxel_size_A`` (cubic voxels; anisotropic input voxels included)."""
    return resample(density, voxel_size_A)


@dataclass(frozen=True)
class Scaling:
    """``normalised = (value - offset) / scale``; kept to report what was done."""

    offset: float
    scale: float


def normalization(data: np.ndarray) -> Scaling:
    """Offset = the map's mean; scale = its 99.9th percentile above that (one per map, not per tile)."""
    offset = float(data.mean())
    scale = float(np.percentile(data, SCALE_PERCENTILE)) - offset
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError("map has no positive density above its mean; cannot normalise")
    return Scaling(offset, scale)


def normalize(data: np.ndarray, scaling: Scaling | None = None) -> np.ndarray:
    s = scaling or normalization(data)
    return ((data - s.offset) / s.scale).astype(np.float32)


def normalize_target(data: np.ndarray) -> np.ndarray:
    """A clean model map scaled so its 99.9th percentile is 1 (the units of the enhancer's output)."""
    hi = float(np.percentile(data, SCALE_PERCENTILE))
    return (data / hi).astype(np.float32) if hi > 0 else data.astype(np.float32)


@dataclass(frozen=True)
class Tiling:
    """Overlapping tiles over a ``shape`` ``[z, y, x]`` grid; each tile's central ``core`` voxels
    tile the map exactly once (the ``(tile - core) / 2`` rim of every tile is discarded)."""

    shape: tuple[int, int, int]
    tile: int = 64
    core: int = 50

    def __post_init__(self) -> None:
        if self.core > self.tile or (self.tile - self.core) % 2:
            raise ValueError(f"core {self.core} must fit in tile {self.tile} with an even rim")

    @property
    def margin(self) -> int:
        return (self.tile - self.core) // 2

    @property
    def counts(self) -> tuple[int, int, int]:
        return tuple(max(1, math.ceil(n / self.core)) for n in self.shape)  # type: ignore[return-value]

    def __len__(self) -> int:
        a, b, c = self.counts
        return a * b * c

    def starts(self) -> Iterator[tuple[int, int, int]]:
        """Core starts ``[z, y, x]`` in map voxels (the tile starts ``margin`` voxels earlier)."""
        nz, ny, nx = self.counts
        for i in range(nz):
            for j in range(ny):
                for k in range(nx):
                    yield (i * self.core, j * self.core, k * self.core)

    def padded(self, data: np.ndarray) -> np.ndarray:
        """``data`` zero-padded so every tile lies inside (``margin`` before, the rest after)."""
        pads = [(self.margin, c * self.core - n + self.margin) for n, c in zip(self.shape, self.counts)]
        return np.pad(data, pads, mode="constant")

    def cut(self, padded: np.ndarray, start: tuple[int, int, int]) -> np.ndarray:
        z, y, x = start  # the tile starting at core start - margin is at `start` in padded coordinates
        t = self.tile
        return padded[z : z + t, y : y + t, x : x + t]

    def paste(self, out: np.ndarray, start: tuple[int, int, int], tile_out: np.ndarray) -> None:
        """Write a tile's core into ``out`` (map-shaped), clipped at the map's far edges."""
        m, c = self.margin, self.core
        z, y, x = start
        ez, ey, ex = (min(c, n - s) for n, s in zip(out.shape, start))
        out[z : z + ez, y : y + ey, x : x + ex] = tile_out[m : m + ez, m : m + ey, m : m + ex]


#: The 24 proper rotations of a cube as (number of quarter turns, axes) pairs composed in order;
#: used for training augmentation and for the test-time views behind the confidence map. No
#: mirror images: a flipped map is a protein of D-amino acids.
def cube_rotation(index: int) -> list[tuple[int, tuple[int, int]]]:
    """Rotation ``index`` (0–23) of the cube as ``rot90`` steps on ``[z, y, x]`` arrays."""
    if not 0 <= index < 24:
        raise ValueError(f"rotation index must be 0–23, got {index}")
    face, spin = divmod(index, 4)
    # six ways to bring a face to the top (z), then four spins about z
    to_top = [[], [(1, (0, 1))], [(2, (0, 1))], [(3, (0, 1))], [(1, (0, 2))], [(3, (0, 2))]][face]
    return [*to_top, (spin, (1, 2))]


def rotate_cube(a: np.ndarray, index: int, *, axes_offset: int = 0) -> np.ndarray:
    """Apply cube rotation ``index`` to the last three axes of ``a`` (``axes_offset`` leading axes)."""
    for k, (a0, a1) in cube_rotation(index):
        a = np.rot90(a, k, axes=(a0 + axes_offset, a1 + axes_offset))
    return a


def unrotate_cube(a: np.ndarray, index: int, *, axes_offset: int = 0) -> np.ndarray:
    """Inverse of :func:`rotate_cube`."""
    for k, (a0, a1) in reversed(cube_rotation(index)):
        a = np.rot90(a, -k, axes=(a0 + axes_offset, a1 + axes_offset))
    return a
