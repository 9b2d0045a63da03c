"""Facts about the training corpus, measured: export cost and corpus statistics.

    python benchmarks/corpus.py stats /work/corpus            # statistics + plot of an export
    python benchmarks/corpus.py stats /work/corpus_sc --name corpus_sc_stats.json --no-plot
    python benchmarks/corpus.py sidechains --frm 40 --rrm 200  # side-chain rebuild cost per chain

``stats`` reads an exported corpus (all splits: this is evaluation-side code) and writes
``benchmarks/results/corpus_stats.json`` and ``docs/corpus_stats.png``. ``sidechains`` times
ProMod3's ``ReconstructSidechains`` on a seeded random subset of StructureDB chains, in one
worker process, and extrapolates to the whole StructureDB; results go to
``benchmarks/results/corpus_sidechains.json``. Every result records machine, date, git commit
and the load average, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _machine() -> dict:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": commit,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_1_5_15": list(os.getloadavg()),
    }


def stats(root: Path, plot: bool = True) -> dict:
    from cryostack.data.corpus import Corpus, disk_size_bytes

    c = Corpus(root)
    rows = c.table(allow_test=True)  # statistics cover the test split too (never its coordinates)
    lengths = np.array([r["length"] for r in rows])
    dssp = Counter()
    for r in rows:
        dssp.update(r["dssp"])
    total = sum(dssp.values())
    three = {
        "helix (H, G, I)": sum(dssp[k] for k in "HGI") / total,
        "strand (E, B)": sum(dssp[k] for k in "EB") / total,
        "coil (T, S, C)": sum(dssp[k] for k in "TSC") / total,
    }
    splits = {}
    for s in ("train", "val", "test"):
        sel = [r for r in rows if r["split"] == s]
        splits[s] = {
            "chains": len(sel),
            "entries": len({r["pdb_id"] for r in sel}),
            "residues": int(sum(r["length"] for r in sel)),
        }
    bins = [0, 50, 100, 150, 200, 250, 300, 400, 500, 700, 1000, 10000]
    hist, _ = np.histogram(lengths, bins=bins)
    sizes = {
        "total_bytes": disk_size_bytes(root),
        "backbone_bytes": disk_size_bytes(root / "backbone"),
        "sidechains_bytes": disk_size_bytes(root / "sidechains") if (root / "sidechains").is_dir() else 0,
        "manifest_bytes": (root / "chains.tsv").stat().st_size,
    }
    ver = json.loads((root / "splits" / "verification.json").read_text())
    split_summary = json.loads((root / "splits" / "splits.json").read_text())["summary"]
    out = {
        "corpus": str(root),
        "n_chains": len(rows),
        "n_entries": len({r["pdb_id"] for r in rows}),
        "n_residues": int(lengths.sum()),
        "chains_with_sidechains": int(sum(r["has_sidechains"] for r in rows)),
        "length": {
            "min": int(lengths.min()),
            "median": float(np.median(lengths)),
            "mean": float(lengths.mean()),
            "max": int(lengths.max()),
            "histogram_bins": bins,
            "histogram_counts": hist.tolist(),
        },  # fmt: skip
        "dssp_fraction": {k: dssp[k] / total for k in sorted(dssp)},
        "secondary_structure_3state": three,
        "splits": splits,
        "split_grouping": {
            k: split_summary[k]
            for k in ("related_pairs", "groups", "largest_group_chains", "chains_moved_to_train_after_check")
        },
        "split_verification": {k: ver[k] for k in ver if k != "violations"} | {"violations": len(ver["violations"])},
        "disk": sizes,
        "export_wall_time_s": c.info.get("export_wall_time_s"),
        "export_runs": c.info.get("export_runs"),
        "machine": _machine(),
    }
    if plot:
        _plot(lengths, dssp, splits, REPO / "docs" / "corpus_stats.png")
    return out


def _plot(lengths, dssp, splits, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    ax[0].hist(lengths, bins=np.arange(0, 1001, 20), color="#4477aa")
    ax[0].set_xlabel("chain length (residues)")
    ax[0].set_ylabel("chains")
    ax[0].set_title(
        f"{len(lengths):,} chains, median {int(np.median(lengths))} res. ({int((lengths > 1000).sum())} > 1000 not shown)",
        fontsize=10,
    )
    keys = list("HGIEBTSC")
    total = sum(dssp.values())
    ax[1].bar(keys, [100 * dssp[k] / total for k in keys], color=["#cc6677"] * 3 + ["#4477aa"] * 2 + ["#999999"] * 3)
    ax[1].set_ylabel("% of residues")
    ax[1].set_title("DSSP states")
    names = list(splits)
    ax[2].bar(names, [splits[s]["chains"] for s in names], color=["#4477aa", "#ddcc77", "#cc6677"])
    for k, s in enumerate(names):
        ax[2].text(
            k,
            splits[s]["chains"],
            f"{splits[s]['chains']:,} chains\n{splits[s]['entries']:,} entries",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax[2].set_yscale("log")
    ax[2].set_ylim(top=5 * max(splits[s]["chains"] for s in names))
    ax[2].set_title("splits (val/test: no hit ≥ 30 % identity in train)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def sidechains(n_frm: int, n_rrm: int, seed: int) -> dict:
    """Rebuild side chains of random StructureDB chains in one worker; per-chain cost and size."""
    from cryostack.data.corpus import STRUCTURE_DB, SYSTEM_PYTHON, WORKER

    listing = json.loads(_worker([{"op": "list", "db": str(STRUCTURE_DB)}], "list.json")[0])
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(listing))
    out = {"machine_before": _machine(), "structure_db_chains": len(listing), "models": {}}
    start = 0
    for model, n in (("rrm", n_rrm), ("frm", n_frm)):
        if n <= 0:
            continue
        idx = sorted(int(listing[i]["index"]) for i in order[start : start + n])
        start += n
        residues = int(sum(listing[i]["length"] for i in idx))
        with tempfile.TemporaryDirectory() as tmp:
            shard = Path(tmp) / "sc.npz"
            t0 = time.perf_counter()
            cpu0 = os.times()
            subprocess.run(
                [SYSTEM_PYTHON, str(WORKER)],
                input=json.dumps({"op": "sidechains", "db": str(STRUCTURE_DB), "indices": idx, "out": str(shard), "rotamer_model": model}) + "\n",
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            wall = time.perf_counter() - t0
            cpu1 = os.times()
            size = shard.stat().st_size
        child_cpu = (cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system)
        per_chain_cpu = child_cpu / n
        mean_len = float(np.mean([x["length"] for x in listing]))
        out["models"][model] = {
            "chains": n, "residues": residues, "wall_s": round(wall, 1), "cpu_s": round(child_cpu, 1),
            "cpu_s_per_chain": round(per_chain_cpu, 3), "cpu_s_per_residue": round(child_cpu / residues, 5),
            "shard_bytes": size, "bytes_per_residue": round(size / residues, 1),
            "extrapolated_full_db": {
                "cpu_hours": round(child_cpu / residues * sum(x["length"] for x in listing) / 3600, 2),
                "wall_hours_2_workers_if_unloaded": round(child_cpu / residues * sum(x["length"] for x in listing) / 3600 / 2, 2),
                "sidechain_shard_gb": round(size / residues * sum(x["length"] for x in listing) / 1e9, 2),
            },
            "mean_chain_length_db": mean_len,
        }  # fmt: skip
    out["machine_after"] = _machine()
    return out


def _worker(tasks: list[dict], name: str) -> list[str]:
    from cryostack.data.corpus import SYSTEM_PYTHON, WORKER

    with tempfile.TemporaryDirectory() as tmp:
        for t in tasks:
            t["out"] = str(Path(tmp) / name)
        subprocess.run(
            [SYSTEM_PYTHON, str(WORKER)],
            input="".join(json.dumps(t) + "\n" for t in tasks),
            capture_output=True,
            text=True,
            check=True,
        )
        return [Path(t["out"]).read_text() for t in tasks]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stats")
    s.add_argument("corpus", type=Path)
    s.add_argument("--name", default="corpus_stats.json", help="result file name under benchmarks/results")
    s.add_argument("--no-plot", action="store_true", help="leave docs/corpus_stats.png as it is")
    sc = sub.add_parser("sidechains")
    sc.add_argument("--frm", type=int, default=40)
    sc.add_argument("--rrm", type=int, default=200)
    sc.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.cmd == "stats":
        res, name = stats(args.corpus, plot=not args.no_plot), args.name
    else:
        res, name = sidechains(args.frm, args.rrm, args.seed), "corpus_sidechains.json"
    (RESULTS / name).write_text(json.dumps(res, indent=1) + "\n")
    json.dump(res, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
