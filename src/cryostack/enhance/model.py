"""The map enhancer: a 3D U-Net with residual blocks, linear attention and a bottleneck that can
read structure embeddings (CryoSAMU's design).

Input and output are tiles ``(B, 1, N, N, N)`` ``[z, y, x]`` on a 1 Å/voxel grid, with ``N`` a
multiple of ``2 ** (levels - 1)``. At the bottleneck, voxel tokens attend to a set of structure
embeddings ``(B, L, D_emb)`` during training; at inference ``context=None`` bypasses the attention
(feed-forward and residuals only), so a user needs only the map.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cryostack.learn.checkpoint import load_checkpoint, save_checkpoint
from cryostack.nn.attention import CrossAttentionBlock


@dataclass
class UNetConfig:
    """Widths and switches of :class:`EnhanceUNet`; plain data so it is stored in checkpoints."""

    channels: tuple[int, ...] = (16, 32, 64, 96)  # per level, finest first; the last is the bottleneck's
    blocks_per_level: int = 2
    attention_levels: tuple[bool, ...] = (True, True, True, False)  # linear self-attention after each level
    heads: int = 4  # attention heads; each head is channels / heads wide, so attention costs little at fine levels
    groups: int = 8  # GroupNorm groups (every width must divide)
    dropout: float = 0.1
    structure_dim: int = 128  # width of the structure embeddings (ProteinMPNN's node features)
    use_structure: bool = True  # False: the ablation that never sees embeddings

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        if len(self.attention_levels) != len(self.channels):
            raise ValueError("attention_levels needs one entry per level")
        if any(c % self.groups for c in self.channels):
            raise ValueError(f"every width in {self.channels} must be divisible by groups={self.groups}")

    @property
    def multiple(self) -> int:
        """Tile edges must be a multiple of this (one halving per level below the first)."""
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        return cls(**d)


class ResBlock3d(nn.Module):
    """``GN → SiLU → conv → GN → SiLU → dropout → conv`` plus a (1×1×1 projected) skip."""

    def __init__(self, c_in: int, c_out: int, groups: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(groups, c_in), nn.SiLU(), nn.Conv3d(c_in, c_out, 3, padding=1),
            nn.GroupNorm(groups, c_out), nn.SiLU(), nn.Dropout(dropout), nn.Conv3d(c_out, c_out, 3, padding=1),
        )  # fmt: skip
        self.skip = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class LinearAttention3d(nn.Module):
    """Global self-attention over all voxels at linear cost (Shen et al.'s efficient attention).

    Queries are normalised over channels and keys over positions, so ``K^T V`` is a
    ``(C/heads × C/heads)`` summary of the whole tile that every voxel reads: cost
    ``O(N³ · C²)``, not ``O(N⁶)``. Residual: ``x + out(attn(GN x))``.
    """

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} heads")
        self.heads, self.dh = heads, channels // heads
        inner = channels
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv3d(channels, 3 * inner, 1, bias=False)
        self.out = nn.Conv3d(inner, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, d, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, self.dh, d * h * w).unbind(1)
        q = q.softmax(dim=-2) * self.dh**-0.5
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)  # (B, H, dh, dh)
        y = torch.einsum("bhde,bhdn->bhen", context, q)
        return x + self.out(y.reshape(b, self.heads * self.dh, d, h, w))


class _Level(nn.Module):
    def __init__(self, c_in: int, c_out: int, cfg: UNetConfig, attention: bool):
        super().__init__()
        blocks: list[nn.Module] = [ResBlock3d(c_in, c_out, cfg.groups, cfg.dropout)]
        blocks += [ResBlock3d(c_out, c_out, cfg.groups, cfg.dropout) for _ in range(cfg.blocks_per_level - 1)]
        if attention:
            blocks.append(LinearAttention3d(c_out, cfg.heads, cfg.groups))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class EnhanceUNet(nn.Module):
    """Map tile ``(B, 1, N, N, N)`` → enhanced tile of the same shape.

    ``context`` ``(B, L, structure_dim)`` (with ``context_padding_mask`` ``(B, L)``, True on
    padding) is read by cross-attention at the bottleneck; ``None`` bypasses it, and
    ``context_gate`` ``(B,)`` (1 read, 0 bypass) chooses per item within one batch.
    """

    def __init__(self, cfg: UNetConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or UNetConfig()
        ch = cfg.channels
        self.stem = nn.Conv3d(1, ch[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.pool = nn.ModuleList()
        for i, c in enumerate(ch[:-1]):
            self.down.append(_Level(ch[i - 1] if i else ch[0], c, cfg, cfg.attention_levels[i]))
            self.pool.append(nn.Conv3d(c, c, 3, stride=2, padding=1))
        bottom = ch[-1]
        self.mid_in = ResBlock3d(ch[-2], bottom, cfg.groups, cfg.dropout)
        self.mid_attn = LinearAttention3d(bottom, cfg.heads, cfg.groups)
        self.cross = (
            CrossAttentionBlock(bottom, cfg.heads, context_dim=cfg.structure_dim, mult=2, dropout=cfg.dropout)
            if cfg.use_structure
            else None
        )
        self.mid_out = ResBlock3d(bottom, bottom, cfg.groups, cfg.dropout)
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for i in reversed(range(len(ch) - 1)):
            c_below = ch[i + 1]
            self.up_conv.append(nn.Conv3d(c_below, ch[i], 3, padding=1))
            self.up.append(_Level(2 * ch[i], ch[i], cfg, cfg.attention_levels[i]))
        self.head = nn.Sequential(nn.GroupNorm(cfg.groups, ch[0]), nn.SiLU(), nn.Conv3d(ch[0], 1, 3, padding=1))

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        context_padding_mask: torch.Tensor | None = None,
        context_gate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        m = self.cfg.multiple
        if any(s % m for s in x.shape[-3:]):
            raise ValueError(f"tile edges {tuple(x.shape[-3:])} must be multiples of {m}")
        h = self.stem(x)
        skips = []
        for level, pool in zip(self.down, self.pool):
            h = level(h)
            skips.append(h)
            h = pool(h)
        h = self.mid_attn(self.mid_in(h))
        if self.cross is not None:
            b, c, d, hh, w = h.shape
            tokens = h.flatten(2).transpose(1, 2)  # (B, d·h·w, C)
            tokens = self.cross(tokens, context, context_padding_mask, context_gate)
            h = tokens.transpose(1, 2).reshape(b, c, d, hh, w)
        h = self.mid_out(h)
        for conv, level in zip(self.up_conv, self.up):
            skip = skips.pop()
            h = conv(F.interpolate(h, size=skip.shape[-3:], mode="nearest"))
            h = level(torch.cat([h, skip], dim=1))
        return self.head(h)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


MODEL_NAME = "map_enhancer"


def save_enhancer(path, model: EnhanceUNet, provenance: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Weights in the shared checkpoint format (config, state dict, provenance)."""
    save_checkpoint(
        path, model_name=MODEL_NAME, config=model.cfg.to_dict(), state_dict=model.state_dict(),
        provenance=provenance, extra=extra,
    )  # fmt: skip


def load_enhancer(path, map_location: str | torch.device = "cpu") -> EnhanceUNet:
    ckpt = load_checkpoint(path, map_location=map_location, model_name=MODEL_NAME)
    model = EnhanceUNet(UNetConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
