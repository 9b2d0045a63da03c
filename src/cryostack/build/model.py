"""The model builder's network: map + sequence → residue frames in one pass (E3-CryoFold's design).

* **Map encoder**: a small 3D conv stem (1.5 Å → 3 Å → 6 Å voxels) and a transformer over the
  6 Å patch tokens, positions encoded in Å. Dense heads on the 3 Å grid (Cα presence, the Cα's
  offset from the voxel centre in Å, residue type) are auxiliary outputs: they give every voxel a
  training signal, which is what lets this train on a CPU.
* **Sequence encoder**: learned residue embeddings (no ESM here) and a transformer; chains and
  fragments are told apart by position jumps (:data:`~cryostack.build.featurize.CHAIN_GAP`).
* **Cross-attention** of residues to map tokens, then a *pointer*: each residue attends over the
  3 Å voxels (biased by their Cα logits), and its first Cα is the attention-weighted mean of the
  voxels' predicted Cα positions; the first orientation is read from its features. In training the pointer is also told which
  voxel holds each residue's true Cα (a classification over voxels: a dense, strong signal).
* **SE(3) frame GNN**: over a kNN graph of the current Cα (k = 30), messages built from invariant
  edge features (distances, the neighbour's position in the residue's own axes, sequence offset)
  and the map features sampled at the residue's current N, Cα, C, Cβ update each frame in its
  own axes (a quaternion and a translation), layer by layer. Each layer's frames are returned so
  the losses can be applied at every decoder layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cryostack.build.featurize import BUILD_VOXEL_A, N_RESIDUE_TYPES, UNK
from cryostack.geometry.frames import (
    backbone_from_frames,
    compose,
    quaternion_update,
    rotation_from_6d,
    to_local,
)
from cryostack.learn.checkpoint import load_checkpoint, save_checkpoint
from cryostack.nn.attention import CrossAttentionBlock, SelfAttentionBlock
from cryostack.nn.layers import RadialBasis, mlp

MODEL_NAME = "model_builder"
#: Ideal Cβ in residue-local axes (Å), for sampling the map where the side chain starts.
_CB_LOCAL_A = (-0.529, -0.774, -1.205)


@dataclass
class BuilderConfig:
    """Widths and depths of :class:`ModelBuilder`; plain data so it is stored in checkpoints."""

    dim: int = 128
    heads: int = 4
    stem_channels: tuple[int, int, int] = (16, 32, 64)
    dense_dim: int = 64  # features on the 3 Å grid (dense heads, pointer keys, GNN sampling)
    map_layers: int = 3
    seq_layers: int = 2
    cross_layers: int = 2
    gnn_layers: int = 4
    knn: int = 30
    max_relpos: int = 32
    rbf_count: int = 16
    rbf_max_A: float = 24.0
    voxel_size_A: float = BUILD_VOXEL_A

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BuilderConfig:
        names = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
        return cls(**kwargs)


def fourier_positions(xyz_A: torch.Tensor, dim: int, min_wavelength_A: float = 6.0, max_wavelength_A: float = 240.0):
    """Sinusoidal features ``(..., dim)`` of positions ``(..., 3)`` Å (wavelengths in Å, geometric)."""
    n = dim // 6
    wl = torch.exp(torch.linspace(math.log(min_wavelength_A), math.log(max_wavelength_A), n, device=xyz_A.device))
    ang = 2 * math.pi * xyz_A[..., None] / wl  # (..., 3, n)
    feat = torch.cat([ang.sin(), ang.cos()], dim=-1).flatten(-2)
    return F.pad(feat, (0, dim - feat.shape[-1]))


def sequence_positions(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features ``(..., dim)`` of integer residue positions."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=pos.device) / half)
    ang = pos[..., None].float() * freq
    return torch.cat([ang.sin(), ang.cos()], dim=-1)


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(c_in, c_out, 3, stride, 1), nn.GroupNorm(min(8, c_out), c_out), nn.SiLU())


class MapEncoder(nn.Module):
    """``(B, 1, Z, Y, X)`` at 1.5 Å, sides multiples of 4 → 6 Å tokens and 3 Å dense features."""

    def __init__(self, cfg: BuilderConfig):
        super().__init__()
        c0, c1, c2 = cfg.stem_channels
        self.stem = _conv(1, c0)
        self.down1 = nn.Sequential(_conv(c0, c1, 2), _conv(c1, c1))
        self.down2 = nn.Sequential(_conv(c1, c2, 2), _conv(c2, c2))
        self.tokens_in = nn.Linear(c2, cfg.dim)
        self.blocks = nn.ModuleList(SelfAttentionBlock(cfg.dim, cfg.heads) for _ in range(cfg.map_layers))
        self.fuse = nn.Sequential(_conv(c1 + cfg.dim, cfg.dense_dim), nn.Conv3d(cfg.dense_dim, cfg.dense_dim, 3, 1, 1))
        self.dim = cfg.dim

    def forward(self, density: torch.Tensor, voxel_A: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns tokens ``(B, T, D)``, their centres ``(T, 3)`` Å from voxel [0,0,0] (x, y, z),
        and dense features ``(B, dense_dim, Z/2, Y/2, X/2)``."""
        f1 = self.down1(self.stem(density))
        f2 = self.down2(f1)
        b, c, z, y, x = f2.shape
        grid = voxel_centres((z, y, x), 4 * voxel_A, density.device)
        tok = self.tokens_in(f2.flatten(2).transpose(1, 2))
        centre = grid.mean(dim=0)
        tok = tok + fourier_positions(grid - centre, self.dim)
        for blk in self.blocks:
            tok = blk(tok)
        up = tok.transpose(1, 2).reshape(b, self.dim, z, y, x)
        up = F.interpolate(up, size=f1.shape[2:], mode="trilinear", align_corners=False)
        dense = self.fuse(torch.cat([f1, up], dim=1))
        return tok, grid, dense


