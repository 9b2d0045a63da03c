"""The real-structure training corpus: sharded protein chains with held-out splits.

Layout of an exported corpus (``CORPUS_VERSION`` 1)::

    corpus.json              format, version, options, shard list with sha256, split counts
    chains.tsv               one row per chain: pdb_id, chain_id, length, start_resnum, split,
                             shard + offset, side-chain shard + offset, sequence, DSSP
    backbone/bb_00000.npz    N, CA, C, O, CB (Å, original PDB frame) of a few thousand chains
    sidechains/sc_00000.npz  full-atom chains (ProMod3-rebuilt or from the user's files)
    splits/splits.json       train/val/test entries, how they were made
    splits/verification.json mmseqs2 search of val+test against train

Sources: ProMod3's StructureDB (Debian ``promod3-data``; read by a worker in the system
Python, see ``_promod3_worker.py``) or a directory of the user's PDB/mmCIF files (gemmi).
Everything is resumable: finished shards are kept and skipped on a rerun.

The test split is for final evaluation only: :class:`Corpus` refuses to hand out test chains
unless asked with ``allow_test=True``, and counts such reads (``test_reads``).
"""

from __future__ import annotations

import csv
import datetime
import functools
import json
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gemmi
import numpy as np

from cryostack.data._shardio import is_valid_npz, read_npz, sha256, write_npz
from cryostack.data.splits import SPLITS, SplitConfig, make_splits, write_json
from cryostack.errors import DataAccessError, InputError
from cryostack.io.atomic import check_writable
from cryostack.io.models import Structure

CORPUS_FORMAT = "cryostack-corpus"
CORPUS_VERSION = 1
BACKBONE_ATOMS = ("N", "CA", "C", "O", "CB")
STRUCTURE_DB = Path("/usr/share/promod3/loop_data/structure_db.dat")
SYSTEM_PYTHON = "/usr/bin/python3"
WORKER = Path(__file__).with_name("_promod3_worker.py")
CHAINS_PER_BACKBONE_SHARD = 2000
CHAINS_PER_SIDECHAIN_SHARD = 50
FILES_PER_USER_SHARD = 200
MODEL_SUFFIXES = (".cif", ".mmcif", ".pdb", ".ent", ".cif.gz", ".mmcif.gz", ".pdb.gz", ".ent.gz")
_BB_KEYS = ("pdb_id", "chain_id", "start_resnum", "residue_offset", "coords", "resnum", "sequence", "dssp")
_SC_KEYS = ("pdb_id", "chain_id", "atom_offset", "coords", "atom_name", "element", "residue")
_TSV_COLUMNS = (
    "index", "pdb_id", "chain_id", "length", "start_resnum", "split", "has_sidechains",
    "bb_shard", "bb_offset", "sc_shard", "sc_offset", "sequence", "dssp",
)  # fmt: skip


class TestSplitAccessError(DataAccessError):
    """A test-split chain was requested without ``allow_test=True``."""

    __test__ = False  # not a pytest class


# -- records ---------------------------------------------------------------------------------
@dataclass
class ChainRecord:
    """One protein chain of the corpus (``L`` residues).

    ``backbone`` is ``(L, 5, 3)`` float32 Å in the entry's original PDB frame, atoms N, CA, C,
    O, CB; CB is NaN for glycine and any missing atom is NaN. ``residue_numbers`` are the
    author residue numbers (``start_resnum + arange(L)`` for StructureDB chains).
    """

    pdb_id: str
    chain_id: str
    sequence: str
    dssp: str
    start_resnum: int
    backbone: np.ndarray
    full_atom: Structure | None = None
    residue_numbers: np.ndarray | None = None
    index: int = -1
    split: str = ""

    def __len__(self) -> int:
        return len(self.sequence)

    def to_structure(self) -> Structure:
        """Full-atom :class:`Structure` if side chains exist, else backbone + CB; author chain ID and numbering."""
        if self.full_atom is not None:
            return self.full_atom
        st = _empty_structure(self.pdb_id, self.chain_id)
        chain = st[0][0]
        resnums = self._resnums()
        elements = ("N", "C", "C", "O", "C")
        for i, aa in enumerate(self.sequence):
            res = _new_residue(aa, int(resnums[i]))
            for k, name in enumerate(BACKBONE_ATOMS):
                xyz = self.backbone[i, k]
                if np.all(np.isfinite(xyz)):
                    res.add_atom(_new_atom(name, elements[k], xyz))
            chain.add_residue(res)
        st.setup_entities()
        return Structure(st)

    def _resnums(self) -> np.ndarray:
        if self.residue_numbers is not None:
            return self.residue_numbers
        return np.arange(self.start_resnum, self.start_resnum + len(self.sequence))


def _empty_structure(name: str, chain_id: str) -> gemmi.Structure:
    st = gemmi.Structure()
    st.name = name
    st.add_model(gemmi.Model(1))
    st[0].add_chain(gemmi.Chain(chain_id))
    return st


