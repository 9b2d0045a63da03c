"""Simulated particle images with ground truth: ``cryostack particles simulate``.

One image is made like an extracted particle: the projected specimen (particles at their poses,
carbon or ice for junk) is assembled on a canvas, the canvas goes through the CTF of its
micrograph together with amorphous-ice noise, shot noise is added, and the particle box is cut
out. Every random number comes from ``(seed, micrograph)`` (or ``(seed, particle)`` for a
junk image's details), and micrographs never span two chunks, so any chunk, stack or subset
is reproducible on its own.

Conventions (everything in Å; see :mod:`cryostack.density.projection` and
:mod:`cryostack.density.ctf` for the measured agreement with RELION):

* ``shift`` is where the particle centre lies relative to the box centre (pixel ``box // 2``);
  RELION's ``rlnOriginXAngst``/``rlnOriginYAngst`` are ``−shift``.
* SNR: the noise variance ``σ²`` of the dataset is ``P / snr``, where ``P`` is the signal power
  of a centred particle image after the CTF — its energy (sum of squares over the image) divided
  by the particle's projected footprint (pixels above 5 % of the projection's maximum) —
  averaged over uniform orientations and over the CTF parameter ranges. Each micrograph's
  noise variance is ``σ²`` times a log-normal ice factor, each particle's once more (local ice),
  so the realised per-particle SNR (``rlnCryostackSNR``: that particle's own power over its own
  noise variance) spreads around ``snr``. A fraction ``structural_noise_fraction`` of the noise
  variance is amorphous ice in the specimen (white before the CTF, so it carries Thon rings);
  the rest is white shot noise. Images are divided by ``σ`` (noise ≈ unit variance); with
  ``snr = inf`` there is no noise and images are divided by ``√P``.
* Quality (``rlnCryostackQuality``, 0–1, the target a ranker learns): a good particle scores
  ``0.5 + 0.5 · r / (1 + r) · exp(−(|shift| / radius)²)`` with ``r`` its realised SNR over the
  nominal one; junk scores :data:`JUNK_QUALITY` (below 0.3: the paper's low-quality class).
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryostack.density.ctf import ctf_2d, ctf_2d_defocus_offsets
from cryostack.density.projection import euler_to_matrix, extract_slices, images_from_rfft, images_to_rfft, phase_shift
from cryostack.errors import InputError
from cryostack.io.atomic import atomic_output, check_writable
from cryostack.particles import junk as junk_mod
from cryostack.particles.junk import JUNK_TYPES, SPECIMEN_JUNK
from cryostack.particles.poses import preferred_poses, preferred_view_directions, uniform_poses
from cryostack.particles.sources import ParticleSource, fragment_of, reference_map, scaled_copy

#: Quality label of each junk type (a good particle's is computed; see the module docstring).
JUNK_QUALITY: dict[str, float] = {
    "empty_ice": 0.0,
    "carbon_edge": 0.0,
    "ice_blob": 0.0,
    "crystalline_ice": 0.0,
    "wrong_size": 0.1,
    "aggregate": 0.15,
    "off_centre": 0.2,
    "fragment": 0.2,
    "overlap": 0.3,
}

#: Names of the ground-truth columns added to RELION's (all in ``particles.star``).
TRUTH_COLUMNS = {
    "rlnCryostackParticleIndex": "particle number in the dataset (0-based)",
    "rlnCryostackJunkType": f"label: one of {', '.join(JUNK_TYPES)}",
    "rlnCryostackJunkClass": "the label's index in that list (0 = good)",
    "rlnCryostackQuality": "quality score 0-1 (good 0.5-1, junk below 0.3)",
    "rlnCryostackSNR": "realised SNR of the image (0 without a particle)",
    "rlnCryostackSource": "name of the structure or map the main particle is a projection of",
    "rlnCryostackComponents": "number of particles in the box",
    "rlnCryostackPartFraction": "fraction of the structure present (fragments; 1 otherwise)",
    "rlnCryostackScale": "size factor of the particle (wrong_size; 1 otherwise)",
    "rlnCryostackNoiseFactor": "this image's noise variance over the dataset's (micrograph × local ice)",
    "rlnCryostackDefocusOffset": "particle height term added to the micrograph defocus (Å)",
}

_TAG_GROUP, _TAG_POOL, _TAG_CALIBRATION, _TAG_LABELS, _TAG_VIEWS, _TAG_JUNK, _TAG_EXTRA_VIEWS = 1, 2, 3, 4, 5, 6, 7
#: Uniform views and CTF draws that set the noise level (see the module docstring).
_CALIBRATION_VIEWS, _CALIBRATION_CTFS = 24, 16
#: Pixels above this fraction of a projection's maximum make up the particle's footprint.
_FOOTPRINT_LEVEL = 0.05
#: Target size of one ``.mrcs`` stack (the images are held in memory until it is written).
_STACK_BYTES = 256 << 20


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate. Physical units in every name; ranges are ``(low, high)`` drawn uniformly
    per micrograph; tuples of single values are choices drawn per micrograph.

    ``resolution_A`` blurs the source density (``B = 4 d²``; default twice the pixel size);
    ``junk_fraction`` of the images are junk, split between the types by ``junk_weights``
    (``((type, weight), ...)``; default equal). ``orientation`` is ``"uniform"`` or ``"preferred"``
    (``preferred_views`` random views, each particle within ``preferred_spread_deg`` of one of
    them, ``preferred_uniform_fraction`` of them uniform). ``ctf_padding`` > 1 applies the CTF on
    a canvas that much larger than the box, so delocalised signal leaves the box instead of
    wrapping around it.
    """

    n_particles: int = 1000
    box_px: int = 128
    pixel_size_A: float = 1.4
    resolution_A: float | None = None
    snr: float = 0.05
    junk_fraction: float = 0.0
    junk_weights: tuple[tuple[str, float], ...] = ()
    particles_per_micrograph: int = 200
    defocus_range_A: tuple[float, float] = (8000.0, 25000.0)
    astigmatism_range_A: tuple[float, float] = (0.0, 1000.0)
    defocus_spread_A: float = 100.0
    voltage_kV: tuple[float, ...] = (300.0,)
    cs_mm: tuple[float, ...] = (2.7,)
    amplitude_contrast: tuple[float, ...] = (0.1,)
    phase_shift_range_deg: tuple[float, float] = (0.0, 0.0)
    b_factor_range_A2: tuple[float, float] = (20.0, 120.0)
    shift_sigma_A: float = 3.0
    orientation: str = "uniform"
    preferred_views: int = 3
    preferred_spread_deg: float = 8.0
    preferred_uniform_fraction: float = 0.1
    micrograph_ice_sd: float = 0.2
    local_ice_sd: float = 0.1
    structural_noise_fraction: float = 0.3
    ctf_padding: float = 1.0
    fragment_pool: int = 8
    scaled_pool: int = 6
    stack_size: int | None = None
    device: str = "cpu"

    @property
    def effective_resolution_A(self) -> float:
        return float(self.resolution_A) if self.resolution_A else 2.0 * self.pixel_size_A

    @property
    def canvas_px(self) -> int:
        c = int(math.ceil(self.box_px * self.ctf_padding))
        return c + (c % 2)

    @property
    def images_per_stack(self) -> int:
        if self.stack_size:
            return int(self.stack_size)
        return max(self.particles_per_micrograph, _STACK_BYTES // (4 * self.box_px**2))

    def junk_type_weights(self) -> dict[str, float]:
        """Relative weight of each junk type (sums to 1)."""
        junk = [t for t in JUNK_TYPES if t != "good"]
        w = {t: 1.0 for t in junk} if not self.junk_weights else {t: 0.0 for t in junk}
        for name, value in self.junk_weights:
            w[name] = float(value)
        total = sum(w.values())
        return {t: v / total for t, v in w.items()}

    def validate(self) -> None:
        """Raise :class:`InputError` (one line, naming the argument) for any value out of range."""

        def bad(problem: str) -> InputError:
            return InputError(None, problem)

        if not (1 <= self.n_particles <= 100_000_000):
            raise bad(f"n_particles must be 1 to 100,000,000, got {self.n_particles}")
        if self.box_px % 2 or not (16 <= self.box_px <= 1024):
            raise bad(f"box_px must be even and 16 to 1024 pixels, got {self.box_px}")
        if not (0.1 <= self.pixel_size_A <= 20):
            raise bad(f"pixel_size_A must be 0.1 to 20 Å, got {self.pixel_size_A}")
        if self.resolution_A is not None:
            from cryostack.density.checks import check_resolution

            check_resolution(self.resolution_A, voxel_size_A=self.pixel_size_A)
        if not (self.snr > 0) or math.isnan(self.snr):
            raise bad(f"snr must be positive (inf for no noise), got {self.snr}")
        if not (0.0 <= self.junk_fraction <= 1.0):
            raise bad(f"junk_fraction must be 0 to 1, got {self.junk_fraction}")
        for name, value in self.junk_weights:
            if name not in JUNK_TYPES or name == "good":
                raise bad(f"junk_weights: unknown junk type {name!r} (types: {', '.join(JUNK_TYPES[1:])})")
            if not (value >= 0 and math.isfinite(value)):
                raise bad(f"junk_weights: weight of {name} must be ≥ 0, got {value}")
        if self.junk_weights and sum(v for _, v in self.junk_weights) <= 0 and self.junk_fraction > 0:
            raise bad("junk_weights are all zero but junk_fraction is positive")
        if self.particles_per_micrograph < 1:
            raise bad(f"particles_per_micrograph must be at least 1, got {self.particles_per_micrograph}")
        lo, hi = self.defocus_range_A
        if not (0 <= lo <= hi <= 200_000):
            raise bad(f"defocus_range_A must be 0 <= low <= high <= 200000 Å, got {lo} {hi}")
        a_lo, a_hi = self.astigmatism_range_A
        if not (0 <= a_lo <= a_hi) or a_hi > 2 * lo + 1e-9 and a_hi > 0:
            raise bad(f"astigmatism_range_A must be 0 <= low <= high <= 2 × the lowest defocus, got {a_lo} {a_hi}")
        if self.defocus_spread_A < 0:
            raise bad(f"defocus_spread_A must be ≥ 0, got {self.defocus_spread_A}")
        if not self.voltage_kV or any(not (20 <= v <= 1000) for v in self.voltage_kV):
            raise bad(f"voltage_kV must be 20 to 1000 kV, got {self.voltage_kV}")
        if not self.cs_mm or any(not (0 <= c <= 20) for c in self.cs_mm):
            raise bad(f"cs_mm must be 0 to 20 mm, got {self.cs_mm}")
        if not self.amplitude_contrast or any(not (0 <= a < 1) for a in self.amplitude_contrast):
            raise bad(f"amplitude_contrast must be in [0, 1), got {self.amplitude_contrast}")
        p_lo, p_hi = self.phase_shift_range_deg
        if not (-180 <= p_lo <= p_hi <= 180):
            raise bad(f"phase_shift_range_deg must be -180 <= low <= high <= 180, got {p_lo} {p_hi}")
        b_lo, b_hi = self.b_factor_range_A2
        if not (0 <= b_lo <= b_hi <= 2000):
            raise bad(f"b_factor_range_A2 must be 0 <= low <= high <= 2000 Å², got {b_lo} {b_hi}")
        if not (0 <= self.shift_sigma_A <= self.box_px * self.pixel_size_A / 4):
            raise bad(
                f"shift_sigma_A must be 0 to a quarter of the box ({self.box_px * self.pixel_size_A / 4:g} Å), "
                f"got {self.shift_sigma_A}"
            )
        if self.orientation not in ("uniform", "preferred"):
            raise bad(f"orientation must be 'uniform' or 'preferred', got {self.orientation!r}")
        if self.preferred_views < 1 or not (0 <= self.preferred_uniform_fraction <= 1) or self.preferred_spread_deg < 0:
            raise bad(
                "preferred orientation needs preferred_views ≥ 1, preferred_spread_deg ≥ 0 and "
                "preferred_uniform_fraction in [0, 1]"
            )
        if not (0 <= self.micrograph_ice_sd <= 2 and 0 <= self.local_ice_sd <= 2):
            raise bad("micrograph_ice_sd and local_ice_sd must be 0 to 2")
        if not (0 <= self.structural_noise_fraction <= 1):
            raise bad(f"structural_noise_fraction must be 0 to 1, got {self.structural_noise_fraction}")
        if not (1.0 <= self.ctf_padding <= 3.0):
            raise bad(f"ctf_padding must be 1 to 3, got {self.ctf_padding}")
        if self.fragment_pool < 1 or self.scaled_pool < 1:
            raise bad("fragment_pool and scaled_pool must be at least 1")
        if self.stack_size is not None and self.stack_size < 1:
            raise bad(f"stack_size must be at least 1, got {self.stack_size}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["snr"] = None if math.isinf(self.snr) else self.snr
        d["junk_weights"] = self.junk_type_weights()
        d["effective_resolution_A"] = self.effective_resolution_A
        return d


@dataclass
class SimulationResult:
    """Where the dataset went and what it holds."""

    out_dir: Path
    star_path: Path
    cs_path: Path | None
    manifest_path: Path
    n_particles: int
    counts: dict[str, int]
    seconds: float
    files: list[Path] = field(default_factory=list)

    @property
    def particles_per_second(self) -> float:
        return self.n_particles / self.seconds if self.seconds > 0 else float("inf")


# --------------------------------------------------------------------------------------------
# Random streams
# --------------------------------------------------------------------------------------------
def _rng(seed: int, tag: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), tag, *(int(k) for k in keys)])


