"""The particle encoder (a Vision Transformer), its MoCo v3 pretraining wrapper and the ranker head.

* :class:`ParticleViT` — patch embedding, a class token, fixed 2-D sine-cosine position
  embeddings (MoCo v3's choice for ViTs), pre-norm transformer blocks from
  :mod:`cryostack.nn.attention`; ``forward`` gives the class token's feature ``(B, dim)``.
* :class:`MoCo` — query encoder + 3-layer projection head + 2-layer prediction head, a momentum
  copy of encoder and projection, and the symmetric InfoNCE loss of MoCo v3 (keys gathered over
  all ranks under DDP).
* :class:`Ranker` — the encoder with a 2-logit head (CryoRanker); the score is ``softmax[:, 1]``.

Sizes are plain dataclass presets (:data:`VIT_PRESETS`): ``tiny`` trains on two CPU cores in
hours; ``small`` and ``base`` (ViT-B: 768 wide, 12 deep, 12 heads) want a GPU.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cryostack.nn.attention import SelfAttentionBlock
from cryostack.particles.featurize import FeatureSpec

ENCODER_NAME = "particle-vit"
RANKER_NAME = "particle-ranker"
#: Names of the packaged checkpoints (``cryostack/weights/registry.json``).
PACKAGED_ENCODER = "particle_encoder_v1"
PACKAGED_RANKER = "particle_ranker_v1"


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of :class:`ParticleViT`. ``image_px`` must be a multiple of ``patch_px``."""

    image_px: int = 64
    patch_px: int = 8
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4

    def validate(self) -> None:
        if self.image_px % self.patch_px:
            raise ValueError(f"image_px {self.image_px} is not a multiple of patch_px {self.patch_px}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")


#: Model sizes. ``base`` is the paper's width and depth (ViT-B) on our 64-pixel, 3 Å/pixel input.
VIT_PRESETS: dict[str, ViTConfig] = {
    "tiny": ViTConfig(dim=128, depth=4, heads=4),
    "small": ViTConfig(dim=384, depth=12, heads=6),
    "base": ViTConfig(dim=768, depth=12, heads=12),
}


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding ``(grid², dim)`` (``dim`` divisible by 4)."""
    if dim % 4:
        raise ValueError(f"dim {dim} must be divisible by 4 for 2-D sine-cosine embeddings")
    y, x = torch.meshgrid(
        torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32), indexing="ij"
    )
    omega = 1.0 / (10000.0 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4)))
    ox = x.flatten()[:, None] * omega[None]
    oy = y.flatten()[:, None] * omega[None]
    return torch.cat([ox.sin(), ox.cos(), oy.sin(), oy.cos()], dim=1)


class ParticleViT(nn.Module):
    """Images ``(B, H, W)`` (featurised, :mod:`cryostack.particles.featurize`) → features ``(B, dim)``."""

    pos: torch.Tensor  # buffer

    def __init__(self, config: ViTConfig = ViTConfig()):
        super().__init__()
        config.validate()
        self.config = config
        grid = config.image_px // config.patch_px
        self.patch = nn.Conv2d(1, config.dim, kernel_size=config.patch_px, stride=config.patch_px)
        self.cls = nn.Parameter(torch.zeros(1, 1, config.dim))
        nn.init.normal_(self.cls, std=0.02)
        self.register_buffer("pos", sincos_2d(grid, config.dim)[None], persistent=False)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(config.dim, config.heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.dim)

    @property
    def dim(self) -> int:
        return self.config.dim

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """All tokens ``(B, 1 + patches, dim)`` after the last block (class token first)."""
        if images.ndim == 3:
            images = images[:, None]
        x = self.patch(images).flatten(2).transpose(1, 2) + self.pos
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.tokens(images)[:, 0]


def _mlp_bn(n_in: int, hidden: int, n_out: int, layers: int, last_bn: bool) -> nn.Sequential:
    """MoCo v3's heads: ``layers`` linear layers, BN + ReLU between them (BN without affine at the end)."""
    mods: list[nn.Module] = []
    d = n_in
    for i in range(layers):
        out = n_out if i == layers - 1 else hidden
        mods.append(nn.Linear(d, out, bias=False))
        if i < layers - 1:
            mods += [nn.BatchNorm1d(out), nn.ReLU(inplace=True)]
        elif last_bn:
            mods.append(nn.BatchNorm1d(out, affine=False))
        d = out
    return nn.Sequential(*mods)