def _new_residue(one_letter: str, number: int) -> gemmi.Residue:
    res = gemmi.Residue()
    res.name = gemmi.expand_one_letter(one_letter, gemmi.ResidueKind.AA) or "UNK"
    res.seqid = gemmi.SeqId(number, " ")
    res.entity_type = gemmi.EntityType.Polymer
    return res


def _new_atom(name: str, element: str, xyz) -> gemmi.Atom:
    atom = gemmi.Atom()
    atom.name = name
    atom.element = gemmi.Element(element)
    atom.pos = gemmi.Position(float(xyz[0]), float(xyz[1]), float(xyz[2]))
    atom.occ = 1.0
    atom.b_iso = 0.0
    return atom


# -- reading ---------------------------------------------------------------------------------
class Corpus:
    """An exported corpus, opened read-only; ``len(corpus)`` chains indexed ``0 .. len-1``."""

    def __init__(self, root: str | Path, *, cache_shards: int = 4):
        self.root = Path(root)
        meta_path = self.root / "corpus.json"
        if not meta_path.is_file():
            if (self.root / "export_options.json").is_file():
                raise InputError(
                    self.root,
                    "corpus export is not finished; rerun `cryostack data corpus` with the same options to resume",
                )
            raise InputError(self.root, "not a cryostack corpus (no corpus.json)")
        try:
            self.info = json.loads(meta_path.read_text())
        except ValueError as exc:
            raise InputError(meta_path, f"unreadable corpus metadata ({exc})") from None
        if self.info.get("format") != CORPUS_FORMAT:
            raise InputError(meta_path, f"format is {self.info.get('format')!r}, expected {CORPUS_FORMAT!r}")
        if self.info.get("version") != CORPUS_VERSION:
            raise InputError(
                meta_path,
                f"corpus version {self.info.get('version')} is not supported (expected {CORPUS_VERSION}); re-export it",
            )
        if self.info.get("status") != "complete":
            raise InputError(
                self.root,
                "corpus export is not finished; rerun `cryostack data corpus` with the same options to resume",
            )
        self._rows = _read_tsv(self.root / "chains.tsv")
        if len(self._rows) != self.info.get("n_chains"):
            raise InputError(
                self.root / "chains.tsv",
                f"{len(self._rows)} chains listed, corpus.json says {self.info.get('n_chains')}",
            )
        self._split = np.array([r["split"] for r in self._rows])
        self._cache: OrderedDict[str, dict] = OrderedDict()
        self._cache_size = cache_shards
        self.test_reads = 0  # chains of the test split handed out (with allow_test=True)
        self._public: list[dict] | None = None

    def __getstate__(self) -> dict:
        # DataLoader workers get the corpus without its shard cache (each fills its own).
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        return state

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        counts = {s: int((self._split == s).sum()) for s in SPLITS}
        return f"Corpus({str(self.root)!r}, {len(self)} chains, splits {counts})"

    @property
    def metadata(self) -> list[dict]:
        """Per-chain rows: index, pdb_id, chain_id, length, start_resnum, split, has_sidechains, ...

        Sequence and DSSP of test chains are blanked here; :meth:`table` with ``allow_test``
        gives them.
        """
        if self._public is None:
            self._public = self.table(allow_test=False)
        return self._public

    def table(self, *, allow_test: bool = False) -> list[dict]:
        """Per-chain rows (copies); with ``allow_test`` including test sequences and DSSP."""
        out = []
        for r in self._rows:
            row = dict(r)
            if row["split"] == "test" and not allow_test:
                row["sequence"] = row["dssp"] = ""
            out.append(row)
        return out

    @property
    def lengths(self) -> np.ndarray:
        return np.array([r["length"] for r in self._rows], dtype=np.int64)

    @property
    def splits(self) -> np.ndarray:
        """Split label per chain (``"train"``, ``"val"``, ``"test"``)."""
        return self._split.copy()

    def split_indices(self, split: str, *, allow_test: bool = False) -> np.ndarray:
        """Chain indices of ``split`` ("train", "val" or "test"), ascending."""
        if split not in SPLITS:
            raise InputError(None, f"unknown split {split!r}; expected one of {SPLITS}")
        if split == "test" and not allow_test:
            raise TestSplitAccessError(
                "the test split is held out for final evaluation; pass allow_test=True only in evaluation code"
            )
        return np.flatnonzero(self._split == split)

    def chain(self, i: int, *, allow_test: bool = False) -> ChainRecord:
        """Chain ``i`` with its backbone and, when exported, full atoms."""
        i = int(i)
        if not 0 <= i < len(self._rows):
            raise IndexError(f"chain index {i} out of range 0..{len(self._rows) - 1}")
        row = self._rows[i]
        if row["split"] == "test":
            if not allow_test:
                raise TestSplitAccessError(
                    f"chain {i} ({row['pdb_id']} {row['chain_id']}) is in the held-out test split"
                )
            self.test_reads += 1
        bb = self._shard("backbone", row["bb_shard"])
        c = row["bb_offset"]
        a, b = int(bb["residue_offset"][c]), int(bb["residue_offset"][c + 1])
        record = ChainRecord(
            pdb_id=row["pdb_id"],
            chain_id=row["chain_id"],
            sequence=row["sequence"],
            dssp=row["dssp"],
            start_resnum=row["start_resnum"],
            backbone=bb["coords"][a:b].copy(),
            residue_numbers=bb["resnum"][a:b].astype(np.int64),
            index=i,
            split=row["split"],
        )
        if row["has_sidechains"]:
            record.full_atom = self._full_atom(record, row)
        return record

    def structure(self, i: int, *, allow_test: bool = False) -> Structure:
        """``chain(i).to_structure()``."""
        return self.chain(i, allow_test=allow_test).to_structure()

    def iter_split(self, split: str, *, allow_test: bool = False) -> Iterator[ChainRecord]:
        for i in self.split_indices(split, allow_test=allow_test):
            yield self.chain(i, allow_test=allow_test)

    def _shard(self, kind: str, name: str) -> dict:
        key = f"{kind}/{name}"
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        data = read_npz(self.root / kind / name)
        self._cache[key] = data
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return data

    def _full_atom(self, record: ChainRecord, row: dict) -> Structure:
        sc = self._shard("sidechains", row["sc_shard"])
        c = row["sc_offset"]
        a, b = int(sc["atom_offset"][c]), int(sc["atom_offset"][c + 1])
        names = sc["atom_name"][a:b]
        elements = sc["element"][a:b]
        xyz = sc["coords"][a:b]
        res_of = sc["residue"][a:b]
        st = _empty_structure(record.pdb_id, record.chain_id)
        chain = st[0][0]
        resnums = record._resnums()
        residues = [_new_residue(aa, int(resnums[k])) for k, aa in enumerate(record.sequence)]
        for j in range(b - a):
            residues[res_of[j]].add_atom(_new_atom(names[j].decode(), elements[j].decode(), xyz[j]))
        for res in residues:
            chain.add_residue(res)
        st.setup_entities()
        return Structure(st)


