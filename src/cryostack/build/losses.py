"""Training losses of the model builder (E3-CryoFold's terms, applied at every decoder layer).

All distances in Å. ``pred`` and ``true`` backbones are ``(B, R, 3, 3)`` (N, Cα, C), ``mask``
``(B, R)`` marks real residues and ``position`` ``(B, R)`` their sequence positions (a jump of
more than one is a break). Clamped terms are divided by their clamp so each is about 0–1.

* **global**: every backbone atom's distance to its true place in the map frame (clamped 10 Å);
* **fragment**: the frame-aligned error of the backbone within windows of ``c = 7`` residues
  (residue *j*'s atoms seen from residue *i*'s frame, ``|i − j| ≤ 3``);
* **pair**: Cα–Cα distance-matrix error over all pairs (clamped 10 Å);
* **neighbour**: the same over each residue's ``k = 30`` nearest true neighbours, unclamped;
* **distance**: consecutive residues' C–N peptide bond (1.329 Å) and Cα–Cα distance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cryostack.geometry.frames import backbone_from_frames, frames_from_backbone, to_local

PEPTIDE_CN_A = 1.329


def _distances(x: torch.Tensor) -> torch.Tensor:
    """Pairwise distances ``(B, R, R)``, differentiable at zero (``cdist`` is not on every backend)."""
    return ((x[:, :, None] - x[:, None]).pow(2).sum(-1) + 1e-8).sqrt()


def _masked_mean(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (x * w).sum() / w.sum().clamp(min=1)


def structure_losses(
    rot: torch.Tensor, trans: torch.Tensor, true_bb: torch.Tensor, mask: torch.Tensor, position: torch.Tensor,
    *, window: int = 7, k: int = 30, clamp_A: float = 10.0,
) -> dict[str, torch.Tensor]:  # fmt: skip
    pred = backbone_from_frames(rot, trans)
    m = mask.float()
    out: dict[str, torch.Tensor] = {}
    err = (pred - true_bb).norm(dim=-1).clamp(max=clamp_A) / clamp_A  # (B, R, 3)
    out["global"] = _masked_mean(err.mean(-1), m)

    rot_t, trans_t = frames_from_backbone(true_bb[..., 0, :], true_bb[..., 1, :], true_bb[..., 2, :])
    half = window // 2
    near = (position[:, :, None] - position[:, None, :]).abs() <= half  # same fragment, within the window
    pair_w = (near & mask[:, :, None] & mask[:, None, :]).float()
    # (B, R_i, R_j, 3 atoms, 3): atoms of j in frame i
    lp = to_local(rot[:, :, None, None], trans[:, :, None, None], pred[:, None])
    lt = to_local(rot_t[:, :, None, None], trans_t[:, :, None, None], true_bb[:, None])
    fe = ((lp - lt).norm(dim=-1).clamp(max=clamp_A) / clamp_A).mean(-1)
    out["fragment"] = _masked_mean(fe, pair_w)

    ca_p, ca_t = pred[..., 1, :], true_bb[..., 1, :]
    dp, dt = _distances(ca_p), _distances(ca_t)
    both = (mask[:, :, None] & mask[:, None, :]).float()
    both = both * (1 - torch.eye(mask.shape[1], device=mask.device))
    de = (dp - dt).abs()
    out["pair"] = _masked_mean(de.clamp(max=clamp_A) / clamp_A, both)
    kk = max(1, min(k, mask.shape[1] - 1))
    nb = dt.masked_fill(both == 0, float("inf")).topk(kk, dim=-1, largest=False).indices
    nb_w = torch.gather(both, 2, nb)
    out["neighbour"] = _masked_mean(torch.gather(de, 2, nb) / clamp_A, nb_w)

    seq = ((position[:, 1:] - position[:, :-1]) == 1) & mask[:, 1:] & mask[:, :-1]
    cn = (pred[:, :-1, 2] - pred[:, 1:, 0]).norm(dim=-1)
    caca_p = (ca_p[:, 1:] - ca_p[:, :-1]).norm(dim=-1)
    caca_t = (ca_t[:, 1:] - ca_t[:, :-1]).norm(dim=-1)
    out["distance"] = _masked_mean((cn - PEPTIDE_CN_A) ** 2 + (caca_p - caca_t) ** 2, seq.float())
    return out


def dense_targets(
    true_bb: torch.Tensor, mask: torch.Tensor, residue_type: torch.Tensor, grid_shape, origin_A: torch.Tensor,
    spacing_A: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Per-voxel targets on the 3 Å grid: Cα presence ``(B, V)``, Cα offset ``(B, V, 3)`` Å from
    the voxel centre, residue type ``(B, V)`` (-1 where no Cα)."""
    b = true_bb.shape[0]
    z, y, x = grid_shape
    ca = true_bb[..., 1, :]
    idx = torch.round((ca - origin_A[:, None, :]) / spacing_A).long()  # x, y, z
    size = torch.tensor([x, y, z], device=ca.device)
    ok = mask & (idx >= 0).all(-1) & (idx < size).all(-1)
    flat = (idx[..., 2] * y + idx[..., 1]) * x + idx[..., 0]
    presence = torch.zeros(b, z * y * x, device=ca.device)
    offset = torch.zeros(b, z * y * x, 3, device=ca.device)
    rtype = torch.full((b, z * y * x), -1, dtype=torch.long, device=ca.device)
    bi = torch.arange(b, device=ca.device)[:, None].expand_as(flat)
    f, bb_ = flat[ok], bi[ok]
    presence[bb_, f] = 1.0
    offset[bb_, f] = ca[ok] - (origin_A[bi[ok]] + idx[ok].float() * spacing_A)
    rtype[bb_, f] = residue_type[ok]
    return presence, offset, rtype