def voxel_centres(shape_zyx: tuple[int, int, int], spacing_A: float, device) -> torch.Tensor:
    """Å offsets ``(Z*Y*X, 3)`` (x, y, z) of a grid's voxels from voxel [0,0,0], in ``[z, y, x]`` order."""
    zz, yy, xx = torch.meshgrid(*(torch.arange(n, device=device) for n in shape_zyx), indexing="ij")
    return torch.stack([xx, yy, zz], dim=-1).reshape(-1, 3).float() * spacing_A


def sample_dense(dense: torch.Tensor, points_A: torch.Tensor, origin_A: torch.Tensor, spacing_A: float) -> torch.Tensor:
    """Trilinear samples ``(B, P, C)`` of ``dense`` ``(B, C, Z, Y, X)`` (voxel [0,0,0] at ``origin_A``
    ``(B, 3)``, ``spacing_A`` apart) at points ``(B, P, 3)`` Å; zero outside the grid."""
    size = torch.tensor(dense.shape[2:][::-1], device=dense.device, dtype=points_A.dtype)  # x, y, z
    idx = (points_A - origin_A[:, None, :]) / spacing_A
    g = 2 * idx / (size - 1) - 1
    out = F.grid_sample(dense, g[:, :, None, None, :], mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[:, :, :, 0, 0].transpose(1, 2)


class FrameLayer(nn.Module):
    """One SE(3)-equivariant update of residue frames over a kNN graph (updates in local axes)."""

    def __init__(self, cfg: BuilderConfig):
        super().__init__()
        d = cfg.dim
        self.k, self.max_relpos = cfg.knn, cfg.max_relpos
        self.rbf = RadialBasis(cfg.rbf_count, cfg.rbf_max_A)
        self.relpos = nn.Embedding(2 * cfg.max_relpos + 2, 32)
        self.map_in = nn.Linear(4 * cfg.dense_dim, d)
        self.norm = nn.LayerNorm(d)
        self.message = mlp(2 * d + cfg.rbf_count + 3 + 32, d, d)
        self.update = mlp(2 * d, d, d)
        self.to_frame = nn.Linear(d, 6)
        nn.init.zeros_(self.to_frame.weight)
        nn.init.zeros_(self.to_frame.bias)

    def forward(self, h, rot, trans, position, mask, dense, origin_A, spacing_A):
        b, r, d = h.shape
        local = torch.tensor((_CB_LOCAL_A,), device=h.device, dtype=trans.dtype)
        bb = backbone_from_frames(rot, trans)  # (B, R, 3, 3)
        cb = torch.einsum("brij,aj->brai", rot, local) + trans[:, :, None, :]
        pts = torch.cat([bb, cb], dim=2).reshape(b, r * 4, 3)
        sampled = sample_dense(dense, pts, origin_A, spacing_A).reshape(b, r, -1)
        h = h + self.map_in(sampled)
        x = self.norm(h)
        # kNN among real residues of the same item
        dist = torch.cdist(trans.detach(), trans.detach())
        invalid = ~(mask[:, :, None] & mask[:, None, :]) | torch.eye(r, dtype=torch.bool, device=h.device)
        k = max(1, min(self.k, r - 1))
        nb = dist.masked_fill(invalid, float("inf")).topk(k, dim=-1, largest=False).indices  # (B, R, k)
        nb_ok = torch.gather(~invalid, 2, nb)
        bi = torch.arange(b, device=h.device)[:, None, None]
        t_j = trans[bi, nb]  # (B, R, k, 3)
        rel = to_local(rot[:, :, None], trans[:, :, None], t_j)  # neighbour in my axes, Å
        dij = rel.norm(dim=-1)
        off = position[bi, nb] - position[:, :, None]
        off_bin = torch.where(
            off.abs() <= self.max_relpos, off + self.max_relpos, torch.full_like(off, 2 * self.max_relpos + 1)
        )
        e = torch.cat(
            [x[:, :, None].expand(-1, -1, k, -1), x[bi, nb], self.rbf(dij.reshape(-1)).reshape(b, r, k, -1),
             rel / 10.0, self.relpos(off_bin)], dim=-1,
        )  # fmt: skip
        msg = self.message(e) * nb_ok[..., None]
        agg = msg.sum(2) / nb_ok.sum(2, keepdim=True).clamp(min=1)
        h = h + self.update(torch.cat([x, agg], dim=-1))
        upd = self.to_frame(h)
        rot, trans = compose(rot, trans, quaternion_update(upd[..., :3]), upd[..., 3:] * 2.0)
        return h, rot, trans


class ModelBuilder(nn.Module):
    def __init__(self, cfg: BuilderConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or BuilderConfig()
        d = cfg.dim
        self.map_encoder = MapEncoder(cfg)
        self.dense_heads = nn.Conv3d(cfg.dense_dim, 1 + 3 + N_RESIDUE_TYPES, 1)
        self.residue_embed = nn.Embedding(N_RESIDUE_TYPES, d)
        self.seq_blocks = nn.ModuleList(SelfAttentionBlock(d, cfg.heads) for _ in range(cfg.seq_layers))
        self.cross_self = nn.ModuleList(SelfAttentionBlock(d, cfg.heads) for _ in range(cfg.cross_layers))
        self.cross = nn.ModuleList(CrossAttentionBlock(d, cfg.heads) for _ in range(cfg.cross_layers))
        self.pointer_q = nn.Linear(d, cfg.dense_dim)
        self.pointer_k = nn.Conv3d(cfg.dense_dim, cfg.dense_dim, 1)
        self.pointer_out = nn.Linear(cfg.dense_dim, d)
        self.to_rot6d = nn.Linear(d, 6)
        # how much a residue's pointer trusts the voxels' predicted residue type for its own type
        self.type_bias = nn.Parameter(torch.tensor(1.0))
        self.gnn = nn.ModuleList(FrameLayer(cfg) for _ in range(cfg.gnn_layers))
        self.confidence = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 1))

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        density: torch.Tensor,
        origin_A: torch.Tensor,
        residue_type: torch.Tensor,
        position: torch.Tensor,
        residue_mask: torch.Tensor,
        *,
        gnn_layers: int | None = None,
        gnn_start: tuple[torch.Tensor, torch.Tensor]
        | Callable[[dict[str, Any]], tuple[torch.Tensor, torch.Tensor]]
        | None = None,
    ) -> dict[str, Any]:
        """``density`` ``(B, 1, Z, Y, X)`` at ``cfg.voxel_size_A`` (sides multiples of 4),
        ``origin_A`` ``(B, 3)`` x, y, z of voxel [0,0,0]; residues ``(B, R)``.

        Returns ``frames`` (a list, one ``(rot (B,R,3,3), trans (B,R,3))`` per decoder layer, the
        first from the pointer), ``dense`` logits ``(B, 25, Z/2, Y/2, X/2)`` (Cα logit, Cα offset
        Å x, y, z, residue-type logits), ``confidence_logit`` ``(B, R)``, ``pointer_logits``
        ``(B, R, V)`` over the dense grid's voxels, ``grid_origin_A`` and ``grid_spacing_A`` of
        the dense grid. ``gnn_layers`` = 0 skips the GNN (ablation).
        ``gnn_start``: frames the GNN starts from instead of the pointer's — in training noised
        true frames (so the GNN learns local refinement while the pointer is still poor); at
        inference a function of the pointer stage's outputs (``frames``, ``dense``,
        ``pointer_logits``, ``grid_origin_A``, ``grid_spacing_A``) that decodes them, e.g. onto
        predicted Cα sites. With ``gnn_layers`` = 0 those start frames are the result."""
        cfg = self.cfg
        vox = cfg.voxel_size_A
        tokens, _, dense = self.map_encoder(density, vox)
        heads = self.dense_heads(dense)
        b, _, z, y, x = dense.shape
        spacing = 2 * vox
        # Å position of each 3 Å voxel (x, y, z) plus its predicted Cα offset
        centres = voxel_centres((z, y, x), spacing, density.device)
        ca_logit = heads[:, 0].reshape(b, -1)
        ca_points = origin_A[:, None, :] + centres + heads[:, 1:4].reshape(b, 3, -1).transpose(1, 2)

        h = self.residue_embed(residue_type) + sequence_positions(position, cfg.dim)
        pad = ~residue_mask
        for blk in self.seq_blocks:
            h = blk(h, pad)
        for sa, ca in zip(self.cross_self, self.cross):
            h = ca(sa(h, pad), tokens)
        q = self.pointer_q(h)
        keys = self.pointer_k(dense).reshape(b, cfg.dense_dim, -1)
        # each residue's log-probability, per voxel, that the voxel's Cα is of its type (0 for UNK)
        type_logp = torch.log_softmax(heads[:, 4:].reshape(b, N_RESIDUE_TYPES, -1), dim=1)  # (B, T, V)
        idx = residue_type.clamp(max=N_RESIDUE_TYPES - 1)[:, :, None].expand(-1, -1, type_logp.shape[-1])
        own_type = torch.gather(type_logp, 1, idx) * (residue_type != UNK)[:, :, None]
        logits = q @ keys / math.sqrt(cfg.dense_dim) + ca_logit[:, None, :] + self.type_bias * own_type
        attn = torch.softmax(logits, dim=-1)  # (B, R, V)
        trans = attn @ ca_points
        h = h + self.pointer_out(attn @ keys.transpose(1, 2))
        r6 = self.to_rot6d(h)
        rot = rotation_from_6d(
            r6[..., :3] + torch.tensor([1.0, 0.0, 0.0], device=h.device),
            r6[..., 3:] + torch.tensor([0.0, 1.0, 0.0], device=h.device),
        )
        frames = [(rot, trans)]
        grid_origin = origin_A  # the 3 Å grid's voxel [0,0,0] sits on the 1.5 Å grid's
        if callable(gnn_start):
            pointer_stage = {"frames": frames, "dense": heads, "pointer_logits": logits,
                             "grid_origin_A": grid_origin, "grid_spacing_A": spacing}  # fmt: skip
            rot, trans = gnn_start(pointer_stage)
        elif gnn_start is not None:
            rot, trans = gnn_start
        n_layers = len(self.gnn) if gnn_layers is None else gnn_layers
        if gnn_start is not None and n_layers == 0:
            frames.append((rot, trans))
        for layer in list(self.gnn)[:n_layers]:
            h, rot, trans = layer(h, rot, trans, position, residue_mask, dense, grid_origin, spacing)
            frames.append((rot, trans))
        return {
            "frames": frames,
            "dense": heads,
            "confidence_logit": self.confidence(h)[..., 0],
            "pointer_logits": logits,
            "grid_origin_A": grid_origin,
            "grid_spacing_A": spacing,
        }


def unknown_types_like(residue_type: torch.Tensor) -> torch.Tensor:
    """All residues unknown (the ``--no-sequence`` mode): poly-UNK of the same shape."""
    return torch.full_like(residue_type, UNK)


def save_builder(path, model: ModelBuilder, provenance: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    save_checkpoint(
        path, model_name=MODEL_NAME, config=model.cfg.to_dict(), state_dict=model.state_dict(),
        provenance=provenance, extra=extra,
    )  # fmt: skip


def load_builder(path, map_location: str | torch.device = "cpu") -> ModelBuilder:
    ckpt = load_checkpoint(path, map_location=map_location, model_name=MODEL_NAME)
    model = ModelBuilder(BuilderConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