def _read_tsv(path: Path) -> list[dict]:
    if not path.is_file():
        raise InputError(path, "corpus manifest missing")
    ints = ("index", "length", "start_resnum", "bb_offset", "sc_offset")
    rows = []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh, delimiter="\t"):
            for k in ints:
                r[k] = int(r[k])
            r["has_sidechains"] = r["has_sidechains"] == "1"
            rows.append(r)
    return rows


# -- export ----------------------------------------------------------------------------------
@dataclass
class _Options:
    source: str
    sidechains: str
    seed: int
    limit: int | None
    rotamer_model: str
    entries: list[str] | None = None
    split: dict = field(default_factory=dict)


def export_corpus(
    out: str | Path,
    source: str | Path = "promod3",
    sidechains: str | int = "none",
    workers: int = 2,
    seed: int = 0,
    limit: int | None = None,
    progress: bool = True,
    *,
    rotamer_model: str = "frm",
    entries: list[str] | None = None,
    split_config: SplitConfig | None = None,
    structure_db: str | Path = STRUCTURE_DB,
    strict: bool = False,
) -> Corpus:
    """Export a corpus to ``out`` (resuming a partial export there) and open it.

    From a directory, unreadable model files are skipped and listed in ``corpus.json``
    (``skipped_files``); with ``strict`` the first one stops the export with its problem.

    ``source``: ``"promod3"`` (the StructureDB) or a directory of PDB/mmCIF files.
    ``sidechains``: ``"none"``, ``"all"``, a number of chains picked with ``seed``, or a file
    of ``PDBID CHAIN`` / ``PDBID`` lines. ``limit``: at most this many chains, whole entries
    picked at random with ``seed``. ``entries``: only these PDB ids (or file names).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a directory")
    check_writable(out / "corpus.json")
    workers = max(1, int(workers))
    if limit is not None and limit < 1:
        raise InputError(None, f"limit must be at least 1, got {limit}")
    if rotamer_model not in ("frm", "rrm"):
        raise InputError(None, f"rotamer_model must be frm or rrm, got {rotamer_model!r}")
    split_cfg = split_config or SplitConfig(seed=seed)
    src = str(source)
    if src != "promod3":
        src_path = Path(src)
        if not src_path.is_dir():
            raise InputError(src_path, "source must be 'promod3' or a directory of PDB/mmCIF files")
        if out.resolve() == src_path.resolve() or src_path.resolve() in out.resolve().parents:
            raise InputError(out, "output directory must not be inside the source directory")
        src = str(src_path.resolve())
    sc_spec = _sidechain_spec(sidechains)
    wanted = sorted({e.strip().upper() for e in entries if e.strip()}) if entries else None
    opts = _Options(
        source=src,
        sidechains=sc_spec,
        seed=int(seed),
        limit=limit,
        rotamer_model=rotamer_model,
        split=_split_params(split_cfg),
        entries=wanted,
    )
    created = not out.exists()
    try:
        _run_export(out, opts, split_cfg, workers, progress, structure_db, strict)
    except InputError:
        if created and out.is_dir():
            shutil.rmtree(out)  # the folder is ours from this run: leave no partial output
        raise
    return Corpus(out)


def _run_export(
    out: Path, opts: _Options, split_cfg: SplitConfig, workers: int, progress: bool, structure_db, strict: bool = False
) -> None:
    src = opts.source
    _claim_output(out, opts)
    reporter = _Progress(progress)
    t0 = datetime.datetime.now(datetime.UTC)
    was_complete = (out / "corpus.json").is_file()
    old_handler = None
    if threading.current_thread() is threading.main_thread():
        # A plain `kill` should stop the workers and record the run like Ctrl-C does.
        old_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with reporter:
            if src == "promod3":
                _export_structure_db(out, opts, Path(structure_db), workers, reporter)
            else:
                _export_user_dir(out, opts, workers, reporter, strict)
            _finalise(out, opts, split_cfg, workers, reporter, t0)
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
        if not was_complete:  # also an interrupted run: its time counts towards the export
            write_json(out / "runs.json", _runs(out) + [_run_record(t0, workers)])


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _split_params(cfg: SplitConfig) -> dict:
    from dataclasses import asdict

    d = asdict(cfg)
    d.pop("mmseqs_version", None)
    return d


def _sidechain_spec(sidechains) -> str:
    s = str(sidechains).strip()
    if s in ("none", "all"):
        return s
    if s.isdigit():
        return s
    path = Path(s)
    if not path.is_file():
        raise InputError(
            path, "sidechains must be none, all, a number of chains or a file of PDB ids / 'PDBID CHAIN' lines"
        )
    return "ids:" + path.read_text()


def _claim_output(out: Path, opts: _Options) -> None:
    """Create ``out`` or check that it holds an export with the same options (to resume)."""
    opts_file = out / "export_options.json"
    wanted = json.dumps(opts.__dict__, sort_keys=True)
    if out.exists():
        if not out.is_dir():
            raise InputError(out, "output exists and is not a directory")
        if opts_file.is_file():
            if json.dumps(json.loads(opts_file.read_text()), sort_keys=True) != wanted:
                raise InputError(
                    out, "holds a corpus exported with other options; choose another output folder or remove it"
                )
            for tmp in list(out.glob("*/.*.tmp")) + list(out.glob(".*.tmp")):
                tmp.unlink()  # left by an interrupted write
            return
        if any(out.iterdir()):
            raise InputError(out, "output directory is not empty and holds no corpus export")
    out.mkdir(parents=True, exist_ok=True)
    write_json(opts_file, opts.__dict__)


class _Progress:
    """A rich progress bar, or nothing."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._bar = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def task(self, description: str, total: int, completed: int = 0):
        if self._bar is None:
            return None
        return self._bar.add_task(description, total=total, completed=completed)

    def advance(self, task, n: int) -> None:
        if self._bar is not None and task is not None:
            self._bar.advance(task, n)

    def log(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text, highlight=False)


