"""Plain configuration dataclasses of the one-step diffusion refiner (units in the names)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class DenoiserConfig:
    """Architecture of the atom denoiser (:mod:`.model`)."""

    hidden: int = 64  # per-atom feature width
    edge_hidden: int = 64  # message width
    layers: int = 4  # message-passing blocks
    k_neighbours: int = 16  # spatial neighbours per atom, found in the noisy coordinates
    rbf_count: int = 16  # radial basis functions over the pair distance
    rbf_max_A: float = 12.0  # largest distance the radial basis resolves, Å
    sigma_data_A: float = 16.0  # EDM data scale (coordinate standard deviation), Å; AF3's value

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PretrainConfig:
    """Denoising pretraining on the corpus train split (:mod:`.pretrain`)."""

    steps: int = 6000
    batch_chains: int = 4  # chains per optimiser step (gradients accumulated)
    crop_atoms: int = 512  # spatial crop around a random atom, bounds cost per chain
    lr: float = 1e-3
    weight_decay: float = 1e-5
    grad_clip: float = 1.0
    # ln(sigma / Å) ~ N(mean, std), clipped: refinement needs small noise levels, not generation's.
    log_sigma_mean: float = -0.5
    log_sigma_std: float = 1.0
    sigma_min_A: float = 0.05
    sigma_max_A: float = 4.0
    random_rotation: bool = False  # the model is E(3)-equivariant; augmentation is only a check
    seed: int = 0
    checkpoint_every: int = 100
    val_every: int = 500
    val_chains: int = 32
    val_sigmas_A: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    max_hours: float = 0.66  # wall-clock budget; the run stops cleanly (and can resume)
    full_atom: bool = True  # use ProMod3 full-atom chains where the corpus has them

    def to_dict(self) -> dict:
        d = asdict(self)
        d["val_sigmas_A"] = list(self.val_sigmas_A)
        return d


@dataclass
class TestTimeConfig:
    """Per-case optimisation of the denoiser weights against the refinement objective (:mod:`.testtime`)."""

    sigma_A: float = 0.5  # fixed noise level the one-step denoiser is evaluated at, Å
    # Adam on the denoiser weights. 1e-2 (tuned with denoiser_v1) wrecks the geometry in the first
    # steps; on the placed 4uft model only 1e-4 took the loss below the start within 80 steps.
    lr: float = 1e-4
    # Output = input + (adapted − pretrained denoiser output), so the unadapted module returns its
    # input exactly. False = the raw one-step output (Algorithm 1 of the paper): denoiser_v2 then
    # moves a placed model by 0.16 Å at sigma 0.5 and its bond z² goes from 0.1 to 74 (4uft).
    residual: bool = True
    max_recycles: int = 30
    steps_per_recycle: int = 10
    patience: int = 5  # recycles without a better loss before stopping
    min_improvement: float = 1e-4  # relative loss decrease that counts as better
    # Adapt only the last N message-passing blocks (their inputs, from the frozen embeddings and
    # earlier blocks, are computed once per input); None adapts every weight (the paper).
    adapt_blocks: int | None = None
    feed_back: bool = False  # True: each recycle denoises the previous recycle's output, not the input
    weights: str | None = None  # checkpoint path; None = the packaged denoiser_v2.pt
    seed: int = 0
    device: str = "cpu"
    extra: dict = field(default_factory=dict)
