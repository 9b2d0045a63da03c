"""Speed of ``cryostack validate``: a ~5,000-residue model against a 300³ map (issue 3 goal: < 60 s on 2 cores).

The model tiles the bundled spike NTD fragment (201 residues, CC0) 25 times on a 5 × 5 lattice;
the map is that model's simulated density at 3.5 Å with noise on a 300³ grid at 1.0 Å/voxel.
Writes ``benchmarks/results/validate_speed.json``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import gemmi
import numpy as np
import torch

from cryostack.density.simulate import simulate_density
from cryostack.examples import SPIKE_NTD_MODEL
from cryostack.io.maps import DensityMap, GridSpec
from cryostack.io.models import Structure, read_structure
from cryostack.validate import validate

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
    m = simulate_density(torch.tensor(atoms.coords), torch.tensor(atoms.atomic_numbers), grid, resolution_A=3.5,
                         b_factors=torch.tensor(atoms.b_factors)).numpy()
    m += np.random.default_rng(0).normal(0, 0.2 * m.std(), m.shape).astype(np.float32)
    t_setup = time.perf_counter() - t0
    density = DensityMap(m, grid.voxel_size, grid.origin)
    timings = {}
    t0 = time.perf_counter()
    result = validate(model, density=density, resolution_A=3.5)
    timings["validate_total_s"] = time.perf_counter() - t0
    d = result.to_dict()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout.strip())
    out = {
        "benchmark": "validate_speed",
        "date": datetime.now(timezone.utc).isoformat(),
        "commit": commit,
        "tree_dirty": dirty,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads()},
        "case": {"residues": len(atoms.residue_names), "atoms": atoms.n_atoms, "map_shape_zyx": grid.shape,
                 "voxel_size_A": 1.0, "resolution_A": 3.5},
        "setup_simulation_s": t_setup,
        **timings,
        "goal_s": 60.0,
        "meets_goal": timings["validate_total_s"] < 60.0,
        "cc_mask": d["map_model"]["cc_mask"],
        "q_score": d["map_model"]["q_score"],
    }
    path = ROOT / "benchmarks" / "results" / "validate_speed.json"
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
