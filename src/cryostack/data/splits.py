"""Entry-level train / val / test splits with a sequence-identity guarantee (mmseqs2).

Two chains are *related* when an mmseqs2 alignment between them has at least
``min_identity`` identical positions per aligned column (``fident``) over a meaningful
stretch: ``alnlen ≥ min_coverage × shorter length`` or ``alnlen ≥ min_aligned_residues``.
Related chains, identical sequences and chains of one PDB entry are merged with union-find;
each connected group goes whole to one split, so entries are never split and no val/test
chain is related to any train chain that the grouping saw. Groups come from mmseqs2
clustering; the guarantee is then checked with a separate, more sensitive search of val+test
against train (every hit, permissive e-value), held-out groups with a hit move to train until
the check passes, and the final check is stored beside the splits.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "val", "test")
MMSEQS = "mmseqs"


@dataclass
class SplitConfig:
    """How splits are made; stored with them."""

    val_fraction: float = 0.05  # of chains
    test_fraction: float = 0.05
    min_identity: float = 0.30  # fident: identical / aligned columns
    min_coverage: float = 0.5  # of the shorter chain
    min_aligned_residues: int = 80  # or an aligned stretch this long (shared domains)
    max_group_fraction: float = 0.01  # groups larger than this share of chains go to train
    refill_rounds: int = 3  # after a passed check, top val/test up with untried groups, re-check
    evalue: float = 1e-3
    cluster_sensitivity: float = 4.0  # mmseqs easy-cluster default
    verify_sensitivity: float = 7.5
    verify_evalue: float = 10.0  # permissive: the check looks at every hit mmseqs can report
    max_seqs: int = 1000  # prefilter hits per query kept by the verification search
    seed: int = 0
    mmseqs_version: str = field(default="")


class UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        p = self.parent
        root = i
        while p[root] != root:
            root = p[root]
        while p[i] != root:  # path compression
            p[i], i = root, p[i]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # smallest index is root: order-independent

    def groups(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))])


def mmseqs_available() -> bool:
    return shutil.which(MMSEQS) is not None


def mmseqs_version() -> str:
    try:
        return subprocess.run([MMSEQS, "version"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _write_fasta(path: Path, names: list[str], seqs: list[str]) -> None:
    with open(path, "w") as fh:
        for n, s in zip(names, seqs):
            fh.write(f">{n}\n{s}\n")


def mmseqs_search(
    queries: dict[str, str],
    targets: dict[str, str],
    *,
    sensitivity: float,
    evalue: float,
    max_seqs: int,
    threads: int = 1,
) -> list[tuple[str, str, float, int, int, int, float]]:
    """Hits ``(query, target, fident, alnlen, qlen, tlen, evalue)`` of an mmseqs2 search."""
    with tempfile.TemporaryDirectory(prefix="cryostack-mmseqs-") as tmp_dir:
        tmp = Path(tmp_dir)
        _write_fasta(tmp / "q.fasta", list(queries), list(queries.values()))
        if targets is queries:
            tpath = tmp / "q.fasta"
        else:
            tpath = tmp / "t.fasta"
            _write_fasta(tpath, list(targets), list(targets.values()))
        out = tmp / "hits.m8"
        cmd = [
            MMSEQS, "easy-search", str(tmp / "q.fasta"), str(tpath), str(out), str(tmp / "work"),
            "-s", str(sensitivity), "-e", str(evalue), "--max-seqs", str(max_seqs),
            "--alignment-mode", "3", "--threads", str(max(1, threads)), "-v", "1",
            "--format-output", "query,target,fident,alnlen,qlen,tlen,evalue",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"mmseqs easy-search failed: {proc.stderr.strip()[-500:]}")
        hits = []
        for line in out.read_text().splitlines():
            q, t, fid, aln, ql, tl, ev = line.split("\t")
            hits.append((q, t, float(fid), int(aln), int(ql), int(tl), float(ev)))
        return hits


def is_related(fident: float, alnlen: int, qlen: int, tlen: int, cfg: SplitConfig) -> bool:
    """The relation the split guarantee is about (see module docstring)."""
    long_enough = alnlen >= cfg.min_coverage * min(qlen, tlen) or alnlen >= cfg.min_aligned_residues
    return fident >= cfg.min_identity and long_enough


def related_pairs(
    keys: list[str], sequences: list[str], cfg: SplitConfig, *, threads: int = 1
) -> list[tuple[str, str]]:
    """Pairs of chain keys put together by mmseqs2 clustering of the distinct sequences.

    ``mmseqs easy-cluster --min-seq-id min_identity -c min_coverage --cov-mode 0`` (cascaded
    clustering, cheap enough for the whole StructureDB on 2 cores). Clustering does not report
    every related pair; the verification search in :func:`make_splits` catches the rest.
    """
    first_of_seq: dict[str, int] = {}
    for i, s in enumerate(sequences):
        first_of_seq.setdefault(s, i)
    unique = {keys[i]: sequences[i] for i in sorted(first_of_seq.values())}
    if len(unique) < 2:
        return []
    with tempfile.TemporaryDirectory(prefix="cryostack-mmseqs-") as tmp_dir:
        tmp = Path(tmp_dir)
        _write_fasta(tmp / "all.fasta", list(unique), list(unique.values()))
        cmd = [
            MMSEQS, "easy-cluster", str(tmp / "all.fasta"), str(tmp / "clu"), str(tmp / "work"),
            "--min-seq-id", str(cfg.min_identity), "-c", str(cfg.min_coverage), "--cov-mode", "0",
            "-s", str(cfg.cluster_sensitivity), "--threads", str(max(1, threads)), "-v", "1",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"mmseqs easy-cluster failed: {proc.stderr.strip()[-500:]}")
        pairs = []
        for line in (tmp / "clu_cluster.tsv").read_text().splitlines():
            rep, member = line.split("\t")
            if rep != member:
                pairs.append((rep, member))
        return pairs


def assign_splits(
    keys: list[str], entries: list[str], sequences: list[str], pairs: list[tuple[str, str]], cfg: SplitConfig
) -> tuple[list[str], dict]:
    """Split label for every chain (``keys[i]`` of entry ``entries[i]``) and a summary dict."""
    n = len(keys)
    uf = UnionFind(n)
    index = {k: i for i, k in enumerate(keys)}
    first_of_entry: dict[str, int] = {}
    first_of_seq: dict[str, int] = {}
    for i in range(n):
        uf.union(i, first_of_entry.setdefault(entries[i], i))
        uf.union(i, first_of_seq.setdefault(sequences[i], i))
    for q, t in pairs:
        uf.union(index[q], index[t])
    groups = uf.groups()
    summary: dict[str, Any] = {
        "related_pairs": len(pairs),
        "groups": int(len(np.unique(groups))),
        "largest_group_chains": int(np.bincount(groups).max()),
    }
    summary["_groups"] = groups
    return _label_groups(groups, cfg), summary


def _label_groups(groups: np.ndarray, cfg: SplitConfig) -> list[str]:
    return _draw(groups, cfg)[0]


def _draw(groups: np.ndarray, cfg: SplitConfig) -> tuple[list[str], list[tuple[int, int]]]:
    """Labels from groups drawn in a seeded order, and the drawable groups left in train."""
    n = len(groups)
    roots, sizes = np.unique(groups, return_counts=True)
    order = np.random.default_rng(cfg.seed).permutation(len(roots))
    candidates = [(int(roots[j]), int(sizes[j])) for j in order if sizes[j] <= max(1, cfg.max_group_fraction * n)]
    labels = ["train"] * n
    rest = _fill(candidates, groups, labels, cfg)
    return labels, rest


def _fill(
    candidates: list[tuple[int, int]], groups: np.ndarray, labels: list[str], cfg: SplitConfig
) -> list[tuple[int, int]]:
    """Move candidate groups (in order) from train to test/val up to their targets; return the rest."""
    n = len(groups)
    targets = {"test": cfg.test_fraction * n, "val": cfg.val_fraction * n}
    filled = {s: labels.count(s) for s in targets}
    placed: dict[int, str] = {}
    rest = []
    for root, size in candidates:
        for split in ("test", "val"):
            if filled[split] + size <= targets[split] + 0.5 * size:
                placed[root] = split
                filled[split] += size
                break
        else:
            rest.append((root, size))
    if placed:
        for i, g in enumerate(groups):
            if int(g) in placed:
                labels[i] = placed[int(g)]
    return rest


def verify_splits(
    keys: list[str], sequences: list[str], labels: list[str], cfg: SplitConfig, *, threads: int = 1
) -> dict:
    """Search val+test against train (sensitive, permissive e-value); report the closest hits."""
    train = {k: s for k, s, lab in zip(keys, sequences, labels) if lab == "train"}
    held = {k: s for k, s, lab in zip(keys, sequences, labels) if lab != "train"}
    report = {
        "criterion": f"fident >= {cfg.min_identity} and (alnlen >= {cfg.min_coverage} x shorter length or alnlen >= {cfg.min_aligned_residues})",
        "search": {
            "tool": "mmseqs easy-search",
            "sensitivity": cfg.verify_sensitivity,
            "evalue": cfg.verify_evalue,
            "max_seqs": cfg.max_seqs,
            "alignment_mode": 3,
        },
        "queries": len(held),
        "targets": len(train),
    }
    if not train or not held:
        report.update(hits=0, violations=[], passed=True)
        return report
    hits = mmseqs_search(
        held,
        train,
        sensitivity=cfg.verify_sensitivity,
        evalue=cfg.verify_evalue,
        max_seqs=cfg.max_seqs,
        threads=threads,
    )
    violations = [h for h in hits if is_related(h[2], h[3], h[4], h[5], cfg)]
    meaningful = [h for h in hits if h[3] >= cfg.min_coverage * min(h[4], h[5]) or h[3] >= cfg.min_aligned_residues]
    report.update(
        hits=len(hits),
        max_fident_any_hit=max((h[2] for h in hits), default=0.0),
        max_fident_meaningful_length=max((h[2] for h in meaningful), default=0.0),
        violations=[
            dict(zip(("query", "target", "fident", "alnlen", "qlen", "tlen", "evalue"), h)) for h in violations
        ],
        passed=not violations,
    )
    return report


def make_splits(
    keys: list[str], entries: list[str], sequences: list[str], cfg: SplitConfig, *, threads: int = 1
) -> tuple[list[str], dict, dict]:
    """Splits, their summary and the stored verification.

    The verification searches more sensitively than the clustering; a val/test chain it finds
    related to a train chain moves, with its whole group, to train, and the check is repeated
    (train only grows, so this ends). After a passed check, val/test below target are topped up
    with groups not drawn yet (``refill_rounds`` times), each time checked again.
    """
    if not mmseqs_available():
        raise RuntimeError("mmseqs2 not found (Debian package mmseqs2); it is needed to make the splits")
    cfg.mmseqs_version = mmseqs_version()
    pairs = related_pairs(keys, sequences, cfg, threads=threads)
    _, summary = assign_splits(keys, entries, sequences, pairs, cfg)
    groups = summary.pop("_groups")
    labels, rest = _draw(groups, cfg)
    index = {k: i for i, k in enumerate(keys)}
    moved = []
    refills = 0
    while True:
        report = verify_splits(keys, sequences, labels, cfg, threads=threads)
        if not report["passed"]:
            bad_groups = {groups[index[v["query"]]] for v in report["violations"]}
            for i, g in enumerate(groups):
                if g in bad_groups and labels[i] != "train":
                    moved.append(keys[i])
                    labels[i] = "train"
            continue  # train only grew: re-check (terminates, held-out groups are finite)
        if refills >= cfg.refill_rounds or not rest:
            break
        before = len(rest)
        rest = _fill(rest, groups, labels, cfg)  # top val/test up with groups not tried yet
        refills += 1
        if len(rest) == before:
            break
    report["refill_rounds_done"] = refills
    summary["refill_rounds_done"] = refills
    report["chains_moved_to_train_after_check"] = len(moved)
    summary["chains_moved_to_train_after_check"] = len(moved)
    summary["config"] = asdict(cfg)
    summary["counts"] = {
        s: {"chains": labels.count(s), "entries": len({e for e, lab in zip(entries, labels) if lab == s})}
        for s in SPLITS
    }
    return labels, summary, report


def write_json(path: Path, obj) -> None:
    from cryostack.io.atomic import atomic_output

    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
