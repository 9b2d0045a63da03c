"""The real-structure corpus: export from ProMod3's StructureDB and user files, splits, protection.

Most checks run on the committed sample (``tests/data/corpus_sample``, 202 StructureDB chains
exported by ``cryostack data corpus``). Checks that export anew need ProMod3 in the system
Python and mmseqs2 and skip without them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cryostack.data import corpus as corpus_mod
from cryostack.data.corpus import Corpus, TestSplitAccessError, export_corpus, promod3_available
from cryostack.data.splits import SplitConfig, assign_splits, is_related, mmseqs_available, mmseqs_search
from cryostack.errors import InputError

SAMPLE = Path(__file__).parent / "data" / "corpus_sample"
REPO = Path(__file__).resolve().parents[1]
HAVE_PROMOD3 = promod3_available()
needs_promod3 = pytest.mark.skipif(not HAVE_PROMOD3, reason="ProMod3 (system Python) or its StructureDB not installed")
needs_mmseqs = pytest.mark.skipif(not mmseqs_available(), reason="mmseqs2 not installed")
# Small multi-chain entries and a homologous pair (1RLZ, 4P63) of the StructureDB.
SMALL_ENTRIES = ["5CXB", "2NNU", "1RLZ", "4P63", "12AS"]


@pytest.fixture(scope="module")
def sample() -> Corpus:
    return Corpus(SAMPLE)


def _min_distance(a: np.ndarray, b: np.ndarray) -> float:
    a = a[np.all(np.isfinite(a), axis=1)]
    b = b[np.all(np.isfinite(b), axis=1)]
    return float(np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min())


# -- the committed sample ------------------------------------------------------------------
def test_sample_records(sample):
    assert len(sample) == sample.info["n_chains"] == 202
    rows = sample.metadata
    i = int(sample.split_indices("train")[0])
    rec = sample.chain(i)
    L = rows[i]["length"]
    assert rec.backbone.shape == (L, 5, 3) and rec.backbone.dtype == np.float32
    assert len(rec.sequence) == len(rec.dssp) == L
    assert set(rec.dssp) <= set("HGIEBTSC")
    gly = np.array([c == "G" for c in rec.sequence])
    assert np.isnan(rec.backbone[gly, 4]).all() and np.isfinite(rec.backbone[~gly, 4]).all()
    assert np.isfinite(rec.backbone[:, :4]).all()
    # Ideal-ish geometry: N-CA and CA-C bond lengths in Å.
    assert np.allclose(np.linalg.norm(rec.backbone[:, 1] - rec.backbone[:, 0], axis=1), 1.46, atol=0.1)
    assert np.allclose(np.linalg.norm(rec.backbone[:, 2] - rec.backbone[:, 1], axis=1), 1.52, atol=0.1)
    st = sample.structure(i)
    arr = st.atoms()
    assert arr.chain_ids == [rec.chain_id]
    assert arr.residue_numbers[0] == rec.start_resnum
    assert st.sequences()[rec.chain_id] == rec.sequence
    assert arr.n_atoms == int(np.isfinite(rec.backbone[..., 0]).sum())


def test_sample_full_atom_chains(sample):
    rows = [r for r in sample.metadata if r["has_sidechains"] and r["split"] != "test"]
    assert len(rows) >= 30
    rec = sample.chain(rows[0]["index"])
    st = rec.to_structure()
    assert st is rec.full_atom
    arr = st.atoms()
    assert st.sequences()[rec.chain_id] == rec.sequence
    # Side chains present (e.g. every Phe has CZ) and backbone atoms equal the backbone array.
    names = np.array(arr.atom_names)
    phe = [k for k, n in enumerate(arr.residue_names) if n == "PHE"]
    cz = set(arr.residue_index[names == "CZ"])
    assert all(k in cz for k in phe)
    ca = arr.coords[names == "CA"]
    assert np.allclose(ca, rec.backbone[:, 1], atol=1e-3)
    # Heavy atoms only, no steric clashes between non-bonded side-chain atoms of different residues.
    assert set(arr.elements) <= {"C", "N", "O", "S", "SE"}


def test_entries_reassemble_without_clashes(sample):
    """Chains of one entry share the original PDB frame: in contact, never overlapping."""
    rows = sample.metadata
    by_entry: dict[str, list[int]] = {}
    for r in rows:
        if r["split"] != "test":
            by_entry.setdefault(r["pdb_id"], []).append(r["index"])
    multi = {e: ix for e, ix in by_entry.items() if len(ix) > 1}
    assert len(multi) >= 5
    in_contact = 0
    for entry, ix in multi.items():
        recs = [sample.chain(i) for i in ix]
        closest = np.inf
        for a in range(len(recs)):
            for b in range(a + 1, len(recs)):
                d = _min_distance(recs[a].backbone.reshape(-1, 3), recs[b].backbone.reshape(-1, 3))
                assert d > 2.2, f"{entry}: chains {recs[a].chain_id}/{recs[b].chain_id} clash ({d:.2f} Å)"
                closest = min(closest, d)
        in_contact += closest < 5.0
    # ...and they are assembled: most entries have an interface (not every asymmetric unit does).
    assert in_contact >= 0.75 * len(multi)


def test_stored_shift_is_needed_for_assembly():
    """The StructureDB's own (shifted) frames overlap chains of one entry; the corpus undoes it."""
    from cryostack.data._shardio import read_npz

    z = read_npz(SAMPLE / "backbone" / "bb_00000.npz")
    ids = list(z["pdb_id"])
    off = z["residue_offset"]
    entry = next(e for e in ids if ids.count(e) > 1)
    a, b = [k for k, e in enumerate(ids) if e == entry][:2]
    ca_a = z["coords"][off[a] : off[a + 1], 1]
    ca_b = z["coords"][off[b] : off[b + 1], 1]
    assert _min_distance(ca_a, ca_b) > 3.0
    shifted = _min_distance(ca_a + z["shift"][a], ca_b + z["shift"][b])
    assert shifted < 3.0  # stored frames: each chain centred, chains overlap


