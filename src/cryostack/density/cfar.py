"""Conical FSC and the cFAR score: how evenly a reconstruction's signal fills Fourier space.

A map reconstructed from particles that all lie in a few orientations has measured Fourier
components only near the central sections of those views (projection-slice theorem), so its
half-map FSC depends on direction. The *conical FSC* (cFSC) along a unit direction ``d`` is the
FSC computed only over Fourier voxels ``s`` whose angle to ``d`` or to ``−d`` is at most the cone
half-angle ``α``: ``|s·d| ≥ |s| cos α``. The *conical FSC area ratio* (cFAR; Baldwin & Lyumkis,
Prog. Biophys. Mol. Biol. 150, 160–183, 2020, as reported by CryoSPARC's Orientation
Diagnostics job) is the smallest area under the cFSC curves divided by the largest, over all
directions: 1 for an isotropic map, near 0 when some direction carries almost no signal.

What this module follows:

* cFAR = (smallest cFSC area) / (largest cFSC area) over the cone axes; range [0, 1], higher is
  better. CryoSPARC's guide describes it as quantifying how the directional half-map correlations
  vary over the viewing sphere, sensitive both to the view distribution and to the signal in the
  particles; the stored copy consulted held only the guide's summary, not its detailed definition,
  so the details below are ours where not said otherwise.
* Cone half-angle 20° by default; the cone axes a deterministic Fibonacci lattice over the upper
  hemisphere (an FSC is centrosymmetric: the cones about ``d`` and ``−d`` hold Friedel mates, so
  each cone always includes its antipode and a hemisphere of axes covers every direction). SIMPLE's
  documented re-implementation of the score makes the same choices (20°, Fibonacci axes, FSC
  0.143); CryoSPARC's own cone angle and axis count were not confirmed.
* Reading the score: CryoSPARC's guide says cFAR below 0.5 generally indicates preferred
  orientation (:data:`CFAR_ANISOTROPY_THRESHOLD`); CryoWizard (Yan et al., the Cryo-IEF paper) runs
  CryoSPARC's Orientation Diagnostics at its defaults and treats maps below 0.15 as needing its
  preferred-orientation module (:data:`CFAR_SEVERE_THRESHOLD`). CryoSPARC's "relative signal"
  (FSCs over tori) and SCF* (from particle poses) are not computed here.

Our own choices (documented because they change the number; not known to match CryoSPARC):

* The areas are integrated over spatial frequency ``s`` (1/Å) up to the global FSC's
  ``fsc_threshold`` crossing (0.143 by default), not to Nyquist. Past that frequency the cFSCs
  are mostly noise about zero, whose area is random and grows with the box size and sampling;
  stopping at the global resolution keeps the ratio about the band where the map has signal. The
  cost: directions that resolve better than the global resolution are cut off there, so a mildly
  anisotropic map scores somewhat higher than with a Nyquist limit.
* The areas start at the first shell where every cone holds at least :data:`MIN_CONE_VOXELS`
  Fourier voxels (a 20° cone holds none in the first shells and a handful in the next; the
  count grows as the shell's area). Below it a cone's FSC is NaN in the curves. Every direction
  shares those few low-frequency components, so including them (for instance with the global
  FSC's values) would only add the same area to every cone and lift the score of even a
  single-view map to about 0.2.
* The cFSCs are integrated with their sign, so a cone holding only noise (an FSC scattering about
  zero) adds about nothing; an area that still comes out negative counts as zero, so cFAR stays
  in [0, 1]. (Clipping each shell at zero instead would turn that scatter into a positive area
  and put a floor of about 0.1 under the score of a single-view map.)
* Cones have hard edges; the shells are those of :func:`cryostack.density.fsc.fsc_curve`
  (1/(longest box edge) wide, up to Nyquist of the coarsest axis) and the cone angles are taken
  between frequency vectors in 1/Å, so anisotropic voxels and non-cubic boxes are measured in
  physical directions. The global FSC is :func:`~cryostack.density.fsc.fsc_curve` itself. A mask
  is applied by multiplying both half maps; there is no correction for the correlation a tight
  mask adds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.fft

from cryostack.density.checks import check_voxel_size
from cryostack.density.fourier import frequency_squared
from cryostack.density.fsc import fsc_curve, fsc_resolution
from cryostack.errors import InputError
from cryostack.io.atomic import atomic_output, jsonable

#: CryoSPARC's guide: cFAR below this generally indicates preferred orientation.
CFAR_ANISOTROPY_THRESHOLD = 0.5
#: CryoWizard's cut-off: below this a map is treated as spoiled by preferred orientation.
CFAR_SEVERE_THRESHOLD = 0.15
#: Default number of cone axes over the hemisphere (about 14° apart, so 20° cones overlap).
DEFAULT_N_DIRECTIONS = 100
DEFAULT_CONE_HALF_ANGLE_DEG = 20.0
#: A cone's shell with fewer Fourier voxels (counting Friedel mates) gives no usable correlation.
MIN_CONE_VOXELS = 10
#: Smallest box edge (voxels) with enough shells for a curve.
_MIN_EDGE = 8


# --------------------------------------------------------------------------------------------
# Directions and the conical FSC
# --------------------------------------------------------------------------------------------
def cone_directions(n: int) -> np.ndarray:
    """``(n, 3)`` unit vectors ``(x, y, z)`` spread evenly over the upper hemisphere ``z > 0``.

    A Fibonacci lattice: equal-area steps in ``z`` and golden-angle steps in azimuth, so no two
    directions cluster and the result is deterministic. One hemisphere suffices for cones that
    include their antipodes.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 2:
        raise InputError(None, f"n_directions must be an integer of at least 2, got {n!r}")
    k = np.arange(int(n)) + 0.5
    z = 1.0 - k / n
    radius = np.sqrt(1.0 - z * z)
    azimuth = np.pi * (3.0 - math.sqrt(5.0)) * k
    return np.stack([radius * np.cos(azimuth), radius * np.sin(azimuth), z], axis=1)


