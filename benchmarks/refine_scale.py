"""Refinement at scale: a ≥ 10,000-residue assembly refined in spatial crops on the CPU.

The case is built from real coordinates: ``--copies`` copies of the AlphaFold3 model of 6KSW
(``../shared/data/maps/cryonet_refine_boxed/6ksw_af3.cif``, 3 chains, 1,896 residues), each given
a random rotation (seeded) and placed in its own cell of a grid with ``GAP_A`` Å between the
rotated copies' bounding boxes, so copies never overlap (checked: the closest heavy atoms of two
copies are reported and must be ≥ ``MIN_CONTACT_A`` Å apart); chains get new IDs, residue numbers
are kept. The truth's map is simulated at ``--resolution`` Å (1 Å voxels, no B-factors) with
Gaussian noise (SNR 3 inside the molecule, as in ``benchmarks/refine.py``); the starting model
has 0.3 Å noise per axis plus a rigid shift of 2–4 Å per copy (random direction, seeded).

``cryostack.refine.refine`` (direct) then runs in its own process with one torch thread, so its
wall time and peak RSS (``getrusage(RUSAGE_CHILDREN)``) are its own. Inside that process the
optimiser is wrapped (not changed) to record each crop's set-up and optimisation time, its size,
one timed density-only and one timed full-objective step (forward + backward; the probe's time is
reported separately), and the merged coordinates before the whole-model seam pass.

Afterwards this process measures CC_mask (validate's definition) and RMSD to the truth before and
after, bond/angle RMSD, and seam continuity: bond-length deviations from ideal for bonds between
residues of different crop cores ("seam") against bonds inside one core ("interior"), for the
start, the merged crops before the seam pass, and the final model. It also checks that the written
mmCIF keeps chain IDs, residue numbering and every atom.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/refine_scale.py [--copies 6] [--out JSON]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import string
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SOURCE_MODEL = "maps/cryonet_refine_boxed/6ksw_af3.cif"
RESULTS = ROOT / "benchmarks" / "results" / "refine_scale_cpu.json"
#: Space between the bounding boxes of neighbouring copies (Å).
GAP_A = 4.0
#: Closest allowed heavy-atom distance between two copies (Å); closer is a clash and an error.
MIN_CONTACT_A = 3.0
#: Bonds farther than this from their ideal length (Å) count as broken/strained.
BOND_OFF_A = 0.1


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- case ------------------------------------------------------------------------------------------
def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rotation matrix (3, 3), from a random unit quaternion."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def build_assembly(n_copies: int, seed: int):
    """Copies of the source model rotated and placed on a grid; returns (Structure, copy id per atom, facts)."""
    import gemmi
    from scipy.spatial import cKDTree

    from cryostack.io.models import Structure

    src = gemmi.read_structure(str(SHARED / SOURCE_MODEL))
    src.setup_entities()
    src_xyz = np.array([a.pos.tolist() for ch in src[0] for r in ch for a in r])
    centre = src_xyz.mean(0)
    rng = np.random.default_rng(seed)
    rots = [_random_rotation(rng) for _ in range(n_copies)]
    placed = [(src_xyz - centre) @ r.T for r in rots]
    cell = np.max([np.ptp(p, axis=0) for p in placed], axis=0) + GAP_A
    nx = int(np.ceil(np.sqrt(n_copies * 1.5)))
    ny = int(np.ceil(n_copies / nx))
    names = iter(string.ascii_uppercase + string.ascii_lowercase + string.digits)
    out = gemmi.Structure()
    out.name = f"{n_copies}x6ksw"
    out.cell = gemmi.UnitCell()
    model = gemmi.Model("1")
    copy_of_atom = []
    for k in range(n_copies):
        # Each copy's bounding-box centre sits at its cell centre, so boxes are GAP_A apart.
        p = placed[k]
        shift = (
            np.array([(k % nx + 0.5) * cell[0], (k // nx + 0.5) * cell[1], 0.5 * cell[2]]) - (p.min(0) + p.max(0)) / 2
        )
        tr = gemmi.Transform(gemmi.Mat33(rots[k].tolist()), gemmi.Vec3(*(shift - rots[k] @ centre)))
        for ch in src[0]:
            new = ch.clone()
            new.name = next(names)
            for res in new:
                for a in res:
                    a.pos = gemmi.Position(tr.apply(a.pos))
                    copy_of_atom.append(k)
            model.add_chain(new)
    out.add_model(model)
    out.setup_entities()
    structure = Structure(out)
    arr = structure.atoms()
    copy_of_atom = np.asarray(copy_of_atom)
    heavy = ~arr.is_hydrogen
    tree = cKDTree(arr.coords[heavy])
    pairs = tree.query_pairs(6.0, output_type="ndarray")
    cid = copy_of_atom[heavy]
    inter = pairs[cid[pairs[:, 0]] != cid[pairs[:, 1]]]
    if len(inter):
        d = np.linalg.norm(arr.coords[heavy][inter[:, 0]] - arr.coords[heavy][inter[:, 1]], axis=1)
        min_d = float(d.min())
    else:
        min_d = None
    if min_d is not None and min_d < MIN_CONTACT_A:
        raise RuntimeError(f"copies clash: closest heavy atoms of two copies {min_d:.2f} Å apart")
    facts = {
        "source_model": SOURCE_MODEL,
        "copies": n_copies,
        "grid_cells_xy": [nx, ny],
        "cell_A": cell.tolist(),
        "chains": len(arr.chain_ids),
        "residues": len(arr.residue_names),
        "atoms": arr.n_atoms,
        "inter_copy_heavy_atom_pairs_within_6A": int(len(inter)),
        "closest_inter_copy_heavy_atoms_A": min_d,
    }
    return structure, copy_of_atom, facts


def prepare(work: Path, n_copies: int, resolution_A: float, seed: int) -> dict:
    """Truth, starting model and simulated map under ``work`` (reused when already there)."""
    from cryostack.density.simulate import grid_around_atoms, simulate_model_map
    from cryostack.io.maps import DensityMap, write_map

    meta = work / "case.json"
    if meta.exists():
        info = json.loads(meta.read_text())
        if info["copies"] == n_copies and info["resolution_A"] == resolution_A and info["seed"] == seed:
            return info
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    truth, copy_of_atom, facts = build_assembly(n_copies, seed)
    log(
        f"assembly: {facts['copies']} copies, {facts['chains']} chains, {facts['residues']} residues, "
        f"{facts['atoms']} atoms; closest inter-copy heavy atoms {facts['closest_inter_copy_heavy_atoms_A']} Å"
    )
    arr = truth.atoms()
    grid = grid_around_atoms(arr.coords, 1.0, margin_A=10.0)
    log(f"simulating the map at {resolution_A} Å on {grid.shape} voxels")
    data = simulate_model_map(truth, grid, resolution_A, use_b_factors=False)
    rng = np.random.default_rng(seed)
    signal = data[data > 0.05 * data.max()].std()
    data = data + rng.normal(0, signal / 3.0, data.shape).astype(np.float32)
    write_map(
        DensityMap(data=data.astype(np.float32), voxel_size=grid.voxel_size, origin=grid.origin), work / "map.mrc"
    )
    del data
    # Start: 0.3 Å noise per axis plus one rigid shift of 2–4 Å per copy.
    x = arr.coords.astype(np.float64) + rng.normal(0, 0.3, arr.coords.shape)
    shifts = []
    for k in range(n_copies):
        d = rng.normal(size=3)
        s = d / np.linalg.norm(d) * rng.uniform(2.0, 4.0)
        x[copy_of_atom == k] += s
        shifts.append(s.tolist())
    truth.write(work / "truth.cif")
    truth.with_coordinates(x).write(work / "start.cif")
    np.save(work / "copy_of_atom.npy", copy_of_atom)
    info = {
        **facts,
        "seed": seed,
        "resolution_A": resolution_A,
        "map_shape_zyx": list(grid.shape),
        "voxel_size_A": 1.0,
        "map_noise": "Gaussian, sigma = std of voxels above 5 % of the peak / 3",
        "perturbation": "0.3 A Gaussian noise per axis + rigid shift 2-4 A per copy (random direction)",
        "copy_shifts_A": shifts,
        "prepare_s": time.perf_counter() - t0,
        "truth": str(work / "truth.cif"),
        "start": str(work / "start.cif"),
        "map": str(work / "map.mrc"),
    }
    meta.write_text(json.dumps(info, indent=2))
    return info


# -- the refinement (child process) ----------------------------------------------------------------
def child(work: Path) -> None:
    import torch

    torch.set_num_threads(1)
    import cryostack.refine.run as run
    from cryostack.io.maps import read_map
    from cryostack.io.models import read_structure
    from cryostack.refine import RefineConfig

    info = json.loads((work / "case.json").read_text())
    t_start = time.perf_counter()
    structure = read_structure(info["start"])
    dmap = read_map(info["map"])
    t_read = time.perf_counter() - t_start
    n_full = structure.n_atoms
    calls: list[dict] = []
    last_end = [time.perf_counter()]
    real_get = run.get_optimizer

    def probe(objective) -> dict:
        """Seconds of one density-only and one full-objective step (forward + backward)."""
        x = objective.init_coords.clone().requires_grad_(True)
        t0 = time.perf_counter()
        (1.0 - objective.correlation(x)).backward()
        t1 = time.perf_counter()
        objective(x)[0].backward()
        t2 = time.perf_counter()
        return {"density_step_s": t1 - t0, "full_step_s": t2 - t1, "probe_s": t2 - t0}

    def get_optimizer(name):
        opt = real_get(name)

        def timed(objective, config, progress):
            t_call = time.perf_counter()
            rec = {
                "setup_s": t_call - last_end[0],
                "atoms": objective.n_atoms,
                "movable_atoms": int(objective.movable.sum()),
                "box_zyx": list(objective.box.shape),
                "mask_voxels": int(objective.mask.sum()),
                "seam_pass": objective.n_atoms == n_full,
            }
            rec.update(probe(objective))
            if rec["seam_pass"]:
                np.save(work / "merged_before_seam_pass.npy", objective.init_coords.cpu().numpy())
            t0 = time.perf_counter()
            res = opt(objective, config, progress)
            rec["optimise_s"] = time.perf_counter() - t0
            rec["recycles"] = len(res.history) - 1
            rec["cc_start"], rec["cc_end"] = res.history[0].cc, res.history[-1].cc
            calls.append(rec)
            log(
                f"crop call {len(calls)}: {rec['atoms']} atoms ({rec['movable_atoms']} movable), box {rec['box_zyx']}, "
                f"set-up {rec['setup_s']:.1f} s, optimise {rec['optimise_s']:.1f} s, {rec['recycles']} recycles, "
                f"step density {rec['density_step_s']:.2f} s / full {rec['full_step_s']:.2f} s, "
                f"CC {rec['cc_start']:.3f} -> {rec['cc_end']:.3f}, RSS {_rss_MiB():.0f} MiB"
            )
            last_end[0] = time.perf_counter()
            return res

        return timed

    run.get_optimizer = get_optimizer

    def progress(recycle, loss, terms, cc, crop=None, stage="adam"):
        log(
            f"  crop {crop[0]}/{crop[1]} recycle {recycle}: loss {loss:.3f} CC {cc:.3f}"
            if crop
            else f"  recycle {recycle}: loss {loss:.3f} CC {cc:.3f}"
        )

    config = RefineConfig(method="direct")
    if os.environ.get("REFINE_SCALE_QUICK"):  # smoke test of this script only, never for results
        config = RefineConfig(method="direct", max_recycles=1, steps_per_recycle=3, rigid_steps=3)
    t0 = time.perf_counter()
    refined, result = run.refine(structure, dmap, info["resolution_A"], config, progress=progress)
    t_refine = time.perf_counter() - t0
    t0 = time.perf_counter()
    refined.write(work / "refined.cif")
    t_write = time.perf_counter() - t0
    out = {
        "read_s": t_read,
        "refine_s": t_refine,
        "write_s": t_write,
        "crops": result.crops,
        "history_len": len(result.history),
        "calls": calls,
        "torch_threads": torch.get_num_threads(),
        "config": dict(config.__dict__),
        "residues_per_crop": run.RESIDUES_PER_CROP,
    }
    (work / "child.json").write_text(json.dumps(out, indent=2))


def _rss_MiB() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# -- measurements (this process) -------------------------------------------------------------------
def cc_mask(coords: np.ndarray, truth, dmap, resolution_A: float) -> float:
    """validate's CC_mask (model map vs map over the molecular mask) at ``coords``."""
    from cryostack.validate.mapfit import model_map, molecular_mask

    arr = truth.with_coordinates(coords).atoms()
    calc = model_map(arr, dmap, resolution_A).ravel()
    mask = molecular_mask(arr, dmap).ravel()
    a, b = dmap.data.ravel()[mask].astype(np.float64), calc[mask].astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def bond_stats(coords: np.ndarray, bonds: np.ndarray, ideal: np.ndarray, sel: np.ndarray) -> dict:
    d = np.linalg.norm(coords[bonds[sel, 0]] - coords[bonds[sel, 1]], axis=1) - ideal[sel]
    if d.size == 0:
        return {"n": 0}
    return {
        "n": int(d.size),
        "rmsd_A": float(np.sqrt(np.mean(d * d))),
        "max_abs_dev_A": float(np.abs(d).max()),
        f"n_off_gt_{BOND_OFF_A}_A": int((np.abs(d) > BOND_OFF_A).sum()),
        f"frac_off_gt_{BOND_OFF_A}_A": float((np.abs(d) > BOND_OFF_A).mean()),
    }


