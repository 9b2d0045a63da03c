"""Cryo-EM density maps in Å: the :class:`DensityMap` type and MRC/CCP4 read/write.

Conventions (used everywhere in cryostack):

* ``data`` is float32 indexed ``[z, y, x]`` (sections, rows, columns after undoing MAPC/MAPR/MAPS).
* ``voxel_size`` and ``origin`` are ``(x, y, z)`` in Å. ``origin`` is the Å position of the
  centre of voxel ``[0, 0, 0]``, so voxel ``[k, j, i]`` sits at
  ``origin + (i, j, k) * voxel_size``.
* On read, the MRC ORIGIN field gives ``origin`` when it is non-zero (cryo-EM usage, as in
  ChimeraX and RELION); otherwise ``origin = NSTART * voxel_size`` (crystallographic usage, EMDB).
  NSTART, ORIGIN and the axis order are kept as metadata and written back unchanged, so a map
  read and written puts every voxel at the same Å position in any viewer.
* A new map (not read with an ORIGIN field) is written with its origin in NSTART when the
  origin is a whole number of voxels, since servalcat and refmac ignore ORIGIN; otherwise in
  ORIGIN with NSTART 0.
"""

from __future__ import annotations

import gzip
import warnings
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import mrcfile
import numpy as np

from cryostack.errors import InputError
from cryostack.io.atomic import atomic_output

#: MRC modes cryostack reads, with their numpy types. Complex modes (3, 4) are not density maps.
MRC_MODES: dict[int, str] = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}
_HEADER_BYTES = 1024


@dataclass(frozen=True)
class GridSpec:
    """The sampling of a map: shape ``(nz, ny, nx)``, voxel size and origin ``(x, y, z)`` in Å."""

    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "voxel_size", tuple(float(v) for v in self.voxel_size))
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"grid shape must be three positive integers, got {self.shape}")
        if len(self.voxel_size) != 3 or min(self.voxel_size) <= 0:
            raise ValueError(f"voxel size must be three positive values in Å, got {self.voxel_size}")

    @property
    def extent(self) -> tuple[float, float, float]:
        """Box edge lengths ``(x, y, z)`` in Å (number of voxels × voxel size)."""
        nz, ny, nx = self.shape
        vx, vy, vz = self.voxel_size
        return (nx * vx, ny * vy, nz * vz)

    def voxel_to_angstrom(self, index_zyx: np.ndarray) -> np.ndarray:
        """Å position ``(..., 3)`` as ``(x, y, z)`` of (possibly fractional) voxel indices ``(..., 3)`` in ``[z, y, x]``."""
        idx = np.asarray(index_zyx, dtype=np.float64)[..., ::-1]
        return np.asarray(self.origin) + idx * np.asarray(self.voxel_size)

    def angstrom_to_voxel(self, xyz: np.ndarray) -> np.ndarray:
        """Fractional voxel indices ``(..., 3)`` in ``[z, y, x]`` of Å positions ``(..., 3)`` as ``(x, y, z)``."""
        frac = (np.asarray(xyz, dtype=np.float64) - np.asarray(self.origin)) / np.asarray(self.voxel_size)
        return frac[..., ::-1]


