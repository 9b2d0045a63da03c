"""How many rounds does refinement need? Refine cases again and again from their own output, one round at a time.

Each round is ``refine()`` with ``max_rounds=1`` (coarse, rigid-body, per-atom and rotamer
stages; the B-factor fit off, so only placement is measured) from the previous round's model,
exactly what one round of the default ``refine()`` does: the density mask is rebuilt around the
current model and Adam's step starts afresh. Per round: the Cα RMS shift (the default stopping
criterion), the density CC and, on simulated cases, the Cα error against the model the map was
simulated from. The summary says, for several tolerances, after which round the criterion
stops, and the error and time that buys. Cases come from ``benchmarks/refine.py``'s cache
(``--work``), or are made there. (An earlier run found a second round of the per-atom stage
alone, without coarse and rigid-body placement, worse: 1.79 vs 1.62 Å mean Cα error.)

    .venv/bin/python benchmarks/refine_rounds.py --corpus /work/corpus_sc --split-from /work/corpus \
        --work /work/bench/refine --chains 0,1,2,3,4,5 --real 4uft,spike_ntd,factin --rounds 6
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refine as bench  # noqa: E402  (the refinement benchmark's case preparation and machine record)

RESULTS = bench.ROOT / "benchmarks" / "results" / "refine_rounds_cpu.json"
from cryostack.refine.api import ROUND_TOLERANCE_PER_RESOLUTION, RefineConfig  # noqa: E402

#: One round: the default refinement with a single round and no B-factor fit.
BASE = dict(method="direct", refine_b_factors=False, max_rounds=1)


def ca_error_A(model, truth) -> float:
    """Mean Cα distance (Å) between ``model`` and ``truth``, matched by chain, residue number."""

    def cas(st):
        a = st.atoms()
        return {
            (a.chain_ids[a.chain_index[i]], int(a.residue_numbers[a.residue_index[i]])): a.coords[i]
            for i in range(a.n_atoms)
            if a.atom_names[i] == "CA"
        }

    m, t = cas(model), cas(truth)
    keys = [k for k in m if k in t]
    return float(np.mean([np.linalg.norm(m[k] - t[k]) for k in keys]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--split-from", default=None)
    ap.add_argument("--work", required=True)
    ap.add_argument("--chains", default="0,1,2,3,4,5", help="positions in the list of simulated test chains")
    ap.add_argument("--real", default="4uft,spike_ntd,factin", help="real cases of benchmarks/refine.py")
    ap.add_argument("--resolution", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="JSON",
        help="only assemble the rows of earlier runs (e.g. cases split over two processes) into --out",
    )
    args = ap.parse_args()
    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        rows = [row for part in parts for row in part["rows"]]
        for row in rows:  # rows of runs that predate the field: the case's cached record has it
            row.setdefault("resolution_A", bench.prepare(row["case"], Path(args.work))["resolution_A"])
        extra = {"merged_from": [{"file": f, "machine": part["machine"]} for f, part in zip(args.merge, parts)]}
        write(rows, args, extra)
        return

    import torch

    torch.set_num_threads(1)
    from cryostack.io.maps import read_map
    from cryostack.io.models import read_structure
    from cryostack.refine import LossWeights, refine

    work = Path(args.work)
    sims = [
        c
        for c in bench.sim_cases(Path(args.corpus), 30, Path(args.split_from) if args.split_from else None)
        if float(c.rsplit(":", 1)[1]) == args.resolution
    ]
    cases = [sims[int(i)] for i in args.chains.split(",") if i.strip()]
    cases += [c for c in args.real.split(",") if c in bench.REAL and (bench.SHARED / bench.REAL[c][0]).exists()]
    out = []
    for case in cases:
        info = bench.prepare(case, work)
        truth = read_structure(info["truth"]) if info.get("truth") else None
        density = read_map(info["map"])
        model = read_structure(info["model"])
        row = {
            "case": case,
            "kind": info["kind"],
            "n_residues": info["n_residues"],
            "resolution_A": info["resolution_A"],
            "start_ca_error_A": ca_error_A(model, truth) if truth else None,
            "rounds": [],
        }
        for k in range(args.rounds):
            t0 = time.perf_counter()
            model, result = refine(model, density, info["resolution_A"], RefineConfig(**BASE), LossWeights())
            r = result.rounds[0]
            row["rounds"].append(
                {
                    "ca_error_A": ca_error_A(model, truth) if truth else None,
                    "ca_shift_rms_A": r.ca_shift_rms_A,
                    "atom_shift_rms_A": r.atom_shift_rms_A,
                    "cc": r.cc,
                    "loss": r.loss,
                    "wall_s": time.perf_counter() - t0,
                }
            )
            print(f"{case} round {k + 1}: {row['rounds'][-1]}", flush=True)
        out.append(row)
    write(out, args, {})


def write(out: list[dict], args, extra: dict) -> None:
    """The summary of ``out`` (one row per case) with the machine record, written to ``args.out``."""
    sim_rows = [r for r in out if r["kind"] == "simulated"]
    # Real maps with a reference (the deposited model, perturbed for the start): not the truth of
    # the map, so a growing distance to it is drift, not necessarily error.
    ref_rows = [r for r in out if r["kind"] != "simulated" and r["start_ca_error_A"] is not None]
    n_rounds = min(len(r["rounds"]) for r in out)

    cap = RefineConfig().max_rounds

    def stop_round(row, tol):  # the round the criterion stops after (1-based); tol "d": the default
        t = ROUND_TOLERANCE_PER_RESOLUTION * row["resolution_A"] if tol == "d" else tol
        shifts = [r["ca_shift_rms_A"] for r in row["rounds"]][: cap if tol == "d" else None]
        return next((k + 1 for k, v in enumerate(shifts) if v < t), len(shifts))

    by_tolerance = {}
    for tol in ("d", 0.05, 0.1, 0.15, 0.2, 0.3, 0.5):
        stops = [stop_round(r, tol) for r in out]
        key = f"default (0.05 × resolution, at most {cap} rounds)" if tol == "d" else f"{tol} (no cap)"
        by_tolerance[key] = {
            "mean_rounds": float(np.mean(stops)),
            "rounds_per_case": dict(zip([r["case"] for r in out], stops)),
            "mean_ca_error_A_simulated": float(np.mean([r["rounds"][stop_round(r, tol) - 1]["ca_error_A"] for r in sim_rows])) if sim_rows else None,
            "ca_distance_to_deposited_A_real": {r["case"]: r["rounds"][stop_round(r, tol) - 1]["ca_error_A"] for r in ref_rows},
            "wall_s_total": float(sum(sum(x["wall_s"] for x in r["rounds"][: stop_round(r, tol)]) for r in out)),
        }  # fmt: skip
    doc = {
        "benchmark": "refine_rounds",
        "machine": bench.machine(),
        **extra,
        "settings": {"resolution_A": args.resolution, "rounds": n_rounds, "config": BASE},
        "mean_start_ca_error_A_simulated": float(np.mean([r["start_ca_error_A"] for r in sim_rows]))
        if sim_rows
        else None,
        "mean_ca_error_A_by_round_simulated": [
            float(np.mean([r["rounds"][k]["ca_error_A"] for r in sim_rows])) for k in range(n_rounds)
        ]
        if sim_rows
        else None,
        "mean_ca_shift_rms_A_by_round": [
            float(np.mean([r["rounds"][k]["ca_shift_rms_A"] for r in out])) for k in range(n_rounds)
        ],
        "stopping_by_round_tolerance_A": by_tolerance,
        "rows": out,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