def conical_fsc(
    half1: np.ndarray,
    half2: np.ndarray,
    voxel_size: tuple[float, float, float] | float,
    directions: np.ndarray,
    cone_half_angle_deg: float = DEFAULT_CONE_HALF_ANGLE_DEG,
) -> tuple[np.ndarray, np.ndarray]:
    """Conical FSC of two half maps along each direction.

    Args:
        half1, half2: half maps ``[z, y, x]`` on the same grid.
        voxel_size: ``(x, y, z)`` Å (or one number for cubic voxels).
        directions: ``(n, 3)`` cone axes ``(x, y, z)`` in Fourier space (normalised here); each
            cone also covers its antipode.
        cone_half_angle_deg: half-angle of the cones, degrees (0 < α ≤ 90).

    Returns:
        ``freq_per_A`` ``(n_shells,)``, the shell centres in 1/Å (the same shells as
        :func:`~cryostack.density.fsc.fsc_curve`), and ``cfsc`` ``(n, n_shells)``: the FSC over the
        Fourier voxels inside each double cone, NaN in shells where a cone holds fewer than
        :data:`MIN_CONE_VOXELS` voxels.
    """
    a, b, vs = _check_pair(half1, half2, voxel_size)
    axes = _check_directions(directions)
    cos_cut = _cone_cosine(cone_half_angle_deg)
    f1 = scipy.fft.rfftn(a, workers=-1)
    f2 = scipy.fft.rfftn(b, workers=-1)
    return _conical(f1, f2, a.shape, vs, axes, cos_cut)