def angle_dev_deg(coords: np.ndarray, angles: np.ndarray, ideal_rad: np.ndarray, sel: np.ndarray) -> dict:
    a, b, c = coords[angles[sel, 0]], coords[angles[sel, 1]], coords[angles[sel, 2]]
    u, v = a - b, c - b
    cos = (u * v).sum(1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))
    d = np.degrees(np.arccos(np.clip(cos, -1, 1)) - ideal_rad[sel])
    return {
        "n": int(d.size),
        "rmsd_deg": float(np.sqrt(np.mean(d * d))) if d.size else None,
        "max_abs_dev_deg": float(np.abs(d).max()) if d.size else None,
    }


def measure(work: Path, info: dict) -> dict:
    from cryostack.geometry.restraints import build_restraints
    from cryostack.io.maps import read_map
    from cryostack.io.models import read_structure
    from cryostack.refine import RefineConfig
    from cryostack.refine.run import crop_assignment

    truth, start = read_structure(info["truth"]), read_structure(info["start"])
    refined = read_structure(work / "refined.cif")
    dmap = read_map(info["map"])
    res = info["resolution_A"]
    ta, sa, ra = truth.atoms(), start.atoms(), refined.atoms()
    models = {"start": sa.coords.astype(np.float64)}
    merged = work / "merged_before_seam_pass.npy"
    if merged.exists():
        models["merged_before_seam_pass"] = np.load(merged).astype(np.float64)
    models["refined"] = ra.coords.astype(np.float64)
    truth_xyz = ta.coords.astype(np.float64)

    # Output file keeps chains, numbering, names and every atom.
    def residues(a):
        return [
            (a.chain_ids[a.residue_chain[i]], int(a.residue_numbers[i]), a.insertion_codes[i], a.residue_names[i])
            for i in range(len(a.residue_names))
        ]

    output_check = {
        "chain_ids_kept": ra.chain_ids == sa.chain_ids,
        "residue_ids_kept": residues(ra) == residues(sa),
        "atom_names_kept": ra.atom_names == sa.atom_names,
        "atoms": [sa.n_atoms, ra.n_atoms],
    }
    log(f"output check: {output_check}")

    log("building restraints of the whole model")
    t0 = time.perf_counter()
    rs = build_restraints(truth)
    bonds, bond_ideal = rs.bond_index.numpy(), rs.bond_ideal_A.double().numpy()
    angles, angle_ideal = rs.angle_index.numpy(), rs.angle_ideal_rad.double().numpy()
    t_restraints = time.perf_counter() - t0
    # Seams: the crop cores refine() used (same seed and model, so the same k-means).
    core, crops = crop_assignment(start, RefineConfig())
    rc = core[sa.residue_index]
    bond_seam = rc[bonds[:, 0]] != rc[bonds[:, 1]]
    angle_seam = (rc[angles[:, 0]] != rc[angles[:, 1]]) | (rc[angles[:, 1]] != rc[angles[:, 2]])
    # Residues with an atom bonded across a seam, and their neighbours in sequence, are "near seam".
    seam_res = np.zeros(len(sa.residue_names), dtype=bool)
    seam_res[sa.residue_index[bonds[bond_seam].ravel()]] = True
    near = seam_res | np.roll(seam_res, 1) | np.roll(seam_res, -1)
    bond_interior = ~bond_seam & ~near[sa.residue_index[bonds[:, 0]]]
    crop_sizes = [int(len(r)) for _, r in crops]
    seams = {
        "crops": len(crops),
        "crop_residues_min_mean_max": [min(crop_sizes), float(np.mean(crop_sizes)), max(crop_sizes)],
        "core_residues_min_max": [int(np.bincount(core[core >= 0]).min()), int(np.bincount(core[core >= 0]).max())],
        "seam_bonds": int(bond_seam.sum()),
        "interior_bonds": int(bond_interior.sum()),
        "definition": "seam: bond between residues of two different crop cores; interior: both atoms in one core "
        "and not in or next to a residue with a seam bond",
    }
    out = {"output_check": output_check, "restraints_s": t_restraints, "seams": seams, "models": {}}
    for name, xyz in [("truth", truth_xyz)] + list(models.items()):
        m = {
            "all_bonds": bond_stats(xyz, bonds, bond_ideal, np.ones(len(bonds), bool)),
            "seam_bonds": bond_stats(xyz, bonds, bond_ideal, bond_seam),
            "interior_bonds": bond_stats(xyz, bonds, bond_ideal, bond_interior),
            "all_angles": angle_dev_deg(xyz, angles, angle_ideal, np.ones(len(angles), bool)),
            "seam_angles": angle_dev_deg(xyz, angles, angle_ideal, angle_seam),
        }
        if name != "truth":
            d2 = ((xyz - truth_xyz) ** 2).sum(1)
            ca = np.array([n == "CA" for n in ta.atom_names])
            m["rmsd_to_truth_A"] = float(np.sqrt(d2.mean()))
            m["ca_rmsd_to_truth_A"] = float(np.sqrt(d2[ca].mean()))
            copy_of_atom = np.load(work / "copy_of_atom.npy")
            m["rmsd_to_truth_per_copy_A"] = [
                float(np.sqrt(d2[copy_of_atom == k].mean())) for k in range(info["copies"])
            ]
            near_atoms = near[sa.residue_index]
            m["rmsd_to_truth_near_seam_A"] = float(np.sqrt(d2[near_atoms].mean()))
            m["rmsd_to_truth_away_from_seam_A"] = float(np.sqrt(d2[~near_atoms].mean()))
        log(f"CC_mask of {name}")
        m["cc_mask"] = cc_mask(xyz, truth, dmap, res)
        out["models"][name] = m
        log(
            f"{name}: CC_mask {m['cc_mask']:.4f}, bond RMSD {m['all_bonds']['rmsd_A']:.4f} Å, "
            f"angle RMSD {m['all_angles']['rmsd_deg']:.2f}°, seam bonds max |dev| "
            f"{m['seam_bonds'].get('max_abs_dev_A', float('nan')):.3f} Å, RMSD to truth {m.get('rmsd_to_truth_A', 0):.3f} Å"
        )
    return out


