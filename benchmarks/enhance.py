"""Map enhancement side by side: input, Guinier auto-sharpening, the U-Net trained without
structure embeddings (the ablation) and with them, judged against the true or deposited model.

Run from the repository root (after ``cryostack data corpus --sidechains`` and training)::

    .venv/bin/python benchmarks/enhance.py --corpus /work/corpus_sc \\
        --model unet_structure=/work/runs/enh_struct/enhancer.pt \\
        --model unet_no_structure=/work/runs/enh_nostruct/enhancer.pt

``--model`` may be repeated (``name=checkpoint``); without any, the packaged checkpoint is run as
``unet_packaged``. (The committed result ran the two training runs' checkpoints by path; the
packaged ``map_enhancer_v1`` is its ``unet_no_structure``, sha256 ``fe61c444…``.) Every (map, method) result is cached under ``--work`` keyed by the checkpoint's
sha256, so an interrupted run resumes and a new checkpoint reuses the other rows.

Rows
----
* **Held-out simulated maps**: test-split chains with side chains (never seen in training or
  validation), ``--per-resolution`` chains at each of 4, 5, 6, 7 and 8 Å, each a whole-chain box
  at a voxel size drawn from 0.9–1.4 Å (the network works at 1 Å, so resampling is exercised),
  degraded by the data module (coloured noise at the FSC-0.143 level, B-factor blur, local
  resolution, missing density, ligands, solvent blobs, masks). Judged against the true model.
* **Real maps with deposited models**: EMD-5168 F-actin (6.6 Å) full box and its one-subunit cut
  against 3MFP (one subunit: CC_mask is the meaningful number in the full box), and the
  EMD-21457 spike NTD cut-out (3.2 Å deposited) low-passed to 6 Å with coloured noise added at the
  FSC-0.143 level for 6 Å (so it is a degraded real map, said in the row), against 6VYB's NTD.
* **Speed**: ``cryostack.enhance.enhance_map`` on a 200³ map at 1 Å in a fresh subprocess with
  the run's thread count: wall seconds and peak resident memory (``ru_maxrss``).

Metrics (``cryostack.validate.mapfit.map_model_fit`` at the map's resolution): CC_box, CC_mask,
CC_volume, CC_peaks, and the map–model FSC 0.5 resolution. Every number is measured here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "maps"
RESOLUTIONS_A = (4.0, 5.0, 6.0, 7.0, 8.0)
METRICS = ("cc_box", "cc_mask", "cc_volume", "cc_peaks", "fsc05_resolution")
GOALS = {"cc_box_gain": 0.10, "fsc05_gain_A": 1.0}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _fit(structure, density, resolution_A: float) -> dict[str, float | None]:
    from cryostack.validate.mapfit import map_model_fit

    fit = map_model_fit(structure, density, resolution_A, compute_q=False)
    return {k: getattr(fit, k) for k in ("cc_box", "cc_mask", "cc_volume", "cc_peaks", "fsc05_resolution")}


def simulated_cases(corpus_dir: Path, per_resolution: int, seed: int) -> list[dict[str, Any]]:
    """Whole-chain simulated maps of test-split chains (distinct chains across resolutions)."""
    from cryostack.data.corpus import Corpus
    from cryostack.data.synthetic import SimulationConfig, item_structure, simulate_item
    from cryostack.enhance.train import full_atom_indices

    corpus = Corpus(corpus_dir)
    test = full_atom_indices(corpus, "test", allow_test=True)
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(test)[: per_resolution * len(RESOLUTIONS_A)]
    if len(chosen) < per_resolution * len(RESOLUTIONS_A):
        raise SystemExit(f"{corpus_dir}: only {len(test)} test chains with side chains")
    cases = []
    for k, idx in enumerate(chosen):
        res = RESOLUTIONS_A[k // per_resolution]
        vox = float(np.round(rng.uniform(0.9, 1.4), 3))
        structure = corpus.structure(int(idx), allow_test=True)
        row = corpus.table()[int(idx)]
        atoms = structure.atoms()
        xyz = atoms.coords[~atoms.is_hydrogen]
        diameter = 2.0 * float(np.linalg.norm(xyz - xyz.mean(0), axis=1).max())
        n = int(np.ceil((diameter + 16.0) / vox / 2.0) * 2)
        cfg = SimulationConfig(resolution_A=(res, res), voxel_size_A=vox, crop_voxels=min(n, 160))
        item = simulate_item(atoms, cfg, seed=seed * 1000 + int(idx))
        cases.append(
            {
                "id": f"test_{int(idx):05d}_{res:g}A",
                "kind": "simulated",
                "resolution_A": res,
                "voxel_size_A": vox,
                "chain": f"{row['pdb_id']}_{row['chain_id']}",
                "density": item.input_map,
                "structure": item_structure(structure, item),
            }
        )
    return cases


def real_cases(seed: int) -> list[dict[str, Any]]:
    from cryostack.data.degradations import add_resolution_noise
    from cryostack.density.fourier import low_pass
    from cryostack.io.maps import read_map
    from cryostack.io.models import read_structure

    cases = []
    actin = read_structure(SHARED / "emd_5168_factin" / "3MFP.pdb")
    for name in ("emd_5168.map", "emd_5168_monomer.mrc"):
        cases.append(
            {
                "id": f"EMD-5168 {name}",
                "kind": "real",
                "note": "deposited map; 3MFP is one subunit of the filament"
                + (" (the full box holds more: CC_mask is the number to read)" if name == "emd_5168.map" else ""),
                "resolution_A": 6.6,
                "density": read_map(SHARED / "emd_5168_factin" / name),
                "structure": actin,
            }
        )
    ntd = read_map(SHARED / "emd_21457_spike_ntd_segment" / "emd_21457_seg.mrc")
    low = low_pass(ntd, 6.0)
    noisy, _ = add_resolution_noise(low.data, low.voxel_size, 6.0, np.random.default_rng(seed))
    cases.append(
        {
            "id": "EMD-21457 NTD at 6 Å",
            "kind": "real (degraded)",
            "note": "3.2 Å deposited cut-out low-passed to 6 Å plus coloured noise at the FSC-0.143 level for 6 Å",
            "resolution_A": 6.0,
            "density": ntd.with_data(noisy),
            "structure": read_structure(SHARED / "emd_21457_spike_ntd_segment" / "6vyb_Ndom.pdb"),
        }
    )
    return cases


def run_method(method: str, ckpt: Path | None, case: dict[str, Any], models: dict[str, Any]):
    from cryostack.density.sharpen import auto_sharpen
    from cryostack.enhance.api import EnhanceConfig, enhance_map

    density, res = case["density"], case["resolution_A"]
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if method == "input":
        out = density
    elif method == "auto_sharpen":
        out, fit = auto_sharpen(density, res)
        extra["guinier_b_A2"] = round(fit.b_factor_A2, 1)
    else:
        out = enhance_map(density, models[method], EnhanceConfig(), resolution_A=res).enhanced
    wall = time.perf_counter() - t0
    return {**_fit(case["structure"], out, res), "wall_s": round(wall, 2), **extra}


def speed(ckpt: Path, threads: int, edge: int = 200) -> dict[str, Any]:
    """Enhance a 200³ map at 1 Å in a fresh process; wall time and peak RSS."""
    code = f"""