def _conical(
    f1: np.ndarray,
    f2: np.ndarray,
    shape: tuple[int, ...],
    voxel_size: tuple[float, float, float],
    axes: np.ndarray,
    cos_cut: float,
    min_cone_voxels: int = MIN_CONE_VOXELS,
) -> tuple[np.ndarray, np.ndarray]:
    nz, ny, nx = shape
    vx, vy, vz = voxel_size
    # Shells exactly as fsc_curve bins them, so the cones and the global FSC share a frequency axis.
    s = np.sqrt(frequency_squared(shape, voxel_size))
    width = 1.0 / max(nx * vx, ny * vy, nz * vz)
    n_shells = int(np.floor((1.0 / (2.0 * max(voxel_size))) / width + 0.5)) + 1
    shell = np.floor(s / width + 0.5).astype(np.int64)
    keep = np.flatnonzero(((shell >= 1) & (shell < n_shells)).ravel())  # no DC, nothing past Nyquist

    # The rfft half-grid stores one of each Friedel pair k, −k except in the kx = 0 plane (and the
    # kx = Nyquist plane of an even box), which hold both. A double cone contains both mates or
    # neither, so weighting the single-stored voxels by 2 makes every sum a full-sphere sum.
    friedel = np.full(nx // 2 + 1, 2.0)
    friedel[0] = 1.0
    if nx % 2 == 0:
        friedel[-1] = 1.0
    weight = np.broadcast_to(friedel, f1.shape).ravel()[keep]
    shell_k = shell.ravel()[keep]
    g1, g2 = f1.ravel()[keep], f2.ravel()[keep]
    cross = (g1 * np.conj(g2)).real * weight
    power1 = (g1.real**2 + g1.imag**2) * weight
    power2 = (g2.real**2 + g2.imag**2) * weight

    # Unit frequency vectors (x, y, z) of the kept voxels, in 1/Å so the angles are physical.
    sz = np.fft.fftfreq(nz, d=vz)[:, None, None]
    sy = np.fft.fftfreq(ny, d=vy)[None, :, None]
    sx = np.fft.rfftfreq(nx, d=vx)[None, None, :]
    unit = np.empty((keep.size, 3), dtype=np.float32)  # float32 halves the per-direction traffic
    for j, comp in enumerate((sx, sy, sz)):
        unit[:, j] = (np.broadcast_to(comp, f1.shape).ravel()[keep] / s.ravel()[keep]).astype(np.float32)

    out = np.empty((axes.shape[0], n_shells - 1))
    for i, axis in enumerate(axes.astype(np.float32)):
        inside = np.abs(unit @ axis) >= cos_cut
        sh = shell_k[inside]
        count = np.bincount(sh, weights=weight[inside], minlength=n_shells)
        num = np.bincount(sh, weights=cross[inside], minlength=n_shells)
        d1 = np.bincount(sh, weights=power1[inside], minlength=n_shells)
        d2 = np.bincount(sh, weights=power2[inside], minlength=n_shells)
        with np.errstate(invalid="ignore", divide="ignore"):
            fsc = np.where((d1 > 0) & (d2 > 0), num / np.sqrt(d1 * d2), 0.0)
        fsc[count < min_cone_voxels] = np.nan
        out[i] = fsc[1:]
    return np.arange(1, n_shells) * width, out


# --------------------------------------------------------------------------------------------
# cFAR
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CFARResult:
    """Conical FSCs of two half maps and their area ratio; see :func:`cfar`.

    Arrays: ``directions`` ``(n, 3)`` unit cone axes ``(x, y, z)`` (upper hemisphere; each cone
    includes its antipode), ``areas_per_A`` ``(n,)`` area under each cFSC over ``area_band_A`` in
    1/Å (a negative one as 0),
    ``freq_per_A`` ``(n_shells,)`` shell centres in 1/Å, ``cfsc`` ``(n, n_shells)`` the conical FSCs
    (NaN where a cone's shell is too sparse), ``global_fsc`` ``(n_shells,)``, and
    ``direction_resolution_A`` ``(n,)`` where each cFSC first falls below ``fsc_threshold`` (Å; the
    sparse low shells read from the global FSC, so a value near ``area_band_A[0]`` means the cone
    holds no measurable signal at all).
    """

    cfar: float
    directions: np.ndarray
    areas_per_A: np.ndarray
    freq_per_A: np.ndarray
    cfsc: np.ndarray
    global_fsc: np.ndarray
    global_resolution_A: float  # global FSC's threshold crossing = upper limit of the areas
    area_band_A: tuple[float, float]  # the areas' frequency range as resolutions (low, high), Å
    direction_resolution_A: np.ndarray
    cone_half_angle_deg: float
    fsc_threshold: float

    @property
    def worst_direction(self) -> np.ndarray:
        """Cone axis ``(x, y, z)`` with the smallest area (the least-measured direction; the first
        of several that tie, e.g. at zero area)."""
        return self.directions[int(np.argmin(self.areas_per_A))]

    @property
    def best_direction(self) -> np.ndarray:
        """Cone axis ``(x, y, z)`` with the largest area."""
        return self.directions[int(np.argmax(self.areas_per_A))]

    def to_dict(self, *, curves: bool = False) -> dict[str, Any]:
        """JSON-ready summary (non-finite numbers as ``None``); ``curves`` adds the cFSC curves."""
        res = self.direction_resolution_A
        out: dict[str, Any] = {
            "cfar": self.cfar,
            "anisotropic": self.cfar < CFAR_ANISOTROPY_THRESHOLD,
            "severely_anisotropic": self.cfar < CFAR_SEVERE_THRESHOLD,
            "global_resolution_A": self.global_resolution_A,
            "area_band_A": list(self.area_band_A),
            "fsc_threshold": self.fsc_threshold,
            "cone_half_angle_deg": self.cone_half_angle_deg,
            "n_directions": int(self.directions.shape[0]),
            "worst_direction_xyz": self.worst_direction.tolist(),
            "best_direction_xyz": self.best_direction.tolist(),
            "direction_resolution_A": {
                "best": float(np.nanmin(res)) if np.isfinite(res).any() else None,
                "median": float(np.nanmedian(res)) if np.isfinite(res).any() else None,
                "worst": float(np.nanmax(res)) if np.isfinite(res).any() else None,
            },
            "per_direction": {
                "directions_xyz": self.directions.tolist(),
                "areas_per_A": self.areas_per_A.tolist(),
                "resolution_A": res.tolist(),
            },
        }
        if curves:
            out["freq_per_A"] = self.freq_per_A.tolist()
            out["global_fsc"] = self.global_fsc.tolist()
            out["cfsc"] = self.cfsc.tolist()
        return jsonable(out)


def cfar(
    half1: np.ndarray,
    half2: np.ndarray,
    voxel_size: tuple[float, float, float] | float,
    *,
    mask: np.ndarray | None = None,
    n_directions: int = DEFAULT_N_DIRECTIONS,
    cone_half_angle_deg: float = DEFAULT_CONE_HALF_ANGLE_DEG,
    fsc_threshold: float = 0.143,
    min_cone_voxels: int = MIN_CONE_VOXELS,
) -> CFARResult:
    """Conical FSC area ratio of two half maps (see the module docstring for the definition).

    Args:
        half1, half2: half maps ``[z, y, x]`` on the same grid.
        voxel_size: ``(x, y, z)`` Å (or one number).
        mask: optional real-space mask ``[z, y, x]`` (0–1, soft edges recommended) applied to both
            half maps before the transforms.
        n_directions: cone axes over the hemisphere (:func:`cone_directions`).
        cone_half_angle_deg: half-angle of each cone, degrees.
        fsc_threshold: the global FSC's crossing of this value sets the upper frequency limit of the
            areas (and the reported resolutions).
        min_cone_voxels: a cone's FSC in a shell with fewer Fourier voxels is NaN, and the areas
            start where every cone has at least this many (the noise of a cone's FSC is about
            ``1/√count``: raise it for noisy, low-resolution maps).

    Raises:
        InputError: shapes differ, values are not finite, arguments are out of range, or the half
            maps do not correlate even in the lowest shell (nothing to measure).
    """
    a, b, vs = _check_pair(half1, half2, voxel_size)
    if not 0.0 < float(fsc_threshold) < 1.0:
        raise InputError(None, f"fsc_threshold must be between 0 and 1, got {fsc_threshold}")
    cos_cut = _cone_cosine(cone_half_angle_deg)
    axes = cone_directions(n_directions)
    if mask is not None:
        m = np.asarray(mask, dtype=np.float64)
        if m.shape != a.shape:
            raise InputError(None, f"mask shape {m.shape} differs from the half maps' {a.shape}")
        if not np.isfinite(m).all() or not (m != 0).any():
            raise InputError(None, "mask must be finite and not all zero")
        a, b = a * m, b * m

    f1 = scipy.fft.rfftn(a, workers=-1)
    f2 = scipy.fft.rfftn(b, workers=-1)
    freq, curves = _conical(f1, f2, a.shape, vs, axes, cos_cut, int(min_cone_voxels))
    del f1, f2
    freq_global, global_fsc = fsc_curve(a, b, vs)
    assert np.allclose(freq_global, freq)  # same shells by construction
    resolution = fsc_resolution(freq, global_fsc, fsc_threshold)
    if resolution is None:
        raise InputError(
            None,
            f"the half maps' FSC is below {fsc_threshold:g} already at {1.0 / freq[0]:.1f} Å: "
            "no signal to measure orientation anisotropy on",
        )
    # The areas start where every cone is measurable (a cone's voxel count grows as the shell's
    # area, so this is the first shell with no NaN in any cone) and stop at the global crossing.
    usable = np.flatnonzero(~np.isnan(curves).any(axis=0))
    s_high = 1.0 / resolution
    if usable.size == 0 or freq[usable[0]] >= s_high:
        start = f"only from {1.0 / freq[usable[0]]:.1f} Å on" if usable.size else "in no shell of this box"
        raise InputError(
            None,
            f"the global resolution {resolution:.1f} Å is too low for {cone_half_angle_deg:g}° cones: every cone "
            f"holds {min_cone_voxels} Fourier voxels {start}; use wider cones or a larger box",
        )
    s_low = float(freq[usable[0]])
    # Sparse shells (below s_low, or rarely a lattice gap above it) take the global FSC, so the
    # per-direction resolutions are searched from the first shell like the global one.
    filled = np.where(np.isnan(curves), global_fsc[None, :], curves)
    areas = _areas(freq, filled, s_low, s_high)
    ratio = float(areas.min() / areas.max()) if areas.max() > 0 else 0.0
    per_direction = np.array([fsc_resolution(freq, c, fsc_threshold) or np.nan for c in filled], dtype=np.float64)
    return CFARResult(
        cfar=ratio,
        directions=axes,
        areas_per_A=areas,
        freq_per_A=freq,
        cfsc=curves,
        global_fsc=global_fsc,
        global_resolution_A=float(resolution),
        area_band_A=(1.0 / s_low, float(resolution)),
        direction_resolution_A=per_direction,
        cone_half_angle_deg=float(cone_half_angle_deg),
        fsc_threshold=float(fsc_threshold),
    )


def _areas(freq: np.ndarray, curves: np.ndarray, s_low: float, s_high: float) -> np.ndarray:
    """Trapezoid areas (1/Å) under the curves from ``s_low`` to ``s_high`` (1/Å), negative ones as 0.

    The curves are integrated signed: where a cone holds only noise its FSC scatters about zero
    and cancels, whereas clipping each shell at 0 would turn that scatter into a positive area.
    """
    x = np.concatenate([[s_low], freq[(freq > s_low) & (freq < s_high)], [s_high]])
    y = np.stack([np.interp(x, freq, c) for c in curves])
    return np.maximum(0.5 * ((y[:, 1:] + y[:, :-1]) * np.diff(x)).sum(axis=1), 0.0)


# --------------------------------------------------------------------------------------------
# Figure
# --------------------------------------------------------------------------------------------
def plot_fsc_sphere(result: CFARResult, path: str | Path) -> Path:
    """Write a PNG "3D FSC" summary of ``result``: the relative cFSC area of every cone axis on a
    Mollweide map of the sphere (each axis drawn with its antipode), and all conical FSC curves
    with the global one, the threshold and the integration limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    d = np.concatenate([result.directions, -result.directions])
    rel = np.tile(result.areas_per_A / result.areas_per_A.max(), 2)
    lon = np.arctan2(d[:, 1], d[:, 0])
    lat = np.arcsin(np.clip(d[:, 2], -1.0, 1.0))

    fig = plt.figure(figsize=(11, 4.2), dpi=120)
    ax_map = fig.add_subplot(1, 2, 1, projection="mollweide")
    dots = ax_map.scatter(lon, lat, c=rel, cmap="viridis", vmin=0.0, vmax=1.0, s=28, edgecolors="none")
    ax_map.grid(True, alpha=0.4)
    ax_map.set_xticklabels([])
    ax_map.set_title(
        f"cFSC area / max over cone axes (lon/lat of x, y, z)\ncFAR = {result.cfar:.3f}, "
        f"{result.cone_half_angle_deg:g}° cones, {result.directions.shape[0]} axes",
        fontsize=9,
        pad=14,
    )
    fig.colorbar(dots, ax=ax_map, orientation="horizontal", fraction=0.05, pad=0.08, label="relative area")

    ax = fig.add_subplot(1, 2, 2)
    colours = plt.get_cmap("viridis")(result.areas_per_A / result.areas_per_A.max())
    for curve, colour in zip(result.cfsc, colours):
        ax.plot(result.freq_per_A, curve, color=colour, lw=0.6, alpha=0.6)
    ax.plot(result.freq_per_A, result.global_fsc, color="black", lw=1.8, label="global FSC")
    ax.axhline(result.fsc_threshold, color="grey", ls=":", lw=1, label=f"FSC = {result.fsc_threshold:g}")
    low_A, high_A = result.area_band_A
    ax.axvspan(1.0 / low_A, 1.0 / high_A, color="crimson", alpha=0.08, label=f"area band {low_A:.1f}–{high_A:.2f} Å")
    ax.set_xlim(0.0, float(result.freq_per_A[-1]))
    ax.set_ylim(-0.2, 1.05)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_title("conical FSCs (colour = relative area)", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------
def _check_pair(
    half1: np.ndarray, half2: np.ndarray, voxel_size: tuple[float, float, float] | float
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    a = np.asarray(half1, dtype=np.float64)
    b = np.asarray(half2, dtype=np.float64)
    if a.ndim != 3 or b.ndim != 3:
        raise InputError(None, f"half maps must be 3D [z, y, x] arrays, got shapes {a.shape} and {b.shape}")
    if a.shape != b.shape:
        raise InputError(None, f"half maps differ in shape: half1 {a.shape} vs half2 {b.shape}")
    if min(a.shape) < _MIN_EDGE:
        raise InputError(None, f"half maps of shape {a.shape} are too small: every edge needs {_MIN_EDGE}+ voxels")
    try:
        vx, vy, vz = (float(v) for v in np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), 3))
    except ValueError:
        raise InputError(None, f"voxel_size must be (x, y, z) Å or one number, got {voxel_size!r}") from None
    check_voxel_size((vx, vy, vz))
    for name, m in (("half1", a), ("half2", b)):
        if not np.isfinite(m).all():
            raise InputError(None, f"{name} has {int((~np.isfinite(m)).sum())} non-finite values (NaN or inf)")
    return a, b, (vx, vy, vz)


def _check_directions(directions: np.ndarray) -> np.ndarray:
    d = np.asarray(directions, dtype=np.float64)
    if d.ndim != 2 or d.shape[1] != 3 or d.shape[0] < 1:
        raise InputError(None, f"directions must be an (n, 3) array of (x, y, z) vectors, got shape {d.shape}")
    norm = np.linalg.norm(d, axis=1)
    if not np.isfinite(d).all() or (norm == 0).any():
        raise InputError(None, "directions must be finite, non-zero vectors")
    return d / norm[:, None]


def _cone_cosine(cone_half_angle_deg: float) -> float:
    angle = float(cone_half_angle_deg)
    if not 0.0 < angle <= 90.0:
        raise InputError(None, f"cone_half_angle_deg must be in (0, 90] degrees, got {cone_half_angle_deg}")
    # A little slack for the float32 unit vectors, so a voxel on a cone's edge (or, at 90°, every
    # voxel perpendicular to the axis) is not lost to rounding.
    return math.cos(math.radians(angle)) - 1e-6