class _WorkerPool:
    """Up to ``n`` ProMod3 worker subprocesses fed from a task queue; kept across runs so the
    StructureDB and rotamer library load once per process."""

    def __init__(self, n: int):
        if not promod3_available():
            raise InputError(
                None, f"ProMod3 is not available in {SYSTEM_PYTHON} (Debian packages python3-promod3, promod3-data)"
            )
        self.n = n
        self.procs: list[subprocess.Popen] = []

    def _proc(self, k: int) -> subprocess.Popen:
        while len(self.procs) <= k:
            self.procs.append(
                subprocess.Popen(
                    [SYSTEM_PYTHON, str(WORKER)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    bufsize=1,
                    env={**os.environ, "PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "1"},
                )  # fmt: skip
            )
        return self.procs[k]

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                assert p.stdin is not None  # every worker is started with stdin=PIPE
                p.stdin.close()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is not None:
            for p in self.procs:
                if p.poll() is None:
                    p.terminate()
        self.close()

    def run(self, tasks: list[dict], on_progress: Callable[[int], None]) -> None:
        q: queue.Queue = queue.Queue()
        for t in tasks:
            q.put(t)
        errors: list[str] = []
        lock = threading.Lock()
        n = min(self.n, max(1, len(tasks)))
        procs = [self._proc(k) for k in range(n)]

        def work(proc):
            while not errors:
                try:
                    task = q.get_nowait()
                except queue.Empty:
                    return
                proc.stdin.write(json.dumps(task) + "\n")
                proc.stdin.flush()
                for line in proc.stdout:
                    line = line.strip()
                    if line.startswith("progress "):
                        with lock:
                            on_progress(int(line.split()[1]))
                    elif line == "done":
                        break
                    elif line.startswith("error "):
                        errors.append(f"{task['op']} {Path(task.get('out', '')).name}: {line[6:]}")
                        return
                else:
                    errors.append(f"ProMod3 worker stopped (exit status {proc.poll()})")
                    return

        threads = [threading.Thread(target=work, args=(p,), daemon=True) for p in procs]
        try:
            for th in threads:
                th.start()
            for th in threads:
                while th.is_alive():
                    th.join(0.2)
        except KeyboardInterrupt:
            errors.append("interrupted")
            raise
        if errors:
            raise RuntimeError(errors[0])


def corpus_data_files(corpus_dir: str | Path) -> dict[str, str | Path]:
    """What a model trained on this corpus records in its provenance (``learn.provenance``): the
    split definition, when the corpus has one."""
    splits = Path(corpus_dir) / "splits" / "splits.json"
    return {"corpus_splits": splits} if splits.is_file() else {}


@functools.lru_cache(maxsize=1)
def promod3_available() -> bool:
    """ProMod3 importable in the system Python and its StructureDB installed."""
    if not Path(SYSTEM_PYTHON).exists() or not STRUCTURE_DB.exists():
        return False
    r = subprocess.run([SYSTEM_PYTHON, "-c", "import promod3.loop, promod3.modelling"], capture_output=True)
    return r.returncode == 0


def _select_entries(pdb_ids: list[str], limit: int | None, seed: int, only: list[str] | None = None) -> np.ndarray:
    """Chain indices (ascending) of whole entries picked at random until ``limit`` chains."""
    allowed = np.arange(len(pdb_ids))
    if only is not None:
        keep = set(only)
        allowed = np.array([i for i, p in enumerate(pdb_ids) if p.upper() in keep], dtype=np.int64)
        if len(allowed) == 0:
            raise InputError(None, "none of the requested entries is in the source")
    if limit is None or limit >= len(allowed):
        return allowed
    by_entry: dict[str, list[int]] = {}
    for i in allowed:
        by_entry.setdefault(pdb_ids[i], []).append(int(i))
    names = sorted(by_entry)
    chosen: list[int] = []
    for j in np.random.default_rng(seed).permutation(len(names)):
        members = by_entry[names[j]]
        if len(chosen) + len(members) <= limit:
            chosen += members
        if len(chosen) == limit:
            break
    return np.array(sorted(chosen), dtype=np.int64)


def _select_sidechains(spec: str, keys: list[tuple[str, str]], seed: int) -> np.ndarray:
    """Boolean mask over ``keys`` (pdb_id, chain_id) of chains that get full atoms."""
    n = len(keys)
    mask = np.zeros(n, dtype=bool)
    if spec == "none":
        return mask
    if spec == "all":
        mask[:] = True
        return mask
    if spec.isdigit():
        k = min(int(spec), n)
        mask[np.random.default_rng(seed + 1).permutation(n)[:k]] = True
        return mask
    wanted_chains, wanted_entries = set(), set()
    for line in spec[4:].splitlines():
        parts = line.replace("_", " ").replace(":", " ").split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) == 1:
            wanted_entries.add(parts[0].upper())
        else:
            wanted_chains.add((parts[0].upper(), parts[1]))
    for i, (p, c) in enumerate(keys):
        mask[i] = p.upper() in wanted_entries or (p.upper(), c) in wanted_chains
    return mask


def _export_structure_db(out: Path, opts: _Options, db: Path, workers: int, reporter: _Progress) -> None:
    if not db.is_file():
        raise InputError(db, "ProMod3 StructureDB not found (Debian package promod3-data)")
    with _WorkerPool(workers) as pool:
        _export_structure_db_with(out, opts, db, pool, reporter)


def _export_structure_db_with(out: Path, opts: _Options, db: Path, pool: _WorkerPool, reporter: _Progress) -> None:
    listing = out / "source_chains.json"
    if not listing.is_file():
        pool.run([{"op": "list", "db": str(db), "out": str(listing)}], lambda n: None)
    rows = json.loads(listing.read_text())
    chosen = _select_entries([r["pdb_id"] for r in rows], opts.limit, opts.seed, opts.entries)
    src_index = [rows[i]["index"] for i in chosen]
    plan_bb = [
        src_index[k : k + CHAINS_PER_BACKBONE_SHARD] for k in range(0, len(src_index), CHAINS_PER_BACKBONE_SHARD)
    ]
    keys = [(rows[i]["pdb_id"], rows[i]["chain_id"]) for i in chosen]
    sc_mask = _select_sidechains(opts.sidechains, keys, opts.seed)
    sc_index = [s for s, m in zip(src_index, sc_mask) if m]
    plan_sc = [
        sc_index[k : k + CHAINS_PER_SIDECHAIN_SHARD] for k in range(0, len(sc_index), CHAINS_PER_SIDECHAIN_SHARD)
    ]
    write_json(out / "plan.json", {"backbone": plan_bb, "sidechains": plan_sc})

    for kind, plan, required, desc in (
        ("backbone", plan_bb, _BB_KEYS, "backbone"),
        ("sidechains", plan_sc, _SC_KEYS, f"side chains ({opts.rotamer_model})"),
    ):
        if not plan:
            continue
        tasks, done = [], 0
        for k, idx in enumerate(plan):
            path = out / kind / _shard_name(kind, k)
            if is_valid_npz(path, required):
                done += len(idx)
                continue
            tasks.append(
                {"op": kind, "db": str(db), "indices": idx, "out": str(path), "rotamer_model": opts.rotamer_model}
            )
        bar = reporter.task(f"{desc:<22}", total=sum(map(len, plan)), completed=done)
        if tasks:
            (out / kind).mkdir(exist_ok=True)
            pool.run(tasks, functools.partial(reporter.advance, bar))


def _shard_name(kind: str, k: int) -> str:
    return f"bb_{k:05d}.npz" if kind == "backbone" else f"sc_{k:05d}.npz"


# -- user files ------------------------------------------------------------------------------
def _list_model_files(root: Path) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(MODEL_SUFFIXES))
    if not files:
        raise InputError(root, "no PDB/mmCIF files (.pdb, .ent, .cif, .mmcif, optionally .gz) found")
    return files


