"""Inputs of the model builder as tensors: a map at a fixed Å/voxel, sequence tokens, targets.

No network code. Maps are resampled to :data:`BUILD_VOXEL_A` (never resized to a fixed cube) and
scaled by :func:`normalize_map` (median → 0, 99.9th percentile → 1), the same way for a training
crop and for a user's map. Sequences become residue-type indices (20 amino acids, ``UNK`` = 20)
and position numbers in which a chain break is a jump of :data:`CHAIN_GAP` (so several chains
and the fragments of a training crop are told apart by position alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cryostack.chem.residues import AMINO_ACIDS, ONE_LETTER

#: Sampling of every map the builder sees (Å/voxel): Nyquist 3 Å, the finest resolution it is for.
BUILD_VOXEL_A = 1.5
UNK = len(AMINO_ACIDS)  # residue-type index of an unknown residue (X in a FASTA, poly-UNK)
N_RESIDUE_TYPES = UNK + 1
#: Position jump between chains (and between fragments of one chain that do not follow each other).
CHAIN_GAP = 1000
_TYPE = {ONE_LETTER[three]: i for i, three in enumerate(AMINO_ACIDS)}  # one-letter code → type index


def normalize_map(data: np.ndarray) -> np.ndarray:
    """Median → 0, 99.9th percentile → 1, clipped to [-1, 3] (float32); a flat map raises ValueError."""
    med, hi = np.percentile(data, [50.0, 99.9])
    if hi <= med:
        raise ValueError("map is flat above its median; nothing to build into")
    return np.clip((data - med) / (hi - med), -1.0, 3.0).astype(np.float32)


def is_standard(letter: str) -> bool:
    """Whether a one-letter code is one of the 20 amino acids (anything else is built as UNK)."""
    return letter.upper() in _TYPE


def sequence_types(sequence: str) -> np.ndarray:
    """One-letter protein sequence → residue-type indices (``X`` and other letters → :data:`UNK`)."""
    return np.array([_TYPE.get(ch, UNK) for ch in sequence.upper()], dtype=np.int64)


def residue_name(type_index: int) -> str:
    return AMINO_ACIDS[type_index] if 0 <= type_index < UNK else "UNK"


def chain_positions(lengths: list[int]) -> np.ndarray:
    """Position numbers of residues of chains with these lengths, chains :data:`CHAIN_GAP` apart."""
    return np.concatenate([np.arange(n) + k * CHAIN_GAP for k, n in enumerate(lengths)]).astype(np.int64)


@dataclass
class BuildExample:
    """One training example: a map crop and the residues whose Cα lie in it (in sequence order)."""

    density: torch.Tensor  # (C, C, C) normalised map, [z, y, x]
    origin_A: torch.Tensor  # (3,) x, y, z of voxel [0, 0, 0]
    residue_type: torch.Tensor  # (R,)
    position: torch.Tensor  # (R,) residue numbers with CHAIN_GAP jumps at breaks
    backbone_A: torch.Tensor  # (R, 3, 3) true N, Cα, C (Å, map frame)


def example_from_item(
    arrays: dict[str, np.ndarray], *, max_residues: int, margin_A: float = 1.0
) -> BuildExample | None:
    """A :class:`BuildExample` from a simulated item (``cryostack.data.synthetic``), or None if no
    residue with N, Cα and C has its Cα inside the crop. Crops with more than ``max_residues``
    residues keep those nearest the crop centre (as a sequence of fragments)."""
    vox = float(arrays["voxel_size_A"][0])
    shape = np.asarray(arrays["input_map"].shape)
    origin = np.asarray(arrays["origin_A"], np.float64)
    names, res = arrays["atom_name37"], arrays["atom_residue"]
    n_res = len(arrays["residue_type"])
    bb = np.full((n_res, 3, 3), np.nan)
    for slot in range(3):  # N, CA, C are ATOM37 0, 1, 2
        sel = names == slot
        bb[res[sel], slot] = arrays["atom_coords"][sel]
    ok = np.isfinite(bb).all(axis=(1, 2))
    lo, hi = origin + margin_A, origin + (shape[::-1] - 1) * vox - margin_A
    ca = bb[:, 1]
    ok &= np.all((ca >= lo) & (ca <= hi), axis=1)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return None
    if idx.size > max_residues:
        centre = (lo + hi) / 2
        idx = np.sort(idx[np.argsort(np.linalg.norm(ca[idx] - centre, axis=1))[:max_residues]])
    chain, src = arrays["residue_chain"][idx], arrays["residue_source"][idx]
    order = np.lexsort((src, chain))
    idx, chain, src = idx[order], chain[order], src[order]
    # positions: consecutive source residues stay consecutive; any other step is a break
    pos = np.zeros(idx.size, np.int64)
    for k in range(1, idx.size):
        step = src[k] - src[k - 1]
        pos[k] = pos[k - 1] + (1 if (chain[k] == chain[k - 1] and step == 1) else CHAIN_GAP)
    rtype = np.asarray(arrays["residue_type"][idx], np.int64)
    rtype = np.where((rtype >= 0) & (rtype < UNK), rtype, UNK)
    return BuildExample(
        density=torch.from_numpy(normalize_map(np.asarray(arrays["input_map"], np.float32))),
        origin_A=torch.tensor(origin, dtype=torch.float32),
        residue_type=torch.from_numpy(rtype),
        position=torch.from_numpy(pos),
        backbone_A=torch.tensor(bb[idx], dtype=torch.float32),
    )


def collate(examples: list[BuildExample]) -> dict[str, torch.Tensor]:
    """Batch examples with equal map crops; residues padded with ``residue_mask`` False."""
    r = max(len(e.residue_type) for e in examples)
    b = len(examples)
    out = {
        "density": torch.stack([e.density for e in examples])[:, None],
        "origin_A": torch.stack([e.origin_A for e in examples]),
        "residue_type": torch.full((b, r), UNK, dtype=torch.long),
        "position": torch.zeros((b, r), dtype=torch.long),
        "backbone_A": torch.zeros((b, r, 3, 3)),
        "residue_mask": torch.zeros((b, r), dtype=torch.bool),
    }
    for i, e in enumerate(examples):
        n = len(e.residue_type)
        out["residue_type"][i, :n] = e.residue_type
        out["position"][i, :n] = e.position
        out["backbone_A"][i, :n] = e.backbone_A
        out["residue_mask"][i, :n] = True
    return out
