"""Is one pass of the direct optimiser converged? Refine simulated cases again and again from its own output.

Each round is a full ``refine()`` call (coarse, rigid-body and per-atom stages; B-factor and
rotamer fitting off, so only placement is measured) starting from the previous round's model,
so the density mask is rebuilt around the current model and Adam's step starts afresh. A
second variant of round 2 runs the per-atom stage only. The error is measured on Cα atoms
against the model the map was simulated from. Cases come from ``benchmarks/refine.py``'s cache
(``--work``), or are made there.

    .venv/bin/python benchmarks/refine_rounds.py --corpus /work/simtest/corpus --split-from /work/corpus \
        --work /work/simtest/bench --chains 4,7,20,25 --rounds 4
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
    ap.add_argument("--chains", default="4,7,20,25")
    ap.add_argument("--resolution", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from cryostack.io.maps import read_map
    from cryostack.io.models import read_structure
    from cryostack.refine import LossWeights, RefineConfig, refine

    work = Path(args.work)
    all_cases = bench.sim_cases(Path(args.corpus), 30, Path(args.split_from) if args.split_from else None)
    wanted = {int(c) for c in args.chains.split(",")}
    cases = [c for c in all_cases if int(c.split(":")[2]) in wanted and float(c.rsplit(":", 1)[1]) == args.resolution]
    base = dict(method="direct", refine_b_factors=False, fit_rotamers=False)
    out = []
    for case in cases:
        info = bench.prepare(case, work)
        truth, density = read_structure(info["truth"]), read_map(info["map"])
        model = read_structure(info["model"])
        row = {
            "case": case,
            "n_residues": info["n_residues"],
            "start_ca_error_A": ca_error_A(model, truth),
            "rounds": [],
        }
        for k in range(args.rounds):
            t0 = time.perf_counter()
            model, result = refine(model, density, info["resolution_A"], RefineConfig(**base), LossWeights())
            row["rounds"].append(
                {
                    "ca_error_A": ca_error_A(model, truth),
                    "loss": result.history[result.best_recycle].loss,
                    "wall_s": time.perf_counter() - t0,
                }
            )
            if k == 0:
                first = model
            print(f"{case} round {k + 1}: Cα error {row['rounds'][-1]['ca_error_A']:.2f} Å", flush=True)
        again, _ = refine(
            first, density, info["resolution_A"], RefineConfig(**base, coarse_recycles=0, rigid_steps=0), LossWeights()
        )
        row["round2_per_atom_stage_only_ca_error_A"] = ca_error_A(again, truth)
        out.append(row)
    doc = {
        "benchmark": "refine_rounds",
        "machine": bench.machine(),
        "settings": {"resolution_A": args.resolution, "rounds": args.rounds, "config": base},
        "mean_ca_error_A_by_round": [
            float(np.mean([r["rounds"][k]["ca_error_A"] for r in out])) for k in range(args.rounds)
        ],
        "mean_start_ca_error_A": float(np.mean([r["start_ca_error_A"] for r in out])),
        "mean_round2_per_atom_stage_only_ca_error_A": float(
            np.mean([r["round2_per_atom_stage_only_ca_error_A"] for r in out])
        ),
        "rows": out,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
