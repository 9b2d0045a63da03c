"""Graphs over point clouds (atoms, residues) in Å."""

from __future__ import annotations

import torch


def knn_edges(coords: torch.Tensor, k: int, group: torch.Tensor | None = None, chunk: int = 1024) -> torch.Tensor:
    """Directed edges ``(2, N*k)`` (neighbour → point) to each point's ``k`` nearest others.

    ``coords`` ``(N, 3)`` Å; points of different ``group`` ``(N,)`` (e.g. batch members) are never
    linked, so a point may get fewer than ``k`` edges. Rows are processed in chunks so memory
    stays ``O(chunk × N)``. No gradient flows through the choice of neighbours.
    """
    n = coords.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        return torch.zeros((2, 0), dtype=torch.long, device=coords.device)
    x = coords.detach()
    out = []
    for a in range(0, n, chunk):
        d = torch.cdist(x[a : a + chunk], x)
        rows = torch.arange(a, min(a + chunk, n), device=x.device)
        d[rows - a, rows] = float("inf")
        if group is not None:
            d = d.masked_fill(group[a : a + chunk, None] != group[None, :], float("inf"))
        nb = d.topk(k, dim=1, largest=False).indices  # (c, k)
        ok = torch.isfinite(d.gather(1, nb))
        dst = rows[:, None].expand_as(nb)
        out.append(torch.stack([nb[ok], dst[ok]]))
    return torch.cat(out, dim=1)
