"""Training of the particle encoder (MoCo v3) and of CryoRanker, on particles simulated on the fly.

Data never come from disk: a step draws micrographs from a pool of
:class:`~cryostack.particles.simulate.ParticleSimulator`\\ s, each over ``structures_per_pool``
chains of ONE corpus split (``train``; never ``test``), with its own SNR, junk fraction and
orientation drawn from :class:`SimulationRanges`. Every ``refresh_steps`` steps the pool is
rebuilt from new chains, so a run of S steps sees about ``S / refresh_steps × pools ×
structures_per_pool`` structures. Everything is a function of ``(seed, step)``: a resumed run
draws the same data as an uninterrupted one.

* **Pretraining** (:class:`PretrainTask`): each micrograph is imaged twice by the simulator
  (``simulate_group(extra_views=1)``): same specimens, new CTF and noise. Each view is
  featurised (phase flip with its own CTF) and then rotated in-plane by a random angle, maybe
  mirrored and shifted by a few pixels: MoCo v3's positive pairs, with augmentations that are
  physical for cryo-EM instead of colour jitter.
* **Ranking** (:class:`RankerTask`): one view per micrograph at a pixel size drawn per pool
  (the featuriser resamples it), labelled by the simulator's continuous quality; loss =
  cross-entropy on the confident labels + margin ranking over pairs (CryoRanker).

The loop (schedule, checkpoints every few minutes, resume, budget, DDP under ``torchrun``) is
:func:`cryostack.learn.loop.train`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from cryostack.learn.loop import TrainConfig, TrainState, unwrap
from cryostack.learn.loop import train as train_loop
from cryostack.particles.featurize import CtfParams, featurize
from cryostack.particles.model import (
    ENCODER_NAME,
    RANKER_NAME,
    MoCo,
    MoCoConfig,
    Ranker,
    RankerConfig,
    momentum_at,
)
from cryostack.particles.simulate import ParticleSimulator, SimulationConfig
from cryostack.particles.sources import corpus_sources

_TAG_POOL = 31


@dataclass(frozen=True)
class SimulationRanges:
    """What the training simulators draw from. ``snr_range`` log-uniform per pool; the others
    uniform per pool (pixel size, junk fraction) or per micrograph (CTF, as in the simulator).

    The pretraining SNR reaches well above real data (0.05-5, in the simulator's per-particle
    definition): at SNR 0.01-0.3 the two views of one particle share so little that MoCo's loss
    stayed at chance for 200 steps (batch 128), while at 0.2-5 it fell from the first steps.
    """

    pixel_size_range_A: tuple[float, float] = (3.0, 3.0)
    box_A: float = 192.0  # simulated box edge in Å (the simulator's box is box_A / pixel size)
    snr_range: tuple[float, float] = (0.05, 5.0)
    junk_range: tuple[float, float] = (0.0, 0.3)
    preferred_fraction: float = 0.2
    defocus_range_A: tuple[float, float] = (5000.0, 35000.0)
    astigmatism_range_A: tuple[float, float] = (0.0, 2000.0)
    b_factor_range_A2: tuple[float, float] = (0.0, 200.0)
    voltage_kV: tuple[float, ...] = (200.0, 300.0)
    cs_mm: tuple[float, ...] = (2.7, 0.01)
    amplitude_contrast: tuple[float, ...] = (0.07, 0.1)


@dataclass(frozen=True)
class PoolConfig:
    """How many simulators feed training and how often they are replaced."""

    split: str = "train"
    pools: int = 8
    structures_per_pool: int = 16
    refresh_steps: int = 250
    particles_per_micrograph: int = 64
    micrographs_per_step: int = 2
    min_residues: int = 50


class SimulatorPool:
    """The simulators of one refresh period, built on first use from ``(seed, period, k)``."""

    def __init__(self, corpus, ranges: SimulationRanges, pool: PoolConfig, seed: int, *, allow_test: bool = False):
        self.corpus, self.ranges, self.pool, self.seed = corpus, ranges, pool, int(seed)
        self.allow_test = allow_test
        self._period = -1
        self._sims: dict[int, ParticleSimulator] = {}

    def simulator(self, period: int, k: int) -> ParticleSimulator:
        if period != self._period:
            self._sims, self._period = {}, period
        if k not in self._sims:
            self._sims[k] = self._build(period, k)
        return self._sims[k]

    def _build(self, period: int, k: int) -> ParticleSimulator:
        r, p = self.ranges, self.pool
        rng = np.random.default_rng([self.seed, _TAG_POOL, period, k])
        px = float(rng.uniform(*r.pixel_size_range_A))
        box = int(round(r.box_A / px / 2)) * 2
        snr = float(math.exp(rng.uniform(math.log(r.snr_range[0]), math.log(r.snr_range[1]))))
        cfg = SimulationConfig(
            n_particles=1_000_000,
            box_px=box,
            pixel_size_A=px,
            snr=snr,
            junk_fraction=float(rng.uniform(*r.junk_range)),
            particles_per_micrograph=p.particles_per_micrograph,
            defocus_range_A=r.defocus_range_A,
            astigmatism_range_A=r.astigmatism_range_A,
            b_factor_range_A2=r.b_factor_range_A2,
            voltage_kV=r.voltage_kV,
            cs_mm=r.cs_mm,
            amplitude_contrast=r.amplitude_contrast,
            orientation="preferred" if rng.random() < r.preferred_fraction else "uniform",
        )
        sources = corpus_sources(
            self.corpus,
            p.split,
            p.structures_per_pool,
            px,
            cfg.effective_resolution_A,
            seed=int(rng.integers(2**31)),
            min_residues=p.min_residues,
            max_radius_A=0.4 * box * px,
            allow_test=self.allow_test,
        )
        return ParticleSimulator(cfg, sources, seed=int(rng.integers(2**31)))

    def micrograph(self, rng: np.random.Generator, step: int, extra_views: int = 0, keep_clean: bool = False):
        """One micrograph of a random simulator of this step's period: ``(simulator, batch)``."""
        period = step // self.pool.refresh_steps
        sim = self.simulator(period, int(rng.integers(self.pool.pools)))
        g = int(rng.integers(sim.n_groups))
        return sim, sim.simulate_group(g, extra_views=extra_views, keep_clean=keep_clean)


