"""Residue frames: a rotation and a translation per residue, and the backbone they carry.

A frame ``(R, t)`` maps residue-local coordinates to the model's (Å): ``x = R @ x_local + t``,
with ``t`` the Cα, the local x axis along Cα→C and N in the local xy plane. Backbone atoms are
placed from frames with ideal local coordinates (Engh & Huber bond lengths and angles), so a
model built from frames always has ideal N–Cα–C geometry. Pure tensor functions; any leading
batch dimensions ``...``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Ideal residue-local coordinates (Å) of N, Cα, C: |N–Cα| 1.458 Å, |Cα–C| 1.525 Å, N–Cα–C 111.0°.
IDEAL_BACKBONE_LOCAL_A = torch.tensor([[-0.5272, 1.3593, 0.0], [0.0, 0.0, 0.0], [1.525, 0.0, 0.0]])
#: C=O bond length (Å).
CO_BOND_A = 1.231


def frames_from_backbone(n: torch.Tensor, ca: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames ``(R (..., 3, 3), t (..., 3))`` from N, Cα, C positions ``(..., 3)`` Å (Gram–Schmidt)."""
    e1 = F.normalize(c - ca, dim=-1, eps=1e-6)
    u = n - ca
    e2 = F.normalize(u - (u * e1).sum(-1, keepdim=True) * e1, dim=-1, eps=1e-6)
    e3 = torch.cross(e1, e2, dim=-1)
    return torch.stack([e1, e2, e3], dim=-1), ca


def rotation_from_6d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` whose first column is along ``a`` and second in the ``a, b`` plane."""
    e1 = F.normalize(a, dim=-1, eps=1e-6)
    e2 = F.normalize(b - (b * e1).sum(-1, keepdim=True) * e1, dim=-1, eps=1e-6)
    return torch.stack([e1, e2, torch.cross(e1, e2, dim=-1)], dim=-1)


def quaternion_update(v: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` of the unit quaternion ``(1, v) / |(1, v)|``, ``v`` ``(..., 3)``.

    The form used for small learned frame updates: ``v = 0`` is the identity and the update is
    smooth and bounded (at most 180° as ``|v| → ∞``).
    """
    q = F.normalize(torch.cat([torch.ones_like(v[..., :1]), v], dim=-1), dim=-1)
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*v.shape[:-1], 3, 3)


def compose(
    rot: torch.Tensor, trans: torch.Tensor, d_rot: torch.Tensor, d_trans_local_A: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply an update given in each frame's own axes: ``R' = R dR``, ``t' = t + R dt``."""
    return rot @ d_rot, trans + (rot @ d_trans_local_A[..., None])[..., 0]


def to_local(rot: torch.Tensor, trans: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Points ``x`` ``(..., 3)`` in the frame's local axes: ``R^T (x - t)`` (shapes broadcast)."""
    return ((x - trans)[..., None, :] @ rot)[..., 0, :]


def backbone_from_frames(rot: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
    """Ideal N, Cα, C ``(..., 3, 3)`` Å placed by frames ``(..., 3, 3)``, ``(..., 3)``."""
    local = IDEAL_BACKBONE_LOCAL_A.to(rot)
    return torch.einsum("...ij,aj->...ai", rot, local) + trans[..., None, :]


def place_carbonyl_oxygen(ca: torch.Tensor, c: torch.Tensor, n_next: torch.Tensor) -> torch.Tensor:
    """O ``(..., 3)`` in the peptide plane, on the bisector opposite Cα and the next N (≈ 121° to each)."""
    u = F.normalize(ca - c, dim=-1, eps=1e-6)
    v = F.normalize(n_next - c, dim=-1, eps=1e-6)
    return c - CO_BOND_A * F.normalize(u + v, dim=-1, eps=1e-6)
