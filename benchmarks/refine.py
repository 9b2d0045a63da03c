"""Refinement benchmark: our optimisers (direct, diffusion) and servalcat (defaults, and a tighter-geometry variant) side by side.

Cases
-----
* real: the three ``../shared/data/maps/cryonet_refine_boxed`` maps from their AlphaFold3 starting
  models (benchmark use only: nothing of them enters the repository), and the spike NTD
  (EMD-21457 / 6VYB, 3.2 Å) and F-actin (EMD-5168 / 3MFP, 6.6 Å) maps from perturbed deposited
  models (noise 0.3 Å per axis plus a 1.5 Å rigid shift, seeded).
* damaged (``damaged:<real case>``): the real case's reference model (deposited, or the AF3
  model) with 0.7 Å coordinate noise per axis and every chain turned 5° and shifted 3 Å: a badly
  placed start, judged by its geometry after refinement (Ramachandran outliers ≤ 0.5 %).
* simulated: test-split chains of a cryostack corpus with full atoms (chains the first
  denoiser, v1, saw in training excluded); the truth's map simulated at 3, 4.5 and 6 Å on voxels of d/3
  (1, 1.5, 2 Å) with coloured noise at
  the level where two independent copies reach FSC 0.143 at that resolution
  (:func:`cryostack.data.degradations.add_resolution_noise`, noise B −30 Å²), starting models
  perturbed with coordinate noise (0.3 Å per axis) and rigid shifts of 2–5 Å of two spatial halves.

Every (case, method) runs in its own process so that wall time and peak memory (max RSS of the
process and the children it starts) are its own. Finished runs are cached as JSON under
``--work`` and skipped on a rerun, so an interrupted benchmark resumes. The summary goes to
``benchmarks/results/refine_cpu.json`` with machine, date and git commit.

    .venv/bin/python benchmarks/refine.py [--cases real,sim] [--methods direct,diffusion,servalcat]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results" / "refine_cpu.json"
SIM_RESOLUTIONS_A = (3.0, 4.5, 6.0)
#: Spectral shape of the simulated maps' noise (rising with frequency as in sharpened maps).
SIM_NOISE_BFACTOR_A2 = -30.0
REAL = {
    # name: (map, model, resolution Å, perturb?, reference model for RMSD/lDDT)
    "4uft": ("maps/cryonet_refine_boxed/4uft.mrc", "maps/cryonet_refine_boxed/4uft_af3.cif", None, False, None),
    "6ksw": ("maps/cryonet_refine_boxed/6ksw.mrc", "maps/cryonet_refine_boxed/6ksw_af3.cif", None, False, None),
    "6vrc": ("maps/cryonet_refine_boxed/6vrc.mrc", "maps/cryonet_refine_boxed/6vrc_af3.cif", None, False, None),
    "spike_ntd": (
        "maps/emd_21457_spike_ntd_segment/emd_21457_seg.mrc",
        "maps/emd_21457_spike_ntd_segment/6vyb_Ndom.pdb",
        3.2,
        True,
        "truth",
    ),
    "factin": ("maps/emd_5168_factin/emd_5168_monomer.mrc", "maps/emd_5168_factin/3MFP.pdb", 6.6, True, "truth"),
}
#: Reported resolutions of the CryoNet.Refine example maps (EMDB entries), Å.
REAL_RESOLUTION_A = {"4uft": 3.3, "6ksw": 3.6, "6vrc": 3.1}
#: Damaged starts (``damaged:<real case>``, issue 22 item 6): coordinate noise (Å per axis) and a
#: rigid error per chain (shift Å, turn °), like a docked or predicted model.
DAMAGE_NOISE_A = 0.7
DAMAGE_CHAIN_RIGID = (3.0, 5.0)


# -- case preparation (deterministic) ------------------------------------------------------------
def prepare(case: str, work: Path) -> dict:
    """Files of one case: ``{"map", "model", "resolution_A", "truth"}`` (paths), written under ``work``."""
    from cryostack.density.simulate import grid_around_atoms, simulate_model_map
    from cryostack.io.maps import DensityMap, write_map
    from cryostack.io.models import read_structure
    from cryostack.refine.perturb import perturb_model

    d = work / "cases" / _slug(case)
    d.mkdir(parents=True, exist_ok=True)
    meta = d / "case.json"
    if meta.exists():
        return json.loads(meta.read_text())
    if case.startswith("damaged:"):  # damaged:<real case>: a badly placed, noisy start on a real map
        name = case.split(":", 1)[1]
        map_rel, model_rel, res, _, _ = REAL[name]
        res = res or REAL_RESOLUTION_A[name]
        model = read_structure(SHARED / model_rel)
        start = perturb_model(model, DAMAGE_NOISE_A, seed=0, chain_rigid=DAMAGE_CHAIN_RIGID)
        info = {
            "kind": "damaged",
            "map": str(SHARED / map_rel),
            "resolution_A": res,
            # The deposited model (spike NTD, F-actin) or the AF3 model the damage was applied to.
            "truth": str(SHARED / model_rel),
            "model": str(start.write(d / "start.pdb")),
            "n_residues": len(model.atoms().residue_names),
            "damage": {
                "noise_A": DAMAGE_NOISE_A,
                "chain_shift_A": DAMAGE_CHAIN_RIGID[0],
                "chain_turn_deg": DAMAGE_CHAIN_RIGID[1],
            },
        }
    elif case in REAL:
        map_rel, model_rel, res, do_perturb, ref = REAL[case]
        res = res or REAL_RESOLUTION_A[case]
        model = read_structure(SHARED / model_rel)
        info = {
            "kind": "real",
            "map": str(SHARED / map_rel),
            "resolution_A": res,
            "truth": None,
            "n_residues": len(model.atoms().residue_names),
        }
        if do_perturb:
            start = perturb_model(model, 0.3, (0.9, -0.9, 0.7), seed=0)
            info["model"] = str(start.write(d / "start.pdb"))
            info["truth"] = str(SHARED / model_rel)
        else:
            info["model"] = str(SHARED / model_rel)
    else:  # sim:<corpus index>:<resolution>
        from cryostack.data.corpus import Corpus
        from cryostack.data.degradations import add_resolution_noise

        _, corpus_root, idx, res = case.split(":")
        res = float(res)
        truth = Corpus(corpus_root).structure(int(idx), allow_test=True)
        truth_path = truth.write(d / "truth.pdb")
        # Voxels of d/3 Å (1.0, 1.5, 2.0 Å at 3, 4.5, 6 Å), a common sampling of deposited maps.
        grid = grid_around_atoms(truth.atoms().coords, res / 3.0, margin_A=10.0)
        data = simulate_model_map(truth, grid, res, use_b_factors=False)
        rng = np.random.default_rng(int(idx))
        data, noise_sd = add_resolution_noise(data, grid.voxel_size, res, rng, noise_bfactor_A2=SIM_NOISE_BFACTOR_A2)
        map_path = write_map(
            DensityMap(data=data.astype(np.float32), voxel_size=grid.voxel_size, origin=grid.origin), d / "map.mrc"
        )
        start = perturb_model(truth, 0.3, (0, 0, 0), seed=int(idx), domain_shift_A=(2.0, 5.0))
        info = {
            "kind": "simulated",
            "map": str(map_path),
            "resolution_A": res,
            "truth": str(truth_path),
            "model": str(start.write(d / "start.pdb")),
            "n_residues": len(truth.atoms().residue_names),
            "pdb_id": truth.gemmi.name,
            "noise_sd": noise_sd,
        }
    meta.write_text(json.dumps(info, indent=2))
    return info


# -- one run (in its own process) -----------------------------------------------------------------
def metrics(model_path: str, info: dict) -> dict:
    from cryostack.io.models import read_structure
    from cryostack.validate.api import validate

    model = read_structure(model_path)
    ref = read_structure(info["truth"]) if info.get("truth") else None
    v = validate(
        model, density=info["map"], resolution_A=info["resolution_A"], reference=ref, compute_q=False
    ).to_dict()
    mm, g = v["map_model"], v["geometry"]
    out = {
        "cc_mask": mm.get("cc_mask"),
        "cc_box": mm.get("cc_box"),
        "cc_mc": mm.get("cc_mc"),
        "cc_sc": mm.get("cc_sc"),
        "cc_peaks": mm.get("cc_peaks"),
        "cc_volume": mm.get("cc_volume"),
        "bond_rmsd_A": g.get("bond_rmsd"),
        "angle_rmsd_deg": g.get("angle_rmsd"),
        "rama_favored_pct": (g.get("ramachandran") or {}).get("favored_pct"),
        "rama_outlier_pct": (g.get("ramachandran") or {}).get("outlier_pct"),
        "rotamer_outlier_pct": (g.get("rotamer") or {}).get("outlier_pct"),
        "cbeta_deviations": g.get("cbeta_deviations"),
        "clashscore": g.get("clashscore"),
    }
    if ref is not None:
        r = v["reference"] or {}
        out["lddt_to_truth"] = r.get("lddt")
        a, b = model.atoms(), ref.atoms()

        def key(arr, i):
            return (
                arr.chain_ids[arr.chain_index[i]],
                int(arr.residue_numbers[arr.residue_index[i]]),
                arr.atom_names[i],
            )

        where = {key(b, i): i for i in range(b.n_atoms)}
        pairs = [(i, where[key(a, i)]) for i in range(a.n_atoms) if key(a, i) in where]
        ia, ib = np.array(pairs).T
        out["rmsd_to_truth_A"] = float(np.sqrt(((a.coords[ia] - b.coords[ib]) ** 2).sum(1).mean()))
    return out


def run_one(case: str, method: str, work: Path) -> dict:
    info = prepare(case, work)
    out_dir = work / "runs" / f"{_slug(case)}__{method}"
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    extra = {}
    if method == "input":
        model_out = info["model"]
    elif method == "truth":  # simulated cases: the model the map was made from (the ceiling)
        if not info.get("truth") or info["kind"] != "simulated":
            raise ValueError(f"no truth row for {case}")
        model_out = info["truth"]
    elif method in ("servalcat", "servalcat_tight"):
        monlib = _monlib()
        model_in, removed = _servalcat_input(info["model"], out_dir, monlib)
        extra["servalcat_input_atoms_removed"] = removed
        map_in = _servalcat_map(info["map"], out_dir)
        extra["servalcat_map_origin_moved_to_nstart"] = map_in != info["map"]
        cmd = [
            "servalcat",
            "refine_spa_norefmac",
            "--map",
            map_in,
            "--model",
            model_in,
            "-d",
            str(info["resolution_A"]),
            "--monlib",
            str(monlib),
            "-o",
            "refined",
            "--ncycle",
            "10",
        ]
        if method == "servalcat_tight":
            # servalcat's defaults aim at bond rmsZ 0.5–1 and leave Ramachandran and rotamers to the
            # data; jelly-body restraints and a tighter bond target give geometry near ours, so the
            # map fit can be compared at similar geometry.
            cmd += ["--jellybody", "--target_bond_rmsz_range", "0.2", "0.4"]
        exe = Path(sys.executable).parent / "servalcat"
        cmd[0] = str(exe) if exe.exists() else cmd[0]
        p = subprocess.run(cmd, cwd=out_dir, capture_output=True, text=True)
        (out_dir / "servalcat.log").write_text(p.stdout + p.stderr)
        if p.returncode != 0:
            raise RuntimeError(
                f"servalcat failed: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode}"
            )
        cands = [out_dir / n for n in ("refined.mmcif", "refined.cif", "refined.pdb")]
        model_out = str(next(c for c in cands if c.exists()))
        extra["servalcat_command"] = " ".join(cmd[1:])
    else:
        from cryostack.io.maps import read_map
        from cryostack.io.models import read_structure
        from cryostack.refine import LossWeights, RefineConfig, refine

        optimiser, _, weight_text = method.partition("@")
        weights = LossWeights.parse(weight_text.replace(";", ","))
        structure = read_structure(info["model"])
        refined, result = refine(
            structure, read_map(info["map"]), info["resolution_A"], RefineConfig(method=optimiser), weights
        )
        refined.source = None
        model_out = str(refined.write(out_dir / "refined.cif"))
        extra["recycles"] = len(result.history) - 1
        extra["best_recycle"] = result.best_recycle
        extra["crops"] = result.crops
        extra["adp"] = getattr(result, "adp", None)
        fit = getattr(result, "rotamer_fit", None) or {}
        extra["rotamer_fit_changed"] = fit.get("changed")
        extra["rotamer_fit_kept"] = fit.get("kept")
        extra["rotamer_fit_outliers_kept_as_candidates"] = fit.get("outliers_kept_as_candidates")
        extra["refine_config"] = dataclasses.asdict(RefineConfig(method=optimiser))
        extra["loss_weights"] = weights.__dict__
        extra["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    wall = time.perf_counter() - t0
    ru_self, ru_children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = ru_self.ru_utime + ru_self.ru_stime + ru_children.ru_utime + ru_children.ru_stime
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    row = {
        "case": case,
        "kind": info["kind"],
        "method": method,
        "resolution_A": info["resolution_A"],
        "n_residues": info.get("n_residues"),
        "wall_s": wall if method not in ("input", "truth") else 0.0,
        "cpu_s_including_setup": cpu if method not in ("input", "truth") else 0.0,
        "peak_rss_MiB": max(peak_self, peak_children) if method not in ("input", "truth") else None,
        **extra,
    }
    row.update(metrics(model_out, info))
    return row


def _slug(case: str) -> str:
    return case.replace("/", "_").replace(":", "_")


def _servalcat_map(map_path: str, out_dir: Path) -> str:
    """The map with its origin in NSTART: servalcat ignores the MRC ORIGIN field.

    Maps cut out with Chimera (the spike and F-actin segments) and the simulated maps carry
    their origin in ORIGIN; servalcat drops it ("removing ORIGIN values") and would refine
    against a map shifted away from the model.
    """
    from dataclasses import replace

    from cryostack.io.maps import grid_nstart, read_map, write_map

    density = read_map(map_path)
    if not density.header_origin:
        return map_path
    nstart = grid_nstart(density.origin, density.voxel_size)
    if nstart is None:
        raise ValueError(
            f"{map_path}: origin {density.origin} Å is not a whole number of voxels; servalcat cannot take it as NSTART"
        )
    path = out_dir / "servalcat_map.mrc"
    write_map(replace(density, nstart=nstart, header_origin=False), path)
    return str(path)


def _servalcat_input(model_path: str, out_dir: Path, monlib: Path) -> tuple[str, list[str]]:
    """The model as servalcat can take it: atoms its residue's dictionary entry lacks removed.

    servalcat stops on any such atom (3MFP's HIS 73 carries the methyl CZ of a
    methylhistidine, which the CCP4 library has no entry for), where a user would delete the
    atom or supply a dictionary; removing it keeps the peer in the comparison at the cost of
    a few atoms, listed in the row.
    """
    import gemmi

    st = gemmi.read_structure(model_path)
    names = sorted({r.name for m in st for ch in m for r in ch})
    lib = gemmi.MonLib()
    lib.read_monomer_lib(str(monlib), names)
    removed = []
    for m in st:
        for ch in m:
            for res in ch:
                if res.name not in lib.monomers:
                    continue
                known = {a.id for a in lib.monomers[res.name].atoms}
                for i in reversed(range(len(res))):
                    if res[i].name not in known and not res[i].is_hydrogen():
                        removed.append(f"{ch.name}/{res.name} {res.seqid.num}/{res[i].name}")
                        del res[i]
    if not removed:
        return model_path, []
    path = out_dir / "servalcat_input.pdb"
    st.write_pdb(str(path))
    return str(path), removed


def _monlib() -> Path:
    from cryostack.chem.monlib import monomer_library_dir

    return monomer_library_dir()


# -- driver -------------------------------------------------------------------------------------
def _trained_chains() -> set[tuple[str, str]]:
    """(PDB id, chain) pairs the first denoiser (denoiser_v1, trained before the current split)
    saw. The simulated set has left them out since then; it still does, so that the case list
    stays the same for every checkpoint (denoiser_v2 trained on the current split's train chains
    only)."""
    f = Path(__file__).parent / "data" / "denoiser_v1_trained_chains.json"
    return {(p, c) for p, c in json.loads(f.read_text())["chains"]}


def sim_cases(corpus_root: Path, n_chains: int, split_from: Path | None = None) -> list[str]:
    """Simulated cases: test-split chains with side chains, in corpus order, at each resolution.

    ``split_from``: take test membership from this corpus (matched by PDB id and chain) instead of
    ``corpus_root``'s own split, so a small full-atom export of chosen entries can be judged by the
    full corpus's split. Chains denoiser_v1 was trained on are never used (its training predated
    the current split, which put 23 of them in test).
    """
    from cryostack.data.corpus import Corpus

    table = Corpus(corpus_root).table(allow_test=True)
    if split_from is not None:
        ref = Corpus(split_from).table(allow_test=True)
        test_keys = {(r["pdb_id"], r["chain_id"]) for r in ref if r["split"] == "test"}
    else:
        test_keys = {(r["pdb_id"], r["chain_id"]) for r in table if r["split"] == "test"}
    seen = _trained_chains()
    test = [
        r["index"]
        for r in table
        if (r["pdb_id"], r["chain_id"]) in test_keys
        and (r["pdb_id"], r["chain_id"]) not in seen
        and r["has_sidechains"]
    ]
    return [f"sim:{corpus_root}:{i}:{res}" for i in test[:n_chains] for res in SIM_RESOLUTIONS_A]


def machine() -> dict:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "status", "--porcelain", "benchmarks/refine.py", "src/cryostack/refine", "src/cryostack/geometry"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    import torch

    return {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": commit,
        "refine_code_modified_since_commit": dirty,
        "load_average_at_end": os.getloadavg(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="spike_ntd,factin,4uft,6vrc,6ksw,sim")
    ap.add_argument("--methods", default="input,truth,direct,diffusion,servalcat,servalcat_tight")
    ap.add_argument(
        "--corpus",
        default=str(ROOT / "tests" / "data" / "corpus_sample"),
        help="corpus with a test split (full corpus if exported, else the bundled sample)",
    )
    ap.add_argument(
        "--split-from",
        default=None,
        help="corpus whose test split decides which --corpus chains are test chains (default: --corpus's own)",
    )
    ap.add_argument("--sim-chains", type=int, default=30)
    ap.add_argument(
        "--sim-peer-chains",
        type=int,
        default=None,
        help="run the methods other than input and direct on only the first N simulated chains",
    )
    ap.add_argument(
        "--sim-diffusion-chains",
        type=int,
        default=None,
        help="run diffusion on only the first N simulated chains (it costs several times direct)",
    )
    ap.add_argument(
        "--sim-slice",
        default=None,
        metavar="START:STOP",
        help="only these simulated chains (Python slice of the --sim-chains list), to split one "
        "run over processes sharing --work; a final run without it assembles all rows",
    )
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "cryostack_refine_bench"))
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--run", nargs=2, metavar=("CASE", "METHOD"), help=argparse.SUPPRESS)
    ap.add_argument("--budget-s", type=float, default=None, help="stop starting new runs after this many seconds")
    ap.add_argument("--notes", default=None, help="a JSON file of notes (list of strings) to store with the results")
    args = ap.parse_args()
    work = Path(args.work)
    if args.run:
        row = run_one(args.run[0], args.run[1], work)
        print(json.dumps(row))
        return

    from cryostack.refine import available_methods

    # "direct@density=300;rama=1": an optimiser with loss weights changed (a geometry/fit trade-off curve)
    methods = [
        m
        for m in args.methods.split(",")
        if m in ("input", "truth", "servalcat", "servalcat_tight") or m.partition("@")[0] in available_methods()
    ]
    skipped_methods = [m for m in args.methods.split(",") if m not in methods]
    if shutil.which("servalcat", path=str(Path(sys.executable).parent)) is None:
        for m in [m for m in methods if m.startswith("servalcat")]:
            methods.remove(m)
            skipped_methods.append(f"{m} (servalcat not installed: pip install -e .[bench])")
    cases = []
    for c in args.cases.split(","):
        if c == "sim":
            sims = sim_cases(Path(args.corpus), args.sim_chains, Path(args.split_from) if args.split_from else None)
            if args.sim_slice:
                a, _, b = args.sim_slice.partition(":")
                n_res = len(SIM_RESOLUTIONS_A)
                sims = sims[int(a or 0) * n_res : (int(b) * n_res if b else None)]
            cases += sims
        elif c in REAL and (SHARED / REAL[c][0]).exists():
            cases.append(c)
        elif (
            c.startswith("damaged:") and c.split(":", 1)[1] in REAL and (SHARED / REAL[c.split(":", 1)[1]][0]).exists()
        ):
            cases.append(c)
    t_start = time.perf_counter()
    rows, failures, not_run = [], [], []
    cache = work / "results"
    cache.mkdir(parents=True, exist_ok=True)
    peer_sim = _first_sim_chains(cases, args.sim_peer_chains)
    diffusion_sim = _first_sim_chains(cases, args.sim_diffusion_chains)
    for case in cases:
        for method in methods:
            if method == "truth" and not case.startswith("sim:"):
                continue
            if "@" in method and case.startswith("sim:"):  # weight variants: a trade-off curve on the real cases
                continue
            if (
                peer_sim is not None
                and case.startswith("sim:")
                and method not in ("input", "truth", "direct")
                and case not in peer_sim
            ):
                continue
            if (
                diffusion_sim is not None
                and case.startswith("sim:")
                and method.partition("@")[0] == "diffusion"
                and case not in diffusion_sim
            ):
                continue
            f = cache / f"{_slug(case)}__{method}.json"
            failed = f.with_suffix(".failed.json")
            if f.exists():
                rows.append(json.loads(f.read_text()))
                continue
            if failed.exists():  # a failure is a result too: report it, do not retry
                failures.append(json.loads(failed.read_text()))
                continue
            if args.budget_s is not None and time.perf_counter() - t_start > args.budget_s:
                not_run.append(f"{case} {method}")
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {case} {method}", flush=True)
            p = subprocess.run(
                [sys.executable, __file__, "--work", str(work), "--run", case, method], capture_output=True, text=True
            )
            if p.returncode != 0:
                msg = (p.stderr.strip().splitlines() or ["?"])[-1]
                failures.append({"case": case, "method": method, "error": msg})
                failed.write_text(json.dumps(failures[-1], indent=2))
                print(f"   failed: {msg}", flush=True)
                continue
            row = json.loads(p.stdout.strip().splitlines()[-1])
            f.write_text(json.dumps(row, indent=2))
            rows.append(row)
            print(
                f"   CC_mask {row['cc_mask']:.3f} bond {row['bond_rmsd_A']:.4f} angle {row['angle_rmsd_deg']:.2f} "
                f"wall {row['wall_s']:.0f} s",
                flush=True,
            )
    write_summary(rows, failures, not_run, skipped_methods, args, Path(args.out))


def _first_sim_chains(cases: list[str], n_chains: int | None) -> set[str] | None:
    """The simulated cases of the first ``n_chains`` chains (by corpus index), or ``None`` for all."""
    if n_chains is None:
        return None
    sims = {c for c in cases if c.startswith("sim:")}
    chains = sorted({c.rsplit(":", 1)[0] for c in sims}, key=lambda c: int(c.rsplit(":", 1)[1]))
    keep = set(chains[:n_chains])
    return {c for c in sims if c.rsplit(":", 1)[0] in keep}


def write_summary(rows, failures, not_run, skipped_methods, args, out: Path) -> None:
    def mean(kind, method, key, cases=None):
        vals = [
            r[key]
            for r in rows
            if r["kind"] == kind
            and r["method"] == method
            and r.get(key) is not None
            and (cases is None or r["case"] in cases)
        ]
        return float(np.mean(vals)) if vals else None

    summary = {}
    for kind in ("real", "damaged", "simulated"):
        for method in sorted({r["method"] for r in rows}):
            keys = (
                "cc_mask",
                "cc_box",
                "bond_rmsd_A",
                "angle_rmsd_deg",
                "rama_favored_pct",
                "rama_outlier_pct",
                "rotamer_outlier_pct",
                "cbeta_deviations",
                "clashscore",
                "rmsd_to_truth_A",
                "lddt_to_truth",
                "wall_s",
            )
            s = {k: mean(kind, method, k) for k in keys}
            s["n"] = sum(1 for r in rows if r["kind"] == kind and r["method"] == method)
            if s["n"]:
                summary[f"{kind}/{method}"] = s
    af3 = ("4uft", "6ksw", "6vrc")
    gains = {}
    for method in sorted({r["method"] for r in rows} - {"input", "truth"}):
        g = []
        for case in af3:
            a = [r for r in rows if r["case"] == case and r["method"] == method]
            b = [r for r in rows if r["case"] == case and r["method"] == "input"]
            if a and b:
                g.append(a[0]["cc_mask"] - b[0]["cc_mask"])
        gains[method] = {"cases": len(g), "mean_cc_mask_gain": float(np.mean(g)) if g else None}
    # Peers ran on subsets of the simulated cases: compare each with direct on the cases both ran.
    paired = {}
    by = {(r["case"], r["method"]): r for r in rows}
    for method in sorted({r["method"] for r in rows} - {"input", "truth", "direct"}):
        for kind in ("real", "damaged", "simulated"):
            both = [c for (c, m) in by if m == method and by[(c, m)]["kind"] == kind and (c, "direct") in by]
            if not both:
                continue
            entry = {"n": len(both)}
            for key in (
                "cc_mask",
                "rmsd_to_truth_A",
                "lddt_to_truth",
                "bond_rmsd_A",
                "angle_rmsd_deg",
                "rama_favored_pct",
                "rotamer_outlier_pct",
                "wall_s",
            ):
                d = [
                    by[(c, method)][key] - by[(c, "direct")][key]
                    for c in both
                    if by[(c, method)].get(key) is not None and by[(c, "direct")].get(key) is not None
                ]
                entry[f"mean_{key}_minus_direct"] = float(np.mean(d)) if d else None
            entry["cc_mask_wins_over_direct"] = sum(
                by[(c, method)]["cc_mask"] > by[(c, "direct")]["cc_mask"] for c in both
            )
            paired[f"{kind}/{method}_vs_direct"] = entry
    # "CC_mask at least servalcat's at equal or better geometry": for each servalcat row, our best
    # CC_mask among the rows of this case (any optimiser or weight variant) whose geometry is at
    # least as good on every measure.
    geometry = (
        ("bond_rmsd_A", 1),
        ("angle_rmsd_deg", 1),
        ("rama_favored_pct", -1),
        ("rama_outlier_pct", 1),
        ("rotamer_outlier_pct", 1),
        ("cbeta_deviations", 1),
        ("clashscore", 1),
    )
    at_equal_geometry = []
    for peer in [r for r in rows if r["method"].startswith("servalcat") and r["kind"] == "real"]:
        ours = [
            r
            for r in rows
            if r["case"] == peer["case"]
            and r["method"].partition("@")[0] in ("direct", "diffusion")
            and all(
                r.get(k) is not None and peer.get(k) is not None and sign * (r[k] - peer[k]) <= 0
                for k, sign in geometry
            )
        ]
        best = max(ours, key=lambda r: r["cc_mask"], default=None)
        at_equal_geometry.append(
            {
                "case": peer["case"],
                "peer": peer["method"],
                "peer_cc_mask": peer["cc_mask"],
                "ours": best["method"] if best else None,
                "ours_cc_mask": best["cc_mask"] if best else None,
                "ours_at_least_peer": bool(best and best["cc_mask"] >= peer["cc_mask"]),
            }
        )
    # Issue 22's goals, case by case against servalcat (defaults) run in the same benchmark.
    versus_servalcat = []
    for (case, method), ours in sorted(by.items()):
        peer = by.get((case, "servalcat"))
        if method != "direct" or peer is None:
            continue
        entry = {"case": case, "kind": ours["kind"], "resolution_A": ours["resolution_A"]}
        for key in (
            "wall_s",
            "cc_mask",
            "rmsd_to_truth_A",
            "rama_outlier_pct",
            "rotamer_outlier_pct",
            "clashscore",
            "bond_rmsd_A",
        ):
            entry[key] = {"direct": ours.get(key), "servalcat": peer.get(key)}
        if ours.get("wall_s") and peer.get("wall_s"):
            entry["wall_ratio_direct_over_servalcat"] = ours["wall_s"] / peer["wall_s"]
        versus_servalcat.append(entry)
    sim3 = [
        e
        for e in versus_servalcat
        if e["kind"] == "simulated" and e["resolution_A"] == 3.0 and e["rmsd_to_truth_A"]["direct"] is not None
    ]
    goals = {
        "sim_3A_rmsd_to_truth_A_mean": {
            "direct": float(np.mean([e["rmsd_to_truth_A"]["direct"] for e in sim3])) if sim3 else None,
            "servalcat": float(np.mean([e["rmsd_to_truth_A"]["servalcat"] for e in sim3])) if sim3 else None,
            "direct_below_servalcat_cases": f"{sum(e['rmsd_to_truth_A']['direct'] < e['rmsd_to_truth_A']['servalcat'] for e in sim3)}/{len(sim3)}",
        },
        "real_wall_at_most_servalcat": {e["case"]: e.get("wall_ratio_direct_over_servalcat") for e in versus_servalcat if e["kind"] == "real"},
        "damaged_rama_outlier_pct_direct (goal <= 0.5)": {r["case"]: r.get("rama_outlier_pct") for r in rows if r["kind"] == "damaged" and r["method"] == "direct"},
    }  # fmt: skip
    doc = {
        "benchmark": "refine",
        "machine": machine(),
        "settings": {
            "methods": args.methods,
            "cases": args.cases,
            "corpus": args.corpus,
            "split_from": args.split_from,
            "sim_chains": args.sim_chains,
            "sim_peer_chains": args.sim_peer_chains,
            "sim_diffusion_chains": args.sim_diffusion_chains,
            "sim_resolutions_A": SIM_RESOLUTIONS_A,
            "direct_config": _config_dict(),
        },
        "targets": {
            "mean_cc_mask_gain_af3_cases": 0.15,
            "rama_favored_pct_min": 98.0,
            "rama_outlier_pct_max": 0.2,
            "rotamer_outlier_pct_max": 1.0,
            "angle_rmsd_deg_max": 1.0,
            "bond_rmsd_A_max": 0.01,
            "cbeta_deviations_max": 0,
            "4uft_wall_s_max": 300,
        },
        "af3_cc_mask_gain": gains,
        "summary": summary,
        "paired_with_direct": paired,
        "servalcat_at_equal_or_better_geometry": at_equal_geometry,
        "versus_servalcat": versus_servalcat,
        "issue22_goals": goals,
        "rows": rows,
        "failures": failures,
        "not_run": not_run,
        "methods_not_available": skipped_methods,
        "notes": json.loads(Path(args.notes).read_text()) if args.notes else [],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, out)
    print(f"wrote {out}")


def _config_dict() -> dict:
    from dataclasses import asdict

    from cryostack.refine import LossWeights, RefineConfig

    return {"config": asdict(RefineConfig()), "weights": asdict(LossWeights())}


if __name__ == "__main__":
    main()
