"""The atom denoiser: EDM preconditioning around an E(3)-equivariant message-passing network.

``D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))`` (Karras et al.
2022, the form CryoNet.Refine uses for its one-step module). ``F`` is a small EGNN-style network
over a graph of the k nearest atoms in the noisy coordinates plus topology edges (within a
residue, main chain of sequence neighbours). Its output is the exact-identity term
``(sigma / sigma_data) c_in x`` plus a learned sum of per-edge unit vectors, so an untrained (or
zero-initialised) network returns its input unchanged, and the whole denoiser commutes with
rotations, reflections and translations without any augmentation.
"""

from __future__ import annotations

import dataclasses
import math
from typing import cast

import torch
from torch import nn

from cryostack.nn.edm import c_in, c_noise, c_out, c_skip
from cryostack.nn.graph import knn_edges
from cryostack.nn.layers import RadialBasis, mlp
from cryostack.refine.diffusion.config import DenoiserConfig
from cryostack.refine.diffusion.featurize import (
    MAX_ATOM_ORDINAL,
    N_ATOM_TOKENS,
    N_ELEMENT_TOKENS,
    N_RESIDUE_TOKENS,
    AtomFeatures,
)

MAX_SEQ_OFFSET = 4  # |residue offset| beyond this shares a bucket; another chain has its own


def build_graph(coords: torch.Tensor, feats: AtomFeatures, k: int, group: torch.Tensor | None = None):
    """Edges (spatial k-NN ∪ topology, deduplicated) and their fixed categorical attributes.

    Returns ``edges (2, E)`` (source, target), ``kind (E,)`` (0 spatial, 1 same residue,
    2 adjacent residue), ``offset (E,)`` bucketed sequence offset (``2*MAX+1`` = other chain).
    """
    n = coords.shape[0]
    cand = torch.cat([knn_edges(coords, k, group), feats.topology_edges.to(coords.device)], dim=1)
    key = torch.unique(cand[0] * n + cand[1])
    src, dst = key // n, key % n
    same_chain = feats.chain_index[src] == feats.chain_index[dst]
    dseq = feats.sequence_position[src] - feats.sequence_position[dst]
    same_res = feats.residue_index[src] == feats.residue_index[dst]
    kind = torch.where(same_res, 1, torch.where(same_chain & (dseq.abs() == 1), 2, 0))
    offset = torch.where(
        same_chain, dseq.clamp(-MAX_SEQ_OFFSET, MAX_SEQ_OFFSET) + MAX_SEQ_OFFSET, 2 * MAX_SEQ_OFFSET + 1
    )
    return torch.stack([src, dst]), kind, offset


class _Block(nn.Module):
    """One message-passing step: invariant messages, feature update, equivariant position update."""

    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        h, e = cfg.hidden, cfg.edge_hidden
        # first message layer split by input, so atom terms are computed per atom, not per edge
        self.msg_target = nn.Linear(h, e)
        self.msg_source = nn.Linear(h, e, bias=False)
        self.msg_radial = nn.Linear(cfg.rbf_count, e, bias=False)
        self.msg_out = nn.Linear(e, e)
        self.update = mlp(h + e, h, h)
        self.norm = nn.LayerNorm(h)
        self.vector = mlp(e, e, 1)
        last = cast(nn.Linear, self.vector[-1])  # mlp() ends in a Linear
        nn.init.zeros_(last.weight)  # start as the identity map
        nn.init.zeros_(last.bias)

    def forward(self, h, y, edges, edge_attr, rbf):
        src, dst = edges
        diff = y[dst] - y[src]  # (E, 3) Å, from neighbour to atom
        dist = diff.norm(dim=-1)
        pre = self.msg_target(h)[dst] + self.msg_source(h)[src] + self.msg_radial(rbf(dist)) + edge_attr
        m = self.msg_out(nn.functional.silu(pre))
        deg = (
            torch.zeros(h.shape[0], 1, device=h.device, dtype=h.dtype)
            .index_add_(0, dst, torch.ones_like(dist)[:, None])
            .clamp_min(1.0)
        )
        agg = torch.zeros(h.shape[0], m.shape[1], device=h.device, dtype=h.dtype).index_add_(0, dst, m) / deg
        h = self.norm(h + self.update(torch.cat([h, agg], dim=-1)))
        # unit-like direction (bounded near 0 Å) weighted by an invariant scalar: E(3)-equivariant
        w = self.vector(m)
        vec = torch.zeros_like(y).index_add_(0, dst, diff / (dist[:, None] + 1.0) * w) / deg
        return h, vec


