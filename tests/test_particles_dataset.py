"""``cryostack particles dataset``: sets from one corpus split, manifests, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import starfile

from cryostack.data.corpus import Corpus, TestSplitAccessError
from cryostack.errors import InputError
from cryostack.particles.datasets import build_dataset, dataset_spec, plan_dataset, verify_dataset

CORPUS = Path(__file__).parent / "data" / "corpus_sample"
#: Tiny sets: box 32 at ~3 Å, a few dozen particles, two sets.
TINY = dict(n=24, sets=2, box_px=32, pixel_size_range_A=(3.0, 3.4), particles_per_micrograph=12, progress=False)


def test_ranking_sets_from_split_with_junk_range_and_resume(tmp_path):
    out = tmp_path / "rank"
    result = build_dataset("ranking", CORPUS, out, split="val", seed=3, junk_range=(0.25, 0.6), **TINY)
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["status"] == "complete" and manifest["kind"] == "ranking" and manifest["split"] == "val"
    assert len(manifest["corpus_splits_sha256"]) == 64
    splits = Corpus(CORPUS).splits
    for entry in manifest["sets"]:
        assert 0.25 <= entry["junk_fraction"] <= 0.6
        assert len(entry["structures"]) == 1
        assert all(splits[s["corpus_index"]] == "val" == s["split"] for s in entry["structures"])
        parts = starfile.read(out / entry["folder"] / "particles.star")["particles"]
        assert len(parts) == 24
        assert (parts.rlnCryostackJunkType != "good").mean() == pytest.approx(entry["junk_fraction"], abs=1 / 24)
        assert set(parts.rlnCryostackSource[parts.rlnCryostackJunkType == "good"]) == {entry["structures"][0]["name"]}
    assert verify_dataset(out, CORPUS) == []
    assert result.built == 2
    # Rerun: nothing rewritten. Remove one set's star: only that one is rebuilt.
    stars = [out / e["folder"] / "particles.star" for e in manifest["sets"]]
    mtimes = [p.stat().st_mtime_ns for p in stars]
    again = build_dataset("ranking", CORPUS, out, split="val", seed=3, junk_range=(0.25, 0.6), **TINY)
    assert (again.built, again.skipped) == (0, 2)
    assert [p.stat().st_mtime_ns for p in stars] == mtimes
    stars[1].unlink()
    third = build_dataset("ranking", CORPUS, out, split="val", seed=3, junk_range=(0.25, 0.6), **TINY)
    assert (third.built, third.skipped) == (1, 1)
    assert stars[0].stat().st_mtime_ns == mtimes[0] and stars[1].is_file()
    # Other settings in the same folder are refused.
    with pytest.raises(InputError, match="other seed"):
        build_dataset("ranking", CORPUS, out, split="val", seed=4, junk_range=(0.25, 0.6), **TINY)


def test_subset_one_structure_per_set_and_pretrain_many(tmp_path):
    result = build_dataset("subset", CORPUS, tmp_path / "sub", split="train", seed=1, **TINY)
    names = [e["structures"][0]["name"] for e in result.sets]
    assert all(len(e["structures"]) == 1 for e in result.sets) and len(set(names)) == 2
    for e in result.sets:
        parts = starfile.read(tmp_path / "sub" / e["folder"] / "particles.star")["particles"]
        assert parts.rlnCryostackSource[parts.rlnCryostackJunkType == "good"].nunique() == 1
    # Pretrain plans (no simulation): several structures per set, all from train, wide settings.
    spec = dataset_spec("pretrain", n_sets=6, box_px=32, structures_per_set=4)
    corpus = Corpus(CORPUS)
    plans = plan_dataset(corpus, spec, "train", seed=0)
    assert all(len({s["corpus_index"] for s in p.structures}) == 4 for p in plans)
    assert all(corpus.splits[s["corpus_index"]] == "train" for p in plans for s in p.structures)
    assert len({p.pixel_size_A for p in plans}) == 6 and len({p.snr for p in plans}) == 6
    assert all(1.0 <= p.pixel_size_A <= 2.5 and 0.01 <= p.snr <= 0.5 for p in plans)
    # Subset preset: 5k-50k particles per set unless fixed.
    sizes = [p.n_particles for p in plan_dataset(corpus, dataset_spec("subset", n_sets=8, box_px=64), "val")]
    assert all(5_000 <= s <= 50_000 for s in sizes) and len(set(sizes)) > 1


def test_test_split_and_bad_input(tmp_path):
    with pytest.raises(TestSplitAccessError):
        build_dataset("ranking", CORPUS, tmp_path / "t", split="test", **TINY)
    plans = plan_dataset(Corpus(CORPUS), dataset_spec("ranking", box_px=64), "test", allow_test=True)
    assert all(s["split"] == "test" for p in plans for s in p.structures)
    bad = [
        dict(kind="nope"),
        dict(split="validation"),
        dict(n=0),
        dict(sets=0),
        dict(box_px=33),
        dict(junk_range=(0.5, 0.2)),
        dict(snr_range=(0.0, 0.1)),
        dict(structures_per_set=2),  # ranking sets hold one structure
        dict(bogus=1),
        dict(seed=-1),
    ]
    for b in bad:
        args = {**TINY, "kind": "ranking", **b}
        with pytest.raises(InputError):
            build_dataset(args.pop("kind"), CORPUS, tmp_path / "bad", **args)
    assert not (tmp_path / "bad").exists()  # nothing written before the arguments are checked
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        build_dataset("ranking", CORPUS, tmp_path / "full", **TINY)
    with pytest.raises(InputError):
        build_dataset("ranking", tmp_path / "no_corpus", tmp_path / "o", **TINY)


def test_cli(tmp_path):
    from cryostack.cli.main import main

    def run(*args: str) -> int:
        try:
            main(["particles", "dataset", "--corpus", str(CORPUS), "--no-progress", *args])
        except SystemExit as exc:
            return int(exc.code or 0)
        return 0

    common = ("--n", "12", "--sets", "1", "--box", "32", "--pixel-size", "3", "--no-cs")
    assert run("--kind", "subset", "--out", str(tmp_path / "s"), *common) == 0
    manifest = json.loads((tmp_path / "s" / "dataset.json").read_text())
    assert manifest["sets"][0]["pixel_size_A"] == 3.0 and manifest["settings"]["box_px"] == 32
    assert run("--kind", "subset", "--out", str(tmp_path / "t"), "--split", "test", *common) == 2
    assert run("--kind", "junk", "--out", str(tmp_path / "k"), *common) == 2
    assert not (tmp_path / "t").exists() and not (tmp_path / "k").exists()