def machine(commit_dir: Path) -> dict:
    import torch

    def git(*a):
        return subprocess.run(["git", *a], cwd=commit_dir, capture_output=True, text=True).stdout.strip()

    return {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": git("rev-parse", "HEAD"),
        "refine_code_modified_since_commit": bool(git("status", "--porcelain", "src/cryostack")),
        "threads": "refinement process: torch.set_num_threads(1) and OMP_NUM_THREADS=1 (2-core machine shared "
        "with a long background job and other engineers)",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=6, help="copies of 6ksw_af3 (1,896 residues each)")
    ap.add_argument("--resolution", type=float, default=4.0, help="map resolution, Å")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/cryostack_refine_scale")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--quick", action="store_true", help="smoke test: a few steps per crop (not a result)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.work)
    if args.child:
        child(work)
        return
    if not (SHARED / SOURCE_MODEL).exists():
        sys.exit(f"needs {SHARED / SOURCE_MODEL}")
    load_start = os.getloadavg()
    info = prepare(work, args.copies, args.resolution, args.seed)
    for f in ("refined.cif", "child.json", "merged_before_seam_pass.npy"):
        (work / f).unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if args.quick:
        env["REFINE_SCALE_QUICK"] = "1"
    log(f"refining {info['residues']} residues ({info['atoms']} atoms) in a child process")
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, __file__, "--child", "--work", str(work)], env=env)
    loads = []
    while p.poll() is None:
        loads.append(os.getloadavg()[0])
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    doc = {
        "benchmark": "refine_scale" + (" (quick smoke test, not a result)" if args.quick else ""),
        "machine": machine(ROOT),
        "case": info,
        "load_average_1min_during_refinement": {
            "start": load_start[0],
            "min": min(loads, default=None),
            "mean": float(np.mean(loads)) if loads else None,
            "max": max(loads, default=None),
            "samples_every_s": 30,
        },
        "refinement_process": {
            "exit_code": p.returncode,
            "wall_s": wall,
            "cpu_user_s": ru.ru_utime,
            "cpu_system_s": ru.ru_stime,
            "peak_rss_MiB": ru.ru_maxrss / 1024.0,
        },
    }
    if p.returncode == 0:
        ch = json.loads((work / "child.json").read_text())
        calls = ch.pop("calls")
        crops = [c for c in calls if not c["seam_pass"]]
        seam = [c for c in calls if c["seam_pass"]]
        ch["time_split_s"] = {
            "read_inputs": ch["read_s"],
            "crop_setup_total": sum(c["setup_s"] for c in crops),
            "crop_optimise_total": sum(c["optimise_s"] for c in crops),
            "seam_pass_setup": sum(c["setup_s"] for c in seam),
            "seam_pass_optimise": sum(c["optimise_s"] for c in seam),
            "step_probes_total": sum(c["probe_s"] for c in calls),
            "write_output": ch["write_s"],
            "note": "setup_s: from the previous optimiser call's end (or the start of refine for the first) to this "
            "one's start: input checks, crop assignment, sub-structure, RefinementObjective (restraints, "
            "priors, clash term, map box and mask); probes are extra steps outside the optimiser",
        }
        ch["per_call"] = calls
        doc["refinement"] = ch
        log("measuring")
        doc["measurements"] = measure(work, info)
    doc["machine"]["load_average_at_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, out)
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