def _entry_name(path: Path) -> str:
    name = path.name
    for suf in sorted(MODEL_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


def read_model_chains(path: Path, min_length: int = 5) -> list[dict]:
    """Protein chains of a model file: sequence, backbone (L, 5, 3) Å, residue numbers, heavy atoms."""
    from cryostack.io.models import read_structure

    st = read_structure(path).gemmi
    chains = []
    for chain in st[0]:
        polymer = chain.get_polymer()
        if len(polymer) < min_length or polymer.check_polymer_type() not in (
            gemmi.PolymerType.PeptideL,
            gemmi.PolymerType.PeptideD,
        ):
            continue
        n = len(polymer)
        bb = np.full((n, 5, 3), np.nan, dtype=np.float32)
        resnum = np.empty(n, dtype=np.int32)
        seq = []
        atoms = []  # (residue position, name, element, xyz)
        for r, res in enumerate(polymer):
            info = gemmi.find_tabulated_residue(res.name)
            code = info.one_letter_code.upper() if info is not None and info.is_amino_acid() else "X"
            seq.append(code if code.strip() and code != "?" else "X")
            resnum[r] = res.seqid.num
            for atom in res.first_conformer():
                if atom.is_hydrogen():
                    continue
                p = atom.pos
                if atom.name in BACKBONE_ATOMS:
                    bb[r, BACKBONE_ATOMS.index(atom.name)] = (p.x, p.y, p.z)
                atoms.append((r, atom.name, atom.element.name, (p.x, p.y, p.z)))
        chains.append(
            {"chain_id": chain.name, "sequence": "".join(seq), "backbone": bb, "resnum": resnum, "atoms": atoms}
        )
    return chains


def _ingest_user_shard(
    files: list[str], bb_out: str, sc_out: str, sc_files: list[bool], use_dssp: bool, strict: bool = False
) -> int:
    """Read ``files`` → one backbone shard (and a side-chain shard); returns chains written.

    An unreadable file is skipped and listed in ``<bb_out>.skipped.json`` (written before the
    shard, so a resumed export still knows), unless ``strict``: then it stops the export.
    """
    skipped: list[dict[str, str]] = []
    ids, chains, starts, offsets, coords, seqs, resnums = [], [], [], [0], [], [], []
    sc: dict[str, list[Any]] = {
        "pdb_id": [],
        "chain_id": [],
        "atom_offset": [0],
        "coords": [],
        "atom_name": [],
        "element": [],
        "residue": [],
    }
    for f, want_sc in zip(files, sc_files):
        entry = _entry_name(Path(f))
        try:
            file_chains = read_model_chains(Path(f))
        except (InputError, ValueError, RuntimeError, OSError) as exc:  # gemmi raises these on broken files
            problem = exc.problem if isinstance(exc, InputError) else " ".join(str(exc).split())
            if strict:
                raise InputError(f, f"unreadable model file: {problem}") from None
            skipped.append({"file": str(f), "problem": problem[:300]})
            continue
        for ch in file_chains:
            ids.append(entry)
            chains.append(ch["chain_id"])
            starts.append(int(ch["resnum"][0]))
            coords.append(ch["backbone"])
            seqs.append(ch["sequence"])
            resnums.append(ch["resnum"])
            offsets.append(offsets[-1] + len(ch["sequence"]))
            if want_sc:
                sc["pdb_id"].append(entry)
                sc["chain_id"].append(ch["chain_id"])
                sc["atom_offset"].append(sc["atom_offset"][-1] + len(ch["atoms"]))
                for r, name, el, xyz in ch["atoms"]:
                    sc["residue"].append(r)
                    sc["atom_name"].append(name)
                    sc["element"].append(el)
                    sc["coords"].append(xyz)
    arrays = {
        "pdb_id": np.array(ids, dtype="U"),
        "chain_id": np.array(chains, dtype="U"),
        "start_resnum": np.array(starts, dtype=np.int32),
        "shift": np.zeros((len(ids), 3)),
        "source_index": np.arange(len(ids), dtype=np.int64),
        "residue_offset": np.array(offsets, dtype=np.int64),
        "coords": np.concatenate(coords).reshape(-1, 5, 3) if coords else np.zeros((0, 5, 3), np.float32),
        "resnum": np.concatenate(resnums) if resnums else np.zeros(0, np.int32),
        "sequence": np.frombuffer("".join(seqs).encode(), dtype=np.uint8),
    }
    dssp = "-" * int(offsets[-1])
    if use_dssp and ids:
        dssp = _dssp_for(arrays, Path(bb_out))
    arrays["dssp"] = np.frombuffer(dssp.encode(), dtype=np.uint8)
    if sc["pdb_id"]:
        write_npz(
            sc_out,
            {
                "pdb_id": np.array(sc["pdb_id"], dtype="U"),
                "chain_id": np.array(sc["chain_id"], dtype="U"),
                "atom_offset": np.array(sc["atom_offset"], dtype=np.int64),
                "coords": np.array(sc["coords"], dtype=np.float32).reshape(-1, 3),
                "atom_name": np.array(sc["atom_name"], dtype="S4"),
                "element": np.array(sc["element"], dtype="S2"),
                "residue": np.array(sc["residue"], dtype=np.int32),
            },
        )
    write_json(Path(bb_out + ".skipped.json"), skipped)
    write_npz(bb_out, arrays)  # last: its presence marks the shard done
    return len(ids)


def _dssp_for(arrays: dict, bb_out: Path) -> str:
    """DSSP states via OpenStructure in the system Python (one worker call per shard)."""
    tmp_in = bb_out.with_name(f".{bb_out.name}.dssp-in.tmp")
    tmp_out = bb_out.with_name(f".{bb_out.name}.dssp.json.tmp")
    try:
        write_npz(tmp_in, {k: arrays[k] for k in ("residue_offset", "coords", "sequence")}, compress=False)
        task = json.dumps({"op": "dssp", "in": str(tmp_in), "out": str(tmp_out)})
        proc = subprocess.run([SYSTEM_PYTHON, str(WORKER)], input=task + "\n", capture_output=True, text=True)
        errors = [ln for ln in proc.stdout.splitlines() if ln.startswith("error ")]
        if proc.returncode != 0 or errors:
            raise RuntimeError(f"DSSP worker failed: {(errors or [proc.stderr.strip()[-300:]])[0]}")
        return "".join(json.loads(tmp_out.read_text()))
    finally:
        for p in (tmp_in, tmp_out):
            if p.exists():
                p.unlink()


def _export_user_dir(out: Path, opts: _Options, workers: int, reporter: _Progress, strict: bool = False) -> None:
    from concurrent.futures import ProcessPoolExecutor, as_completed

    root = Path(opts.source)
    files = _list_model_files(root)
    names = [_entry_name(f) for f in files]
    dup = {n for n in names if names.count(n) > 1} if len(set(names)) != len(names) else set()
    if dup:
        raise InputError(root, f"several files give the same entry name: {sorted(dup)[:5]}")
    chosen = _select_entries(names, opts.limit, opts.seed, opts.entries)  # a file is an entry; limit counts files here
    files = [files[i] for i in chosen]
    keys = [(_entry_name(f), "") for f in files]
    spec = opts.sidechains
    if spec.startswith("ids:"):  # chain-level choice is not known before reading: keep whole files
        spec = "ids:" + "\n".join(line.split()[0] for line in spec[4:].splitlines() if line.split())
    sc_mask = _select_sidechains(spec, keys, opts.seed)
    use_dssp = promod3_available() or Path(SYSTEM_PYTHON).exists() and _ost_available()
    if not use_dssp:
        reporter.log("OpenStructure (system Python) not found: DSSP states of user chains are stored as '-'")
    plan = [
        list(range(k, min(k + FILES_PER_USER_SHARD, len(files)))) for k in range(0, len(files), FILES_PER_USER_SHARD)
    ]
    write_json(out / "plan.json", {"files": [str(f) for f in files], "shards": plan})
    (out / "backbone").mkdir(exist_ok=True)
    (out / "sidechains").mkdir(exist_ok=True)
    todo, done = [], 0
    for k, idx in enumerate(plan):
        bb = out / "backbone" / _shard_name("backbone", k)
        if is_valid_npz(bb, _BB_KEYS):
            done += len(idx)
        else:
            todo.append((k, idx))
    bar = reporter.task("reading model files   ", total=len(files), completed=done)
    if not todo:
        return
    args = [
        (
            [str(files[i]) for i in idx],
            str(out / "backbone" / _shard_name("backbone", k)),
            str(out / "sidechains" / _shard_name("sidechains", k)),
            [bool(sc_mask[i]) for i in idx],
            use_dssp,
            strict,
        )
        for k, idx in todo
    ]
    if workers == 1 or len(args) == 1:
        for a in args:
            _ingest_user_shard(*a)
            reporter.advance(bar, len(a[0]))
        return
    import multiprocessing

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        futures = {ex.submit(_ingest_user_shard, *a): len(a[0]) for a in args}
        for fut in as_completed(futures):
            fut.result()
            reporter.advance(bar, futures[fut])


@functools.lru_cache(maxsize=1)
def _ost_available() -> bool:
    r = subprocess.run([SYSTEM_PYTHON, "-c", "import ost.mol, promod3.loop"], capture_output=True)
    return r.returncode == 0


# -- manifest, splits, metadata --------------------------------------------------------------
def _finalise(out: Path, opts: _Options, split_cfg: SplitConfig, workers: int, reporter: _Progress, t0) -> None:
    bb_files = sorted((out / "backbone").glob("bb_*.npz"))
    sc_files = sorted((out / "sidechains").glob("sc_*.npz")) if (out / "sidechains").is_dir() else []
    rows: list[dict[str, Any]] = []
    for f in bb_files:
        z = read_npz(f)
        off = z["residue_offset"]
        seq = z["sequence"].tobytes().decode()
        dssp = z["dssp"].tobytes().decode()
        for c in range(len(z["pdb_id"])):
            a, b = int(off[c]), int(off[c + 1])
            rows.append(
                {
                    "index": len(rows), "pdb_id": str(z["pdb_id"][c]), "chain_id": str(z["chain_id"][c]), "length": b - a,
                    "start_resnum": int(z["start_resnum"][c]), "split": "", "has_sidechains": 0, "bb_shard": f.name,
                    "bb_offset": c, "sc_shard": "", "sc_offset": -1, "sequence": seq[a:b], "dssp": dssp[a:b],
                }
            )  # fmt: skip
    if not rows:
        raise InputError(opts.source, "no protein chains found")
    where = {(r["pdb_id"], r["chain_id"]): r for r in rows}
    if len(where) != len(rows):
        raise InputError(opts.source, "the same (entry, chain) occurs twice")
    for f in sc_files:
        z = read_npz(f)
        for c in range(len(z["pdb_id"])):
            r = where[(str(z["pdb_id"][c]), str(z["chain_id"][c]))]
            r.update(has_sidechains=1, sc_shard=f.name, sc_offset=c)

    splits_dir = out / "splits"
    split_file = splits_dir / "splits.json"
    if split_file.is_file():
        stored = json.loads(split_file.read_text())
        label_of = {e: s for s, es in stored["entries"].items() for e in es}
        labels = [label_of[r["pdb_id"]] for r in rows]
    else:
        bar = reporter.task("splits (mmseqs2)      ", total=1)
        keys = [f"{r['pdb_id']}_{r['chain_id']}" for r in rows]
        entries = [r["pdb_id"] for r in rows]
        # mmseqs2 takes X for any residue it does not know
        seqs = [r["sequence"] for r in rows]
        labels, summary, report = make_splits(keys, entries, seqs, split_cfg, threads=workers)
        entries_by_split = {s: sorted({e for e, lab in zip(entries, labels) if lab == s}) for s in SPLITS}
        write_json(splits_dir / "verification.json", report)
        write_json(split_file, {"summary": summary, "entries": entries_by_split})
        reporter.advance(bar, 1)
    for r, lab in zip(rows, labels):
        r["split"] = lab

    from cryostack.io.atomic import atomic_output

    with atomic_output(out / "chains.tsv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=_TSV_COLUMNS, delimiter="\t", lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
    split_counts = {
        s: {"chains": labels.count(s), "entries": len({r["pdb_id"] for r in rows if r["split"] == s})} for s in SPLITS
    }
    info = {
        "format": CORPUS_FORMAT,
        "version": CORPUS_VERSION,
        "status": "complete",
        "source": "ProMod3 StructureDB " + str(STRUCTURE_DB) if opts.source == "promod3" else opts.source,
        "options": opts.__dict__
        | {"sidechains": opts.sidechains if not opts.sidechains.startswith("ids:") else "ids-file"},
        "n_chains": len(rows),
        "n_entries": len({r["pdb_id"] for r in rows}),
        "n_residues": int(sum(r["length"] for r in rows)),
        "n_chains_with_sidechains": int(sum(r["has_sidechains"] for r in rows)),
        "skipped_files": [
            s for f in sorted((out / "backbone").glob("bb_*.npz.skipped.json")) for s in json.loads(f.read_text())
        ],
        "backbone_atoms": list(BACKBONE_ATOMS),
        "units": {"coords": "angstrom, original PDB frame"},
        "splits": split_counts,
        "shards": {
            "backbone": {f.name: sha256(f) for f in bb_files},
            "sidechains": {f.name: sha256(f) for f in sc_files},
        },
        "created_utc": t0.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "export_wall_time_s": None,
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count()},
        "cryostack_commit": _git_commit(),
    }
    # Wall time summed over the runs that did the work (a resumed export counts every run).
    runs = _runs(out)
    if not (out / "corpus.json").is_file():
        runs = runs + [_run_record(t0, workers)]
    info["created_utc"] = runs[0]["started_utc"] if runs else info["created_utc"]
    info["export_wall_time_s"] = round(sum(r["wall_time_s"] for r in runs), 1)
    info["export_runs"] = runs
    write_json(out / "corpus.json", info)
    listing = out / "source_chains.json"
    if listing.is_file():
        listing.unlink()


def _runs(out: Path) -> list[dict]:
    f = out / "runs.json"
    return json.loads(f.read_text()) if f.is_file() else []


def _run_record(t0, workers: int) -> dict:
    now = datetime.datetime.now(datetime.UTC)
    return {
        "started_utc": t0.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "wall_time_s": round((now - t0).total_seconds(), 1),
        "workers": workers,
    }


def _git_commit() -> str:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
        return r.stdout.strip()
    except OSError:
        return ""


def disk_size_bytes(root: str | Path) -> int:
    """Bytes of all files under ``root``."""
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())


__all__ = [
    "CORPUS_VERSION",
    "ChainRecord",
    "Corpus",
    "TestSplitAccessError",
    "export_corpus",
    "promod3_available",
    "read_model_chains",
]