def pointer_loss(logits: torch.Tensor, presence_index: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each residue's pointer logits ``(B, R, V)`` against the voxel holding its
    true Cα (``presence_index`` ``(B, R)``), over residues ``ok`` ``(B, R)`` whose Cα is in the grid."""
    if not ok.any():
        return logits.sum() * 0
    return F.cross_entropy(logits[ok], presence_index[ok])


def calpha_voxels(true_bb: torch.Tensor, mask: torch.Tensor, grid_shape, origin_A: torch.Tensor, spacing_A: float):
    """Flat index ``(B, R)`` of the 3 Å voxel nearest each true Cα, and whether it is in the grid."""
    z, y, x = grid_shape
    idx = torch.round((true_bb[..., 1, :] - origin_A[:, None, :]) / spacing_A).long()
    size = torch.tensor([x, y, z], device=idx.device)
    ok = mask & (idx >= 0).all(-1) & (idx < size).all(-1)
    idx = torch.minimum(idx.clamp(min=0), size - 1)
    return (idx[..., 2] * y + idx[..., 1]) * x + idx[..., 0], ok


def dense_losses(heads: torch.Tensor, presence, offset, rtype) -> dict[str, torch.Tensor]:
    b = heads.shape[0]
    logit = heads[:, 0].reshape(b, -1)
    pos = presence.sum().clamp(min=1)
    pos_weight = ((presence.numel() - pos) / pos).clamp(max=100.0)
    out = {"ca_presence": F.binary_cross_entropy_with_logits(logit, presence, pos_weight=pos_weight)}
    off_pred = heads[:, 1:4].reshape(b, 3, -1).transpose(1, 2)
    sel = presence > 0
    out["ca_offset"] = (off_pred[sel] - offset[sel]).abs().mean() if sel.any() else logit.sum() * 0
    types = heads[:, 4:].reshape(b, heads.shape[1] - 4, -1).transpose(1, 2)
    known = rtype >= 0
    out["residue_type"] = F.cross_entropy(types[known], rtype[known]) if known.any() else logit.sum() * 0
    return out
