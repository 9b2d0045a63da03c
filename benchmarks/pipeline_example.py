"""Wall time of the bundled end-to-end example (``cryostack demo --full``) on this machine.

Goal (issue 21): the whole chain on 2 CPU cores in at most 30 min. Runs the example into
``--work`` (a rerun resumes it, so time a fresh folder) and writes
``benchmarks/results/pipeline_example.json``: total wall time, each stage's status and wall time,
the final map's resolution, the docking fit and the model's CC_mask, with machine, date and
commit. ``--collect DIR`` records a finished run from its ``report.json`` instead, with the total
wall time measured outside (``--wall-s``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

from cryostack.io.atomic import atomic_output
from cryostack.learn.provenance import git_commit, machine_info

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "pipeline_example.json"
GOAL_MIN = 30.0


def summarise(report: dict, wall_s: float) -> dict:
    stages = {s["stage"]: {"status": s["status"], "wall_s": s["wall_s"]} for s in report["stages"]}
    dock = next((s for s in report["stages"] if s["stage"] == "dock"), {})
    mm = (report.get("validation") or {}).get("map_model") or {}
    final = (report.get("particles") or {}).get("final") or {}
    return {
        "wall_min": round(wall_s / 60, 2),
        "goal_min": GOAL_MIN,
        "meets_goal": wall_s / 60 <= GOAL_MIN,
        "stages": stages,
        "particles": {
            "input": (report.get("particles") or {}).get("particles"),
            "chosen": (report.get("particles") or {}).get("chosen"),
        },  # fmt: skip
        "final_map_resolution_A": final.get("resolution_A"),
        "dock": (dock.get("info") or {}).get("alignment"),
        "model_cc_mask": mm.get("cc_mask"),
        "model_fsc05_A": mm.get("fsc05_resolution"),
        "settings": next((s["params"] for s in report["stages"] if s["stage"] == "particles"), None),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", type=Path, default=Path("bench_pipeline_example"))
    ap.add_argument("--collect", type=Path, help="record a finished run folder (DIR/run/report.json)")
    ap.add_argument("--wall-s", type=float, help="with --collect: the run's measured total wall time")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    if args.collect is not None:
        if args.wall_s is None:
            ap.error("--collect needs --wall-s")
        report, wall_s = json.loads((args.collect / "run" / "report.json").read_text()), args.wall_s
    else:
        from cryostack.pipeline.config import load_config
        from cryostack.pipeline.example import make_example
        from cryostack.pipeline.run import run_pipeline

        t0 = time.perf_counter()
        example = make_example(args.work / "example")
        cfg, text = load_config(example.config)
        run_pipeline(args.work / "run", example.inputs, cfg, text, progress=False)
        wall_s = time.perf_counter() - t0
        report = json.loads((args.work / "run" / "report.json").read_text())
    row = {
        "benchmark": "cryostack demo --full (bundled end-to-end example)",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine_info(),
        "note": args.note,
        **summarise(report, wall_s),
    }
    with atomic_output(RESULTS) as tmp:
        tmp.write_text(json.dumps(row, indent=1, default=str))
    print(f"{row['wall_min']} min (goal {GOAL_MIN} min); wrote {RESULTS}")


if __name__ == "__main__":
    main()
