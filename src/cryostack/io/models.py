"""Atomic models: a thin :class:`Structure` wrapper over gemmi with a tensor view.

gemmi does the parsing and writing (PDB, mmCIF); cryostack adds input checks with one-line
errors, atomic writes, and :class:`AtomArrays`, a flat per-atom view that learned tools and the
density simulator consume and that maps back onto the same atoms without losing metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gemmi
import numpy as np

from cryostack.errors import InputError
from cryostack.io.atomic import atomic_output

if TYPE_CHECKING:
    # In Structure's body the name ``gemmi`` is its property, not the module.
    from gemmi import Chain as GemmiChain
    from gemmi import Model as GemmiModel

#: Residue classes for :attr:`AtomArrays.residue_class`.
PROTEIN, DNA, RNA, WATER, OTHER = 0, 1, 2, 3, 4
_CLASS_NAMES = {PROTEIN: "protein", DNA: "DNA", RNA: "RNA", WATER: "water", OTHER: "other"}


def residue_class(name: str) -> int:
    """Classify a residue name as protein, DNA, RNA, water or other (ligand, ion, unknown)."""
    info = gemmi.find_tabulated_residue(name)
    if info is None:
        return OTHER
    if info.is_water():
        return WATER
    if info.is_amino_acid():
        return PROTEIN
    if info.kind == gemmi.ResidueKind.DNA:
        return DNA
    if info.kind == gemmi.ResidueKind.RNA:
        return RNA
    return OTHER


@dataclass
class AtomArrays:
    """Flat per-atom arrays of one model (``N`` atoms, ``R`` residues, ``C`` chains).

    Coordinates are ``(x, y, z)`` in Å. ``residue_index`` and ``chain_index`` index the
    ``residue_*`` and ``chain_ids`` lists; atom order is gemmi's iteration order, so
    :meth:`Structure.with_coordinates` can write arrays back onto the same atoms.
    """

    coords: np.ndarray  # (N, 3) float32, Å
    b_factors: np.ndarray  # (N,) float32, Å²
    occupancies: np.ndarray  # (N,) float32
    atomic_numbers: np.ndarray  # (N,) int64
    elements: list[str]  # (N,)
    atom_names: list[str]  # (N,)
    residue_index: np.ndarray  # (N,) int64 into residues
    chain_index: np.ndarray  # (N,) int64 into chain_ids
    residue_names: list[str]  # (R,)
    residue_numbers: np.ndarray  # (R,) int64, author numbering
    insertion_codes: list[str]  # (R,)
    residue_class: np.ndarray  # (R,) int64, PROTEIN/DNA/RNA/WATER/OTHER
    residue_chain: np.ndarray  # (R,) int64 into chain_ids
    chain_ids: list[str]  # (C,) author chain IDs

    @property
    def n_atoms(self) -> int:
        return int(self.coords.shape[0])

    @property
    def is_hydrogen(self) -> np.ndarray:
        return self.atomic_numbers == 1

    @property
    def is_polymer(self) -> np.ndarray:
        """Per-atom mask: atom belongs to a protein, DNA or RNA residue."""
        return np.isin(self.residue_class[self.residue_index], (PROTEIN, DNA, RNA))

    def atom_lookup(self) -> dict[tuple[int, str], int]:
        """``(residue index, atom name) → atom index``; the first altloc of an atom wins."""
        lookup: dict[tuple[int, str], int] = {}
        for i, (r, name) in enumerate(zip(self.residue_index.tolist(), self.atom_names)):
            lookup.setdefault((r, name), i)
        return lookup

    def torch(self, device: str = "cpu"):
        """The numeric arrays as torch tensors on ``device`` (dict of name → tensor)."""
        import torch

        return {
            "coords": torch.as_tensor(self.coords, device=device),
            "b_factors": torch.as_tensor(self.b_factors, device=device),
            "occupancies": torch.as_tensor(self.occupancies, device=device),
            "atomic_numbers": torch.as_tensor(self.atomic_numbers, device=device),
            "residue_index": torch.as_tensor(self.residue_index, device=device),
            "chain_index": torch.as_tensor(self.chain_index, device=device),
        }


class Structure:
    """An atomic model (a gemmi ``Structure``) with cryostack's checks and conveniences.

    Only the first model of a multi-model file is used by :meth:`atoms`; the others are kept
    and written back untouched.
    """

    def __init__(self, st: gemmi.Structure, source: str | None = None):
        self.gemmi = st
        self.source = source

    @property
    def gemmi(self) -> gemmi.Structure:
        """The underlying gemmi structure. Change coordinates through :meth:`with_coordinates`;
        after editing this object in place call :meth:`changed` so :meth:`atoms` is rebuilt."""
        return self._gemmi

    @gemmi.setter
    def gemmi(self, st: gemmi.Structure) -> None:
        self._gemmi = st
        self._atoms: AtomArrays | None = None

    def changed(self) -> None:
        """Forget the cached :meth:`atoms` view after an in-place edit of :attr:`gemmi`."""
        self._atoms = None

    # -- views ---------------------------------------------------------------------------------
    @property
    def model(self) -> GemmiModel:
        return self.gemmi[0]

    @property
    def n_atoms(self) -> int:
        return self.model.count_atom_sites()

    def chains(self) -> list[GemmiChain]:
        return list(self.model)

    def atoms(self) -> AtomArrays:
        """The flat per-atom view of the first model.

        Walking gemmi's hierarchy is the slow part, so it is done once and cached; each call
        returns fresh copies of the arrays, so a caller that edits them changes nothing else.
        """
        if self._atoms is None:
            self._atoms = self._build_atoms()
        cached = self._atoms
        copies: dict[str, Any] = {
            k: (v.copy() if isinstance(v, np.ndarray | list) else v) for k, v in vars(cached).items()
        }
        return AtomArrays(**copies)

    def _build_atoms(self) -> AtomArrays:
        coords, bfac, occ, z, el, an = [], [], [], [], [], []
        res_idx, chain_idx = [], []
        rnames: list[str] = []
        rnums, icodes, rclass, rchain, chain_ids = [], [], [], [], []
        for ci, chain in enumerate(self.model):
            chain_ids.append(chain.name)
            for residue in chain:
                ri = len(rnames)
                rnames.append(residue.name)
                rnums.append(residue.seqid.num)
                icodes.append(residue.seqid.icode.strip())
                rclass.append(residue_class(residue.name))
                rchain.append(ci)
                for atom in residue:
                    p = atom.pos
                    coords.append((p.x, p.y, p.z))
                    bfac.append(atom.b_iso)
                    occ.append(atom.occ)
                    z.append(atom.element.atomic_number)
                    el.append(atom.element.name)
                    an.append(atom.name)
                    res_idx.append(ri)
                    chain_idx.append(ci)
        return AtomArrays(
            coords=np.asarray(coords, dtype=np.float32).reshape(-1, 3),
            b_factors=np.asarray(bfac, dtype=np.float32),
            occupancies=np.asarray(occ, dtype=np.float32),
            atomic_numbers=np.asarray(z, dtype=np.int64),
            elements=el,
            atom_names=an,
            residue_index=np.asarray(res_idx, dtype=np.int64),
            chain_index=np.asarray(chain_idx, dtype=np.int64),
            residue_names=rnames,
            residue_numbers=np.asarray(rnums, dtype=np.int64),
            insertion_codes=icodes,
            residue_class=np.asarray(rclass, dtype=np.int64),
            residue_chain=np.asarray(rchain, dtype=np.int64),
            chain_ids=chain_ids,
        )

    def with_coordinates(self, coords: np.ndarray, b_factors: np.ndarray | None = None) -> Structure:
        """A copy with new per-atom coordinates ``(N, 3)`` Å (and optionally B-factors, Å²).

        Arrays must be in :meth:`atoms` order; every other attribute (names, numbering, chain
        IDs, altlocs, other models, metadata) is kept.
        """
        coords = np.asarray(coords, dtype=np.float64)
        if coords.shape != (self.n_atoms, 3):
            raise ValueError(f"expected coordinates of shape ({self.n_atoms}, 3), got {coords.shape}")
        st = self.gemmi.clone()
        i = 0
        for chain in st[0]:
            for residue in chain:
                for atom in residue:
                    atom.pos = gemmi.Position(*coords[i])
                    if b_factors is not None:
                        atom.b_iso = float(b_factors[i])
                    i += 1
        return Structure(st, source=None)

    def sequences(self) -> dict[str, str]:
        """One-letter sequence of each polymer chain (author chain ID → sequence; X for unknown)."""
        out = {}
        for chain in self.model:
            polymer = chain.get_polymer()
            if len(polymer):
                out[chain.name] = gemmi.one_letter_code([r.name for r in polymer])
        return out

    def polymer_types(self) -> dict[str, str]:
        """Polymer type of each polymer chain (e.g. ``PeptideL``, ``Dna``, ``Rna``)."""
        return {
            chain.name: chain.get_polymer().check_polymer_type().name
            for chain in self.model
            if len(chain.get_polymer())
        }

    def center_of_mass(self) -> np.ndarray:
        """Centre of the atoms ``(x, y, z)`` in Å (unweighted)."""
        return self.atoms().coords.mean(axis=0)

    def summary(self) -> dict[str, Any]:
        """The facts ``cryostack info`` prints for a model."""
        arr = self.atoms()
        classes = np.bincount(arr.residue_class, minlength=5)
        chains = []
        seqs = self.sequences()
        types = self.polymer_types()
        for ci, cid in enumerate(arr.chain_ids):
            nres = int((arr.residue_chain == ci).sum())
            chains.append(
                {"chain": cid, "residues": nres, "polymer_type": types.get(cid, "none"), "sequence": seqs.get(cid, "")}
            )
        return {
            "models": len(self.gemmi),
            "chains": len(arr.chain_ids),
            "residues": len(arr.residue_names),
            "atoms": arr.n_atoms,
            "residues_by_class": {_CLASS_NAMES[k]: int(v) for k, v in enumerate(classes) if v},
            "chain_details": chains,
        }

    # -- writing -------------------------------------------------------------------------------
    def write(self, path: str | Path, *, protect: tuple[str | Path, ...] = ()) -> Path:
        """Write mmCIF (default) or PDB (``.pdb``/``.ent`` suffix), atomically; gzip on ``.gz``."""
        path = Path(path)
        protect = tuple(protect) + ((self.source,) if self.source else ())
        suffixes = [s.lower() for s in path.suffixes]
        is_pdb = any(s in (".pdb", ".ent") for s in suffixes)
        st = self.gemmi.clone()
        if is_pdb:
            text = st.make_pdb_string(gemmi.PdbWriteOptions())
        else:
            st.setup_entities()
            doc = st.make_mmcif_document()
            text = doc.as_string()
        with atomic_output(path, protect=protect) as tmp:
            if suffixes and suffixes[-1] == ".gz":
                import gzip

                with gzip.open(tmp, "wt") as fh:
                    fh.write(text)
            else:
                tmp.write_text(text)
        return path


def read_structure(path: str | Path) -> Structure:
    """Read a PDB or mmCIF model (optionally gzipped) with gemmi; one-line errors on bad input."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if not path.is_file():
        raise InputError(path, "not a regular file")
    try:
        st = gemmi.read_structure(str(path), merge_chain_parts=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(path, f"not a readable PDB/mmCIF model ({first})") from None
    st.remove_empty_chains()
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise InputError(path, "model contains no atoms")
    st.setup_entities()
    unnumbered = sum(1 for ch in st[0] for res in ch if res.seqid.num is None)
    if unnumbered:
        raise InputError(path, f"{unnumbered} residues have no residue number")
    coords = np.array([cra.atom.pos.tolist() for cra in st[0].all()])
    if not np.all(np.isfinite(coords)):
        raise InputError(path, "model has non-finite coordinates")
    return Structure(st, source=str(path))