def ctf_of_view(table, ctf: dict) -> CtfParams:
    """The CTF of an extra view: its micrograph CTF at each particle's defocus offset."""
    return CtfParams.from_micrograph(ctf, len(table), table["rlnCryostackDefocusOffset"].to_numpy())


def table_ctf(table, sim: ParticleSimulator) -> CtfParams:
    """The CTF a simulated micrograph's table records (optics from the simulator's config)."""
    optics = sim.optics_table().set_index("rlnOpticsGroup")
    og = table["rlnOpticsGroup"].to_numpy()
    return CtfParams(
        defocus_u_A=table["rlnDefocusU"].to_numpy(),
        defocus_v_A=table["rlnDefocusV"].to_numpy(),
        angle_deg=table["rlnDefocusAngle"].to_numpy(),
        voltage_kV=optics.loc[og, "rlnVoltage"].to_numpy(),
        cs_mm=optics.loc[og, "rlnSphericalAberration"].to_numpy(),
        amplitude_contrast=optics.loc[og, "rlnAmplitudeContrast"].to_numpy(),
        phase_shift_deg=table["rlnPhaseShift"].to_numpy(),
    )


def in_plane_augment(x: torch.Tensor, gen: torch.Generator, max_shift_px: float = 2.0) -> torch.Tensor:
    """Random in-plane rotation (any angle), mirror (half of them) and shift (≤ ``max_shift_px``)
    of images ``(B, H, W)`` or ``(B, C, H, W)`` (the channels share one transform); bilinear,
    zero outside (the featurised images' mean)."""
    squeeze = x.ndim == 3
    if squeeze:
        x = x[:, None]
    b, c, h, _ = x.shape
    angle = torch.rand(b, generator=gen) * 2 * math.pi
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * (2 * max_shift_px / h)
    cos_a, sin_a = angle.cos(), angle.sin()
    theta = torch.stack(
        [torch.stack([cos_a * flip, -sin_a, shift[:, 0]], 1), torch.stack([sin_a * flip, cos_a, shift[:, 1]], 1)], 1
    ).to(x.device)
    grid = F.affine_grid(theta, [b, c, h, h], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, 0] if squeeze else out


