"""Writing a simulated (map, model) dataset from a corpus split to disk, resumably.

:func:`write_dataset` is what ``cryostack data simulate`` runs: a manifest first (a rerun with
the same settings resumes, other settings are refused), then one ``.npz`` per item (an item
counts as done once its file exists), optionally with MRC/mmCIF views of each item.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from cryostack.data.datasets import ItemCache, SimulatedMapDataset
from cryostack.data.synthetic import SimulatedItem, SimulationConfig, item_structure
from cryostack.errors import InputError
from cryostack.io.atomic import atomic_output, check_writable
from cryostack.io.maps import write_map

if TYPE_CHECKING:
    from torch.utils.data import Dataset

MANIFEST_FORMAT = "cryostack-simulated-maps"


@dataclass
class DatasetWriteResult:
    """``n`` items in ``out``, ``already_there`` of them from an earlier (interrupted) run."""

    out: Path
    n: int
    already_there: int


def _identity(x):
    return x


class _ArraysView:
    """Numpy arrays of a dataset's items (so DataLoader workers hand back what is written)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self.dataset.arrays(i)


def write_dataset(
    corpus_dir: Path,
    out: Path,
    n: int,
    config: SimulationConfig,
    *,
    split: str = "train",
    seed: int = 0,
    allow_test: bool = False,
    write_mrc: bool = False,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> DatasetWriteResult:
    """Simulate ``n`` items of ``split`` into ``out`` (resuming an unfinished run with the same settings).

    ``progress(done, total)`` is called after each item. Item ``i`` is seeded by ``(seed, i)``.
    """
    from torch.utils.data import DataLoader, Subset

    from cryostack.data.corpus import Corpus  # looked up at call time (tests swap in a fake corpus)

    if n < 1:
        raise InputError(None, f"n must be at least 1, got {n}")
    if split not in ("train", "val", "test"):
        raise InputError(None, f"split must be train, val or test, got {split!r}")
    if split == "test" and not allow_test:
        raise InputError(None, "the test split is held out for evaluation: pass allow_test to simulate from it")
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a directory")
    check_writable(out / "manifest.json")

    source = Corpus(corpus_dir)
    dataset = SimulatedMapDataset(source, config, split=split, allow_test=allow_test, length=n, seed=seed)
    settings = {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "corpus": str(corpus_dir.resolve()),
        "split": split,
        "seed": seed,
        "config": config.to_dict(),
    }
    manifest = out / "manifest.json"
    if manifest.is_file():
        try:
            previous = json.loads(manifest.read_text())
        except ValueError as exc:
            raise InputError(manifest, f"unreadable dataset manifest ({exc})") from None
        previous.pop("n", None)
        if previous != json.loads(json.dumps(settings)):
            raise InputError(out, "holds a dataset made with other settings; choose another output folder")
    elif out.is_dir() and any(out.iterdir()):
        raise InputError(out, "is not empty and holds no dataset manifest; choose another output folder")
    with atomic_output(manifest) as tmp:
        tmp.write_text(json.dumps({**settings, "n": n}, indent=2))

    cache = ItemCache(out / "items")
    mrc_dir = out / "mrc"

    def write_views(i: int, arrays) -> None:
        item = SimulatedItem.from_arrays(arrays)
        stem = mrc_dir / f"item_{i:08d}"
        write_map(item.input_map, f"{stem}_input.mrc")
        write_map(item.target_map, f"{stem}_target.mrc")
        item_structure(dataset.structure(i), item).write(f"{stem}_model.cif")

    def views_missing(i: int) -> bool:
        return write_mrc and not all(
            (mrc_dir / f"item_{i:08d}_{k}").is_file() for k in ("input.mrc", "target.mrc", "model.cif")
        )

    todo = [i for i in range(n) if i not in cache]
    for i in range(n):  # finished items whose MRC views an interrupted run did not write
        if i in cache and views_missing(i):
            write_views(i, cache.load(i))
    done = n - len(todo)
    if progress:
        progress(done, n)
    if todo:
        loader = DataLoader(
            # a map-style dataset by duck typing (len and getitem), as DataLoader needs
            Subset(cast("Dataset[dict[str, Any]]", _ArraysView(dataset)), todo),
            batch_size=None,
            num_workers=max(0, workers if workers > 1 else 0),
            collate_fn=_identity,
        )
        for i, arrays in zip(todo, loader):
            if write_mrc:
                write_views(i, arrays)
            cache.save(i, arrays)  # last: an item counts as done once its .npz exists
            done += 1
            if progress:
                progress(done, n)
    return DatasetWriteResult(out, n, n - len(todo))
