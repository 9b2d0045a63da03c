"""Particle sets: per-particle metadata (RELION STAR, cryoSPARC ``.cs``) over image stacks.

Conventions:

* ``ParticleSet.particles`` has one row per particle with RELION column names as ``starfile``
  gives them (``rlnImageName``, ``rlnAngleRot``, ``rlnOriginXAngst``, ``rlnDefocusU``, ...);
  ``optics`` is the RELION 3.1+ optics table (``None`` for RELION 3.0 files). A ``.cs`` file is
  converted to the same columns (``cryostack.io.cs``) and its dataset is kept as ``cs_dataset``, so
  writing it back keeps the uid and every field.
* Angles are RELION's ZYZ rot/tilt/psi in degrees; shifts are RELION origins in Å
  (``rlnOriginXAngst``; RELION 3.0's ``rlnOriginX`` is in pixels); pixel sizes in Å.
* ``rlnImageName`` is ``N@stack`` with ``N`` 1-based; a relative stack path resolves from
  ``root`` (the folder of the STAR/.cs file), else from its parent or grandparent (RELION and
  cryoSPARC write paths relative to the project folder, where the metadata file is one or two
  levels down). Images are read lazily from memory-mapped stacks, never whole.
* Writers are atomic (:func:`~cryostack.io.atomic.atomic_output`) and refuse to overwrite the
  files the set was read from. Relative image paths are rewritten so they resolve from the
  folder of the new file (``image_paths="keep"`` writes them unchanged).
"""

from __future__ import annotations

import mmap
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import mrcfile
import numpy as np
import pandas as pd
from cryosparc.dataset import Dataset

from cryostack.errors import InputError
from cryostack.io.atomic import atomic_output
from cryostack.io.cs import (
    OPTICS_COLUMNS,
    cs_to_star_columns,
    load_cs,
    relion_euler_to_matrix,
    split_image_names,
    star_to_cs_fields,
)
from cryostack.io.star import StarBlock, read_star_blocks, write_star_blocks

ImagePaths = Literal["rebase", "keep", "absolute"]
Index = int | slice | np.ndarray | list[int] | None

#: RELION columns that give an image pixel size (Å), besides ``rlnDetectorPixelSize × 10⁴ / rlnMagnification``.
_PIXEL_SIZE_COLUMNS = ("rlnImagePixelSize", "rlnPixelSize")
#: Relative tolerance within which two pixel-size sources count as the same.
_PIXEL_SIZE_RTOL = 1e-3
#: MRC modes that hold real-valued images.
_IMAGE_MODES = {0, 1, 2, 6, 12}
#: Stacks kept open (memory-mapped) at once; real sets have one stack per micrograph.
_MAX_OPEN_STACKS = 128
#: Paths are looked up in root and this many parent folders.
_ROOT_PARENTS = 2


# --------------------------------------------------------------------------------------------
# Image stacks
# --------------------------------------------------------------------------------------------
@dataclass
class _Stack:
    path: Path
    mm: mmap.mmap
    data: np.ndarray  # (n, ny, nx), a view of mm
    offset: int  # bytes before image 0

    @property
    def n(self) -> int:
        return self.data.shape[0]

    def prefetch(self, first: int, stop: int) -> None:
        """Ask the kernel to read images ``[first, stop)`` ahead (a dense run of one request)."""
        image_bytes = self.data[0].nbytes
        start = (self.offset + first * image_bytes) // mmap.PAGESIZE * mmap.PAGESIZE
        self.mm.madvise(mmap.MADV_WILLNEED, start, self.offset + stop * image_bytes - start)

    def close(self) -> None:
        del self.data  # the view must go before the map can close
        self.mm.close()