@dataclass
class PretrainTask:
    """MoCo v3 on simulated positive pairs (see the module docstring)."""

    corpus: Any
    model_cfg: MoCoConfig = field(default_factory=MoCoConfig)
    ranges: SimulationRanges = field(default_factory=SimulationRanges)
    pool: PoolConfig = field(default_factory=PoolConfig)
    total_steps: int = 1000
    seed: int = 0
    model_name: str = ENCODER_NAME + "-moco"

    def __post_init__(self) -> None:
        self.sims = SimulatorPool(self.corpus, self.ranges, self.pool, self.seed)

    def build_model(self, config: dict[str, Any] | None) -> MoCo:
        return MoCo(MoCoConfig.from_dict(config) if config else self.model_cfg)

    def model_config(self, model: torch.nn.Module) -> dict[str, Any]:
        return cast(Any, unwrap(model)).config.to_dict()

    def sample(self, rng: np.random.Generator, step: int) -> dict[str, Any]:
        spec = self.model_cfg.features
        denoise = self.model_cfg.denoise_weight > 0
        v1, v2, c1 = [], [], []
        for _ in range(self.pool.micrographs_per_step):
            sim, mb = self.sims.micrograph(rng, step, extra_views=1, keep_clean=denoise)
            px = sim.config.pixel_size_A
            ctf = table_ctf(mb.table, sim)
            v1.append(featurize(mb.images, px, ctf, spec))
            v2.append(featurize(mb.views[0], px, ctf_of_view(mb.table, mb.view_ctfs[0]), spec))
            if denoise:
                c1.append(featurize(mb.clean, px, ctf, spec))
        batch = {"view1": torch.cat(v1), "view2": torch.cat(v2), "step": step}
        if denoise:
            batch["clean1"] = torch.cat(c1)
        return batch

    def loss(self, model: torch.nn.Module, batch: dict[str, Any], gen: torch.Generator, device: torch.device):
        m = momentum_at(batch["step"], self.total_steps, self.model_cfg.momentum)
        v2 = in_plane_augment(batch["view2"], gen).to(device)
        if "clean1" not in batch:
            return model(in_plane_augment(batch["view1"], gen).to(device), v2, momentum=m)
        both = in_plane_augment(torch.stack([batch["view1"], batch["clean1"]], dim=1), gen).to(device)
        return model(both[:, 0], v2, momentum=m, clean1=both[:, 1])


#: CryoRanker's labels on our quality scale: good ≥ 0.5, junk ≤ 0.3 (the paper's α = 0.7 on its
#: own 0–1 manual scale); the margin Δ = 0.2 as in the paper.
GOOD_MIN, JUNK_MAX, MARGIN = 0.5, 0.3, 0.2


def ranking_loss(logits: torch.Tensor, quality: torch.Tensor, margin: float = MARGIN) -> torch.Tensor:
    """Cross-entropy on confidently labelled images plus margin ranking over all pairs ``i, j``
    with ``quality_i > quality_j + 0.05`` (mean over pairs, so batch size does not rescale it)."""
    score = logits.softmax(dim=1)[:, 1]
    confident = (quality >= GOOD_MIN) | (quality <= JUNK_MAX)
    ce = F.cross_entropy(logits[confident], (quality[confident] >= GOOD_MIN).long()) if confident.any() else 0.0
    better = quality[:, None] > quality[None, :] + 0.05
    mr = F.relu(margin - (score[:, None] - score[None, :]))[better].mean() if better.any() else 0.0
    return ce + mr  # type: ignore[return-value]


