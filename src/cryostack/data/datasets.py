"""PyTorch datasets of simulated (map, model) items, generated on the fly and optionally cached.

:class:`SimulatedMapDataset` draws structures from any *structure source* (the training
:class:`~cryostack.data.corpus.Corpus`, or a :class:`StructureListSource` of files) and turns
each into an item with :func:`~cryostack.data.synthetic.simulate_item`. Item ``i`` is seeded by
``(seed, epoch, i)``, so any DataLoader worker produces the same item, and a ``cache_dir``
keeps generated items as ``.npz`` files (written atomically) for reuse.

The test split is for evaluation only: a dataset reads it only when asked for
``split="test"`` together with ``allow_test=True``, and never by default.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, cast, runtime_checkable

import numpy as np
import torch
from torch.utils.data import Dataset

from cryostack.data.synthetic import SimulatedItem, SimulationConfig, item_seed, simulate_item
from cryostack.io.atomic import atomic_output
from cryostack.io.models import Structure, read_structure

#: Keys of per-atom and per-residue arrays: these have a variable first dimension.
ATOM_KEYS = ("atom_coords", "atom_element", "atom_name37", "atom_residue", "atom_density_weight", "atom_b_A2")
RESIDUE_KEYS = ("residue_type", "residue_number", "residue_chain", "residue_source")
#: Values that pad atom / residue arrays (index arrays get -1, the rest 0); masks mark real rows.
_PAD = {"atom_name37": -1, "atom_residue": -1, "residue_type": -1, "residue_source": -1, "residue_chain": -1}


@runtime_checkable
class StructureSource(Protocol):
    """Anything that numbers structures: ``len(source)`` and ``source.structure(i)``."""

    def __len__(self) -> int: ...

    def structure(self, i: int) -> Structure: ...


class _SplitSource(StructureSource, Protocol):
    """A source with splits (e.g. :class:`~cryostack.data.corpus.Corpus`): test structures need ``allow_test``."""

    def split_indices(self, split: str, *, allow_test: bool = False) -> np.ndarray: ...

    def structure(self, i: int, *, allow_test: bool = False) -> Structure: ...


class StructureListSource:
    """A structure source over in-memory :class:`Structure` objects and/or model file paths.

    Files are read when first asked for (one-line :class:`~cryostack.errors.InputError` if bad).
    """

    def __init__(self, items: Sequence[Structure | str | Path]):
        self._items = list(items)

    def __len__(self) -> int:
        return len(self._items)

    def structure(self, i: int) -> Structure:
        item = self._items[int(i)]
        if not isinstance(item, Structure):
            item = read_structure(item)
            self._items[int(i)] = item
        return item

    def identity(self) -> str:
        return "|".join(str(x.source if isinstance(x, Structure) else x) for x in self._items)


def select_indices(source, split: str | None, *, allow_test: bool = False) -> np.ndarray:
    """Structure indices a dataset may use.

    A source with splits (``split_indices``) gives its ``split``, ``"train"`` when ``split`` is
    None; the test split needs ``allow_test=True`` and is never a default. A source without
    splits gives all its structures and accepts no ``split``.
    """
    has_splits = hasattr(source, "split_indices")
    if split is None:
        if not has_splits:
            return np.arange(len(source))
        split = "train"
    if not has_splits:
        raise ValueError(f"this structure source has no splits; cannot select split {split!r}")
    if split == "test":
        if not allow_test:
            raise ValueError("the test split is for evaluation only: pass allow_test=True to read it")
        return np.asarray(source.split_indices("test", allow_test=True), dtype=np.int64)
    return np.asarray(source.split_indices(split), dtype=np.int64)


class ItemCache:
    """A directory of items as ``item_<index>.npz``, written atomically (temporary file, then rename)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, index: int) -> Path:
        return self.root / f"item_{int(index):08d}.npz"

    def __contains__(self, index: int) -> bool:
        return self.path(index).is_file()

    def load(self, index: int) -> dict[str, np.ndarray]:
        with np.load(self.path(index)) as z:
            return {k: z[k] for k in z.files}

    def save(self, index: int, arrays: dict[str, np.ndarray]) -> Path:
        path = self.path(index)
        with atomic_output(path) as tmp:
            with open(tmp, "wb") as fh:  # a file object: np.savez would append .npz to a path
                np.savez(fh, **arrays)
        return path

    def indices(self) -> list[int]:
        return sorted(int(p.stem.split("_")[1]) for p in self.root.glob("item_*.npz"))