def _open_stack(path: Path) -> _Stack:
    """Memory-map an MRC stack (header read by mrcfile), for random access.

    The map is advised MADV_RANDOM: with the default readahead, 1,024 random images from a
    fresh 200,000-image stack took 10 s instead of 0.1 s (``benchmarks/particles_io.py``); dense
    runs ask for readahead explicitly (:meth:`_Stack.prefetch`).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # permissive mode warns (e.g. no MAP ID); checked below
            with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
                header = mrc.header.copy()
    except Exception as exc:
        raise InputError(path, f"not a readable MRC image stack ({type(exc).__name__}: {exc})") from None
    nx, ny, nz, mode = int(header.nx), int(header.ny), int(header.nz), int(header.mode)
    if mode not in _IMAGE_MODES:
        raise InputError(path, f"MRC mode {mode} does not hold real-valued images")
    if min(nx, ny, nz) < 1:
        raise InputError(path, f"invalid dimensions {nx}x{ny}x{nz} in the MRC header")
    dtype = mrcfile.utils.data_dtype_from_header(header)
    offset = 1024 + int(header.nsymbt)
    size, need = path.stat().st_size, offset + nx * ny * nz * dtype.itemsize
    if size < need:
        raise InputError(
            path, f"header says {nz} images of {nx}x{ny} px ({need} bytes) but the file has {size} bytes (truncated?)"
        )
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    mm.madvise(mmap.MADV_RANDOM)
    data = np.frombuffer(mm, dtype=dtype, count=nx * ny * nz, offset=offset).reshape(nz, ny, nx)
    return _Stack(path, mm, data, offset)


class _StackCache:
    """Memory-mapped stacks by path, the least recently used closed beyond ``max_open``."""

    def __init__(self, max_open: int = _MAX_OPEN_STACKS):
        self._open: OrderedDict[Path, _Stack] = OrderedDict()
        self._max_open = max_open

    def get(self, path: Path) -> _Stack:
        stack = self._open.get(path)
        if stack is None:
            stack = _open_stack(path)
            self._open[path] = stack
            while len(self._open) > self._max_open:
                self._open.popitem(last=False)[1].close()
        else:
            self._open.move_to_end(path)
        return stack

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()


# --------------------------------------------------------------------------------------------
# ParticleSet
# --------------------------------------------------------------------------------------------
@dataclass(eq=False)
class ParticleSet:
    """Particles (one row each, RELION columns) with their optics groups and image stacks.

    ``root`` is the folder relative image paths resolve from (made absolute, so a later change
    of the working directory does not matter). ``cs_dataset`` is the cryoSPARC dataset the set
    was read from (row ``i`` is particle ``i``), kept so ``write_cs`` writes every field back.
    ``sources`` are the files read (never overwritten by the writers); ``extra_blocks`` other
    STAR data blocks, written back by :func:`write_star`.
    """

    particles: pd.DataFrame
    optics: pd.DataFrame | None = None
    root: Path = field(default_factory=Path.cwd)
    cs_dataset: Dataset | None = None
    sources: tuple[Path, ...] = ()
    extra_blocks: dict[str, StarBlock] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root).absolute()
        self.sources = tuple(Path(p) for p in self.sources)
        self._stacks = _StackCache()
        self._resolved: dict[str, Path | None] = {}
        if self.cs_dataset is not None and len(self.cs_dataset) != len(self.particles):
            raise ValueError(f"cs_dataset has {len(self.cs_dataset)} rows for {len(self.particles)} particles")
        self._check_optics()

    # -- basics --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.particles)

    def __enter__(self) -> ParticleSet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Unmap the image stacks (they reopen on the next read)."""
        self._stacks.close()

    @property
    def source(self) -> Path | None:
        """The metadata file the set was read from."""
        return self.sources[0] if self.sources else None

    def _error(self, problem: str) -> InputError:
        return InputError(self.source, problem)

    def _check_optics(self) -> None:
        has_group = "rlnOpticsGroup" in self.particles.columns
        if self.optics is None:
            if has_group:
                raise self._error("particles name optics groups (rlnOpticsGroup) but there is no data_optics table")
            return
        if "rlnOpticsGroup" not in self.optics.columns:
            raise self._error("data_optics has no rlnOpticsGroup column")
        groups = self.optics["rlnOpticsGroup"]
        if not groups.is_unique:
            raise self._error(f"data_optics lists optics group {groups[groups.duplicated()].iloc[0]} twice")
        if not has_group:
            if len(self.optics) == 1:
                return  # one group: every particle is in it
            raise self._error(f"{len(self.optics)} optics groups but the particles have no rlnOpticsGroup column")
        unknown = ~self.particles["rlnOpticsGroup"].isin(groups)
        if unknown.any():
            first = int(np.flatnonzero(unknown.to_numpy())[0])
            values = sorted(set(self.particles["rlnOpticsGroup"][unknown].tolist()))
            raise self._error(
                f"unknown optics group {', '.join(map(str, values[:5]))} (particle {first + 1}; "
                f"data_optics has {', '.join(map(str, groups.tolist()))})"
            )

    # -- metadata ------------------------------------------------------------------------------
    def has(self, column: str) -> bool:
        """Whether ``column`` is in the particle table or the optics table."""
        return column in self.particles.columns or (self.optics is not None and column in self.optics.columns)

    def _optics_rows(self) -> np.ndarray:
        assert self.optics is not None
        if "rlnOpticsGroup" not in self.particles.columns:
            return np.zeros(len(self), dtype=np.int64)
        return pd.Index(self.optics["rlnOpticsGroup"]).get_indexer(self.particles["rlnOpticsGroup"])

    def column(self, name: str) -> np.ndarray:
        """Per-particle values ``(n,)`` of a RELION column, from the particle table or, by
        ``rlnOpticsGroup``, the optics table. Raises :class:`InputError` if it is in neither or
        the two disagree."""
        optics = self.optics if self.optics is not None and name in self.optics.columns else None
        if name in self.particles.columns:
            values = self.particles[name].to_numpy()
            if optics is not None:
                from_optics = optics[name].to_numpy()[self._optics_rows()]
                if not _values_agree(values, from_optics):
                    raise self._error(f"{name} differs between the particle table and data_optics")
            return values
        if optics is not None:
            return optics[name].to_numpy()[self._optics_rows()]
        raise self._error(f"no {name} column in the particle or optics table")

    @property
    def pixel_size_A(self) -> np.ndarray:
        """Image pixel size of each particle ``(n,)`` in Å.

        From ``rlnImagePixelSize`` (optics, RELION 3.1+), ``rlnPixelSize``, or RELION 3.0's
        ``rlnDetectorPixelSize`` (µm) × 10⁴ / ``rlnMagnification``; where several are present they
        must agree within 0.1 %.
        """
        sources: dict[str, np.ndarray] = {}
        for name in _PIXEL_SIZE_COLUMNS:
            if self.has(name):
                sources[name] = self.column(name).astype(np.float64)
        if self.has("rlnDetectorPixelSize") and self.has("rlnMagnification"):
            sources["rlnDetectorPixelSize × 10⁴ / rlnMagnification"] = (
                self.column("rlnDetectorPixelSize").astype(np.float64)
                * 1e4
                / self.column("rlnMagnification").astype(np.float64)
            )
        if not sources:
            raise self._error(
                "no pixel size: none of rlnImagePixelSize (data_optics), rlnPixelSize, or "
                "rlnDetectorPixelSize with rlnMagnification"
            )
        (first_name, first), *others = sources.items()
        for name, values in others:
            bad = ~np.isclose(values, first, rtol=_PIXEL_SIZE_RTOL, atol=0)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise self._error(
                    f"contradictory pixel sizes: {first_name} gives {first[i]:.5g} Å, "
                    f"{name} gives {values[i]:.5g} Å (particle {i + 1})"
                )
        bad = ~(np.isfinite(first) & (first > 0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise self._error(f"pixel size {first[i]} Å of particle {i + 1} ({first_name}) is not positive")
        return first

    @property
    def box_px(self) -> int:
        """Image edge length in pixels (``rlnImageSize``, else the first particle's stack)."""
        if self.has("rlnImageSize"):
            sizes = np.unique(self.column("rlnImageSize"))
            if len(sizes) > 1:
                raise self._error(
                    f"particles have different box sizes ({', '.join(map(str, sizes))} px); "
                    "use a subset with one box size"
                )
            if len(sizes) == 1:
                return int(sizes[0])
        if len(self) == 0:
            raise self._error("no particles and no rlnImageSize: box size unknown")
        paths, _ = self._image_locations(np.array([0]))
        stack = self._stacks.get(self._resolve(paths[0], 0))
        return _square_box(stack)

    # -- poses ---------------------------------------------------------------------------------
    def euler_angles_deg(self) -> np.ndarray:
        """RELION ZYZ Euler angles ``(n, 3)``: rot, tilt, psi in degrees.

        Missing angle columns count as 0 (as in RELION: 2D classification gives psi only); a
        set with none of them raises :class:`InputError`.
        """
        names = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
        if not any(self.has(c) for c in names):
            raise self._error("no poses: none of rlnAngleRot, rlnAngleTilt, rlnAnglePsi")
        return np.stack(
            [self.column(c).astype(np.float64) if self.has(c) else np.zeros(len(self)) for c in names], axis=1
        )

    def rotation_matrices(self) -> np.ndarray:
        """RELION's rotation matrices ``A`` ``(n, 3, 3)`` (``Euler_angles2matrix``, see ``cryostack.io.cs``)."""
        return relion_euler_to_matrix(self.euler_angles_deg())

    def shifts_A(self) -> np.ndarray:
        """RELION origins ``(n, 2)`` (x, y) in Å: ``rlnOriginX/YAngst``, or RELION 3.0's pixel
        ``rlnOriginX/Y`` × pixel size; zeros when the set has neither."""
        if self.has("rlnOriginXAngst") or self.has("rlnOriginYAngst"):
            out = np.stack(
                [
                    self.column(c).astype(np.float64) if self.has(c) else np.zeros(len(self))
                    for c in ("rlnOriginXAngst", "rlnOriginYAngst")
                ],
                axis=1,
            )
            if self.has("rlnOriginX") and self.has("rlnOriginY"):
                px = np.stack([self.column("rlnOriginX"), self.column("rlnOriginY")], axis=1).astype(np.float64)
                if not np.allclose(px * self.pixel_size_A[:, None], out, rtol=1e-4, atol=1e-3):
                    raise self._error("rlnOriginX/Y (pixels) and rlnOriginX/YAngst disagree")
            return out
        if self.has("rlnOriginX") or self.has("rlnOriginY"):
            px = np.stack(
                [
                    self.column(c).astype(np.float64) if self.has(c) else np.zeros(len(self))
                    for c in ("rlnOriginX", "rlnOriginY")
                ],
                axis=1,
            )
            return px * self.pixel_size_A[:, None]
        return np.zeros((len(self), 2))

    # -- images --------------------------------------------------------------------------------
    def _rows(self, index: Index) -> np.ndarray:
        n = len(self)
        if index is None:
            return np.arange(n)
        if isinstance(index, slice):
            return np.arange(n)[index]
        rows = np.asarray(index)
        if rows.dtype == bool:
            if rows.shape != (n,):
                raise IndexError(f"boolean index of shape {rows.shape} for {n} particles")
            return np.flatnonzero(rows)
        rows = rows.astype(np.int64).reshape(-1)
        if rows.size and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"particle index out of range for {n} particles")
        return np.where(rows < 0, rows + n, rows)

    def _image_locations(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if "rlnImageName" not in self.particles.columns:
            if self.cs_dataset is not None:
                raise self._error(
                    "no particle images: the .cs has no blob/path and blob/idx fields "
                    "(cryoSPARC keeps them in the passthrough file; read the .csg)"
                )
            raise self._error("no particle images: no rlnImageName column")
        names = self.particles["rlnImageName"].to_numpy()[rows]
        try:
            return split_image_names(names)
        except ValueError as exc:
            raise self._error(str(exc)) from None

    def _find(self, name: str) -> Path | None:
        """The file a relative (or absolute) stack path names, or ``None`` when it does not exist."""
        if name not in self._resolved:
            p = Path(name)
            candidates = [p] if p.is_absolute() else [r / p for r in (self.root, *self.root.parents[:_ROOT_PARENTS])]
            self._resolved[name] = next((c for c in candidates if c.is_file()), None)
        return self._resolved[name]

    def _resolve(self, name: str, row: int) -> Path:
        found = self._find(name)
        if found is None:
            where = f" of {self.source.name}" if self.source else ""
            raise InputError(
                self.root / name,
                f"image stack not found (named by particle {row + 1}{where}; "
                f"also looked in the {_ROOT_PARENTS} folders above {self.root})",
            )
        return found

    def images(self, index: Index = None) -> np.ndarray:
        """Images ``(k, box, box)`` float32 of the particles ``index`` selects (int, slice,
        integer or boolean array), read from the memory-mapped stacks. ``images()`` reads all."""
        scalar = isinstance(index, (int, np.integer))
        rows = self._rows(index)
        paths, idx0 = self._image_locations(rows)
        expected = None
        if self.has("rlnImageSize") and len(rows):
            sizes = np.unique(self.column("rlnImageSize")[rows])
            if len(sizes) > 1:
                raise self._error(f"the selected particles have different box sizes ({', '.join(map(str, sizes))} px)")
            expected = int(sizes[0])
        codes, files = pd.factorize(pd.Series(paths, dtype=object), sort=False)
        out: np.ndarray | None = None
        for k, name in enumerate(files):
            sel = np.flatnonzero(codes == k)
            stack = self._stacks.get(self._resolve(name, int(rows[sel[0]])))
            box = _square_box(stack)
            if expected is None:
                expected = box
            elif box != expected:
                what = "rlnImageSize" if self.has("rlnImageSize") else "the other selected stacks"
                raise InputError(
                    stack.path,
                    f"images are {box} px but {what} say {expected} px "
                    f"(particle {int(rows[sel[0]]) + 1}): mismatched box sizes",
                )
            want = idx0[sel]
            beyond = want >= stack.n
            if beyond.any():
                j = int(np.flatnonzero(beyond)[0])
                raise InputError(
                    stack.path,
                    f"image {int(want[j]) + 1} is beyond the end of the stack "
                    f"({stack.n} images; particle {int(rows[sel[j]]) + 1})",
                )
            if out is None:
                out = np.empty((len(rows), box, box), dtype=np.float32)
            # Sorted, unique indices read the map front to back, each image once.
            uniq, inverse = np.unique(want, return_inverse=True)
            if len(uniq) > 1 and uniq[-1] - uniq[0] < 2 * len(uniq):
                stack.prefetch(int(uniq[0]), int(uniq[-1]) + 1)
            out[sel] = np.asarray(stack.data[uniq], dtype=np.float32)[inverse]
        if out is None:
            out = np.empty((0, expected or 0, expected or 0), dtype=np.float32)
        return out[0] if scalar else out

    def iter_batches(self, batch_size: int, index: Index = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(particle indices (b,), images (b, box, box) float32)`` in batches of ``batch_size``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        rows = self._rows(index)
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            yield batch, self.images(batch)

    # -- subsets and conversion ----------------------------------------------------------------
    def subset(self, index: Index) -> ParticleSet:
        """A new set of the selected particles (same optics table, root and sources)."""
        rows = self._rows(index)
        return ParticleSet(
            particles=self.particles.iloc[rows].reset_index(drop=True),
            optics=self.optics,
            root=self.root,
            cs_dataset=None if self.cs_dataset is None else self.cs_dataset.take(rows),
            sources=self.sources,
            extra_blocks=self.extra_blocks,
        )

    def _relion_value(self, name: str) -> np.ndarray:
        """A column for conversion, derived where RELION 3.0 stores it differently."""
        if name == "rlnImagePixelSize":
            return self.pixel_size_A
        if name == "rlnImageSize":
            return self.column(name) if self.has(name) else np.full(len(self), self.box_px)
        if name in ("rlnOriginXAngst", "rlnOriginYAngst"):
            return self.shifts_A()[:, 0 if name == "rlnOriginXAngst" else 1]
        if not self.has(name):
            defaults = {"rlnOpticsGroup": 1, "rlnPhaseShift": 0.0, "rlnCtfBfactor": 0.0, "rlnCtfScalefactor": 1.0}
            if name in defaults:
                return np.full(len(self), defaults[name])
        return self.column(name)

    def to_cs_dataset(self, *, image_names: np.ndarray | None = None) -> Dataset:
        """The set as a cryoSPARC dataset (see :func:`cryostack.io.cs.star_to_cs_fields`).

        A set read from a ``.cs`` keeps its uids and every field, except those whose RELION
        columns were changed since reading. ``image_names`` replaces ``rlnImageName``.
        """
        available = set(self.particles.columns) | (set(self.optics.columns) if self.optics is not None else set())
        if self.has("rlnOriginX") or self.has("rlnOriginY"):
            available |= {"rlnOriginXAngst", "rlnOriginYAngst"}

        def get(name: str) -> np.ndarray:
            if name == "rlnImageName" and image_names is not None:
                return image_names
            return self._relion_value(name)

        base_get = None
        if self.cs_dataset is not None:
            p0, o0 = cs_to_star_columns(self.cs_dataset)
            base_get = ParticleSet(p0, o0, root=self.root)._relion_value
        return star_to_cs_fields(get, len(self), available, base=self.cs_dataset, base_get=base_get)


def _square_box(stack: _Stack) -> int:
    _, ny, nx = stack.data.shape
    if ny != nx:
        raise InputError(stack.path, f"images are {nx}x{ny} px; particle images must be square")
    return nx


def _values_agree(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype.kind in "biuf" and b.dtype.kind in "biuf":
        return bool(np.allclose(a.astype(np.float64), b.astype(np.float64), rtol=1e-6, atol=0, equal_nan=True))
    return bool(np.array_equal(a.astype(str), b.astype(str)))


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def read_particles(path: str | Path, *, root: str | Path | None = None) -> ParticleSet:
    """Read a particle set: RELION STAR (3.0, 3.1, 4, 5), cryoSPARC ``.cs`` or ``.csg``.

    ``root`` overrides the folder relative image paths resolve from (default: the file's folder).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".star":
        return read_star(path, root=root)
    if suffix in (".cs", ".csg"):
        return read_cs(path, root=root)
    raise InputError(path, f"unknown particle file type {suffix or '(no suffix)'!r}: expected .star, .cs or .csg")


def read_star(path: str | Path, *, root: str | Path | None = None, fast: bool | None = None) -> ParticleSet:
    """A RELION STAR particle file. RELION 3.1+ files have ``data_optics`` and
    ``data_particles``; a RELION 3.0 file has one loop of particles (``data_`` or ``data_images``).
    ``fast`` is passed to :func:`cryostack.io.star.read_star_blocks`."""
    path = Path(path)
    blocks = read_star_blocks(path, fast=fast)
    loops = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    if "particles" in blocks:
        name = "particles"
    else:
        with_images = [k for k, v in loops.items() if "rlnImageName" in v.columns]
        candidates = with_images or [k for k in loops if k != "optics"]
        if not candidates:
            raise InputError(path, f"no particle table: blocks are {', '.join('data_' + k for k in blocks)}")
        name = candidates[0]
    particles = blocks.pop(name)
    if not isinstance(particles, pd.DataFrame):
        raise InputError(path, f"data_{name} is not a loop_ table")
    optics = blocks.pop("optics", None)
    if isinstance(optics, dict):
        optics = pd.DataFrame([optics])
    return ParticleSet(
        particles=particles.reset_index(drop=True),
        optics=optics,
        root=path.parent if root is None else Path(root),
        sources=(path,),
        extra_blocks=blocks,
    )


def read_cs(path: str | Path, *, root: str | Path | None = None) -> ParticleSet:
    """A cryoSPARC ``.cs`` (with the passthrough files a sibling ``.csg`` names) or ``.csg``,
    converted to RELION columns (``cryostack.io.cs``); the dataset is kept as ``cs_dataset``."""
    path = Path(path)
    ds, files = load_cs(path)
    particles, optics = cs_to_star_columns(ds)
    return ParticleSet(
        particles=particles,
        optics=optics,
        root=path.parent if root is None else Path(root),
        cs_dataset=ds,
        sources=(path, *[f for f in files if f != path]),
    )


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def _output_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "output names a folder; give a file name")
    return path


def _protected(pset: ParticleSet, protect: tuple[str | Path, ...]) -> tuple[Path, ...]:
    """Inputs a write must not replace: the set's sources, its stacks found so far, ``protect``."""
    stacks = tuple(p for p in pset._resolved.values() if p is not None)
    return (*pset.sources, *stacks, *(Path(p) for p in protect))


def _rebased_image_names(pset: ParticleSet, out_dir: Path, mode: ImagePaths) -> np.ndarray | None:
    """``rlnImageName`` with relative stack paths rewritten to resolve from ``out_dir`` (``"rebase"``)
    or made absolute (``"absolute"``: for programs such as RELION that resolve them from their working
    folder); ``None`` when nothing changes. Stacks that cannot be found keep their path."""
    if mode not in ("rebase", "keep", "absolute"):
        raise ValueError(f"image_paths must be 'rebase', 'keep' or 'absolute', got {mode!r}")
    if mode == "keep" or "rlnImageName" not in pset.particles.columns or len(pset) == 0:
        return None
    names = pd.Series(pset.particles["rlnImageName"].to_numpy(), dtype=object)
    parts = names.str.partition("@")
    has_at = parts[1] == "@"
    files = parts[2].where(has_at, parts[0])
    out_dir = out_dir.absolute()
    mapping: dict[str, str] = {}
    for name in files.unique():
        if Path(name).is_absolute() and mode != "absolute":
            continue
        found = pset._find(name)
        if found is None:
            continue
        new = str(found.absolute()) if mode == "absolute" else os.path.relpath(found, out_dir)
        if new != name:
            mapping[name] = new
    if not mapping:
        return None
    new_files = files.map(mapping).fillna(files)
    return (parts[0] + "@" + new_files).where(has_at, new_files).to_numpy(dtype=object)


def _upgraded_tables(pset: ParticleSet) -> tuple[pd.DataFrame, pd.DataFrame]:
    """RELION 3.1 ``(particles, optics)`` for a RELION 3.0 set: optics groups are the distinct
    (voltage, Cs, amplitude contrast, pixel size, box) combinations; pixel origins become Å."""
    p = pset.particles.copy()
    psize = pset.pixel_size_A
    key = {c: pset.column(c) for c in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast") if pset.has(c)}
    key["rlnImagePixelSize"] = psize
    try:
        key["rlnImageSize"] = pset._relion_value("rlnImageSize")
    except InputError:
        pass  # no size in the metadata and no readable stack: RELION reads it from the images
    key_df = pd.DataFrame(key)
    combos = key_df.drop_duplicates(ignore_index=True)
    group = key_df.merge(combos.reset_index(), how="left", on=list(key_df.columns), sort=False)["index"].to_numpy()
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": np.arange(1, len(combos) + 1),
            "rlnOpticsGroupName": [f"opticsGroup{g}" for g in range(1, len(combos) + 1)],
        }
    )
    for c in combos.columns:
        optics[c] = combos[c].to_numpy()
    optics["rlnImageDimensionality"] = 2
    for c in ("rlnOriginX", "rlnOriginY"):
        if c in p.columns:
            p[c] = p[c].astype(np.float64) * psize
    p = p.rename(columns={"rlnOriginX": "rlnOriginXAngst", "rlnOriginY": "rlnOriginYAngst"})
    moved = [*OPTICS_COLUMNS, "rlnMagnification", "rlnDetectorPixelSize", "rlnPixelSize"]
    p = p.drop(columns=[c for c in moved if c in p.columns])
    p["rlnOpticsGroup"] = group + 1
    return p, optics


def write_star(
    pset: ParticleSet, path: str | Path, *, image_paths: ImagePaths = "rebase", protect: tuple[str | Path, ...] = ()
) -> Path:
    """Write ``pset`` as a RELION 3.1+ STAR file (``data_optics`` + ``data_particles``), atomically.

    Every particle column is written, unknown ones included, and the optics table as it is. A
    RELION 3.0 set is upgraded (see :func:`_upgraded_tables`); a set without any optics
    information gets no optics table. Other data blocks of the source file follow.
    """
    path = _output_path(path)
    if pset.optics is not None:
        particles, optics = pset.particles, pset.optics
    elif any(pset.has(c) for c in (*_PIXEL_SIZE_COLUMNS, "rlnDetectorPixelSize")):
        particles, optics = _upgraded_tables(pset)
    else:
        particles, optics = pset.particles, None
    if optics is not None and "rlnOpticsGroup" not in particles.columns:
        # One optics group and no column naming it (allowed on reading): RELION wants the column.
        particles = particles.assign(rlnOpticsGroup=optics["rlnOpticsGroup"].iloc[0])
    names = _rebased_image_names(pset, path.parent, image_paths)
    if names is not None:
        particles = particles.copy()
        particles["rlnImageName"] = names
    blocks: dict[str, StarBlock] = {} if optics is None else {"optics": optics}
    blocks["particles"] = particles
    blocks.update({k: v for k, v in pset.extra_blocks.items() if k not in blocks})
    with atomic_output(path, protect=_protected(pset, protect)) as tmp:
        write_star_blocks(blocks, tmp)
    return path


def write_cs(
    pset: ParticleSet, path: str | Path, *, image_paths: ImagePaths = "rebase", protect: tuple[str | Path, ...] = ()
) -> Path:
    """Write ``pset`` as a cryoSPARC ``.cs`` (numpy record format), atomically.

    A set read from a ``.cs`` keeps its uids and every field (see
    :meth:`ParticleSet.to_cs_dataset`); other sets get new uids and the converted fields.
    """
    path = _output_path(path)
    names = _rebased_image_names(pset, path.parent, image_paths)
    ds = pset.to_cs_dataset(image_names=names)
    with atomic_output(path, protect=_protected(pset, protect)) as tmp:
        ds.save(tmp)
    return path


def write_mrcs(
    path: str | Path,
    images: np.ndarray,
    pixel_size_A: float,
    *,
    protect: tuple[str | Path, ...] = (),
    chunk: int = 4096,
) -> Path:
    """Write an image stack ``(n, ny, nx)`` (or one ``(ny, nx)`` image) as float32 MRC, atomically.

    The header marks it as an image stack (ISPG 0) with the voxel size ``pixel_size_A`` Å.
    ``images`` may be a memory map: it is copied ``chunk`` images at a time.
    """
    path = _output_path(path)
    images = np.asanyarray(images)  # a memmap stays a memmap
    arr = images if images.ndim == 3 else images[None]
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise ValueError(f"images must be (n, ny, nx) or (ny, nx), got shape {images.shape}")
    if not pixel_size_A > 0:
        raise ValueError(f"pixel size must be positive (Å), got {pixel_size_A}")
    n = arr.shape[0]
    lo, hi, total, total_sq = np.inf, -np.inf, 0.0, 0.0
    with atomic_output(path, protect=protect) as tmp:
        with mrcfile.new_mmap(tmp, shape=arr.shape, mrc_mode=2, overwrite=True) as mrc:
            mrc.set_image_stack()
            mrc.voxel_size = float(pixel_size_A)
            for start in range(0, n, chunk):
                block = np.asarray(arr[start : start + chunk], dtype=np.float32)
                if not np.all(np.isfinite(block)):
                    raise ValueError("images contain NaN or infinite values")
                mrc.data[start : start + len(block)] = block
                # Header statistics accumulated per chunk instead of re-reading the whole stack.
                lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
                total += float(block.sum(dtype=np.float64))
                total_sq += float(np.square(block, dtype=np.float64).sum())
            count = arr.size
            mean = total / count
            h = mrc.header
            h.dmin, h.dmax, h.dmean = lo, hi, mean
            h.rms = np.sqrt(max(total_sq / count - mean * mean, 0.0))
    return path