@dataclass(frozen=True)
class MoCoConfig:
    """MoCo v3 pretraining: heads, temperature and momentum (the paper: τ 0.5, m 0.99).

    ``denoise_weight`` > 0 adds a dense auxiliary loss (not in the paper): a linear decoder on the
    first view's patch tokens predicts its noise-free, phase-flipped image (the simulator knows
    it). Every pixel then carries a gradient, which is what lets a small ViT learn particle shape
    in CPU hours at realistic SNR, where the contrastive signal alone stays near chance for long.
    """

    vit: ViTConfig = field(default_factory=ViTConfig)
    features: FeatureSpec = field(default_factory=FeatureSpec)
    hidden: int = 1024
    out_dim: int = 128
    temperature: float = 0.2
    momentum: float = 0.99
    denoise_weight: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MoCoConfig:
        d = dict(d)
        d["vit"] = ViTConfig(**d.get("vit", {}))
        d["features"] = FeatureSpec(**d.get("features", {}))
        return cls(**d)


def _gather(x: torch.Tensor) -> torch.Tensor:
    """``x`` from every rank, concatenated (no gradient); ``x`` itself outside DDP."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class MoCo(nn.Module):
    """MoCo v3 around a :class:`ParticleViT`: ``forward(view1, view2)`` is the symmetric loss."""

    def __init__(self, config: MoCoConfig = MoCoConfig()):
        super().__init__()
        self.config = config
        self.encoder = ParticleViT(config.vit)
        self.projector = _mlp_bn(config.vit.dim, config.hidden, config.out_dim, 3, last_bn=True)
        self.predictor = _mlp_bn(config.out_dim, config.hidden, config.out_dim, 2, last_bn=False)
        self.momentum_encoder = copy.deepcopy(self.encoder)
        self.momentum_projector = copy.deepcopy(self.projector)
        for p in (*self.momentum_encoder.parameters(), *self.momentum_projector.parameters()):
            p.requires_grad_(False)
        self.decoder = nn.Linear(config.vit.dim, config.vit.patch_px**2) if config.denoise_weight > 0 else None

    @torch.no_grad()
    def update_momentum(self, m: float) -> None:
        """``θ_k ← m θ_k + (1 − m) θ_q`` for encoder and projector."""
        for q, k in ((self.encoder, self.momentum_encoder), (self.projector, self.momentum_projector)):
            for pq, pk in zip(q.parameters(), k.parameters()):
                pk.mul_(m).add_(pq.detach(), alpha=1.0 - m)

    def _contrastive(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        q = F.normalize(q, dim=1)
        k = F.normalize(_gather(k), dim=1)
        logits = q @ k.T / self.config.temperature
        labels = torch.arange(q.shape[0], device=q.device) + q.shape[0] * _rank()
        return F.cross_entropy(logits, labels) * 2 * self.config.temperature

    def forward(
        self,
        view1: torch.Tensor,
        view2: torch.Tensor,
        momentum: float | None = None,
        clean1: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Symmetric contrastive loss of views ``(B, H, W)``, plus ``denoise_weight`` × the mean
        squared error of the first view's decoded patches against ``clean1`` ``(B, H, W)``."""
        t1 = self.encoder.tokens(view1)
        q1 = self.predictor(self.projector(t1[:, 0]))
        q2 = self.predictor(self.projector(self.encoder(view2)))
        with torch.no_grad():
            self.update_momentum(self.config.momentum if momentum is None else momentum)
            k1 = self.momentum_projector(self.momentum_encoder(view1))
            k2 = self.momentum_projector(self.momentum_encoder(view2))
        loss = self._contrastive(q1, k2) + self._contrastive(q2, k1)
        if self.decoder is not None and clean1 is not None:
            loss = loss + self.config.denoise_weight * F.mse_loss(self.decode(t1), clean1)
        return loss

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``(B, 1 + P, dim)`` → images ``(B, H, W)`` through the denoising decoder."""
        assert self.decoder is not None
        p, g = self.config.vit.patch_px, self.config.vit.image_px // self.config.vit.patch_px
        x = self.decoder(tokens[:, 1:])  # (B, g*g, p*p)
        return x.reshape(-1, g, g, p, p).permute(0, 1, 3, 2, 4).reshape(-1, g * p, g * p)


def momentum_at(step: int, total: int, base: float) -> float:
    """MoCo v3's momentum schedule: from ``base`` to 1 by a half cosine over the run."""
    return 1.0 - (1.0 - base) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / max(total, 1))))