def assign_labels(seed: int, n: int, junk_fraction: float, weights: dict[str, float]) -> np.ndarray:
    """``(n,)`` int8 junk-class codes (index into :data:`JUNK_TYPES`), exact counts, shuffled.

    ``round(n × junk_fraction)`` junk images are split between the types by ``weights`` with
    largest-remainder rounding, so the fractions are as requested up to one image per type.
    """
    n_junk = int(round(n * junk_fraction))
    names = [t for t in JUNK_TYPES if t != "good"]
    raw = np.array([weights.get(t, 0.0) * n_junk for t in names])
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    for k in order[: n_junk - counts.sum()]:
        counts[k] += 1
    labels = np.zeros(n, dtype=np.int8)
    start = 0
    for t, c in zip(names, counts):
        labels[start : start + c] = JUNK_TYPES.index(t)
        start += c
    return labels[_rng(seed, _TAG_LABELS).permutation(n)]


# --------------------------------------------------------------------------------------------
# The simulator
# --------------------------------------------------------------------------------------------
@dataclass
class _Component:
    image: int  # index in the group
    key: tuple  # volume key
    pose: np.ndarray  # (3,) rot, tilt, psi degrees
    shift_A: np.ndarray  # (2,) x, y: centre relative to the box centre


@dataclass
class MicrographBatch:
    """One micrograph's images ``(B, box, box)`` float32 and their metadata table (RELION columns
    plus the truth columns), as :meth:`ParticleSimulator.simulate_group` returns them."""

    images: np.ndarray
    table: pd.DataFrame
    clean: np.ndarray | None = None
    #: Extra views (``simulate_group(extra_views=k)``): the same specimens imaged again, each
    #: view ``(B, box, box)`` with its own micrograph CTF (``view_ctfs``) and noise draw.
    views: list[np.ndarray] = field(default_factory=list)
    view_ctfs: list[dict] = field(default_factory=list)