def to_tensors(arrays: dict[str, np.ndarray], *, max_atoms: int | None = None, max_residues: int | None = None):
    """Item arrays → dict of tensors, with ``atom_mask`` / ``residue_mask``; pads to fixed sizes if given.

    With ``max_atoms`` the atoms nearest the crop centre are kept when there are more (and
    residues left without atoms are dropped first when ``max_residues`` is exceeded).
    """
    a = dict(arrays)
    n_atoms = len(a["atom_coords"])
    n_res = len(a["residue_type"])
    if max_residues is not None and n_res > max_residues:
        centre = a["origin_A"] + a["voxel_size_A"] * (np.asarray(a["input_map"].shape[::-1]) - 1) / 2
        d = np.full(n_res, np.inf)
        np.minimum.at(d, a["atom_residue"], np.linalg.norm(a["atom_coords"] - centre, axis=1))
        keep_res = np.sort(np.argsort(d)[:max_residues])
        remap = np.full(n_res, -1)
        remap[keep_res] = np.arange(len(keep_res))
        for k in RESIDUE_KEYS:
            a[k] = a[k][keep_res]
        sel = remap[a["atom_residue"]] >= 0
        for k in ATOM_KEYS:
            a[k] = a[k][sel]
        a["atom_residue"] = remap[a["atom_residue"]]
        n_atoms, n_res = int(sel.sum()), len(keep_res)
    if max_atoms is not None and n_atoms > max_atoms:
        centre = a["origin_A"] + a["voxel_size_A"] * (np.asarray(a["input_map"].shape[::-1]) - 1) / 2
        keep = np.sort(np.argsort(np.linalg.norm(a["atom_coords"] - centre, axis=1), kind="stable")[:max_atoms])
        for k in ATOM_KEYS:
            a[k] = a[k][keep]
        n_atoms = max_atoms
    out = {}
    for k, v in a.items():
        t = torch.from_numpy(np.array(v))  # a copy; keeps 0-d scalars 0-d
        if k in ATOM_KEYS and max_atoms is not None:
            t = _pad(t, max_atoms, _PAD.get(k, 0))
        elif k in RESIDUE_KEYS and max_residues is not None:
            t = _pad(t, max_residues, _PAD.get(k, 0))
        out[k] = t
    out["atom_mask"] = torch.arange(max_atoms if max_atoms is not None else n_atoms) < n_atoms
    out["residue_mask"] = torch.arange(max_residues if max_residues is not None else n_res) < n_res
    return out


def _pad(t: torch.Tensor, n: int, value) -> torch.Tensor:
    if t.shape[0] >= n:
        return t[:n]
    pad = torch.full((n - t.shape[0], *t.shape[1:]), value, dtype=t.dtype)
    return torch.cat([t, pad])