@dataclass(frozen=True)
class RankerConfig:
    """CryoRanker: the encoder plus a ``hidden``-wide head with two logits (junk, good)."""

    vit: ViTConfig = field(default_factory=ViTConfig)
    features: FeatureSpec = field(default_factory=FeatureSpec)
    hidden: int = 256

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RankerConfig:
        d = dict(d)
        d["vit"] = ViTConfig(**d.get("vit", {}))
        d["features"] = FeatureSpec(**d.get("features", {}))
        return cls(**d)


class Ranker(nn.Module):
    """Featurised images ``(B, H, W)`` → logits ``(B, 2)``; :meth:`score` is the good-class probability."""

    def __init__(self, config: RankerConfig = RankerConfig()):
        super().__init__()
        self.config = config
        self.encoder = ParticleViT(config.vit)
        self.head = nn.Sequential(
            nn.Linear(config.vit.dim, config.hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(config.hidden, 2)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images))

    def features_and_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder features ``(B, dim)`` and scores ``(B,)`` in [0, 1] of one batch."""
        f = self.encoder(images)
        return f, self.head(f).softmax(dim=1)[:, 1]


def save_encoder(path, encoder: ParticleViT, features: FeatureSpec, provenance: dict | None = None, extra=None):
    """Write the encoder alone (what ``particles embed`` and ranker fine-tuning load)."""
    from cryostack.learn.checkpoint import save_checkpoint

    return save_checkpoint(
        path,
        model_name=ENCODER_NAME,
        config={"vit": asdict(encoder.config), "features": features.to_dict()},
        state_dict=encoder.state_dict(),
        provenance=provenance,
        extra=extra,
    )


def load_encoder(path, map_location: str | torch.device = "cpu") -> tuple[ParticleViT, FeatureSpec]:
    """An encoder and its input spec from :func:`save_encoder`'s file, or the encoder inside a
    ranker checkpoint. A checkpoint of another model or shape raises :class:`InputError`."""
    from cryostack.errors import InputError
    from cryostack.learn.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, map_location=map_location)
    kind = ckpt.get("model")
    if kind not in (ENCODER_NAME, RANKER_NAME):
        raise InputError(path, f"checkpoint holds a {kind!r} model, not a particle encoder or ranker")
    cfg = ckpt["config"]
    try:
        vit = ParticleViT(ViTConfig(**cfg["vit"]))
        state = ckpt["state_dict"]
        if kind == RANKER_NAME:
            state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
        vit.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(path, f"checkpoint does not match the particle encoder ({str(exc).splitlines()[0]})") from None
    return vit.eval(), FeatureSpec(**cfg["features"])


def save_ranker(path, ranker: Ranker, provenance: dict | None = None, extra=None):
    from cryostack.learn.checkpoint import save_checkpoint

    return save_checkpoint(
        path,
        model_name=RANKER_NAME,
        config=ranker.config.to_dict(),
        state_dict=ranker.state_dict(),
        provenance=provenance,
        extra=extra,
    )


def load_ranker(path, map_location: str | torch.device = "cpu") -> Ranker:
    """A ranker from :func:`save_ranker`'s file (or a ranker run's ``last.pt``)."""
    from cryostack.errors import InputError
    from cryostack.learn.checkpoint import load_checkpoint

    try:
        ckpt = load_checkpoint(path, map_location=map_location, model_name=RANKER_NAME)
    except InputError:
        ckpt = load_checkpoint(path, map_location=map_location, model_name=RANKER_NAME, weights_only=False)
    try:
        model = Ranker(RankerConfig.from_dict(ckpt["config"]))
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(path, f"checkpoint does not match the particle ranker ({str(exc).splitlines()[0]})") from None
    return model.eval()
