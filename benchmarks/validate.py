"""Speed of ``cryostack validate``: a ~5,000-residue model against a 300³ map (issue 3 goal: < 60 s on 2 cores).

The model tiles the bundled spike NTD fragment (201 residues, CC0) 25 times on a 5 × 5 lattice;
the map is that model's simulated density at 3.5 Å with noise on a 300³ grid at 1.0 Å/voxel.
Writes ``benchmarks/results/validate_speed.json``: wall and CPU seconds of every stage (map fit,
Q-score, FSC, geometry, Ramachandran, rotamers, Cβ, report, plots) and the load average, since
other jobs may share the machine. Run: ``.venv/bin/python benchmarks/validate.py``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import gemmi
import numpy as np
import torch

from cryostack.density.simulate import simulate_density
from cryostack.examples import SPIKE_NTD_MODEL
from cryostack.io.atomic import jsonable as _jsonable
from cryostack.io.maps import DensityMap, GridSpec
from cryostack.io.models import Structure, read_structure
from cryostack.validate import validate
from cryostack.validate.report import text_table, write_plots
from cryostack.validate.stages import Stages

ROOT = Path(__file__).resolve().parents[1]


def tiled_model(copies_per_side: int = 5, spacing_A: float = 55.0) -> Structure:
    base = read_structure(SPIKE_NTD_MODEL).gemmi
    centre = np.array(base[0].calculate_center_of_mass().tolist())
    st = gemmi.Structure()
    st.add_model(gemmi.Model("1"))
    names = iter("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
    for i in range(copies_per_side):
        for j in range(copies_per_side):
            chain = base[0]["A"].clone()
            chain.name = next(names)
            shift = np.array([i, j, 0.0]) * spacing_A - centre + 150.0 - (copies_per_side - 1) * spacing_A / 2
            shift[2] = 150.0 - centre[2]
            for res in chain:
                for atom in res:
                    atom.pos = gemmi.Position(*(np.array(atom.pos.tolist()) + shift))
            st[0].add_chain(chain)
    st.setup_entities()
    return Structure(st)


def main() -> None:
    torch.manual_seed(0)
    model = tiled_model()
    atoms = model.atoms()
    grid = GridSpec((300, 300, 300), (1.0, 1.0, 1.0))
    t0 = time.perf_counter()
    m = simulate_density(
        torch.tensor(atoms.coords),
        torch.tensor(atoms.atomic_numbers),
        grid,
        resolution_A=3.5,
        b_factors=torch.tensor(atoms.b_factors),
    ).numpy()
    m += np.random.default_rng(0).normal(0, 0.2 * m.std(), m.shape).astype(np.float32)
    t_setup = time.perf_counter() - t0
    density = DensityMap(m, grid.voxel_size, grid.origin)

    # Other jobs may share the cores: record the load, and CPU seconds (user + system, all
    # threads of this process) next to wall seconds for every stage.
    load_before = os.getloadavg()
    stages = Stages()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = validate(model, density=density, resolution_A=3.5, stages=stages)
    with stages("text report and JSON"):
        text_table(result)
        d = _jsonable(result.to_dict())
        json.dumps(d)
    with tempfile.TemporaryDirectory() as tmp, stages("plots"):
        write_plots(result, tmp)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    load_after = os.getloadavg()

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "src/cryostack/validate", "benchmarks/validate.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    out = {
        "benchmark": "validate_speed",
        "date": datetime.now(UTC).isoformat(),
        "commit": commit,
        "validate_code_modified_since_commit": bool(dirty),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "load_average_1_5_15min": {
            "before": [round(x, 2) for x in load_before],
            "after": [round(x, 2) for x in load_after],
        },
        "case": {
            "residues": len(atoms.residue_names),
            "atoms": atoms.n_atoms,
            "chains": len(atoms.chain_ids),
            "map_shape_zyx": list(grid.shape),
            "voxel_size_A": 1.0,
            "resolution_A": 3.5,
        },
        "setup_simulation_s": round(t_setup, 2),
        "total_wall_s": round(wall, 2),
        "total_cpu_s": round(cpu, 2),
        "stages": {k: {kk: round(vv, 2) for kk, vv in v.items()} for k, v in stages.seconds.items()},
        "goal_wall_s": 60.0,
        "meets_goal": wall < 60.0,
        "scores": {
            "cc_mask": d["map_model"]["cc_mask"],
            "cc_mc": d["map_model"]["cc_mc"],
            "q_score": d["map_model"]["q_score"],
            "fsc05_resolution_A": d["map_model"]["fsc05_resolution"],
            "clashscore": d["geometry"]["clashscore"],
        },
    }
    path = ROOT / "benchmarks" / "results" / "validate_speed.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
