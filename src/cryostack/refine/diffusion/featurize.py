"""Atom features of a model for the denoiser: chemistry and topology only, nothing map-specific.

Every atom gets integer tokens (element, atom name, residue type, ordinal within its residue,
main-chain flag) and its residue/chain position, from which :mod:`.model` builds sequence-aware
edges. The same features come from a :class:`~cryostack.io.models.Structure` (any model) or from
bare backbone arrays (corpus chains without side chains).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cryostack.chem.residues import (
    AMINO_ACIDS,
    ATOM_ALIASES,
    ATOM_NAMES,
    ELEMENTS,
    LINK_ATOMS,
    MAIN_CHAIN,
    NUCLEOTIDES,
    RESIDUE_ALIASES,
    WATER,
)
from cryostack.io.models import AtomArrays, Structure

# Tokens are index + 1 in the shared vocabulary (0 = anything else); residue tokens: 1-20 amino
# acids, 21-28 nucleotides, 29 water.
RESIDUE_TYPES = AMINO_ACIDS + NUCLEOTIDES + (WATER,)
MAX_ATOM_ORDINAL = 23  # ordinals at or beyond this share one token

_ELEMENT_TOKEN = {e: i + 1 for i, e in enumerate(ELEMENTS)}
_RESIDUE_TOKEN = {r: i + 1 for i, r in enumerate(RESIDUE_TYPES)}
_ATOM_TOKEN = {a: i + 1 for i, a in enumerate(ATOM_NAMES)}
N_ELEMENT_TOKENS = len(ELEMENTS) + 1
N_RESIDUE_TOKENS = len(RESIDUE_TYPES) + 1
N_ATOM_TOKENS = len(ATOM_NAMES) + 1


@dataclass
class AtomFeatures:
    """Per-atom tokens and positions of ``N`` atoms (tensors on one device).

    ``residue_index`` numbers residues of the whole input 0..R-1 (unique across chains);
    ``sequence_position`` is the residue's position along its chain (gaps in author numbering
    count), used for relative sequence offsets; ``chain_index`` separates chains.
    ``topology_edges`` ``(2, E)`` holds directed pairs inside a residue and between main-chain
    atoms of sequence-adjacent residues.
    """

    element: torch.Tensor  # (N,) int64
    atom_name: torch.Tensor  # (N,) int64
    residue_type: torch.Tensor  # (N,) int64
    atom_ordinal: torch.Tensor  # (N,) int64, order of the atom within its residue
    main_chain: torch.Tensor  # (N,) bool
    residue_index: torch.Tensor  # (N,) int64
    sequence_position: torch.Tensor  # (N,) int64
    chain_index: torch.Tensor  # (N,) int64
    topology_edges: torch.Tensor  # (2, E) int64

    @property
    def n_atoms(self) -> int:
        return int(self.element.shape[0])

    def to(self, device) -> AtomFeatures:
        return AtomFeatures(**{k: v.to(device) for k, v in vars(self).items()})

    def subset(self, keep: np.ndarray) -> AtomFeatures:
        """Features of the atoms ``keep`` (sorted indices), topology edges renumbered."""
        keep_t = torch.as_tensor(np.asarray(keep), dtype=torch.long, device=self.element.device)
        remap = torch.full((self.n_atoms,), -1, dtype=torch.long, device=keep_t.device)
        remap[keep_t] = torch.arange(keep_t.numel(), device=keep_t.device)
        e = remap[self.topology_edges]
        e = e[:, (e >= 0).all(dim=0)]
        fields = {k: v[keep_t] for k, v in vars(self).items() if k != "topology_edges"}
        return AtomFeatures(**fields, topology_edges=e)

    @staticmethod
    def concatenate(parts: list[AtomFeatures]) -> AtomFeatures:
        """One disjoint batch of several inputs (indices offset so residues and chains stay apart)."""
        out: dict[str, list[torch.Tensor]] = {k: [] for k in vars(parts[0])}
        n_atoms = n_res = n_chain = 0
        for p in parts:
            for k, v in vars(p).items():
                if k == "topology_edges":
                    v = v + n_atoms
                elif k == "residue_index":
                    v = v + n_res
                elif k == "chain_index":
                    v = v + n_chain
                out[k].append(v)
            n_atoms += p.n_atoms
            n_res += int(p.residue_index.max()) + 1 if p.n_atoms else 0
            n_chain += int(p.chain_index.max()) + 1 if p.n_atoms else 0
        return AtomFeatures(**{k: torch.cat(v, dim=1 if k == "topology_edges" else 0) for k, v in out.items()})


def _token(table: dict[str, int], name: str, aliases: dict[str, str]) -> int:
    name = name.strip().upper()
    return table.get(aliases.get(name, name), 0)


def features_from_lists(
    elements: list[str],
    atom_names: list[str],
    residue_of_atom: np.ndarray,
    residue_names: list[str],
    residue_chain: np.ndarray,
    residue_numbers: np.ndarray,
) -> AtomFeatures:
    """Features from per-atom element/name lists and per-residue names, chains and author numbers.

    ``residue_of_atom`` ``(N,)`` indexes the ``R`` residues; atoms of a residue must be contiguous
    (as gemmi iterates them). Sequence adjacency is the chain order with author numbers one apart.
    """
    residue_of_atom = np.asarray(residue_of_atom, dtype=np.int64)
    residue_chain = np.asarray(residue_chain, dtype=np.int64)
    residue_numbers = np.asarray(residue_numbers, dtype=np.int64)
    n, r = len(atom_names), len(residue_names)
    element = np.array([_token(_ELEMENT_TOKEN, e, {}) for e in elements], dtype=np.int64)
    names = [ATOM_ALIASES.get(a.strip().upper(), a.strip().upper()) for a in atom_names]
    atom_name = np.array([_ATOM_TOKEN.get(a, 0) for a in names], dtype=np.int64)
    res_tok = np.array([_token(_RESIDUE_TOKEN, x, RESIDUE_ALIASES) for x in residue_names], dtype=np.int64)
    main = np.array([a in MAIN_CHAIN for a in names], dtype=bool) & (res_tok[residue_of_atom] > 0)
    main &= res_tok[residue_of_atom] < _RESIDUE_TOKEN["HOH"]

    # ordinal of each atom within its residue (atoms of a residue are contiguous)
    starts = np.r_[0, np.flatnonzero(np.diff(residue_of_atom)) + 1] if n else np.zeros(0, np.int64)
    first = np.zeros(n, dtype=np.int64)
    if n:
        first[starts] = starts
        first = np.maximum.accumulate(first)
    ordinal = np.minimum(np.arange(n) - first, MAX_ATOM_ORDINAL)

    # position along the chain: consecutive residues advance by their author-number step (≥ 1)
    seqpos = np.zeros(r, dtype=np.int64)
    for i in range(1, r):
        same = residue_chain[i] == residue_chain[i - 1]
        step = max(1, int(residue_numbers[i] - residue_numbers[i - 1])) if same else 0
        seqpos[i] = seqpos[i - 1] + step if same else 0

    # topology edges: all pairs within a residue, main-chain link atoms of adjacent residues
    src, dst = [], []
    bounds = np.r_[starts, n]
    for a, b in zip(bounds[:-1], bounds[1:]):
        idx = np.arange(a, b)
        ii, jj = np.meshgrid(idx, idx, indexing="ij")
        m = ii != jj
        src.append(ii[m])
        dst.append(jj[m])
    is_link = np.array([a in LINK_ATOMS for a in names], dtype=bool) & main
    polymer = (res_tok > 0) & (res_tok < _RESIDUE_TOKEN["HOH"])
    for k in range(len(starts) - 1):
        ra, rb = residue_of_atom[starts[k]], residue_of_atom[starts[k + 1]]
        if not (polymer[ra] and polymer[rb] and residue_chain[ra] == residue_chain[rb]):
            continue
        if seqpos[rb] - seqpos[ra] != 1:
            continue
        ia = np.arange(bounds[k], bounds[k + 1])
        ib = np.arange(bounds[k + 1], bounds[k + 2])
        ia, ib = ia[is_link[ia]], ib[is_link[ib]]
        ii, jj = np.meshgrid(ia, ib, indexing="ij")
        src += [ii.ravel(), jj.ravel()]
        dst += [jj.ravel(), ii.ravel()]
    edges = np.stack([np.concatenate(src), np.concatenate(dst)]) if src else np.zeros((2, 0), np.int64)

    t = lambda x: torch.as_tensor(np.asarray(x))  # noqa: E731
    return AtomFeatures(
        element=t(element),
        atom_name=t(atom_name),
        residue_type=t(res_tok[residue_of_atom]),
        atom_ordinal=t(ordinal),
        main_chain=t(main),
        residue_index=t(residue_of_atom),
        sequence_position=t(seqpos[residue_of_atom]),
        chain_index=t(residue_chain[residue_of_atom]),
        topology_edges=t(edges.astype(np.int64)),
    )


def featurize(atoms: AtomArrays | Structure) -> AtomFeatures:
    """Features of every atom of a model, in :meth:`Structure.atoms` order."""
    if isinstance(atoms, Structure):
        atoms = atoms.atoms()
    return features_from_lists(
        atoms.elements,
        atoms.atom_names,
        atoms.residue_index,
        atoms.residue_names,
        atoms.residue_chain,
        atoms.residue_numbers,
    )


_BACKBONE_NAMES = ("N", "CA", "C", "O", "CB")
_BACKBONE_ELEMENTS = ("N", "C", "C", "O", "C")


def featurize_backbone(sequence: str, backbone: np.ndarray) -> tuple[AtomFeatures, np.ndarray]:
    """Features and coordinates ``(M, 3)`` Å of a protein chain given as N, CA, C, O, CB.

    ``backbone`` is ``(L, 5, 3)`` Å for the ``L`` residues of the one-letter ``sequence``;
    glycine's CB is dropped and non-finite atoms are skipped.
    """
    import gemmi

    backbone = np.asarray(backbone, dtype=np.float32)
    if backbone.shape != (len(sequence), 5, 3):
        raise ValueError(f"backbone must be ({len(sequence)}, 5, 3), got {backbone.shape}")
    resnames = [gemmi.expand_one_letter(c, gemmi.ResidueKind.AA) or "UNK" for c in sequence]
    elements, names, res_of_atom, coords = [], [], [], []
    for i, rn in enumerate(resnames):
        for j in range(5):
            if (j == 4 and rn == "GLY") or not np.all(np.isfinite(backbone[i, j])):
                continue
            elements.append(_BACKBONE_ELEMENTS[j])
            names.append(_BACKBONE_NAMES[j])
            res_of_atom.append(i)
            coords.append(backbone[i, j])
    feats = features_from_lists(
        elements, names, np.asarray(res_of_atom), resnames, np.zeros(len(resnames), np.int64), np.arange(len(resnames))
    )
    return feats, np.asarray(coords, dtype=np.float32).reshape(-1, 3)