#: Ranker data: pixel sizes 1.2-3 Å (resampled by the featuriser; finer sampling only costs
#: simulation time on the CPU), 10-70 % junk of every type, SNR 0.01-0.3. The issue measures at
#: 0.01-0.1; a first run drawn from 0.005-0.2 learnt only the strong junk (carbon, ice: AUC
#: 0.87-1.0) and not whether a particle is there at all (empty ice: AUC 0.51), as most of its
#: images held no detectable particle signal.
RANKER_RANGES = SimulationRanges(
    pixel_size_range_A=(1.2, 3.0),
    box_A=180.0,
    snr_range=(0.01, 0.3),
    junk_range=(0.1, 0.7),
    preferred_fraction=0.2,
)


@dataclass
class RankerTask:
    """CryoRanker fine-tuning on simulated, quality-labelled particles."""

    corpus: Any
    model_cfg: RankerConfig = field(default_factory=RankerConfig)
    ranges: SimulationRanges = RANKER_RANGES
    pool: PoolConfig = field(default_factory=PoolConfig)
    encoder_state: dict[str, torch.Tensor] | None = None
    seed: int = 0
    model_name: str = RANKER_NAME

    def __post_init__(self) -> None:
        self.sims = SimulatorPool(self.corpus, self.ranges, self.pool, self.seed)

    def build_model(self, config: dict[str, Any] | None) -> Ranker:
        model = Ranker(RankerConfig.from_dict(config) if config else self.model_cfg)
        if config is None and self.encoder_state is not None:
            model.encoder.load_state_dict(self.encoder_state)
        return model

    def model_config(self, model: torch.nn.Module) -> dict[str, Any]:
        return cast(Any, unwrap(model)).config.to_dict()

    def sample(self, rng: np.random.Generator, step: int) -> dict[str, Any]:
        spec = self.model_cfg.features
        xs, qs = [], []
        for _ in range(self.pool.micrographs_per_step):
            sim, mb = self.sims.micrograph(rng, step)
            xs.append(featurize(mb.images, sim.config.pixel_size_A, table_ctf(mb.table, sim), spec))
            qs.append(torch.tensor(mb.table["rlnCryostackQuality"].to_numpy(dtype=np.float32, copy=True)))
        return {"images": torch.cat(xs), "quality": torch.cat(qs)}

    def loss(self, model: torch.nn.Module, batch: dict[str, Any], gen: torch.Generator, device: torch.device):
        x = in_plane_augment(batch["images"], gen).to(device)
        return ranking_loss(model(x), batch["quality"].to(device))


def encoder_state_from(moco_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The query encoder's weights out of a MoCo state dict (what ``embed`` and the ranker start from)."""
    return {k[len("encoder.") :]: v for k, v in moco_state.items() if k.startswith("encoder.")}


def run_training(
    task: PretrainTask | RankerTask,
    out_dir: str | Path,
    cfg: TrainConfig,
    *,
    device: str = "cpu",
    progress: bool = True,
    stop_at_step: int | None = None,
) -> TrainState:
    """Train (or resume, from ``out_dir/last.pt``) either particle task on the shared loop,
    recording the task's model config and the corpus split it draws from."""
    return train_loop(
        task,
        cfg,
        out_dir=out_dir,
        device=device,
        progress=progress,
        stop_at_step=stop_at_step,
        model_config=task.model_cfg.to_dict(),
        data_files=corpus_files(task.corpus),
    )


def corpus_files(corpus) -> dict[str, str | Path]:
    from cryostack.data.corpus import corpus_data_files

    return corpus_data_files(getattr(corpus, "root", "") or "")


def describe(pool: PoolConfig, ranges: SimulationRanges) -> dict[str, Any]:
    """The data settings of a run, for model cards."""
    return {"pool": asdict(pool), "ranges": asdict(ranges)}