@dataclasses.dataclass(frozen=True)
class _TrunkState:
    """What :meth:`AtomDenoiser.network_trunk` carries from block to block (atoms ``N``, edges ``E``):
    the scaled input ``x_in (N, 3)``, ``sigma (N, 1)`` Å, physical coordinates ``y (N, 3)`` Å,
    ``c_out (N, 1)``, atom features ``h (N, hidden)``, the summed position update ``total (N, 3)``,
    ``edges (2, E)``, ``edge_attr (E, edge_hidden)`` and the index of the next block to run."""

    x_in: torch.Tensor
    sigma: torch.Tensor
    y: torch.Tensor
    co: torch.Tensor
    h: torch.Tensor
    total: torch.Tensor
    edges: torch.Tensor
    edge_attr: torch.Tensor
    next_block: int


class AtomDenoiser(nn.Module):
    """EDM-preconditioned denoiser ``D(x; sigma)`` over the atoms of one (or a batch of) model(s)."""

    _freqs: torch.Tensor  # buffer, registered in __init__

    def __init__(self, cfg: DenoiserConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or DenoiserConfig()
        h, e = cfg.hidden, cfg.edge_hidden
        self.element = nn.Embedding(N_ELEMENT_TOKENS, h)
        self.atom_name = nn.Embedding(N_ATOM_TOKENS, h)
        self.residue = nn.Embedding(N_RESIDUE_TOKENS, h)
        self.ordinal = nn.Embedding(MAX_ATOM_ORDINAL + 1, h)
        self.main_chain = nn.Embedding(2, h)
        self.noise = mlp(16, h, h)
        self.edge_kind = nn.Embedding(3, e)
        self.edge_offset = nn.Embedding(2 * MAX_SEQ_OFFSET + 2, e)
        self.rbf = RadialBasis(cfg.rbf_count, cfg.rbf_max_A)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.layers))
        self.register_buffer("_freqs", torch.arange(1, 9, dtype=torch.float32) * math.pi)

    def graph(self, coords: torch.Tensor, feats: AtomFeatures, group: torch.Tensor | None = None):
        """The edge set for coordinates ``(N, 3)`` Å (reusable while the input does not change)."""
        return build_graph(coords, feats, self.cfg.k_neighbours, group)

    def network_trunk(
        self, x_in: torch.Tensor, noise: torch.Tensor, feats: AtomFeatures, graph, n_blocks: int
    ) -> _TrunkState:
        """The network ``F(c_in x, c_noise)`` up to and including block ``n_blocks``: the embeddings
        and the first message-passing blocks; :meth:`network_head` runs the rest.

        ``x_in`` is the centred, ``c_in``-scaled input; ``noise`` is ``c_noise`` as ``(N, 1)``
        (one noise level per atom, so chains with different sigma can share a batch). What the
        trunk produces depends only on the input, so a caller that adapts only the later blocks
        (test-time refinement) computes it once and runs :meth:`network_head` per step.
        """
        sd = self.cfg.sigma_data_A
        sigma = sd * torch.exp(4.0 * noise)
        y = x_in / c_in(sigma, sd)  # back to Å: the radial basis is defined on physical distances
        edges, kind, offset = graph
        emb = torch.cat([torch.sin(noise * self._freqs), torch.cos(noise * self._freqs)], dim=-1)
        h = (
            self.element(feats.element)
            + self.atom_name(feats.atom_name)
            + self.residue(feats.residue_type)
            + self.ordinal(feats.atom_ordinal)
            + self.main_chain(feats.main_chain.long())
            + self.noise(emb)
        )
        state = _TrunkState(
            x_in=x_in,
            sigma=sigma,
            y=y,
            co=c_out(sigma, sd),
            h=h,
            total=torch.zeros_like(y),
            edges=edges,
            edge_attr=self.edge_kind(kind) + self.edge_offset(offset),
            next_block=0,
        )
        return self.run_blocks(state, n_blocks)

    def run_blocks(self, state: _TrunkState, stop: int) -> _TrunkState:
        """Blocks ``state.next_block`` up to (not including) ``stop``."""
        h, total = state.h, state.total
        for block in list(self.blocks)[state.next_block : stop]:
            h, vec = block(h, state.y + state.co * total, state.edges, state.edge_attr, self.rbf)
            total = total + vec
        return dataclasses.replace(state, h=h, total=total, next_block=max(stop, state.next_block))

    def network_head(self, state: _TrunkState) -> torch.Tensor:
        """The blocks from ``state.next_block`` on and the network output ``(N, 3)``, in units of ``c_out``."""
        state = self.run_blocks(state, len(self.blocks))
        # (sigma / sigma_data) c_in x makes D exactly the identity when the learned part is zero
        return (state.sigma / self.cfg.sigma_data_A) * state.x_in + state.total

    def forward(
        self,
        x: torch.Tensor,
        sigma: float | torch.Tensor,
        feats: AtomFeatures,
        graph=None,
        group: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoised coordinates ``(N, 3)`` Å of noisy ``x`` ``(N, 3)`` Å at noise level ``sigma`` Å.

        ``sigma`` is a scalar or per-atom ``(N,)``; ``graph`` a cached :meth:`graph` of ``x``.
        """
        return self.forward_head(self.forward_trunk(x, sigma, feats, graph, group, n_blocks=0))

    def forward_trunk(
        self,
        x: torch.Tensor,
        sigma: float | torch.Tensor,
        feats: AtomFeatures,
        graph=None,
        group: torch.Tensor | None = None,
        n_blocks: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, _TrunkState]:
        """:meth:`forward` up to and including block ``n_blocks``; finish with :meth:`forward_head`."""
        sd = self.cfg.sigma_data_A
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1).expand(x.shape[0], 1)
        if graph is None:
            graph = self.graph(x, feats, group)
        centre = x.detach().mean(dim=0)  # translation equivariance (c_skip scales about the centre)
        xc = x - centre
        state = self.network_trunk(c_in(sigma, sd) * xc, c_noise(sigma, sd), feats, graph, n_blocks)
        return centre, xc, sigma, state

    def forward_head(self, partial: tuple[torch.Tensor, torch.Tensor, torch.Tensor, _TrunkState]) -> torch.Tensor:
        """The denoised coordinates ``(N, 3)`` Å from a :meth:`forward_trunk` result (the remaining blocks)."""
        centre, xc, sigma, state = partial
        sd = self.cfg.sigma_data_A
        f = self.network_head(state)
        return centre + c_skip(sigma, sd) * xc + c_out(sigma, sd) * f

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


MODEL_NAME = "refine.AtomDenoiser"
PACKAGED = "denoiser_v2"


def save_denoiser(path, model: AtomDenoiser, provenance: dict | None = None) -> None:
    """Write the weights and architecture config in the shared checkpoint format."""
    from cryostack.learn.checkpoint import save_checkpoint

    save_checkpoint(
        path, model_name=MODEL_NAME, config=model.cfg.to_dict(), state_dict=model.state_dict(), provenance=provenance
    )


def load_denoiser(path=None, device: str = "cpu") -> AtomDenoiser:
    """The denoiser stored at ``path`` (default: the packaged ``denoiser_v2``, hash-checked)."""
    from cryostack.errors import InputError
    from cryostack.learn.checkpoint import load_checkpoint
    from cryostack.learn.registry import packaged_checkpoint

    path = packaged_checkpoint(PACKAGED) if path is None else path
    ckpt = load_checkpoint(path, map_location=device, model_name=MODEL_NAME)
    try:
        model = AtomDenoiser(DenoiserConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["state_dict"])
    except Exception as exc:  # a checkpoint of another architecture or size
        raise InputError(path, f"not a cryostack denoiser checkpoint ({type(exc).__name__}: {exc})") from None
    return model.to(device).eval()
