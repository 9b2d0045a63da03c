"""``cryostack data simulate``: write a simulated (map, model) dataset from a corpus split to disk."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def _identity(x):
    return x


def simulate(
    corpus: Path = typer.Option(..., "--corpus", help="Corpus directory (from `cryostack data corpus`)."),
    out: Path = typer.Option(..., "--out", help="Dataset directory (created; an unfinished one is resumed)."),
    n: int = typer.Option(..., "--n", help="Number of items to write."),
    split: str = typer.Option("train", "--split", help="train or val; test only with --allow-test (evaluation)."),
    resolution: tuple[float, float] = typer.Option((3.0, 6.0), "--resolution", help="Resolution range in Å (two values, lo hi)."),
    voxel_size: float = typer.Option(1.0, "--voxel-size", help="Voxel size in Å."),
    crop: int = typer.Option(64, "--crop", help="Edge of the cubic crop in voxels."),
    noise_scale: tuple[float, float] = typer.Option(
        (1.0, 1.0), "--noise-scale", help="Noise amplitude range relative to FSC 0.143 at the resolution (>1: noisier)."
    ),
    seed: int = typer.Option(0, "--seed", help="Dataset seed (item i is seeded by (seed, i))."),
    write_mrc: bool = typer.Option(False, "--write-mrc", help="Also write each item as input/target MRC maps and an mmCIF model."),
    allow_test: bool = typer.Option(False, "--allow-test", help="Allow --split test (held-out evaluation data only)."),
    workers: int = typer.Option(1, "--workers", help="Parallel worker processes."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """Simulate experimental-like maps with sharp targets and model crops from corpus chains."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from torch.utils.data import DataLoader, Subset

    from cryostack.data.corpus import Corpus
    from cryostack.data.datasets import ItemCache, SimulatedMapDataset
    from cryostack.data.synthetic import SimulatedItem, SimulationConfig
    from cryostack.errors import InputError
    from cryostack.io.atomic import atomic_output

    lo, hi = resolution
    if n < 1:
        raise InputError(None, f"--n must be at least 1, got {n}")
    if not (0 < voxel_size <= 10):
        raise InputError(None, f"--voxel-size must be in (0, 10] Å, got {voxel_size}")
    if not (0 < lo <= hi <= 50):
        raise InputError(None, f"--resolution must be two values 0 < lo <= hi <= 50 Å, got {lo} {hi}")
    if lo < 2 * voxel_size:
        raise InputError(None, f"--resolution {lo} Å is finer than Nyquist of {voxel_size} Å voxels (2 × voxel size)")
    if not (0 <= noise_scale[0] <= noise_scale[1] <= 10):
        raise InputError(None, f"--noise-scale must be two values 0 <= lo <= hi <= 10, got {noise_scale[0]} {noise_scale[1]}")
    if crop < 8:
        raise InputError(None, f"--crop must be at least 8 voxels, got {crop}")
    if split not in ("train", "val", "test"):
        raise InputError(None, f"--split must be train, val or test, got {split!r}")
    if split == "test" and not allow_test:
        raise InputError(None, "the test split is held out for evaluation: add --allow-test to simulate from it")
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a directory")

    source = Corpus(corpus)
    config = SimulationConfig(resolution_A=(float(lo), float(hi)), voxel_size_A=float(voxel_size), crop_voxels=int(crop),
                              noise_scale=(float(noise_scale[0]), float(noise_scale[1])))
    dataset = SimulatedMapDataset(source, config, split=split, allow_test=allow_test, length=n, seed=seed)
    settings = {
        "format": "cryostack-simulated-maps",
        "version": 1,
        "corpus": str(corpus.resolve()),
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
            raise InputError(out, "holds a dataset made with other settings; choose another --out")
    elif out.is_dir() and any(out.iterdir()):
        raise InputError(out, "is not empty and holds no dataset manifest; choose another --out")
    with atomic_output(manifest) as tmp:
        tmp.write_text(json.dumps({**settings, "n": n}, indent=2))

    cache = ItemCache(out / "items")
    mrc_dir = out / "mrc"

    def write_views(i: int, arrays) -> None:
        from cryostack.io.maps import write_map

        item = SimulatedItem.from_arrays(arrays)
        stem = mrc_dir / f"item_{i:08d}"
        write_map(item.input_map, f"{stem}_input.mrc")
        write_map(item.target_map, f"{stem}_target.mrc")
        from cryostack.data.synthetic import item_structure

        item_structure(dataset.structure(i), item).write(f"{stem}_model.cif")

    def views_missing(i: int) -> bool:
        return write_mrc and not all((mrc_dir / f"item_{i:08d}_{k}").is_file() for k in ("input.mrc", "target.mrc", "model.cif"))

    todo = [i for i in range(n) if i not in cache]
    for i in range(n):  # finished items whose MRC views an interrupted run did not write
        if i in cache and views_missing(i):
            write_views(i, cache.load(i))

    columns = (TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=no_progress) as progress:
        task = progress.add_task("simulate", total=n, completed=n - len(todo))
        if todo:
            worker_set = _ArraysView(dataset)
            loader = DataLoader(Subset(worker_set, todo), batch_size=None, num_workers=max(0, workers if workers > 1 else 0),
                                collate_fn=_identity)
            for i, arrays in zip(todo, loader):
                if write_mrc:
                    write_views(i, arrays)
                cache.save(i, arrays)  # last: an item counts as done once its .npz exists
                progress.advance(task)
    typer.echo(f"wrote {out}: {n} items ({n - len(todo)} already there), {crop}³ voxels at {voxel_size} Å, "
               f"resolution {lo}–{hi} Å, split {split}")


class _ArraysView:
    """Numpy arrays of a dataset's items (so DataLoader workers hand back what is written)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self.dataset.arrays(i)