@dataclass
class DensityMap:
    """A 3D map: float32 ``data[z, y, x]``, ``voxel_size`` and ``origin`` as ``(x, y, z)`` in Å.

    ``nstart`` (x, y, z, integers) and ``axis_order`` (MAPC, MAPR, MAPS) are file metadata that
    are written back as read; ``header_origin`` says whether the MRC ORIGIN field carried the origin.
    """

    data: np.ndarray
    voxel_size: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    nstart: tuple[int, int, int] = (0, 0, 0)
    axis_order: tuple[int, int, int] = (1, 2, 3)
    header_origin: bool = False
    source: str | None = field(default=None, compare=False)
    #: MX, MY, MZ (x, y, z) when the file's unit cell is sampled on a grid other than the box (a
    #: box cut from a larger cell); written back so the header's cell is the input's.
    cell_grid: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        self.data = np.ascontiguousarray(self.data, dtype=np.float32)
        if self.data.ndim != 3:
            raise ValueError(f"map data must be 3D [z, y, x], got shape {self.data.shape}")
        vx, vy, vz = np.broadcast_to(self.voxel_size, 3)
        self.voxel_size = (float(vx), float(vy), float(vz))
        # origin and nstart keep whatever length the caller gave (not checked here); axis_order is
        # checked to be a permutation of (1, 2, 3) below.
        self.origin = cast("tuple[float, float, float]", tuple(float(o) for o in self.origin))
        self.nstart = cast("tuple[int, int, int]", tuple(int(n) for n in self.nstart))
        self.axis_order = cast("tuple[int, int, int]", tuple(int(a) for a in self.axis_order))
        if min(self.voxel_size) <= 0:
            raise ValueError(f"voxel size must be positive (Å), got {self.voxel_size}")
        if sorted(self.axis_order) != [1, 2, 3]:
            raise ValueError(f"axis order must be a permutation of (1, 2, 3), got {self.axis_order}")

    # -- geometry -----------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return cast("tuple[int, int, int]", tuple(self.data.shape))  # data is 3D (checked in __post_init__)

    @property
    def grid(self) -> GridSpec:
        return GridSpec(self.shape, self.voxel_size, self.origin)

    def voxel_to_angstrom(self, index_zyx: np.ndarray) -> np.ndarray:
        """Å position ``(x, y, z)`` of voxel indices given as ``[z, y, x]``."""
        return self.grid.voxel_to_angstrom(index_zyx)

    def angstrom_to_voxel(self, xyz: np.ndarray) -> np.ndarray:
        """Fractional ``[z, y, x]`` voxel indices of Å positions ``(x, y, z)``."""
        return self.grid.angstrom_to_voxel(xyz)

    def with_data(self, data: np.ndarray, **changes) -> DensityMap:
        """A copy with new data (same sampling unless ``changes`` say otherwise)."""
        if "voxel_size" in changes:
            changes.setdefault("cell_grid", None)  # the cell grid belongs to the old sampling
        return replace(self, data=data, **changes)

    def shifted(self, offset_zyx: tuple[int, int, int], data: np.ndarray) -> DensityMap:
        """A map whose voxel ``[0, 0, 0]`` is this map's voxel ``offset_zyx`` (used by crop/pad).

        The file metadata follows: NSTART moves by the offset; an ORIGIN-field map keeps NSTART
        and moves its ORIGIN instead.
        """
        off_xyz = np.asarray(offset_zyx[::-1], dtype=np.int64)
        origin = tuple(np.asarray(self.origin) + off_xyz * np.asarray(self.voxel_size))
        nstart = self.nstart if self.header_origin else tuple(np.asarray(self.nstart) + off_xyz)
        return replace(self, data=data, origin=origin, nstart=nstart)

    # -- statistics ---------------------------------------------------------------------------
    def statistics(self) -> dict[str, float]:
        d = self.data
        return {
            "min": float(d.min()),
            "max": float(d.max()),
            "mean": float(d.mean(dtype=np.float64)),
            "std": float(d.std(dtype=np.float64)),
        }

    def interpolate(self, xyz: np.ndarray, order: int = 1) -> np.ndarray:
        """Map values at Å positions ``(N, 3)`` (``x, y, z``); 0 outside the box."""
        from scipy.ndimage import map_coordinates

        idx = self.angstrom_to_voxel(np.asarray(xyz, dtype=np.float64).reshape(-1, 3)).T
        return map_coordinates(self.data, idx, order=order, mode="constant", cval=0.0)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _payload_size(path: Path, gz: bool) -> int:
    """Size in bytes of the (decompressed) file."""
    if not gz:
        return path.stat().st_size
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(path, f"corrupt gzip stream ({exc})") from None
    return total


def _read_header(path: Path, gz: bool) -> np.recarray:
    """The 1024-byte header, with mrcfile's dtype and byte-order rules.

    Read here rather than with ``mrcfile.open(header_only=True)``, which also reads the extended
    header: a garbage NSYMBT would make it allocate up to 2 GiB before the size check below.
    """
    with gzip.open(path, "rb") if gz else open(path, "rb") as fh:
        raw = fh.read(_HEADER_BYTES)
    header = np.frombuffer(bytearray(raw), dtype=mrcfile.dtypes.HEADER_DTYPE).reshape(()).view(np.recarray)
    try:
        order = mrcfile.utils.byte_order_from_machine_stamp(header.machst)
    except ValueError:
        order = "<"  # mrcfile's permissive default
    header.dtype = header.dtype.newbyteorder(order)  # type: ignore[misc]  # numpy stubs: ndarray.dtype is settable
    if int(header.mode) not in MRC_MODES:  # as mrcfile: a wrong machine stamp, if the other order fits
        swapped = header.mode.view(header.mode.dtype.newbyteorder())
        if int(swapped) in MRC_MODES:
            header.dtype = header.dtype.newbyteorder()  # type: ignore[misc]  # numpy stubs: ndarray.dtype is settable
    return header