def collate_items(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Batch items whose atom / residue counts differ: pad to the longest (masks say which rows are real)."""
    out = {}
    for k in batch[0]:
        ts = [b[k] for b in batch]
        if k in ATOM_KEYS or k in RESIDUE_KEYS or k in ("atom_mask", "residue_mask"):
            n = max(t.shape[0] for t in ts)
            fill = False if k.endswith("_mask") else _PAD.get(k, 0)
            ts = [_pad(t, n, fill) for t in ts]
        out[k] = torch.stack(ts)
    return out


class SimulatedMapDataset(Dataset):
    """Simulated (input map, target map, model) items from a structure source; a PyTorch ``Dataset``.

    Item ``i`` uses structure ``indices[i % len(indices)]`` and seed ``(seed, epoch, i)``;
    ``len`` is ``length`` (default: one item per structure). Each item is a dict of tensors:
    ``input_map`` and ``target_map`` ``(C, C, C)`` ``[z, y, x]``, ``origin_A`` and
    ``voxel_size_A`` ``(3,)`` ``(x, y, z)``, per-atom ``atom_*`` ``(M, ...)`` with ``atom_mask``,
    per-residue ``residue_*`` ``(R,)`` with ``residue_mask``, the rotation applied to the model,
    and ``param_*`` scalars recording the degradations. With ``config.max_atoms`` and
    ``config.max_residues`` every item has the same shapes and the default collate works;
    otherwise use :func:`collate_items`.
    """

    def __init__(
        self,
        source: StructureSource,
        config: SimulationConfig | None = None,
        *,
        split: str | None = None,
        allow_test: bool = False,
        indices: Sequence[int] | None = None,
        length: int | None = None,
        seed: int = 0,
        epoch: int = 0,
        cache_dir: str | Path | None = None,
    ):
        self.source = source
        self.config = config or SimulationConfig()
        self.split = split
        self.allow_test = bool(allow_test and split == "test")
        allowed = select_indices(source, split, allow_test=allow_test)
        if indices is not None:  # a subset of the allowed structures, never beyond them
            wanted = np.asarray(indices, dtype=np.int64)
            outside = np.setdiff1d(wanted, allowed)
            if outside.size:
                raise ValueError(f"indices {outside[:5].tolist()} are not in the selected split")
            allowed = wanted
        if allowed.size == 0:
            raise ValueError("no structures to simulate from (empty split or index list)")
        self.indices = allowed
        self.length = int(length) if length is not None else len(self.indices)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.cache = ItemCache(Path(cache_dir) / self.cache_key()) if cache_dir is not None else None

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Draw fresh items (new seeds) for another epoch; cached items are keyed by epoch too."""
        self.epoch = int(epoch)
        if self.cache is not None:
            self.cache = ItemCache(self.cache.root.parent / self.cache_key())

    def cache_key(self) -> str:
        """Short hash of everything an item depends on (config, seed, epoch, structure indices)."""
        if hasattr(self.source, "identity"):
            ident = self.source.identity()
        else:  # a corpus is known by its directory
            root = getattr(self.source, "root", None)
            ident = f"{type(self.source).__name__}:{len(self.source)}:{Path(root).resolve() if root else ''}"
        blob = json.dumps(
            {"config": self.config.to_dict(), "seed": self.seed, "epoch": self.epoch,
             "indices": hashlib.sha1(self.indices.tobytes()).hexdigest(), "source": ident},
            sort_keys=True,
        )  # fmt: skip
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def structure_index(self, i: int) -> int:
        return int(self.indices[int(i) % len(self.indices)])

    def structure(self, i: int) -> Structure:
        """The source structure behind item ``i``."""
        j = self.structure_index(i)
        if self.allow_test:  # only for split="test", which select_indices allows only for a source with splits
            return cast(_SplitSource, self.source).structure(j, allow_test=True)
        return self.source.structure(j)

    def generate(self, i: int) -> SimulatedItem:
        """Simulate item ``i`` (no cache)."""
        return simulate_item(self.structure(i).atoms(), self.config, item_seed(self.seed, i, self.epoch))

    def arrays(self, i: int) -> dict[str, np.ndarray]:
        """Item ``i`` as numpy arrays, from the cache when present (generated and cached otherwise)."""
        if not 0 <= int(i) < self.length:
            raise IndexError(i)
        if self.cache is not None and i in self.cache:
            return self.cache.load(i)
        arrays = self.generate(i).to_arrays()
        arrays["structure_index"] = np.asarray(self.structure_index(i), dtype=np.int64)
        arrays["item_index"] = np.asarray(int(i), dtype=np.int64)
        if self.cache is not None:
            self.cache.save(i, arrays)
        return arrays

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return to_tensors(self.arrays(i), max_atoms=self.config.max_atoms, max_residues=self.config.max_residues)


class CachedMapDataset(Dataset):
    """Items written to a directory (``cryostack data simulate --out DIR``), as a ``Dataset``."""

    def __init__(self, root: str | Path, *, max_atoms: int | None = None, max_residues: int | None = None):
        root = Path(root)
        self.cache = ItemCache(root / "items" if (root / "items").is_dir() else root)
        self.index = self.cache.indices()
        self.max_atoms, self.max_residues = max_atoms, max_residues

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return to_tensors(self.cache.load(self.index[i]), max_atoms=self.max_atoms, max_residues=self.max_residues)
