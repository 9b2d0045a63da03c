"""SimulatedMapDataset: DataLoader workers, batching, caching, split discipline, and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cryostack.data.datasets import (
    CachedMapDataset,
    SimulatedMapDataset,
    StructureListSource,
    collate_items,
    select_indices,
)
from cryostack.data.synthetic import SimulationConfig

ROOT = Path(__file__).resolve().parents[1]
FILES = [
    ROOT / "tests" / "data" / "reference" / "1OZ7_promod.pdb.gz",
    ROOT / "tests" / "data" / "reference" / "1N7S_promod.pdb.gz",
    ROOT / "src" / "cryostack" / "examples" / "spike_ntd" / "6vyb_Ndom.pdb",
    ROOT / "tests" / "data" / "validate_rama" / "promod3_backbones.pdb",
]
CORPUS_SAMPLE = ROOT / "tests" / "data" / "corpus_sample"
SMALL = dict(crop_voxels=24, voxel_size_A=2.0, resolution_A=(4.0, 8.0))


class SplitSource(StructureListSource):
    """A source with train/val/test splits that records how it is read (like the corpus)."""

    def __init__(self, items, splits):
        super().__init__(items)
        self.splits = np.asarray(splits)
        self.calls = []

    def split_indices(self, split, *, allow_test=False):
        self.calls.append(("split_indices", split, allow_test))
        if split == "test" and not allow_test:
            raise PermissionError("test split")
        return np.flatnonzero(self.splits == split)

    def structure(self, i, *, allow_test=False):
        self.calls.append(("structure", int(i), allow_test))
        if self.splits[i] == "test" and not allow_test:
            raise PermissionError("test chain")
        return super().structure(i)


def test_dataloader_with_two_workers_gives_the_items_of_the_main_process():
    ds = SimulatedMapDataset(StructureListSource(FILES), SimulationConfig(**SMALL), length=6, seed=11)
    loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate_items)
    batches = list(loader)
    assert len(batches) == 2
    b = batches[1]
    assert b["input_map"].shape == (3, 24, 24, 24) and b["input_map"].dtype == torch.float32
    assert b["atom_coords"].shape[0] == 3 and b["atom_coords"].shape[2] == 3
    assert b["atom_mask"].shape == b["atom_coords"].shape[:2]
    for j in range(3):  # workers reproduce the items exactly; padding rows are masked
        ref = ds[3 + j]
        n = int(ref["atom_mask"].sum())
        assert torch.equal(b["input_map"][j], ref["input_map"])
        assert torch.equal(b["atom_coords"][j, :n], ref["atom_coords"])
        assert int(b["atom_mask"][j].sum()) == n and not b["atom_mask"][j, n:].any()
        assert torch.all(b["atom_name37"][j, n:] == -1)
        assert int(b["residue_mask"][j].sum()) == len(ref["residue_type"])
    assert b["param_resolution_A"].shape == (3,)
    assert torch.all((b["param_resolution_A"] >= 4.0) & (b["param_resolution_A"] <= 8.0))
    assert b["structure_index"].tolist() == [3, 0, 1]


def test_fixed_atom_and_residue_counts_batch_with_the_default_collate():
    cfg = SimulationConfig(**SMALL, max_atoms=600, max_residues=80)
    ds = SimulatedMapDataset(StructureListSource(FILES[:2]), cfg, length=4)
    b = next(iter(DataLoader(ds, batch_size=4, num_workers=2)))
    assert b["atom_coords"].shape == (4, 600, 3) and b["residue_type"].shape == (4, 80)
    assert b["atom_mask"].dtype == torch.bool and b["atom_mask"].sum(1).max() <= 600
    # atoms kept after truncation still point at kept residues
    for j in range(4):
        n = int(b["atom_mask"][j].sum())
        r = b["atom_residue"][j, :n]
        assert r.min() >= 0 and r.max() < int(b["residue_mask"][j].sum())


def test_cache_writes_each_item_once_and_reuses_it(tmp_path):
    src = StructureListSource(FILES[:2])
    ds = SimulatedMapDataset(src, SimulationConfig(**SMALL), length=2, seed=3, cache_dir=tmp_path)
    first = ds[1]
    files = list(tmp_path.rglob("*.npz"))
    assert len(files) == 1 and files[0].name == "item_00000001.npz"
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]  # atomic: no leftovers
    mtime = files[0].stat().st_mtime_ns
    again = SimulatedMapDataset(src, SimulationConfig(**SMALL), length=2, seed=3, cache_dir=tmp_path)[1]
    assert files[0].stat().st_mtime_ns == mtime
    for k in first:
        assert torch.equal(first[k], again[k]), k
    # other settings never read these files
    other = SimulatedMapDataset(src, SimulationConfig(**SMALL), length=2, seed=4, cache_dir=tmp_path)
    assert other.cache.root != ds.cache.root
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["input_map"], first["input_map"])


def test_training_never_reads_the_test_split():
    splits = ["train", "test", "val", "train"]
    src = SplitSource(FILES, splits)
    ds = SimulatedMapDataset(src, SimulationConfig(**SMALL))  # no split given: train
    assert ds.indices.tolist() == [0, 3]
    for i in range(len(ds)):
        ds.arrays(i)
    assert all(not allow for (_, _, allow) in src.calls)
    assert all(i != 1 for (kind, i, _) in src.calls if kind == "structure")
    with pytest.raises(ValueError, match="evaluation"):
        SimulatedMapDataset(src, SimulationConfig(**SMALL), split="test")
    with pytest.raises(ValueError, match="not in the selected split"):
        SimulatedMapDataset(src, SimulationConfig(**SMALL), split="train", indices=[0, 1])
    assert select_indices(src, "val").tolist() == [2]
    # evaluation asks explicitly
    ev = SimulatedMapDataset(src, SimulationConfig(**SMALL), split="test", allow_test=True)
    ev.arrays(0)
    assert ("structure", 1, True) in src.calls
    with pytest.raises(ValueError, match="no splits"):
        SimulatedMapDataset(StructureListSource(FILES), SimulationConfig(**SMALL), split="train")


@pytest.fixture
def fake_corpus(monkeypatch):
    """``cryostack.data.corpus.Corpus`` replaced by a file-backed source with splits."""
    import cryostack.data.corpus as corpus_module

    made = []

    def factory(root):
        if not Path(root).is_dir():
            from cryostack.errors import InputError

            raise InputError(root, "not a cryostack corpus (no corpus.json)")
        src = SplitSource(FILES, ["train", "test", "val", "train"])
        made.append(src)
        return src

    monkeypatch.setattr(corpus_module, "Corpus", factory)
    return made


def test_cli_writes_resumes_and_writes_mrc(tmp_path, fake_corpus, capsys):
    from cryostack.cli.main import main
    from cryostack.io.maps import read_map
    from cryostack.io.models import read_structure

    out = tmp_path / "ds"
    args = [
        "data",
        "simulate",
        "--corpus",
        str(tmp_path),
        "--split",
        "train",
        "--n",
        "2",
        "--resolution",
        "4",
        "7",
        "--voxel-size",
        "2.0",
        "--crop",
        "24",
        "--out",
        str(out),
        "--write-mrc",
        "--no-progress",
    ]
    main(args)
    items = sorted(p.name for p in (out / "items").iterdir())
    assert items == [f"item_{i:08d}.npz" for i in range(2)]
    assert all(not allow for (_, _, allow) in fake_corpus[0].calls)
    m = read_map(out / "mrc" / "item_00000001_input.mrc")
    t = read_map(out / "mrc" / "item_00000001_target.mrc")
    model = read_structure(out / "mrc" / "item_00000001_model.cif").atoms()
    assert m.shape == (24, 24, 24) and m.voxel_size == pytest.approx((2.0,) * 3) and t.origin == pytest.approx(m.origin)
    assert m.interpolate(model.coords).mean() > m.data.mean() + 0.5  # the model sits in its density
    ds = CachedMapDataset(out)
    assert len(ds) == 2 and ds[0]["input_map"].shape == (24, 24, 24)
    # resume: an interrupted run (item 1 and a view of item 0 missing) is completed and extended
    (out / "items" / "item_00000001.npz").unlink()
    (out / "mrc" / "item_00000000_target.mrc").unlink()
    keep = (out / "items" / "item_00000000.npz").stat().st_mtime_ns
    main(args[:7] + ["3"] + args[8:])
    assert len(list((out / "items").iterdir())) == 3
    assert (out / "mrc" / "item_00000000_target.mrc").is_file()
    assert (out / "items" / "item_00000000.npz").stat().st_mtime_ns == keep
    assert "3 items (1 already there)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--split", "test"], "--allow-test"),
        (["--resolution", "1.5", "4"], "Nyquist"),
        (["--noise-scale", "2", "1"], "--noise-scale"),
        (["--corpus", "/nonexistent/corpus"], "/nonexistent/corpus: not a cryostack corpus"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line_and_no_output(tmp_path, fake_corpus, capsys, extra, message):
    from cryostack.cli.main import main

    out = tmp_path / "ds"
    args = [
        "data",
        "simulate",
        "--corpus",
        str(tmp_path),
        "--n",
        "2",
        "--voxel-size",
        "1.0",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_cli_refuses_a_dataset_made_with_other_settings(tmp_path, fake_corpus, capsys):
    from cryostack.cli.main import main

    out = tmp_path / "ds"
    base = [
        "data",
        "simulate",
        "--corpus",
        str(tmp_path),
        "--n",
        "1",
        "--voxel-size",
        "2.0",
        "--crop",
        "16",
        "--resolution",
        "5",
        "6",
        "--out",
        str(out),
        "--no-progress",
    ]
    main(base)
    with pytest.raises(SystemExit) as exc:
        main(base + ["--seed", "9"])
    assert exc.value.code == 2 and "other settings" in capsys.readouterr().err


@pytest.mark.skipif(not (CORPUS_SAMPLE / "corpus.json").is_file(), reason="corpus sample not in the repository yet")
def test_dataset_on_the_committed_corpus_sample():
    from cryostack.data.corpus import Corpus

    corpus = Corpus(CORPUS_SAMPLE)
    ds = SimulatedMapDataset(corpus, SimulationConfig(**SMALL), split="train", length=4, seed=0)
    b = next(iter(DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_items)))
    assert b["input_map"].shape == (2, 24, 24, 24) and b["atom_mask"].any(dim=1).all()
    train = set(corpus.split_indices("train").tolist())
    assert set(b["structure_index"].tolist()) <= train
    assert corpus.test_reads == 0