def peek_map_size(path: str | Path) -> tuple[tuple[int, int, int], tuple[float, float, float]] | None:
    """``(nx, ny, nz)`` and the voxel size ``(x, y, z)`` Å from the header alone, without reading the
    data (to refuse a map too large for memory before loading it); ``None`` when the header is not
    readable or sane (:func:`read_map` then says why)."""
    path = Path(path)
    try:
        header = _read_header(path, _is_gzip(path))
        axes = (int(header.mapc), int(header.mapr), int(header.maps))
        axes = (1, 2, 3) if axes == (0, 0, 0) else axes
        n_xyz = [0, 0, 0]
        for n, axis in zip((int(header.nx), int(header.ny), int(header.nz)), axes):
            n_xyz[axis - 1] = n
        m_xyz = np.array([header.mx, header.my, header.mz], dtype=np.float64)
        m_xyz = np.where(m_xyz > 0, m_xyz, n_xyz)
        vox = np.array([header.cella.x, header.cella.y, header.cella.z], dtype=np.float64) / m_xyz
    except Exception:
        return None
    if min(n_xyz) < 1 or not np.all(np.isfinite(vox)) or np.any(vox <= 0):
        return None
    return (n_xyz[0], n_xyz[1], n_xyz[2]), (float(vox[0]), float(vox[1]), float(vox[2]))