# -- splits -------------------------------------------------------------------------------
def test_split_entries_are_whole(sample):
    rows = sample.table(allow_test=True)
    split_of: dict[str, set] = {}
    for r in rows:
        split_of.setdefault(r["pdb_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of.values())
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    assert counts["val"] > 0 and counts["test"] > 0 and counts["train"] > 0.8 * len(rows)
    stored = json.loads((SAMPLE / "splits" / "splits.json").read_text())
    for s, entries in stored["entries"].items():
        assert all(split_of[e] == {s} for e in entries)
    assert json.loads((SAMPLE / "splits" / "verification.json").read_text())["passed"] is True


@needs_mmseqs
def test_split_identity_guarantee(sample):
    """No val/test chain has an mmseqs2 hit ≥ 30 % identity over a meaningful length in train."""
    rows = sample.table(allow_test=True)
    train = {f"{r['pdb_id']}_{r['chain_id']}": r["sequence"] for r in rows if r["split"] == "train"}
    held = {f"{r['pdb_id']}_{r['chain_id']}": r["sequence"] for r in rows if r["split"] != "train"}
    hits = mmseqs_search(held, train, sensitivity=7.5, evalue=10.0, max_seqs=5000, threads=2)
    assert hits  # weak hits exist, so the search ran on real sequences
    assert not [h for h in hits if is_related(h[2], h[3], h[4], h[5], SplitConfig())]
    # The sample holds homologous families (related pairs joined in train/val), so the check has teeth.
    summary = json.loads((SAMPLE / "splits" / "splits.json").read_text())["summary"]
    assert summary["related_pairs"] > 10 and summary["largest_group_chains"] > 2


# -- test-split protection ---------------------------------------------------------------
def test_test_split_is_refused_without_allow_test(sample):
    test_ix = sample.split_indices("test", allow_test=True)
    assert len(test_ix) > 0
    with pytest.raises(TestSplitAccessError):
        sample.split_indices("test")
    with pytest.raises(TestSplitAccessError):
        sample.chain(int(test_ix[0]))
    with pytest.raises(TestSplitAccessError):
        sample.structure(int(test_ix[0]))
    assert all(r["sequence"] == "" for r in sample.metadata if r["split"] == "test")
    fresh = Corpus(SAMPLE)
    rec = fresh.chain(int(test_ix[0]), allow_test=True)
    assert rec.split == "test" and fresh.test_reads == 1


def test_training_paths_never_read_test_chains():
    """Sentinel: walking train and val the way training code does reads no test chain."""
    c = Corpus(SAMPLE)
    n = 0
    for split in ("train", "val"):
        for rec in c.iter_split(split):
            assert rec.split == split
            n += 1
    assert n == len(c) - len(c.split_indices("test", allow_test=True))
    assert c.test_reads == 0


def test_no_library_code_requests_the_test_split():
    """Library (training) code never decides to read the test split itself.

    A module may pass ``allow_test=True`` on only if it takes ``allow_test: bool = False`` from
    its own caller (a guarded pass-through, as evaluation entry points need); the opt-in then
    always comes from the user.
    """
    offenders = []
    literal = re.compile(r"allow_test\s*=\s*True")
    opt_in = re.compile(r"allow_test\s*:\s*bool\s*=\s*False")
    for path in (REPO / "src" / "cryostack").rglob("*.py"):
        if path.name == "corpus.py" and path.parent.name == "data":
            continue  # defines the protection
        text = path.read_text()
        if opt_in.search(text):
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if literal.search(line) and not line.lstrip().startswith("#"):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, "training code must not read the test split:\n" + "\n".join(offenders)


# -- opening and bad input ----------------------------------------------------------------
def test_open_rejects_non_corpus_and_other_versions(tmp_path):
    with pytest.raises(InputError, match="not a cryostack corpus"):
        Corpus(tmp_path)
    copy = tmp_path / "c"
    shutil.copytree(SAMPLE, copy)
    info = json.loads((copy / "corpus.json").read_text())
    info["version"] = 99
    (copy / "corpus.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match="version 99"):
        Corpus(copy)


def test_cli_bad_source_exits_2_without_output(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(
        [str(REPO / ".venv" / "bin" / "cryostack"), "data", "corpus", "--out", str(out), "--source", str(tmp_path / "nope")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 2
    assert "nope" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no PDB/mmCIF files"):
        export_corpus(out, source=empty, progress=False)
    assert not out.exists()  # the folder this run created is removed again


# -- fresh exports (ProMod3 + mmseqs2) -----------------------------------------------------
@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    """One export of a small selection (3 chains per backbone shard, 2 per side-chain shard)."""
    if not (HAVE_PROMOD3 and mmseqs_available()):
        pytest.skip("needs ProMod3 and mmseqs2")
    kw = dict(sidechains="3", workers=2, seed=5, progress=False, rotamer_model="rrm", entries=SMALL_ENTRIES)
    with _small_shards():
        a = export_corpus(tmp_path_factory.mktemp("corpora") / "a", **kw)
    return a, kw


class _small_shards:
    def __enter__(self):
        self.old = corpus_mod.CHAINS_PER_BACKBONE_SHARD, corpus_mod.CHAINS_PER_SIDECHAIN_SHARD
        corpus_mod.CHAINS_PER_BACKBONE_SHARD, corpus_mod.CHAINS_PER_SIDECHAIN_SHARD = 3, 2

    def __exit__(self, *exc):
        corpus_mod.CHAINS_PER_BACKBONE_SHARD, corpus_mod.CHAINS_PER_SIDECHAIN_SHARD = self.old


def _fingerprint(root: Path) -> dict:
    info = json.loads((root / "corpus.json").read_text())
    return {
        "shards": info["shards"],
        "chains": (root / "chains.tsv").read_text(),
        "splits": json.loads((root / "splits" / "splits.json").read_text())["entries"],
    }


def test_export_matches_promod3_coordinates(small_export):
    a, _ = small_export
    rows = a.table(allow_test=True)
    script = (
        "import json, sys\nfrom promod3 import loop\n"
        f"db = loop.StructureDB.Load({str(corpus_mod.STRUCTURE_DB)!r})\nout = {{}}\n"
        "for i in range(db.GetNumCoords()):\n"
        "    ci = db.GetCoordInfo(i)\n"
        f"    if ci.id in {SMALL_ENTRIES!r}:\n"
        "        bb = db.GetBackboneList(i)\n"
        "        s = [ci.shift[k] for k in range(3)]\n"
        "        out[ci.id + '_' + ci.chain_name] = dict(start=ci.start_resnum, seq=db.GetSequence(i),\n"
        "            ca=[[bb.GetCA(r)[k] - s[k] for k in range(3)] for r in range(len(bb))],\n"
        "            o=[[bb.GetO(r)[k] - s[k] for k in range(3)] for r in range(len(bb))])\n"
        "json.dump(out, sys.stdout)\n"
    )
    ref = json.loads(
        subprocess.run([corpus_mod.SYSTEM_PYTHON, "-c", script], capture_output=True, text=True, check=True).stdout
    )
    assert len(ref) == len(rows) >= 6
    for r in rows:
        rec = a.chain(r["index"], allow_test=True)
        want = ref[f"{r['pdb_id']}_{r['chain_id']}"]
        assert rec.sequence == want["seq"] and rec.start_resnum == want["start"]
        assert np.allclose(rec.backbone[:, 1], want["ca"], atol=2e-3)
        assert np.allclose(rec.backbone[:, 3], want["o"], atol=2e-3)
    assert sum(r["has_sidechains"] for r in rows) == 3


def test_export_is_deterministic(small_export, tmp_path):
    """Shards and manifest are byte-identical when the same selection is exported again."""
    a, kw = small_export
    assert len(list((a.root / "backbone").glob("*.npz"))) >= 3
    again = tmp_path / "again"
    shutil.copytree(a.root, again)
    for f in list((again / "backbone").glob("*")) + list((again / "sidechains").glob("*")):
        f.unlink()
    (again / "corpus.json").unlink()
    (again / "chains.tsv").unlink()
    with _small_shards():
        export_corpus(again, **kw)  # the stored splits are reused; their determinism: next test
    assert _fingerprint(again) == _fingerprint(a.root)


def test_split_assignment_is_deterministic():
    keys = [f"E{i}_A" for i in range(400)]
    entries = [k.split("_")[0] for k in keys]
    seqs = [f"SEQ{i}" for i in range(400)]
    pairs = [(keys[i], keys[i + 1]) for i in range(0, 60, 2)]  # 30 related pairs
    cfg = SplitConfig(seed=3)
    first, _ = assign_splits(keys, entries, seqs, pairs, cfg)
    second, _ = assign_splits(keys, entries, seqs, pairs, SplitConfig(seed=3))
    other, _ = assign_splits(keys, entries, seqs, pairs, SplitConfig(seed=4))
    assert first == second and first != other
    assert all(first[i] == first[i + 1] for i in range(0, 60, 2))  # related chains stay together
    assert 10 <= first.count("test") <= 30 and 10 <= first.count("val") <= 30


def test_export_resumes_after_interruption(small_export, tmp_path):
    a, kw = small_export
    root = tmp_path / "b"
    shutil.copytree(a.root, root)
    keep = root / "backbone" / "bb_00000.npz"
    keep_mtime = keep.stat().st_mtime_ns
    # An interrupted run: one shard never written, one half-written, a temp file left behind,
    # and no manifest yet.
    (root / "backbone" / "bb_00001.npz").unlink()
    sc = sorted((root / "sidechains").glob("*.npz"))[0]
    sc.write_bytes(sc.read_bytes()[:100])
    (root / "backbone" / ".bb_00002.npz.abc.tmp").write_bytes(b"partial")
    (root / "corpus.json").unlink()
    (root / "chains.tsv").unlink()
    with pytest.raises(InputError, match="not finished"):
        Corpus(root)
    with _small_shards():
        export_corpus(root, **kw)
    assert keep.stat().st_mtime_ns == keep_mtime  # finished shards are kept, not redone
    assert not list(root.glob("*/.*.tmp"))
    assert _fingerprint(root) == _fingerprint(a.root)
    # Other options into the same folder are refused rather than mixed in.
    with pytest.raises(InputError, match="other options"):
        export_corpus(root, **(kw | {"seed": 6}))


@needs_mmseqs
def test_user_directory_ingestion(tmp_path):
    from cryostack.examples import SPIKE_NTD_MODEL
    from cryostack.io.models import read_structure

    src = tmp_path / "mine"
    src.mkdir()
    shutil.copy(SPIKE_NTD_MODEL, src / "6vyb_Ndom.pdb")
    for f in (REPO / "tests" / "data" / "reference").glob("*_promod.pdb.gz"):
        shutil.copy(f, src / f.name)
    c = export_corpus(tmp_path / "corpus", source=src, sidechains="all", workers=1, progress=False)
    rows = c.table(allow_test=True)
    names = {r["pdb_id"] for r in rows}
    assert names == {"6vyb_Ndom", "1N7S_promod", "1OZ7_promod"}
    for path in src.iterdir():
        st = read_structure(path)
        entry = corpus_mod._entry_name(path)
        seqs = st.sequences()
        mine = [r for r in rows if r["pdb_id"] == entry]
        assert {r["chain_id"] for r in mine} == set(seqs)
        for r in mine:
            rec = c.chain(r["index"], allow_test=True)
            assert rec.sequence == seqs[r["chain_id"]].upper().replace("-", "")
            arr = st.atoms()
            sel = [
                k
                for k in range(arr.n_atoms)
                if arr.atom_names[k] == "CA" and arr.chain_ids[arr.chain_index[k]] == r["chain_id"]
            ]
            assert np.allclose(rec.backbone[:, 1], arr.coords[sel], atol=1e-3)
            full = rec.to_structure().atoms()
            heavy = sum(
                1
                for k in range(arr.n_atoms)
                if arr.chain_ids[arr.chain_index[k]] == r["chain_id"]
                and not arr.is_hydrogen[k]
                and arr.residue_class[arr.residue_index[k]] == 0
            )
            assert full.n_atoms == heavy
            if HAVE_PROMOD3:
                assert set(rec.dssp) <= set("HGIEBTSC-") and any(s in rec.dssp for s in "HE")


def test_check_failures_move_groups_to_train_and_refill(monkeypatch):
    """Held-out groups the check flags go to train for good; untried groups top val/test up."""
    from cryostack.data import splits as sp

    keys = [f"E{i}_A" for i in range(1000)]
    entries = [k.split("_")[0] for k in keys]
    seqs = [f"SEQ{i}" for i in range(1000)]
    flagged: set[str] = set()
    calls = []

    def fake_verify(keys_, seqs_, labels, cfg, threads=1):
        held = [k for k, lab in zip(keys_, labels) if lab != "train"]
        calls.append(len(held))
        # The first check flags every second held-out chain as related to train.
        bad = [k for k in held if int(k[1:].split("_")[0]) % 2 == 0] if len(calls) == 1 else []
        flagged.update(bad)
        return {"passed": not bad, "violations": [{"query": k} for k in bad]}

    monkeypatch.setattr(sp, "mmseqs_available", lambda: True)
    monkeypatch.setattr(sp, "mmseqs_version", lambda: "fake")
    monkeypatch.setattr(sp, "related_pairs", lambda *a, **k: [])
    monkeypatch.setattr(sp, "verify_splits", fake_verify)
    labels, summary, report = sp.make_splits(keys, entries, seqs, SplitConfig(seed=1, refill_rounds=1))
    assert flagged and all(labels[keys.index(k)] == "train" for k in flagged)
    assert summary["chains_moved_to_train_after_check"] == len(flagged)
    assert summary["refill_rounds_done"] == 1 and len(calls) == 3  # check, re-check, check after refill
    assert labels.count("test") == 50 and labels.count("val") == 50  # back at 5 % each
