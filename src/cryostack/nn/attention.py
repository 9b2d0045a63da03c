"""Pre-norm transformer blocks: self-attention over one token set, cross-attention to another.

Tokens are ``(B, L, D)``; ``key_padding_mask`` ``(B, L_kv)`` is True where a key is padding.
Built on :func:`torch.nn.functional.scaled_dot_product_attention`, which picks a fused kernel on
CUDA and a plain one on the CPU, so the same module trains on a laptop and on a GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadAttention(nn.Module):
    """Multi-head attention of ``query`` ``(B, Lq, D)`` over ``context`` ``(B, Lk, D_ctx)``."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(
        self, query: torch.Tensor, context: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, lq, d = query.shape
        h = self.heads
        q = self.q(query).view(b, lq, h, d // h).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        mask = None
        if key_padding_mask is not None:
            mask = ~key_padding_mask[:, None, None, :]  # True = attend
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, lq, d))


class FeedForward(nn.Module):
    """``Linear → GELU → Linear`` with a hidden width of ``mult × dim``."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, mult * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mult * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SelfAttentionBlock(nn.Module):
    """``x + Attn(LN x)``, then ``x + FF(LN x)``: one transformer encoder layer."""

    def __init__(self, dim: int, heads: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, dropout=dropout)
        self.ff = FeedForward(dim, mult, dropout)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, key_padding_mask)
        return x + self.ff(self.norm2(x))


class CrossAttentionBlock(nn.Module):
    """``x + Attn(LN x, LN context)``, then ``x + FF(LN x)``: tokens ``x`` read from ``context``
    (e.g. map patches reading sequence embeddings, or the reverse)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.norm_x, self.norm_ctx, self.norm_ff = (
            nn.LayerNorm(dim),
            nn.LayerNorm(context_dim or dim),
            nn.LayerNorm(dim),
        )
        self.attn = MultiHeadAttention(dim, heads, context_dim, dropout)
        self.ff = FeedForward(dim, mult, dropout)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None,
        context_padding_mask: torch.Tensor | None = None,
        gate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``context=None`` bypasses the attention (feed-forward and residuals only): a network
        trained with a context that is absent at inference (CryoSAMU's structure embeddings).
        ``gate`` ``(B,)`` in [0, 1] scales the attention per item (0 = that item bypasses it)."""
        if context is not None:
            y = self.attn(self.norm_x(x), self.norm_ctx(context), context_padding_mask)
            x = x + (y if gate is None else gate.to(y.dtype)[:, None, None] * y)
        return x + self.ff(self.norm_ff(x))
