"""Do refinement rows reproduce at the current commit? Rerun cases and compare with a results file.

Reruns the given cases and methods through ``benchmarks/refine.py`` (each in its own process,
with a fresh work folder) and writes, per (case, method), the old and new value of every
quality number and their difference, with the tolerance each is judged by. Wall time is reported
but not judged (machines and load differ).

    .venv/bin/python benchmarks/refine_compare.py --cases 4uft,6vrc,6ksw --methods input,direct \\
        --reference benchmarks/results/refine_cpu.json --out benchmarks/results/refine_reproduce_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Quality numbers compared, with the absolute difference counted as noise. Refinement runs on the
#: CPU in float32 with threaded reductions, so repeated runs differ in the last digits; the
#: tolerances are those differences seen between reruns of one commit, not targets.
TOLERANCE = {
    "cc_mask": 0.005,
    "cc_box": 0.005,
    "cc_mc": 0.005,
    "cc_sc": 0.005,
    "cc_peaks": 0.01,
    "cc_volume": 0.005,
    "bond_rmsd_A": 0.0005,
    "angle_rmsd_deg": 0.05,
    "rama_favored_pct": 0.5,
    "rama_outlier_pct": 0.2,
    "rotamer_outlier_pct": 0.5,
    "cbeta_deviations": 1,
    "clashscore": 0.5,
}


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="4uft,6vrc,6ksw")
    ap.add_argument("--methods", default="input,direct")
    ap.add_argument("--reference", default=str(ROOT / "benchmarks" / "results" / "refine_cpu.json"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "refine_reproduce_cpu.json"))
    ap.add_argument("--work", default=None, help="work folder (default: a fresh temporary one)")
    args = ap.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="cryostack_refine_reproduce_"))
    new_file = work / "rows.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "refine.py"), "--cases", args.cases, "--methods", args.methods,
         "--work", str(work), "--out", str(new_file)],
        check=True,
    )  # fmt: skip
    old_rows = json.loads(Path(args.reference).read_text())["rows"]
    new_rows = json.loads(new_file.read_text())["rows"]
    comparisons, all_within = [], True
    for new in new_rows:
        old = next((r for r in old_rows if r["case"] == new["case"] and r["method"] == new["method"]), None)
        if old is None:
            continue
        numbers = {}
        for key, tol in TOLERANCE.items():
            a, b = old.get(key), new.get(key)
            if a is None or b is None:
                numbers[key] = {"old": a, "new": b, "within_noise": a is None and b is None}
            else:
                ok = abs(b - a) <= tol
                numbers[key] = {"old": a, "new": b, "diff": b - a, "tolerance": tol, "within_noise": ok}
            all_within &= numbers[key]["within_noise"]
        comparisons.append(
            {
                "case": new["case"],
                "method": new["method"],
                "old_commit": old.get("git_commit"),
                "new_commit": new.get("git_commit"),
                "numbers": numbers,
                "wall_s": {"old": old.get("wall_s"), "new": new.get("wall_s")},
                "recycles": {"old": old.get("recycles"), "new": new.get("recycles")},
            }
        )
    wanted = {(c, m) for c in args.cases.split(",") for m in args.methods.split(",")}
    missing = sorted(f"{c} {m}" for c, m in wanted - {(x["case"], x["method"]) for x in comparisons})
    all_within = all_within and not missing  # a row that did not run reproduces nothing
    result = {
        "benchmark": "refine rows rerun at a new commit and compared with a results file",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": _commit(),
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "reference": str(Path(args.reference).relative_to(ROOT)),
        "cases": args.cases.split(","),
        "methods": args.methods.split(","),
        "all_within_noise": all_within,
        "not_compared": missing,
        "comparisons": comparisons,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({c["case"]: {k: v.get("diff") for k, v in c["numbers"].items()} for c in comparisons}, indent=1))
    print("all within noise:", all_within)


if __name__ == "__main__":
    main()