import json, resource, time, numpy as np, torch
torch.set_num_threads({threads})
from cryostack.enhance.api import EnhanceConfig, enhance_map, load_model
from cryostack.io.maps import DensityMap
rng = np.random.default_rng(0)
m = DensityMap(rng.normal(size=({edge},) * 3).astype(np.float32), (1.0, 1.0, 1.0))
model = load_model({str(ckpt)!r})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
r = enhance_map(m, model, EnhanceConfig())
print(json.dumps({{"wall_s": round(time.perf_counter() - t0, 1), "tiles": r.info["tiles"],
  "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
  "rss_before_MiB": round(base / 1024, 1)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {"map_voxels": f"{edge}^3", "voxel_size_A": 1.0, "threads": threads, **json.loads(out.stdout.strip())}


def summarise(rows: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for kind in sorted({r["kind"] for r in rows}):
        sub = [r for r in rows if r["kind"] == kind]
        per: dict[str, Any] = {}
        for m in methods:
            vals = {k: [r["methods"][m][k] for r in sub if r["methods"][m].get(k) is not None] for k in METRICS}
            per[m] = {f"mean_{k}": (round(float(np.mean(v)), 4) if v else None) for k, v in vals.items()}
            if m != "input":
                gain = [r["methods"][m]["cc_box"] - r["methods"]["input"]["cc_box"] for r in sub]
                fsc = [
                    r["methods"]["input"]["fsc05_resolution"] - r["methods"][m]["fsc05_resolution"]
                    for r in sub
                    if r["methods"][m]["fsc05_resolution"] and r["methods"]["input"]["fsc05_resolution"]
                ]
                mask = [r["methods"][m]["cc_mask"] - r["methods"]["input"]["cc_mask"] for r in sub]
                per[m]["mean_cc_box_gain"] = round(float(np.mean(gain)), 4)
                per[m]["mean_fsc05_gain_A"] = round(float(np.mean(fsc)), 3) if fsc else None
                per[m]["min_cc_mask_gain"] = round(float(np.min(mask)), 4)
        if kind == "simulated":
            by_res = {}
            for res in RESOLUTIONS_A:
                rs = [r for r in sub if r["resolution_A"] == res]
                by_res[f"{res:g}"] = {
                    m: {
                        "mean_cc_box": round(float(np.mean([r["methods"][m]["cc_box"] for r in rs])), 4),
                        "mean_fsc05_resolution": round(
                            float(np.mean([r["methods"][m]["fsc05_resolution"] or np.nan for r in rs])), 3
                        ),
                    }
                    for m in methods
                }
            per["by_resolution"] = by_res
        summary[kind] = per
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, required=True, help="corpus with side chains (its test split is used)")
    ap.add_argument("--model", action="append", default=[], help="name=checkpoint (repeatable)")
    ap.add_argument("--per-resolution", type=int, default=3, help="held-out chains per resolution")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--speed-model", default=None, help="which --model to time on 200³ (default: the first)")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cryostack_bench_enhance"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "enhance.json")
    args = ap.parse_args()

    import torch
    from rich.progress import Progress

    from cryostack.enhance.api import load_model
    from cryostack.learn.provenance import provenance

    torch.set_num_threads(args.threads)
    specs: dict[str, Path | None] = {}
    for s in args.model:
        name, _, path = s.partition("=")
        specs[name] = Path(path)
    if not specs:
        from cryostack.enhance.api import DEFAULT_MODEL
        from cryostack.learn.registry import packaged_checkpoint

        specs["unet_packaged"] = Path(packaged_checkpoint(DEFAULT_MODEL))
    models = {name: load_model(p) for name, p in specs.items()}
    methods = ["input", "auto_sharpen", *specs]
    keys = {m: (_sha(p) if p else "v1") for m, p in specs.items()}
    args.work.mkdir(parents=True, exist_ok=True)
    cache_file = args.work / "cache.jsonl"
    cache: dict[str, Any] = {}
    if cache_file.is_file():
        for line in cache_file.read_text().splitlines():
            rec = json.loads(line)
            cache[rec["key"]] = rec["value"]

    cases = simulated_cases(args.corpus, args.per_resolution, args.seed) + real_cases(args.seed)
    rows = []
    with Progress() as bar:
        task = bar.add_task("maps × methods", total=len(cases) * len(methods))
        for case in cases:
            row = {k: v for k, v in case.items() if k not in ("density", "structure")}
            row["shape_zyx"] = list(case["density"].shape)
            row["methods"] = {}
            for m in methods:
                key = f"{args.seed}|{case['id']}|{m}|{keys.get(m, 'baseline')}"
                if key not in cache:
                    cache[key] = run_method(m, specs.get(m), case, models)
                    with cache_file.open("a") as fh:
                        fh.write(json.dumps({"key": key, "value": cache[key]}) + "\n")
                row["methods"][m] = cache[key]
                bar.advance(task)
            rows.append(row)

    summary = summarise(rows, methods)
    speed_rows = []
    if not args.no_speed:
        name = args.speed_model or next(iter(specs))
        speed_rows.append({"model": name, **speed(specs[name], args.threads)})  # type: ignore[arg-type]
    prov = provenance({"corpus_splits": args.corpus / "splits" / "splits.json"})
    sim = summary.get("simulated", {})
    goals = {
        m: {
            "cc_box_gain_goal": GOALS["cc_box_gain"],
            "cc_box_gain": sim.get(m, {}).get("mean_cc_box_gain"),
            "fsc05_gain_goal_A": GOALS["fsc05_gain_A"],
            "fsc05_gain_A": sim.get(m, {}).get("mean_fsc05_gain_A"),
            "real_maps_cc_mask_not_below_input": all(
                r["methods"][m]["cc_mask"] >= r["methods"]["input"]["cc_mask"] for r in rows if r["kind"] != "simulated"
            ),
        }
        for m in specs
    }
    result = {
        "benchmark": "enhance",
        "date": prov["date_utc"],
        "git_commit": prov["git_commit"],
        "machine": prov["machine"],
        "threads": args.threads,
        "corpus": str(args.corpus),
        "corpus_splits_sha256": prov["data_sha256"].get("corpus_splits"),
        "checkpoints": {m: {"path": str(p), "sha256_16": keys[m]} for m, p in specs.items()},
        "methods": methods,
        "summary": summary,
        "goals": goals,
        "speed": speed_rows,
        "rows": rows,
        "paper_anchors": {"cryosamu_cc_box": [0.731, 0.834], "cryosamu_fsc05_A": [6.12, 5.11], "note": "their data"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=float))
    tmp.replace(args.out)
    print(json.dumps({"summary": summary, "goals": goals, "speed": speed_rows}, indent=1))


if __name__ == "__main__":
    main()
