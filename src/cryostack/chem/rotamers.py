"""Top8000 rotamer reference: chi-angle definitions, percentile grids, named rotamers, scoring.

Method (Lovell et al. 2000, Proteins 40:389; Williams et al. 2018, Protein Sci 27:293): each
residue type with side-chain dihedrals has a percentile grid over its chi angles. A cell's
value is the fraction of high-quality reference residues (Top8000) whose smoothed density is
lower than the density in that cell, so the value at a conformation says how unusual it is.
MolProbity's cut-offs: **outlier** below 0.003 (0.3 %), **allowed** below 0.02, **favoured**
at or above 0.02.

Grids
-----
The Top8000 release ships the percentile grids of every residue type except Arg and Lys (the
4-chi grids). Those two are rebuilt from the filtered Top8000 residues with
:func:`percentile_grid`, an independent implementation of the estimate MolProbity's density
tool Silk records for them (``-gridsize=10 -cosine=5 -twopass=7 -fraction``, wrapping bounds
0–360° in chi1..chi4):

1. **Cosine kernel.** ``cosine=h`` is the kernel's half-width at half-height in degrees: a
   point at distance ``d`` adds ``(1 + cos(pi d / 2h)) / (2h)^n`` to every cell whose centre
   lies closer than ``2h`` (the kernel reaches zero at twice the half-width). The kernel is
   sampled at cell centres with distances measured through the wrap.
2. **Two passes (adaptive kernel, Abramson 1982).** Pass 1 uses ``h = 5°`` for every point and
   is normalised to counts per degree^n; the pilot density ``f_i`` at each point is the
   multilinear interpolation of that table. Pass 2 gives point ``i`` its own half-width
   ``h_i = 7° / f_i^(lambda/n)`` with ``lambda = 0.5`` (Abramson's square-root law written per
   dimension), and is normalised the same way.
3. **Percentile ("fraction").** Each cell's value is the fraction of data points whose own
   (interpolated) pass-2 density is lower than the cell's density.

The settings are those of the upstream Makefile (``Top8000_filtered_residues_rotarama`` in the
Richardson lab's ``reference_data``); their meaning (``cosine`` = half-width at half-height in
data units, ``twopass`` = second-pass half-width, lambda 0.5 by default) is Silk's documented
one. Validated by rebuilding the released Met grid (3 chi, 8° cells) from
``rota8000-met.csv``: 98.98 % of all 91,125 cells get the same outlier/allowed/favoured call
(99.12 % the same outlier call, 97.6 % of the cells non-zero in either grid), 99.9 % of the
Top8000 Met residues and all 117 Met residues of the shared test models are classified the
same, and cell values differ by at most 0.009. Other readings fit worse: ``cosine=5`` as a
kernel radius (half-widths 2.5°/3.5°) gives 89.2 %, as a radius of 5 grid cells (half-widths
20°/28°) 25 %; lambda 0.4 or 0.6 gives 96.1 % or 94.4 %; a second-pass half-width of 6.5° or
7.5° gives 98.5 % or 98.3 %.
First-pass half-widths of 3.5–4.5° give 99.1–99.2 %, within the data mismatch, so the
documented 5° is kept. That mismatch limits the agreement: the released Met grid was built
from 18,103 residues (its values are multiples of 1/18103), the released CSV holds 18,417.

Reference data: Richardson lab, Duke University — Top8000 reference data (CC-BY 4.0); see
``data/rotamer/README.md``.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import gemmi
import numpy as np

from cryostack.chem.conformers import conformer_atoms
from cryostack.chem.residues import RESIDUE_ATOM_ALIASES

#: A score below this is a rotamer outlier (MolProbity: 0.3 %).
OUTLIER_BELOW = 0.003
#: A score at or above this is a favoured rotamer (MolProbity: 2 %).
FAVORED_MIN = 0.02

#: Silk settings MolProbity records for its 4-chi (Arg, Lys) grids; 3-chi grids use 8° cells.
GRIDSIZE_4CHI_DEG = 10.0
GRIDSIZE_3CHI_DEG = 8.0
COSINE_HALFWIDTH_DEG = 5.0
TWOPASS_HALFWIDTH_DEG = 7.0
TWOPASS_LAMBDA = 0.5

_CHI1 = ("N", "CA", "CB", "CG")
#: Atom quadruples of each chi angle, by residue name (IUPAC definitions).
CHI_ATOMS: dict[str, tuple[tuple[str, str, str, str], ...]] = {
    "ARG": (_CHI1, ("CA", "CB", "CG", "CD"), ("CB", "CG", "CD", "NE"), ("CG", "CD", "NE", "CZ")),
    "ASN": (_CHI1, ("CA", "CB", "CG", "OD1")),
    "ASP": (_CHI1, ("CA", "CB", "CG", "OD1")),
    "CYS": (("N", "CA", "CB", "SG"),),
    "GLN": (_CHI1, ("CA", "CB", "CG", "CD"), ("CB", "CG", "CD", "OE1")),
    "GLU": (_CHI1, ("CA", "CB", "CG", "CD"), ("CB", "CG", "CD", "OE1")),
    "HIS": (_CHI1, ("CA", "CB", "CG", "ND1")),
    "ILE": (("N", "CA", "CB", "CG1"), ("CA", "CB", "CG1", "CD1")),
    "LEU": (_CHI1, ("CA", "CB", "CG", "CD1")),
    "LYS": (_CHI1, ("CA", "CB", "CG", "CD"), ("CB", "CG", "CD", "CE"), ("CG", "CD", "CE", "NZ")),
    "MET": (_CHI1, ("CA", "CB", "CG", "SD"), ("CB", "CG", "SD", "CE")),
    "MSE": (_CHI1, ("CA", "CB", "CG", "SE"), ("CB", "CG", "SE", "CE")),
    "PHE": (_CHI1, ("CA", "CB", "CG", "CD1")),
    "PRO": (_CHI1,),
    "SER": (("N", "CA", "CB", "OG"),),
    "THR": (("N", "CA", "CB", "OG1"),),
    "TRP": (_CHI1, ("CA", "CB", "CG", "CD1")),
    "TYR": (_CHI1, ("CA", "CB", "CG", "CD1")),
    "VAL": (("N", "CA", "CB", "CG1"),),
}
#: Residue name → packaged grid.
GRID_OF: dict[str, str] = {
    "ARG": "arg",
    "ASN": "asn",
    "ASP": "asp",
    "CYS": "cys",
    "GLN": "gln",
    "GLU": "glu",
    "HIS": "his",
    "ILE": "ile",
    "LEU": "leu",
    "LYS": "lys",
    "MET": "met",
    "MSE": "met",
    "PHE": "phetyr",
    "PRO": "pro",
    "SER": "ser",
    "THR": "thr",
    "TRP": "trp",
    "TYR": "phetyr",
    "VAL": "val",
}
#: Residue name → the Top8000 central-values table naming its rotamers.
CENTRES_OF: dict[str, str] = {name: ("MET" if name == "MSE" else name) for name in GRID_OF}

_DATA_PACKAGE = "cryostack.chem"
_DATA_DIR = ("data", "rotamer")
_CENTRES_FILE = "rotamer_centres.json"


# -- grids ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GridSpec:
    """A wrapping n-dimensional grid: ``n_bins[d]`` cells of equal width spanning
    ``[lower_deg[d], upper_deg[d])``; cell ``k`` is centred at ``lower + (k + 0.5) * width``."""

    lower_deg: tuple[float, ...]
    upper_deg: tuple[float, ...]
    n_bins: tuple[int, ...]

    @classmethod
    def from_gridsize(cls, lower_deg: Sequence[float], upper_deg: Sequence[float], gridsize_deg: float) -> GridSpec:
        """Cells of about ``gridsize_deg``: ``int(span / gridsize + 0.5)`` per dimension (Silk's rule)."""
        bins = tuple(int((hi - lo) / gridsize_deg + 0.5) for lo, hi in zip(lower_deg, upper_deg))
        return cls(tuple(map(float, lower_deg)), tuple(map(float, upper_deg)), bins)

    @property
    def ndim(self) -> int:
        return len(self.n_bins)

    @property
    def lower(self) -> np.ndarray:
        return np.asarray(self.lower_deg, dtype=np.float64)

    @property
    def span(self) -> np.ndarray:
        return np.asarray(self.upper_deg, dtype=np.float64) - self.lower

    @property
    def width_deg(self) -> np.ndarray:
        """Cell width in each dimension, degrees."""
        return self.span / np.asarray(self.n_bins, dtype=np.float64)

    def wrap(self, points_deg: np.ndarray) -> np.ndarray:
        """Points (``(P, n)`` degrees) wrapped into ``[lower, upper)`` in every dimension."""
        points = np.asarray(points_deg, dtype=np.float64)
        wrapped = self.lower + np.mod(points - self.lower, self.span)
        return np.where(wrapped >= self.lower + self.span, self.lower, wrapped)  # mod rounding at the top


def interpolate(table: np.ndarray, spec: GridSpec, points_deg: np.ndarray) -> np.ndarray:
    """Multilinear interpolation of ``table`` (shape ``spec.n_bins``) at ``points_deg``
    (``(P, n)`` degrees) between the 2^n surrounding cell centres, wrapping in every dimension."""
    points = spec.wrap(np.atleast_2d(points_deg))
    n = np.asarray(spec.n_bins)
    u = (points - spec.lower) / spec.width_deg - 0.5  # position in units of cells, 0 = first centre
    base = np.floor(u).astype(np.int64)
    frac = u - base
    out = np.zeros(points.shape[0])
    for corner in range(1 << spec.ndim):
        weight = np.ones(points.shape[0])
        index = []
        for d in range(spec.ndim):
            upper = (corner >> d) & 1
            weight = weight * (frac[:, d] if upper else 1.0 - frac[:, d])
            index.append(np.mod(base[:, d] + upper, n[d]))
        out += weight * table[tuple(index)]
    return out


def cosine_tally(
    points_deg: np.ndarray, halfwidths_deg: np.ndarray, spec: GridSpec, max_chunk: int = 2_000_000
) -> np.ndarray:
    """Sum of cosine kernels sampled at the cell centres of ``spec`` (wrapping).

    Point ``i`` with half-width ``h_i`` adds ``(1 + cos(pi d / 2h_i)) / (2h_i)^n`` to each cell
    whose centre lies at distance ``d < 2h_i`` (Euclidean, in degrees, through the wrap; a
    kernel wider than the grid adds once per periodic image). Returns an array of shape
    ``spec.n_bins``. Vectorised: points are grouped by kernel reach (in cells) and processed in
    chunks of at most ``max_chunk`` point-cell pairs.
    """
    points = spec.wrap(points_deg)
    halfwidths = np.broadcast_to(np.asarray(halfwidths_deg, dtype=np.float64), points.shape[:1])
    ndim = spec.ndim
    n = np.asarray(spec.n_bins, dtype=np.int64)
    width = spec.width_deg
    strides = np.array([int(np.prod(n[d + 1 :])) for d in range(ndim)], dtype=np.int64)
    n_cells = int(np.prod(n))
    table = np.zeros(n_cells)
    radius = 2.0 * halfwidths
    home = np.minimum(np.floor((points - spec.lower) / width).astype(np.int64), n - 1)
    reach = np.ceil(radius / width.min()).astype(np.int64) + 1
    for r in np.unique(reach):
        members = np.flatnonzero(reach == r)
        steps = np.arange(-r, r + 1)
        offsets = np.stack(np.meshgrid(*([steps] * ndim), indexing="ij"), axis=-1).reshape(-1, ndim)
        # A cell `o` steps away is at least (|o| - 1) cell widths from a point in the home cell.
        nearest = np.sqrt(((np.maximum(np.abs(offsets) - 1, 0) * width) ** 2).sum(axis=1))
        offsets = offsets[nearest < radius[members].max()] + r  # column into `steps`
        chunk = max(1, max_chunk // len(offsets))
        for start in range(0, len(members), chunk):
            idx = members[start : start + chunk]
            cells = home[idx][:, :, None] + steps[None, None, :]  # (p, ndim, 2r+1)
            delta = spec.lower[None, :, None] + width[None, :, None] * (cells + 0.5) - points[idx][:, :, None]
            sq = delta * delta
            flat_part = np.mod(cells, n[None, :, None]) * strides[None, :, None]
            dist2 = np.zeros((len(idx), len(offsets)))
            flat = np.zeros((len(idx), len(offsets)), dtype=np.int64)
            for d in range(ndim):
                dist2 += sq[:, d, offsets[:, d]]
                flat += flat_part[:, d, offsets[:, d]]
            rad = radius[idx][:, None]
            inside = dist2 < rad * rad
            rad_in = np.broadcast_to(rad, dist2.shape)[inside]
            values = (1.0 + np.cos(np.pi * np.sqrt(dist2[inside]) / rad_in)) / rad_in**ndim
            table += np.bincount(flat[inside], weights=values, minlength=n_cells)
    return table.reshape(spec.n_bins)


def _normalise(table: np.ndarray, n_points: int, spec: GridSpec) -> np.ndarray:
    """Scale so the table integrates to ``n_points``: values in points per degree^n."""
    return table * (n_points / float(np.prod(spec.width_deg)) / table.sum())


def density_trace(
    points_deg: np.ndarray,
    spec: GridSpec,
    *,
    halfwidth_deg: float = COSINE_HALFWIDTH_DEG,
    twopass_halfwidth_deg: float | None = TWOPASS_HALFWIDTH_DEG,
    lam: float = TWOPASS_LAMBDA,
) -> np.ndarray:
    """Smoothed density (points per degree^n) on ``spec`` from chi points ``(P, n)`` in degrees.

    Pass 1: fixed cosine kernels of half-width ``halfwidth_deg``. If ``twopass_halfwidth_deg``
    is given, pass 2 re-smooths with per-point half-widths
    ``twopass_halfwidth_deg / f_i ** (lam / n)``, ``f_i`` the pass-1 density interpolated at
    point ``i`` (an adaptive kernel estimate à la Abramson).
    """
    points = spec.wrap(np.asarray(points_deg, dtype=np.float64))
    n_points = points.shape[0]
    if n_points == 0:
        raise ValueError("no data points")
    table = _normalise(cosine_tally(points, np.full(n_points, halfwidth_deg), spec), n_points, spec)
    if twopass_halfwidth_deg is None:
        return table
    pilot = interpolate(table, spec, points)
    if np.any(pilot <= 0):
        raise ValueError("a data point has zero pilot density; use a wider first-pass kernel")
    adaptive = twopass_halfwidth_deg / pilot ** (lam / spec.ndim)
    return _normalise(cosine_tally(points, adaptive, spec), n_points, spec)


def percentile_ranks(points_deg: np.ndarray, spec: GridSpec, **kwargs: Any) -> np.ndarray:
    """For each cell, the number of data points whose own density is lower than the cell's
    density (``density_trace`` keyword arguments pass through). Divide by the number of points
    for the percentile grid; the integer form is what the packaged grids store."""
    density = density_trace(points_deg, spec, **kwargs)
    at_points = np.sort(interpolate(density, spec, np.asarray(points_deg, dtype=np.float64)))
    return np.searchsorted(at_points, density.ravel(), side="left").reshape(spec.n_bins)


def percentile_grid(points_deg: np.ndarray, spec: GridSpec, **kwargs: Any) -> np.ndarray:
    """The percentile grid (0–1) of chi points ``(P, n)``: MolProbity's rotamer "fraction" grid."""
    return percentile_ranks(points_deg, spec, **kwargs) / float(len(points_deg))


@dataclass(frozen=True)
class RotamerGrid:
    """One packaged percentile grid. ``values`` has shape ``spec.n_bins`` (0–1)."""

    name: str
    spec: GridSpec
    values: np.ndarray
    n_samples: int

    def score(self, chis_deg: Sequence[float] | np.ndarray) -> float:
        """Interpolated percentile at one conformation (chi angles in degrees)."""
        return float(interpolate(self.values, self.spec, np.asarray([chis_deg], dtype=np.float64))[0])

    def scores(self, chis_deg: np.ndarray) -> np.ndarray:
        """Interpolated percentiles at ``(P, n)`` conformations."""
        return interpolate(self.values, self.spec, np.asarray(chis_deg, dtype=np.float64))


def _data_file(name: str):
    return resources.files(_DATA_PACKAGE).joinpath(*_DATA_DIR, name)


def read_grid_npz(path: Any, name: str) -> RotamerGrid:
    """Read a grid written by ``scripts/build_rotamer_grids.py`` (``ranks`` / ``n_samples``)."""
    with np.load(path) as npz:
        ranks = np.array(npz["ranks"], dtype=np.float64)
        n_samples = int(npz["n_samples"])
        spec = GridSpec(
            tuple(float(x) for x in npz["lower_deg"]),
            tuple(float(x) for x in npz["upper_deg"]),
            tuple(int(x) for x in npz["n_bins"]),
        )
    if ranks.shape != spec.n_bins or n_samples <= 0:
        raise ValueError(f"corrupt rotamer grid {name}: shape {ranks.shape}, header {spec.n_bins}")
    values = ranks / n_samples
    values.flags.writeable = False
    return RotamerGrid(name, spec, values, n_samples)


@functools.cache
def load_grid(name: str) -> RotamerGrid:
    """The packaged grid ``name`` (``arg``, ``asn``, ..., ``phetyr``, ..., ``val``)."""
    with resources.as_file(_data_file(f"rota8000-{name}.npz")) as path:
        return read_grid_npz(path, name)


@functools.lru_cache(maxsize=1)
def load_centres() -> dict[str, list[dict[str, Any]]]:
    """Named Top8000 rotamers per residue name: ``[{"name", "chi_deg": [...], "frequency_pct"}]``."""
    with resources.as_file(_data_file(_CENTRES_FILE)) as path:
        data = json.loads(path.read_text())
    return data["rotamers"]


# -- scoring -------------------------------------------------------------------------------------
def classify(score: float) -> str:
    """``"favored"`` (≥ 0.02), ``"allowed"`` or ``"outlier"`` (< 0.003)."""
    if score >= FAVORED_MIN:
        return "favored"
    return "allowed" if score >= OUTLIER_BELOW else "outlier"


def score_chis(residue_name: str, chis_deg: Sequence[float]) -> float:
    """Top8000 percentile (0–1) of a conformation of ``residue_name`` given its chi angles in
    degrees (as many as :data:`CHI_ATOMS` defines for it)."""
    name = residue_name.upper()
    if name not in GRID_OF:
        raise KeyError(f"no rotamer grid for residue {residue_name!r}")
    grid = load_grid(GRID_OF[name])
    if len(chis_deg) != grid.spec.ndim:
        raise ValueError(f"{name} needs {grid.spec.ndim} chi angles, got {len(chis_deg)}")
    return grid.score(chis_deg)


def _circular_diff_deg(a: np.ndarray, b: np.ndarray, period: np.ndarray) -> np.ndarray:
    d = np.mod(a - b, period)
    return np.minimum(d, period - d)


def rotamer_name(residue_name: str, chis_deg: Sequence[float]) -> str:
    """Name of the nearest Top8000 rotamer centre (circular chi distance, symmetric chis folded),
    or ``""`` if the residue type has no named rotamers."""
    name = residue_name.upper()
    centres = load_centres().get(CENTRES_OF.get(name, name), [])
    if not centres:
        return ""
    grid = load_grid(GRID_OF[name])
    period = grid.spec.span
    chis = np.asarray(chis_deg, dtype=np.float64)
    means = np.array([c["chi_deg"][: len(chis)] for c in centres], dtype=np.float64)
    dist = np.sqrt((_circular_diff_deg(means, chis[None, :], period[None, : len(chis)]) ** 2).sum(axis=1))
    return str(centres[int(np.argmin(dist))]["name"])


def find_chi_atom(atoms: dict[str, gemmi.Atom], residue_name: str, atom_name: str) -> gemmi.Atom | None:
    atom = atoms.get(atom_name)
    if atom is None and (residue_name, atom_name) in RESIDUE_ATOM_ALIASES:
        atom = atoms.get(RESIDUE_ATOM_ALIASES[residue_name, atom_name])
    return atom


def residue_chis_deg(residue: gemmi.Residue, altloc: str = "") -> tuple[float, ...] | None:
    """Chi angles (degrees, -180..180) of ``residue`` in conformer ``altloc``; ``None`` if an atom
    is missing or the residue type has no rotamer grid."""
    name = residue.name
    quads = CHI_ATOMS.get(name)
    if quads is None:
        return None
    names = frozenset(a for quad in quads for a in quad) | frozenset(RESIDUE_ATOM_ALIASES.values())
    atoms = conformer_atoms(residue, altloc, names)
    chis = []
    for quad in quads:
        found = [find_chi_atom(atoms, name, a) for a in quad]
        if any(a is None for a in found):
            return None
        a, b, c, d = cast("list[gemmi.Atom]", found)  # none is None (checked above)
        chis.append(math.degrees(gemmi.calculate_dihedral(a.pos, b.pos, c.pos, d.pos)))
    return tuple(chis)