def read_map(path: str | Path) -> DensityMap:
    """Read an MRC/CCP4 map (``.mrc``, ``.map``, ``.ccp4``, optionally gzipped) into Å space.

    Honours MAPC/MAPR/MAPS, NSTART, ORIGIN, CELLA/MX (anisotropic voxels) and modes 0, 1, 2, 6, 12.
    Raises :class:`InputError` with a one-line message for any unreadable or inconsistent file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if not path.is_file():
        raise InputError(path, "not a regular file")
    gz = _is_gzip(path)
    size = _payload_size(path, gz)
    if size < _HEADER_BYTES:
        raise InputError(path, f"truncated MRC file: {size} bytes, shorter than the 1024-byte header")

    try:
        header = _read_header(path, gz)
    except Exception as exc:
        raise InputError(path, f"not a readable MRC/CCP4 file ({exc})") from None

    nc, nr, ns = int(header.nx), int(header.ny), int(header.nz)
    mode = int(header.mode)
    if min(nc, nr, ns) < 1:
        raise InputError(path, f"invalid dimensions NX, NY, NZ = {nc}, {nr}, {ns} in header")
    if mode not in MRC_MODES:
        raise InputError(path, f"unsupported MRC mode {mode} (supported: {sorted(MRC_MODES)})")
    axes = (int(header.mapc), int(header.mapr), int(header.maps))
    if axes == (0, 0, 0):  # some old writers leave these unset
        axes = (1, 2, 3)
    if sorted(axes) != [1, 2, 3]:
        raise InputError(path, f"MAPC/MAPR/MAPS = {axes} is not a permutation of 1, 2, 3")
    itemsize = np.dtype(MRC_MODES[mode]).itemsize
    nsymbt = int(header.nsymbt)
    expected = _HEADER_BYTES + nsymbt + nc * nr * ns * itemsize
    if size != expected:
        raise InputError(
            path,
            f"header says {nc}x{nr}x{ns} mode {mode} (+{nsymbt} extended header bytes) = {expected} bytes, "
            f"but the file has {size} bytes" + (" (truncated?)" if size < expected else ""),
        )

    # Sampling along X, Y, Z: CELLA is the cell edge in Å, MX/MY/MZ the number of intervals.
    m_xyz = np.array([header.mx, header.my, header.mz], dtype=np.float64)
    cella = np.array([header.cella.x, header.cella.y, header.cella.z], dtype=np.float64)
    n_xyz = np.zeros(3, dtype=np.int64)
    for n, axis in zip((nc, nr, ns), axes):
        n_xyz[axis - 1] = n
    if np.any(m_xyz <= 0):  # fall back to the box when MX/MY/MZ are unset
        m_xyz = n_xyz.astype(np.float64)
    if np.any(cella <= 0) or not np.all(np.isfinite(cella)):
        raise InputError(path, f"invalid cell dimensions CELLA = {tuple(cella)} Å")
    voxel_size = tuple(cella / m_xyz)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with mrcfile.open(path, mode="r", permissive=True) as mrc:
                raw = None if mrc.data is None else np.array(mrc.data)
        except Exception as exc:
            raise InputError(path, f"could not read the data block ({exc})") from None
    if raw is None or raw.size != nc * nr * ns:
        raise InputError(path, "data block is missing or shorter than the header says")
    raw = raw.reshape(ns, nr, nc)

    # Array axes are (section, row, column) = real axes (MAPS, MAPR, MAPC); reorder to (Z, Y, X).
    real_of_array = (axes[2], axes[1], axes[0])
    perm = [real_of_array.index(a) for a in (3, 2, 1)]
    data = np.ascontiguousarray(raw.transpose(perm), dtype=np.float32)
    if not np.all(np.isfinite(data)):
        raise InputError(path, "map contains NaN or infinite values")

    start_crs = (int(header.nxstart), int(header.nystart), int(header.nzstart))
    nstart = [0, 0, 0]
    for s, axis in zip(start_crs, axes):
        nstart[axis - 1] = s
    origin_field = np.array([header.origin.x, header.origin.y, header.origin.z], dtype=np.float64)
    if not np.all(np.isfinite(origin_field)):
        origin_field = np.zeros(3)
    header_origin = bool(np.any(origin_field != 0))
    if header_origin:
        origin = tuple(origin_field)
        if any(nstart):
            warnings.warn(
                f"{path}: both ORIGIN {tuple(origin_field)} and NSTART {tuple(nstart)} are set; "
                "using ORIGIN (cryo-EM convention)",
                stacklevel=2,
            )
    else:
        origin = tuple(np.asarray(nstart) * np.asarray(voxel_size))
    return DensityMap(
        data=data,
        voxel_size=voxel_size,
        origin=origin,
        nstart=(nstart[0], nstart[1], nstart[2]),
        axis_order=axes,
        header_origin=header_origin,
        source=str(path),
        cell_grid=None if np.array_equal(m_xyz, n_xyz) else (int(m_xyz[0]), int(m_xyz[1]), int(m_xyz[2])),
    )


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def grid_nstart(origin_A, voxel_size_A) -> tuple[int, int, int] | None:
    """NSTART ``(x, y, z)`` that puts a map at ``origin_A`` (Å), or ``None`` when the origin is not
    a whole number of voxels (within 1e-4 Å) and only the ORIGIN field can carry it."""
    origin, vox = np.asarray(origin_A, dtype=np.float64), np.asarray(voxel_size_A, dtype=np.float64)
    steps = np.rint(origin / vox)
    if not np.allclose(steps * vox, origin, atol=1e-4):
        return None
    return cast("tuple[int, int, int]", tuple(int(n) for n in steps))


def write_map(
    density: DensityMap,
    path: str | Path,
    *,
    protect: tuple[str | Path, ...] = (),
    keep_axis_order: bool = True,
) -> Path:
    """Write ``density`` as an MRC file (mode 2), atomically; gzip if ``path`` ends in ``.gz``.

    The axis order, NSTART and ORIGIN of the map are written back, so every voxel keeps its Å
    position. ``protect`` names inputs that must not be overwritten (the map's own source is
    always protected).
    """
    path = Path(path)
    protect = tuple(protect) + ((density.source,) if density.source else ())
    axes = density.axis_order if keep_axis_order else (1, 2, 3)
    vox = np.asarray(density.voxel_size)
    origin = np.asarray(density.origin)
    nstart = np.asarray(density.nstart, dtype=np.int64)

    # Which header fields carry the origin. A map read from an ORIGIN-field file keeps that
    # convention. Otherwise NSTART alone whenever the origin is a whole number of voxels:
    # servalcat and refmac ignore ORIGIN and would place the map at NSTART × voxel size.
    origin_field = origin
    if not density.header_origin:
        on_grid = grid_nstart(origin, vox)
        if on_grid is not None:
            nstart, origin_field = np.asarray(on_grid, dtype=np.int64), np.zeros(3)
        else:
            nstart = np.zeros(3, dtype=np.int64)  # never both fields: readers disagree on which wins

    # (Z, Y, X) -> (MAPS, MAPR, MAPC) array axes.
    zyx_index = {3: 0, 2: 1, 1: 2}
    perm = [zyx_index[axes[2]], zyx_index[axes[1]], zyx_index[axes[0]]]
    arr = np.ascontiguousarray(density.data.transpose(perm), dtype=np.float32)
    n_xyz = np.array(density.data.shape[::-1])
    with atomic_output(path, protect=protect) as tmp:
        compression = "gzip" if path.suffix == ".gz" else None
        with mrcfile.new(tmp, overwrite=True, compression=compression) as mrc:
            mrc.set_data(arr)
            h = mrc.header
            h.mapc, h.mapr, h.maps = axes
            m_xyz = np.asarray(density.cell_grid) if density.cell_grid is not None else n_xyz
            h.mx, h.my, h.mz = (int(n) for n in m_xyz)
            h.cella.x, h.cella.y, h.cella.z = (float(c) for c in m_xyz * vox)
            h.nxstart, h.nystart, h.nzstart = (int(nstart[a - 1]) for a in axes)
            h.origin.x, h.origin.y, h.origin.z = (float(o) for o in origin_field)
            mrc.update_header_stats()
    return path


def map_summary(density: DensityMap) -> dict[str, Any]:
    """The facts ``cryostack info`` prints for a map."""
    nz, ny, nx = density.shape
    return {
        "shape_xyz": (nx, ny, nz),
        "voxel_size_A": density.voxel_size,
        "origin_A": density.origin,
        "nstart_xyz": density.nstart,
        "axis_order_mapc_mapr_maps": density.axis_order,
        "origin_from": "ORIGIN field" if density.header_origin else "NSTART × voxel size",
        "extent_A": density.grid.extent,
        **density.statistics(),
    }