class ParticleSimulator:
    """Simulates the micrographs of one dataset; ``simulate_group(g)`` depends only on ``(seed, g)``.

    ``sources`` are the particles (each image's particle is drawn uniformly from them);
    ``decoys`` are other structures that appear only as ``wrong_size`` junk.
    """

    def __init__(
        self,
        config: SimulationConfig,
        sources: Sequence[ParticleSource],
        *,
        seed: int = 0,
        decoys: Sequence[ParticleSource] = (),
    ):
        config.validate()
        if not sources:
            raise InputError(None, "particle simulation needs at least one source structure or map")
        if seed < 0:
            raise InputError(None, f"seed must be ≥ 0, got {seed}")
        for s in (*sources, *decoys):
            if abs(s.pixel_size_A - config.pixel_size_A) > 1e-6:
                raise InputError(None, f"source {s.name!r} is at {s.pixel_size_A} Å/pixel, not {config.pixel_size_A}")
        self.config = config
        self.seed = int(seed)
        self.sources = list(sources)
        self.decoys = list(decoys)
        self.device = torch.device(config.device)
        self.labels = assign_labels(seed, config.n_particles, config.junk_fraction, config.junk_type_weights())
        self.n_groups = -(-config.n_particles // config.particles_per_micrograph)
        self._volumes: dict[tuple, ParticleSource] = {("src", i): s for i, s in enumerate(self.sources)}
        self._volumes.update({("decoy", i): s for i, s in enumerate(self.decoys)})
        self.views = preferred_view_directions(_rng(seed, _TAG_VIEWS), config.preferred_views)
        self.view_weights = _rng(seed, _TAG_VIEWS, 1).dirichlet(np.full(config.preferred_views, 2.0))
        self._calibrate()

    # -- volumes ----------------------------------------------------------------------------------
    def volume(self, key: tuple) -> ParticleSource:
        """The source behind a component key, made on first use (fragments, scaled copies)."""
        if key not in self._volumes:
            kind, i, j = key
            parent = self.sources[i]
            rng = _rng(self.seed, _TAG_POOL, i, 0 if kind == "frag" else 1, j)
            if kind == "frag":
                self._volumes[key] = fragment_of(parent, rng, name=f"{parent.name}:fragment{j}")
            else:
                small = j % 2 == 0
                factor = rng.uniform(0.55, 0.8) if small else rng.uniform(1.25, 1.6)
                self._volumes[key] = scaled_copy(parent, float(factor), name=f"{parent.name}:x{factor:.2f}")
        return self._volumes[key]

    # -- calibration ------------------------------------------------------------------------------
    def _calibrate(self) -> None:
        """Noise level and footprints (see the module docstring), from fixed uniform views."""
        cfg = self.config
        rng = _rng(self.seed, _TAG_CALIBRATION)
        poses = uniform_poses(rng, _CALIBRATION_VIEWS)
        ctfs = [self._draw_micrograph_ctf(rng) for _ in range(_CALIBRATION_CTFS)]
        b = cfg.box_px
        w = torch.full((b, b // 2 + 1), 2.0)
        w[:, 0] = 1.0
        w[:, -1] = 1.0
        ctf = ctf_2d(
            torch.tensor([c["defocus_u_A"] for c in ctfs]),
            torch.tensor([c["defocus_v_A"] for c in ctfs]),
            torch.tensor([c["angle_deg"] for c in ctfs]),
            torch.tensor([c["voltage_kV"] for c in ctfs]),
            torch.tensor([c["cs_mm"] for c in ctfs]),
            torch.tensor([c["amplitude_contrast"] for c in ctfs]),
            cfg.pixel_size_A,
            (b, b),
            phase_shift_deg=torch.tensor([c["phase_shift_deg"] for c in ctfs]),
            b_factor_A2=torch.tensor([c["b_factor_A2"] for c in ctfs]),
        )
        self.footprint_px: list[float] = []
        powers = []
        for i in range(len(self.sources)):
            comps = [_Component(k, ("src", i), poses[k], np.zeros(2)) for k in range(len(poses))]
            canvas = self._render_components(comps, len(poses), b)
            peak = canvas.flatten(1).max(dim=1).values
            foot = (canvas > _FOOTPRINT_LEVEL * peak[:, None, None]).flatten(1).sum(dim=1).float()
            self.footprint_px.append(float(foot.mean()))
            p2d = (images_to_rfft(canvas).abs() ** 2).mean(dim=0)  # (b, b//2+1)
            energy = (w * p2d * ctf**2).sum(dim=(-2, -1)) / b**2  # (n_ctf,) per image, Parseval
            powers.append(float(energy.mean()) / self.footprint_px[-1])
        self.signal_power = float(np.mean(powers))
        self.noise_sd = math.sqrt(self.signal_power / cfg.snr) if math.isfinite(cfg.snr) else 0.0
        self.image_scale = self.noise_sd if self.noise_sd > 0 else math.sqrt(self.signal_power)

    # -- parameters ---------------------------------------------------------------------------------
    def _draw_micrograph_ctf(self, rng: np.random.Generator) -> dict:
        cfg = self.config
        vi = int(rng.integers(len(cfg.voltage_kV)))
        ci = int(rng.integers(len(cfg.cs_mm)))
        ai = int(rng.integers(len(cfg.amplitude_contrast)))
        mean = rng.uniform(*cfg.defocus_range_A)
        astig = rng.uniform(*cfg.astigmatism_range_A)
        return {
            "optics_group": (vi * len(cfg.cs_mm) + ci) * len(cfg.amplitude_contrast) + ai + 1,
            "voltage_kV": cfg.voltage_kV[vi],
            "cs_mm": cfg.cs_mm[ci],
            "amplitude_contrast": cfg.amplitude_contrast[ai],
            "defocus_u_A": mean + astig / 2,
            "defocus_v_A": mean - astig / 2,
            "angle_deg": rng.uniform(0.0, 180.0),
            "phase_shift_deg": rng.uniform(*cfg.phase_shift_range_deg),
            "b_factor_A2": rng.uniform(*cfg.b_factor_range_A2),
        }

    def optics_table(self) -> pd.DataFrame:
        """RELION 3.1 optics groups: every (voltage, Cs, amplitude contrast) combination."""
        cfg = self.config
        rows: list[dict] = []
        for v in cfg.voltage_kV:
            for c in cfg.cs_mm:
                for a in cfg.amplitude_contrast:
                    k = len(rows) + 1
                    rows.append(
                        {
                            "rlnOpticsGroup": k,
                            "rlnOpticsGroupName": f"opticsGroup{k}",
                            "rlnAmplitudeContrast": float(a),
                            "rlnSphericalAberration": float(c),
                            "rlnVoltage": float(v),
                            "rlnImagePixelSize": float(cfg.pixel_size_A),
                            "rlnImageSize": int(cfg.box_px),
                            "rlnImageDimensionality": 2,
                            "rlnCtfDataAreCtfPremultiplied": 0,
                        }
                    )
        return pd.DataFrame(rows)

    def group_range(self, g: int) -> tuple[int, int]:
        m = self.config.particles_per_micrograph
        return g * m, min(self.config.n_particles, (g + 1) * m)

    def _poses(self, rng: np.random.Generator, n: int) -> np.ndarray:
        cfg = self.config
        if cfg.orientation == "preferred":
            return preferred_poses(
                rng,
                n,
                self.views,
                view_weights=self.view_weights,
                spread_deg=cfg.preferred_spread_deg,
                uniform_fraction=cfg.preferred_uniform_fraction,
            )
        return uniform_poses(rng, n)

    # -- one micrograph ---------------------------------------------------------------------------
    def simulate_group(self, g: int, *, keep_clean: bool = False, extra_views: int = 0) -> MicrographBatch:
        """Images and metadata of micrograph ``g`` (``keep_clean``: also the noise-free images).

        ``extra_views`` > 0 images the same specimens (particles, junk, poses, shifts) that many
        more times, each with a newly drawn micrograph CTF and noise: positive pairs for
        contrastive pretraining. The main images and table do not depend on it.
        """
        cfg = self.config
        i0, i1 = self.group_range(g)
        n = i1 - i0
        box, px = cfg.box_px, cfg.pixel_size_A
        rng = _rng(self.seed, _TAG_GROUP, g)
        mic = self._draw_micrograph_ctf(rng)
        mic_ice = float(np.exp(rng.normal(0.0, cfg.micrograph_ice_sd)))
        src_idx = rng.integers(len(self.sources), size=n)
        poses = self._poses(rng, n)
        shifts = rng.normal(0.0, cfg.shift_sigma_A, size=(n, 2)) if cfg.shift_sigma_A > 0 else np.zeros((n, 2))
        dz = rng.normal(0.0, cfg.defocus_spread_A, size=n) if cfg.defocus_spread_A > 0 else np.zeros(n)
        local_ice = np.exp(rng.normal(0.0, cfg.local_ice_sd, size=n))
        torch_seed = int(rng.integers(2**62))
        labels = [JUNK_TYPES[c] for c in self.labels[i0:i1]]

        comps: list[_Component] = []
        specimens: list[tuple[int, str, np.random.Generator]] = []
        part_fraction = np.ones(n)
        scale = np.ones(n)
        n_comp = np.zeros(n, dtype=np.int64)
        main_source = [self.sources[int(s)].name for s in src_idx]
        for k, label in enumerate(labels):
            s = int(src_idx[k])
            key: tuple = ("src", s)
            if label == "good":
                comps.append(_Component(k, key, poses[k], shifts[k]))
                continue
            jr = _rng(self.seed, _TAG_JUNK, i0 + k)
            if label in SPECIMEN_JUNK:
                shifts[k] = 0.0
                if label != "empty_ice":
                    specimens.append((k, label, jr))
                main_source[k] = ""
            elif label == "fragment":
                key = ("frag", s, int(jr.integers(cfg.fragment_pool)))
                vol = self.volume(key)
                part_fraction[k] = float(vol.info.get("fraction", 1.0))
                main_source[k] = vol.name
                comps.append(_Component(k, key, poses[k], shifts[k]))
            elif label == "wrong_size":
                if self.decoys and jr.uniform() < 0.5:
                    key = ("decoy", int(jr.integers(len(self.decoys))))
                else:
                    key = ("scaled", s, int(jr.integers(cfg.scaled_pool)))
                vol = self.volume(key)
                scale[k] = float(vol.info.get("scale", 1.0))
                main_source[k] = vol.name
                comps.append(_Component(k, key, poses[k], shifts[k]))
            elif label == "off_centre":
                r = jr.uniform(0.3, 0.5) * box * px
                phi = jr.uniform(0.0, 2 * math.pi)
                shifts[k] = (r * math.cos(phi), r * math.sin(phi))
                comps.append(_Component(k, key, poses[k], shifts[k]))
            elif label in ("aggregate", "overlap"):
                radius = self.sources[s].radius_A
                cluster: list[np.ndarray] = [np.zeros(2)]
                extra = int(jr.integers(1, 3)) if label == "overlap" else int(jr.integers(2, 6)) - 1
                for _ in range(extra):
                    anchor = cluster[int(jr.integers(len(cluster)))] if label == "aggregate" else cluster[0]
                    dist = (jr.uniform(0.5, 0.9) if label == "aggregate" else jr.uniform(0.7, 1.1)) * 2 * radius
                    phi = jr.uniform(0.0, 2 * math.pi)
                    cluster.append(anchor + dist * np.array([math.cos(phi), math.sin(phi)]))
                pts = np.array(cluster)
                if label == "aggregate":  # a picker centres on the clump, not on one member
                    pts = pts - pts.mean(axis=0)
                pts = pts + shifts[k]
                shifts[k] = pts[0]
                member_poses = uniform_poses(jr, len(pts))
                member_poses[0] = poses[k]
                for p, pose in zip(pts, member_poses):
                    comps.append(_Component(k, ("src", s), pose, p))
        for c in comps:
            n_comp[c.image] += 1

        # Images with carbon or ice, or with a particle reaching past the canvas, are made on a
        # canvas twice as large: the CTF then acts on the specimen around the box, as on a
        # micrograph, instead of on a specimen cut (and wrapped) at the box edge.
        small_px = cfg.canvas_px
        big_px = 2 * small_px
        big = np.zeros(n, dtype=bool)
        for k, _, _ in specimens:
            big[k] = True
        for c in comps:
            reach = (np.abs(c.shift_A).max() + self.volume(c.key).radius_A) / px + 2
            big[c.image] |= reach > small_px / 2
        noise_var = (self.noise_sd**2) * mic_ice * local_ice  # (n,) per image
        gen = torch.Generator(device="cpu").manual_seed(torch_seed)
        images = np.empty((n, box, box), dtype=np.float32)
        clean_np = np.empty((n, box, box), dtype=np.float32) if keep_clean else None
        energy = np.zeros(n)
        view_rngs = [_rng(self.seed, _TAG_EXTRA_VIEWS, g, v) for v in range(extra_views)]
        view_ctfs = [self._draw_micrograph_ctf(r) for r in view_rngs]
        view_gens = [torch.Generator(device="cpu").manual_seed(int(r.integers(2**62))) for r in view_rngs]
        views = [np.empty((n, box, box), dtype=np.float32) for _ in range(extra_views)]
        for canvas_px, members in ((small_px, np.nonzero(~big)[0]), (big_px, np.nonzero(big)[0])):
            if len(members) == 0:
                continue
            slot = {int(k): j for j, k in enumerate(members)}
            canvas = self._render_components(
                [_Component(slot[c.image], c.key, c.pose, c.shift_A) for c in comps if c.image in slot],
                len(members),
                canvas_px,
            )
            for k, label, jr in specimens:
                if k not in slot:
                    continue
                img, _ = junk_mod.SPECIMEN_RENDERERS[label](jr, canvas_px, px, self.sources[int(src_idx[k])].density)
                canvas[slot[k]] += _taper(img).to(canvas.device)
            out = self._image(canvas, mic, dz[members], noise_var[members], gen, keep_clean)
            images[members], energy[members] = out[0], out[1]
            if clean_np is not None:
                clean_np[members] = out[2]
            for v in range(extra_views):
                views[v][members] = self._image(
                    canvas, view_ctfs[v], dz[members], noise_var[members], view_gens[v], False
                )[0]

        has_particle = n_comp > 0
        foot = np.array([self.footprint_px[int(s)] for s in src_idx])
        snr = np.where(has_particle, energy / foot / np.where(noise_var > 0, noise_var, np.inf), 0.0)
        if not math.isfinite(cfg.snr):
            snr = np.where(has_particle, np.inf, 0.0)
        quality = np.array([JUNK_QUALITY.get(label, 0.0) for label in labels])
        good = np.array([label == "good" for label in labels])
        if good.any():
            ratio = snr[good] / cfg.snr if math.isfinite(cfg.snr) else np.ones(int(good.sum()))
            radii = np.array([self.sources[int(i)].radius_A for i in src_idx[good]])
            dist = np.sqrt((shifts[good] ** 2).sum(axis=1))
            quality[good] = 0.5 + 0.5 * ratio / (1.0 + ratio) * np.exp(-((dist / radii) ** 2))

        table = pd.DataFrame(
            {
                "rlnMicrographName": f"micrograph_{g:06d}",
                "rlnOpticsGroup": int(mic["optics_group"]),
                "rlnAngleRot": poses[:, 0],
                "rlnAngleTilt": poses[:, 1],
                "rlnAnglePsi": poses[:, 2],
                "rlnOriginXAngst": -shifts[:, 0],
                "rlnOriginYAngst": -shifts[:, 1],
                "rlnDefocusU": mic["defocus_u_A"] + dz,
                "rlnDefocusV": mic["defocus_v_A"] + dz,
                "rlnDefocusAngle": mic["angle_deg"],
                "rlnPhaseShift": mic["phase_shift_deg"],
                "rlnCtfBfactor": mic["b_factor_A2"],
                "rlnCtfScalefactor": 1.0,
                "rlnRandomSubset": (np.arange(i0, i1) % 2) + 1,
                "rlnCryostackParticleIndex": np.arange(i0, i1),
                "rlnCryostackJunkType": labels,
                "rlnCryostackJunkClass": self.labels[i0:i1].astype(np.int64),
                "rlnCryostackQuality": quality,
                "rlnCryostackSNR": np.where(np.isfinite(snr), snr, -1.0),
                "rlnCryostackSource": [m if m else "none" for m in main_source],
                "rlnCryostackComponents": n_comp,
                "rlnCryostackPartFraction": part_fraction,
                "rlnCryostackScale": scale,
                "rlnCryostackNoiseFactor": mic_ice * local_ice,
                "rlnCryostackDefocusOffset": dz,
            }
        )
        return MicrographBatch(images=images, table=table, clean=clean_np, views=views, view_ctfs=view_ctfs)

    def _image(
        self,
        canvas: torch.Tensor,
        mic: dict,
        dz: np.ndarray,
        noise_var: np.ndarray,
        gen: torch.Generator,
        keep_clean: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Specimens ``(m, C, C)`` → boxed images ``(m, box, box)`` (CTF, noise, scaled by the
        noise SD), the noise-free images' energies in the box and, with ``keep_clean``, those images."""
        cfg = self.config
        box, px = cfg.box_px, cfg.pixel_size_A
        canvas_px = canvas.shape[-1]
        ctf = ctf_2d_defocus_offsets(
            mic["defocus_u_A"],
            mic["defocus_v_A"],
            mic["angle_deg"],
            mic["voltage_kV"],
            mic["cs_mm"],
            mic["amplitude_contrast"],
            px,
            (canvas_px, canvas_px),
            torch.from_numpy(dz),
            phase_shift_deg=mic["phase_shift_deg"],
            b_factor_A2=mic["b_factor_A2"],
        ).to(canvas.device)
        # The CTF is real and even, so filtering needs no particular phase origin: the canvas is
        # transformed as it lies (no shift of its centre to pixel 0 and back). Dividing by the
        # image scale here, once per frequency, leaves nothing to rescale in real space.
        spectrum = torch.fft.rfft2(canvas).mul_(ctf / self.image_scale)
        lo = canvas_px // 2 - box // 2
        w = torch.full(ctf.shape[-2:], 2.0, device=ctf.device)  # rfft half-plane: inner columns count twice
        w[:, 0] = 1.0
        w[:, -1] = 1.0
        clean = None
        if canvas_px == box:  # Parseval: the noise-free image's energy without transforming it back
            power = torch.view_as_real(spectrum).square().sum(-1)
            energy = torch.einsum("bij,ij->b", power, w) / canvas_px**2
        else:
            clean = _irfft(spectrum)[:, lo : lo + box, lo : lo + box]
            energy = clean.square().sum(dim=(-2, -1))
        energy = energy * self.image_scale**2
        full = spectrum
        if self.noise_sd > 0:
            f = cfg.structural_noise_fraction
            ctf2 = ctf.square_()  # the CTF itself is not needed any more
            mean_ctf2 = torch.einsum("bij,ij->b", ctf2, w) / w.sum()
            nv = torch.as_tensor(noise_var, dtype=torch.float32, device=ctf.device) / self.image_scale**2
            # Ice in the specimen is white before the CTF, scaled so that after it its variance is
            # f·σ²; shot noise is white with variance (1 − f)·σ². Both are Gaussian and
            # independent, so one complex draw per frequency with the summed variance makes both:
            # E|N_k|² = C² (τ² CTF_k² + σ_shot²) gives real-space variance τ²⟨CTF²⟩ + σ_shot².
            tau2 = f * nv / mean_ctf2.clamp_min(1e-6)
            sd = ctf2.mul_(tau2[:, None, None]).add_(((1.0 - f) * nv)[:, None, None]).sqrt_().mul_(canvas_px)
            noise = torch.randn(spectrum.shape, dtype=torch.complex64, generator=gen).to(ctf.device)
            full = noise.mul_(sd).add_(spectrum)
        images = _irfft(full)[:, lo : lo + box, lo : lo + box]
        clean_np = None
        if keep_clean:
            if clean is None:
                clean = _irfft(spectrum)[:, lo : lo + box, lo : lo + box]
            clean_np = clean.cpu().numpy().astype(np.float32)
        return images.cpu().numpy().astype(np.float32), energy.double().cpu().numpy(), clean_np

    def _render_components(self, comps: list[_Component], n_images: int, canvas_px: int) -> torch.Tensor:
        """Projected specimens ``(n_images, C, C)``: every component projected at its pose and
        pasted with its centre at ``C // 2 + shift``.

        Each projection is sampled on its own volume's grid (``v × v``, the particle fully
        inside), shifted by the sub-pixel part of its shift as a Fourier phase, and pasted at the
        whole-pixel part: a component is never wrapped around the box, however far off-centre.
        """
        px = self.config.pixel_size_A
        canvas = torch.zeros(n_images, canvas_px, canvas_px, device=self.device)
        by_key: dict[tuple, list[_Component]] = {}
        for c in comps:
            by_key.setdefault(c.key, []).append(c)
        half = canvas_px // 2
        for key, group in by_key.items():
            vol = self.volume(key)
            fv = vol.fourier
            if fv.table.device != self.device:
                vol._fourier = type(fv)(fv.rfft.to(self.device))
                fv = vol._fourier
            v = vol.edge_px
            pose = np.array([c.pose for c in group])
            a = euler_to_matrix(
                torch.from_numpy(pose[:, 0]), torch.from_numpy(pose[:, 1]), torch.from_numpy(pose[:, 2])
            )
            s_px = np.array([c.shift_A for c in group]) / px
            whole = np.rint(s_px).astype(np.int64)
            ft = extract_slices(fv, a.to(self.device), v)
            frac = s_px - whole
            if np.any(frac != 0):
                ft = phase_shift(ft, torch.from_numpy(frac * px).to(self.device), px)
            proj = images_from_rfft(ft)  # (m, v, v), centre at v // 2
            for j, c in enumerate(group):
                y0 = half + int(whole[j, 1]) - v // 2
                x0 = half + int(whole[j, 0]) - v // 2
                ys, xs = max(0, y0), max(0, x0)
                ye, xe = min(canvas_px, y0 + v), min(canvas_px, x0 + v)
                if ye <= ys or xe <= xs:
                    continue
                canvas[c.image, ys:ye, xs:xe] += proj[j, ys - y0 : ye - y0, xs - x0 : xe - x0]
        return canvas


def _irfft(spectrum: torch.Tensor) -> torch.Tensor:
    n = spectrum.shape[-2]
    return torch.fft.irfft2(spectrum, s=(n, n))


def _taper(img: torch.Tensor, fraction: float = 0.125) -> torch.Tensor:
    """``img`` blended to its edge mean over the outer ``fraction`` of the canvas (cosine), so the
    canvas is continuous across its periodic boundary and the CTF does not ring at the seam."""
    n = img.shape[-1]
    width = max(1, int(n * fraction))
    ramp = torch.ones(n)
    t = 0.5 * (1 - torch.cos(torch.linspace(0, math.pi, width)))
    ramp[:width] = t
    ramp[n - width :] = t.flip(0)
    window = ramp[:, None] * ramp[None, :]
    edge = torch.cat([img[0], img[-1], img[:, 0], img[:, -1]]).mean()
    return edge + (img - edge) * window


# --------------------------------------------------------------------------------------------
# Writing a dataset
# --------------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import cryostack

    out = {"cryostack": cryostack.__version__, "python": platform.python_version()}
    for pkg in ("torch", "numpy", "torch-fourier-slice", "torch-ctf", "starfile", "cryosparc-tools", "mrcfile"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def check_output_folder(out_dir: Path, overwrite: bool) -> None:
    """Raise :class:`InputError` if ``out_dir`` cannot take a new dataset (checked before any work)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "exists and is not a folder")
    if (out_dir / "particles.star").exists() and not overwrite:
        raise InputError(out_dir, "already holds a particles.star; choose another output folder or overwrite it")
    check_writable(out_dir / "particles.star")


def _stale_stacks(out_dir: Path, keep: set[str]) -> list[Path]:
    """Stacks a previous run listed in its manifest that this run did not write."""
    manifest = out_dir / "manifest.json"
    if not manifest.is_file():
        return []
    try:
        old = json.loads(manifest.read_text())
    except ValueError:
        return []
    return [
        out_dir / name
        for name in old.get("stacks", [])
        if name not in keep and (out_dir / name).is_file() and name.startswith("particles_") and name.endswith(".mrcs")
    ]


def simulate_particles(
    config: SimulationConfig,
    sources: Sequence[ParticleSource],
    out_dir: str | Path,
    *,
    seed: int = 0,
    decoys: Sequence[ParticleSource] = (),
    overwrite: bool = False,
    progress: bool = True,
    protect: Sequence[str | Path] = (),
    write_cs: bool = True,
    write_reference: bool = True,
    source_description: dict | None = None,
    workers: int = 1,
) -> SimulationResult:
    """Simulate ``config.n_particles`` images and write them as a RELION 3.1 / cryoSPARC dataset.

    Writes into ``out_dir``: ``particles_NNNN.mrcs`` stacks, ``particles.star`` (optics and
    particles: poses, shifts and CTF in RELION's columns, ground truth in ``rlnCryostack*``
    columns, :data:`TRUTH_COLUMNS`), ``particles.cs`` (the same in cryoSPARC's fields, truth as
    ``cryostack/*`` fields), ``reference_map.mrc`` (each source as a perfect reconstruction would
    show it; ``reference_map_K.mrc`` for several) and ``manifest.json``. Image paths are relative
    to ``out_dir``: run RELION from inside it. Every file is written atomically; an ``out_dir``
    that already holds a ``particles.star`` is refused unless ``overwrite``. ``workers`` > 1
    simulates micrographs in that many one-thread processes (identical output); on a small or
    shared machine this is much faster than torch threads.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from cryostack.io.maps import write_map
    from cryostack.io.particles import ParticleSet, write_mrcs, write_star

    out_dir = Path(out_dir)
    check_output_folder(out_dir, overwrite)
    start = time.perf_counter()
    sim = ParticleSimulator(config, sources, seed=seed, decoys=decoys)
    out_dir.mkdir(parents=True, exist_ok=True)
    protect = tuple(protect)
    per_stack = config.images_per_stack

    tables: list[pd.DataFrame] = []
    stacks: list[str] = []
    files: list[Path] = []
    # One stack's images, filled micrograph by micrograph and written from here (no concatenation).
    depth = min(per_stack + config.particles_per_micrograph, config.n_particles)
    stack = np.empty((depth, config.box_px, config.box_px), dtype=np.float32)
    buffered = 0

    def flush() -> None:
        nonlocal buffered
        if not buffered:
            return
        name = f"particles_{len(stacks):04d}.mrcs"
        files.append(write_mrcs(out_dir / name, stack[:buffered], config.pixel_size_A, protect=protect))
        stacks.append(name)
        buffered = 0

    columns = (TextColumn("simulating particles"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with torch.no_grad(), Progress(*columns, disable=not progress) as bar, _micrographs(sim, workers) as batches:
        task = bar.add_task("simulate", total=config.n_particles)
        for batch in batches:
            n = len(batch.images)
            if buffered and buffered + n > per_stack:
                flush()
            table = batch.table
            table.insert(
                0, "rlnImageName", [f"{buffered + k + 1:06d}@particles_{len(stacks):04d}.mrcs" for k in range(n)]
            )
            tables.append(table)
            stack[buffered : buffered + n] = batch.images
            buffered += n
            bar.advance(task, n)
        flush()

    particles = pd.concat(tables, ignore_index=True)
    pset = ParticleSet(particles=particles, optics=sim.optics_table(), root=out_dir)
    star_path = write_star(pset, out_dir / "particles.star", image_paths="keep", protect=protect)
    files.append(star_path)
    cs_path = None
    if write_cs:
        cs_path = _write_cs(pset, out_dir / "particles.cs", protect)
        files.append(cs_path)
    references = []
    if write_reference:
        for i, src in enumerate(sim.sources):
            name = "reference_map.mrc" if len(sim.sources) == 1 else f"reference_map_{i}.mrc"
            files.append(write_map(reference_map(src, config.box_px), out_dir / name, protect=protect))
            references.append(name)
    for stale in _stale_stacks(out_dir, set(stacks)):
        stale.unlink()

    counts = {t: int((particles["rlnCryostackJunkType"] == t).sum()) for t in JUNK_TYPES}
    seconds = time.perf_counter() - start
    manifest = {
        "format": "cryostack-simulated-particles",
        "version": 1,
        "seed": int(seed),
        "n_particles": int(config.n_particles),
        "config": config.to_dict(),
        "counts": counts,
        "sources": [_describe(s) for s in sim.sources],
        "decoys": [_describe(s) for s in sim.decoys],
        "source_description": source_description or {},
        "noise": {
            "snr_definition": (
                "noise variance = P / snr, P = energy of a centred, CTF-modulated noise-free particle "
                "image / its footprint (pixels above 5% of the projection maximum), averaged over "
                f"{_CALIBRATION_VIEWS} uniform views and {_CALIBRATION_CTFS} CTF draws"
            ),
            "signal_power": sim.signal_power,
            "noise_sd": sim.noise_sd,
            "image_scale": sim.image_scale,
            "footprint_px": sim.footprint_px,
        },
        "conventions": {
            "shift": "rlnOriginXAngst/YAngst = -(particle centre - box centre), Å",
            "euler": "RELION ZYZ rot, tilt, psi (degrees); image = projection along z of the map rotated by A",
            "ctf": "RELION: defocus U along rlnDefocusAngle from +x, underfocus positive; protein white",
            "image_paths": "relative to this folder: run RELION from here",
        },
        "truth_columns": TRUTH_COLUMNS,
        "micrographs": sim.n_groups,
        "stacks": stacks,
        "references": references,
        "seconds": round(seconds, 3),
        "particles_per_second": round(config.n_particles / seconds, 2) if seconds > 0 else None,
        "versions": _versions(),
    }
    manifest_path = out_dir / "manifest.json"
    from cryostack.io.atomic import jsonable

    with atomic_output(manifest_path, protect=protect) as tmp:
        tmp.write_text(json.dumps(jsonable(manifest), indent=2))
    files.append(manifest_path)
    return SimulationResult(
        out_dir=out_dir,
        star_path=star_path,
        cs_path=cs_path,
        manifest_path=manifest_path,
        n_particles=config.n_particles,
        counts=counts,
        seconds=seconds,
        files=files,
    )


_WORKER_SIM: ParticleSimulator | None = None


def _worker_init(sim: ParticleSimulator | None) -> None:
    global _WORKER_SIM
    if sim is not None:  # spawn: the simulator arrives pickled; fork: it is inherited
        _WORKER_SIM = sim
    # Each worker is one thread: on a small or shared machine, torch's threads of several
    # processes only wait for each other.
    torch.set_num_threads(1)


def _worker_group(g: int) -> MicrographBatch:
    assert _WORKER_SIM is not None
    with torch.no_grad():
        return _WORKER_SIM.simulate_group(g)


@contextlib.contextmanager
def _micrographs(sim: ParticleSimulator, workers: int) -> Iterator[Iterator[MicrographBatch]]:
    """Micrographs ``0, 1, ...`` in order, from this process or from ``workers`` processes of one
    thread each (each micrograph depends only on ``(seed, g)``, so the result is the same)."""
    if workers <= 1 or sim.n_groups <= 1 or sim.device.type != "cpu":
        yield (sim.simulate_group(g) for g in range(sim.n_groups))
        return
    import multiprocessing as mp

    global _WORKER_SIM
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods else "spawn")
    _WORKER_SIM = sim
    with ctx.Pool(
        min(workers, sim.n_groups),
        initializer=_worker_init,
        initargs=(None if ctx.get_start_method() == "fork" else sim,),
    ) as pool:
        try:
            yield pool.imap(_worker_group, range(sim.n_groups))
        finally:
            _WORKER_SIM = None


def _describe(s: ParticleSource) -> dict:
    return {
        "name": s.name,
        "kind": s.kind,
        "volume_edge_px": s.edge_px,
        "radius_A": round(s.radius_A, 3),
        "centre_A": [round(c, 4) for c in s.centre_A],
        "resolution_A": s.resolution_A,
        **s.info,
    }


def _write_cs(pset, path: Path, protect: tuple) -> Path:
    """The set as a cryoSPARC ``.cs``, truth columns as ``cryostack/*`` fields.

    ``blob/sign`` is +1: the images have white protein on a dark background (RELION's extracted
    particle convention; the CTF is positive at low frequency), which cryoSPARC must not invert.
    """
    ds = pset.to_cs_dataset()
    ds["blob/sign"][...] = 1.0
    truth = {
        "cryostack/particle_index": ("<i8", "rlnCryostackParticleIndex"),
        "cryostack/junk_class": ("<i4", "rlnCryostackJunkClass"),
        "cryostack/quality": ("<f4", "rlnCryostackQuality"),
        "cryostack/snr": ("<f4", "rlnCryostackSNR"),
        "cryostack/components": ("<i4", "rlnCryostackComponents"),
        "cryostack/part_fraction": ("<f4", "rlnCryostackPartFraction"),
        "cryostack/scale": ("<f4", "rlnCryostackScale"),
        "cryostack/noise_factor": ("<f4", "rlnCryostackNoiseFactor"),
    }
    for name, (dtype, column) in truth.items():
        ds.add_fields([(name, dtype)])
        ds[name][...] = pset.particles[column].to_numpy().astype(dtype)
    for name, column in (("cryostack/junk_type", "rlnCryostackJunkType"), ("cryostack/source", "rlnCryostackSource")):
        ds.add_fields([(name, "O")])
        ds[name] = pset.particles[column].to_numpy().astype(str).astype(object)
    with atomic_output(path, protect=protect) as tmp:
        ds.save(tmp)
    return path
