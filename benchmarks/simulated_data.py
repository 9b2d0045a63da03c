"""Facts behind the simulated datasets (``docs/simulated_data.md``), measured, with figures.

1. Noise spectra of real maps: the solvent of three deposited maps from ``../shared/data``
   (EMD-0775, EMD-2867, EMD-5168), where the default noise shape comes from.
2. FSC accuracy: two copies of a simulated map with independent noise should cross FSC 0.143
   at the target resolution; measured over structures, resolutions and seeds.
3. Generation speed of :class:`SimulatedMapDataset` items on this machine.

Writes ``benchmarks/results/simulated_data.json`` (machine, date, git commit) and PNG figures
in ``docs/``. Run: ``.venv/bin/python benchmarks/simulated_data.py [--quick]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt, gaussian_filter

from cryostack.chem.residues import main_chain_mask
from cryostack.data import degradations as dg
from cryostack.data.datasets import SimulatedMapDataset, StructureListSource
from cryostack.data.synthetic import SimulationConfig, item_seed, simulate_item
from cryostack.density.fourier import frequency_squared
from cryostack.density.fsc import fsc_curve, fsc_resolution
from cryostack.density.simulate import simulate_density
from cryostack.io.maps import GridSpec, read_map
from cryostack.io.models import read_structure

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "maps"
DOCS = REPO / "docs"
RESULTS = REPO / "benchmarks" / "results"
STRUCTURES = [
    REPO / "tests" / "data" / "reference" / "1OZ7_promod.pdb.gz",
    REPO / "tests" / "data" / "reference" / "1N7S_promod.pdb.gz",
    REPO / "src" / "cryostack" / "examples" / "spike_ntd" / "6vyb_Ndom.pdb",
]
REAL_MAPS = {
    "EMD-0775 (6ksw box)": "cryonet_refine_boxed/6ksw.mrc",
    "EMD-2867 (4uft box)": "cryonet_refine_boxed/4uft.mrc",
    "EMD-5168 (F-actin, ~6.6 Å)": "emd_5168_factin/emd_5168.map",
}


def _git() -> dict:
    def run(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    return {"commit": run("rev-parse", "HEAD") or None, "dirty": bool(run("status", "--porcelain"))}


def _machine() -> dict:
    cpu = None
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "platform": platform.platform(),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "load_avg_1min": os.getloadavg()[0],
    }


# --------------------------------------------------------------------------------------------
# 1. Real maps: solvent noise spectra
# --------------------------------------------------------------------------------------------
def _shells(data: np.ndarray, vox, n_bins: int = 24):
    power = np.abs(np.fft.rfftn(data.astype(np.float64))) ** 2
    s = np.sqrt(frequency_squared(data.shape, vox))
    edges = np.linspace(0.0, 1.0 / (2 * max(vox)), n_bins + 1)
    idx = np.digitize(s, edges) - 1
    p = np.array([power[idx == i].mean() for i in range(n_bins)])
    return 0.5 * (edges[1:] + edges[:-1]), p


def solvent_spectrum(path: Path) -> dict:
    """Power per shell of the map's solvent (≥ 6 Å from the top 20 % of the 4 Å-smoothed map).

    The solvent region is apodised with a 2 Å Gaussian edge; its power is divided by the mean
    squared window, so the shape (not the absolute level) is what is compared.
    """
    m = read_map(path)
    d, vox = m.data.astype(np.float64), m.voxel_size
    smooth = gaussian_filter(d, 4.0 / vox[0])
    dist = distance_transform_edt(smooth < np.percentile(smooth, 80), sampling=vox[::-1])
    solvent = dist > 6.0
    w = gaussian_filter(solvent.astype(float), 2.0 / vox[0])
    s, p_solv = _shells((d - d[solvent].mean()) * w, vox)
    p_solv = p_solv / (w**2).mean()
    _, p_map = _shells(d - d.mean(), vox)
    # the solvent power's roll-off: first shell past the maximum (beyond 12 Å) below 1/3 of it
    mid = s > 1 / 12.0
    i_max = int(np.flatnonzero(mid)[np.argmax(p_solv[mid])])
    below = np.flatnonzero((np.arange(len(s)) > i_max) & (p_solv < p_solv[i_max] / 3))
    i_roll = int(below[0]) if below.size else len(s) - 1
    s_roll = float(s[i_roll])
    # rise below the roll-off: ln P = c - B s² / 2 fitted from 10 Å to the last shell before the roll-off
    band = (s >= 0.1) & (s < s[i_roll - 1] + 1e-9)
    b_noise = None
    if band.sum() >= 3:
        slope = np.polyfit(s[band] ** 2, np.log(p_solv[band]), 1)[0]
        b_noise = float(-2.0 * slope)
    after = lambda ds: float(np.interp(s[i_roll - 1] + ds, s, p_solv) / p_solv[i_roll - 1])  # noqa: E731
    return {
        "shape_xyz": list(m.shape[::-1]),
        "voxel_size_A": list(vox),
        "solvent_fraction": float(solvent.mean()),
        "s_per_A": s.tolist(),
        "solvent_power": p_solv.tolist(),
        "map_power": p_map.tolist(),
        "rolloff_A": 1.0 / s_roll,
        "noise_bfactor_A2_fit": b_noise,
        "band_fit_A": [10.0, float(1.0 / s[i_roll - 1])],
        "power_ratio_0.025_past_rolloff": after(0.025),
        "power_ratio_0.05_past_rolloff": after(0.05),
        "floor_power_ratio": float(p_solv[-1] / p_solv[i_max]),
    }


# --------------------------------------------------------------------------------------------
# 2. FSC crossing accuracy
# --------------------------------------------------------------------------------------------
def fsc_accuracy(resolutions, n_seeds: int, box: int = 64, voxel_A: float = 1.0) -> dict:
    rows = []
    defaults = SimulationConfig()
    for path in STRUCTURES:
        atoms = read_structure(path).atoms()
        heavy = ~atoms.is_hydrogen
        c = atoms.coords[heavy]
        grid = GridSpec((box,) * 3, (voxel_A,) * 3, tuple(np.floor(c.mean(0) - box * voxel_A / 2)))
        for d in resolutions:
            for seed in range(n_seeds):
                rng = np.random.default_rng([seed, int(d * 10)])
                b = dg.perturb_bfactors(
                    atoms.residue_index[heavy],
                    main_chain_mask(atoms)[heavy],
                    rng,
                    global_b_A2=rng.uniform(*defaults.global_b_A2),
                )
                with torch.no_grad():
                    sig = simulate_density(
                        torch.as_tensor(c),
                        torch.as_tensor(atoms.atomic_numbers[heavy]),
                        grid,
                        resolution_A=d,
                        b_factors=torch.as_tensor(b),
                    ).numpy()
                nb = float(rng.uniform(*defaults.noise_bfactor_A2))
                h1, _ = dg.add_resolution_noise(sig, voxel_A, d, rng, noise_bfactor_A2=nb)
                h2, _ = dg.add_resolution_noise(sig, voxel_A, d, rng, noise_bfactor_A2=nb)
                freq, fsc = fsc_curve(h1, h2, (voxel_A,) * 3)
                rows.append(
                    {
                        "structure": path.name,
                        "resolution_A": d,
                        "seed": seed,
                        "noise_bfactor_A2": nb,
                        "fsc_0143_A": fsc_resolution(freq, fsc, 0.143),
                        "freq": freq.tolist(),
                        "fsc": fsc.tolist(),
                    }
                )
    summary = {}
    for d in resolutions:
        r = np.array([row["fsc_0143_A"] / d for row in rows if row["resolution_A"] == d])
        summary[str(d)] = {
            "n": int(r.size),
            "mean_ratio": float(r.mean()),
            "sd_ratio": float(r.std()),
            "max_abs_rel_error": float(np.abs(r - 1).max()),
        }
    return {"box_voxels": box, "voxel_size_A": voxel_A, "per_resolution": summary, "rows": rows}


# --------------------------------------------------------------------------------------------
# 3. Speed
# --------------------------------------------------------------------------------------------
def speed(n_items: int) -> list[dict]:
    out = []
    src = StructureListSource(STRUCTURES)
    for cfg in (SimulationConfig(), SimulationConfig(crop_voxels=48, voxel_size_A=1.5, resolution_A=(4.0, 8.0))):
        ds = SimulatedMapDataset(src, cfg, length=n_items, seed=0)
        ds.arrays(0)  # warm-up (imports, allocations)
        times, cpu = [], []
        for i in range(1, n_items):
            t0, c0 = time.perf_counter(), time.process_time()
            ds.arrays(i)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        out.append(
            {
                "crop_voxels": cfg.crop_voxels,
                "voxel_size_A": cfg.voxel_size_A,
                "resolution_A": list(cfg.resolution_A),
                "items": len(times),
                "median_s_per_item": float(np.median(times)),
                "max_s_per_item": float(np.max(times)),
                "median_cpu_s_per_item": float(np.median(cpu)),  # all threads of this process
                "load_avg_1min_after": os.getloadavg()[0],
            }
        )
    return out


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
def figure_spectra(spectra: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in spectra.items():
        s, p = np.array(r["s_per_A"]), np.array(r["solvent_power"])
        axes[0].semilogy(s, p / p[(s > 0.08)].max(), "o-", ms=3, label=f"{name}: roll-off {r['rolloff_A']:.1f} Å")
    axes[0].set_xlabel("spatial frequency s (1/Å)")
    axes[0].set_ylabel("solvent noise power (relative)")
    axes[0].set_title("Real maps: solvent noise spectra")
    axes[0].legend(fontsize=7)
    d = 3.5
    s = np.linspace(0.0, 0.5, 400)
    for nb in (-40.0, -20.0, 0.0):
        amp = dg.noise_amplitude(s, nb, d)
        over = np.clip(s - 1 / d, 0, None)
        post = 0.05 + 0.95 * np.exp(-(over**2) / (2 * 0.025**2))
        axes[1].semilogy(s, (amp * post) ** 2 / (amp * post).max() ** 2, label=f"B_noise = {nb:g} Å², roll-off")
        axes[1].semilogy(s, amp**2 / amp.max() ** 2, ":", color=axes[1].lines[-1].get_color())
    axes[1].axvline(1 / d, color="grey", lw=0.8)
    axes[1].set_xlabel("spatial frequency s (1/Å)")
    axes[1].set_title(f"Simulated noise power (d = {d} Å; dotted: no post-processing)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_fsc(acc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    seen = set()
    for row in acc["rows"]:
        if row["structure"] != STRUCTURES[0].name or row["seed"] != 0 or row["resolution_A"] in seen:
            continue
        seen.add(row["resolution_A"])
        line = ax.plot(row["freq"], row["fsc"], label=f"d = {row['resolution_A']:g} Å → {row['fsc_0143_A']:.2f} Å")[0]
        ax.axvline(1 / row["resolution_A"], color=line.get_color(), ls=":", lw=0.8)
    ax.axhline(0.143, color="k", lw=0.8)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC between two noisy copies")
    ax.set_title("Noise level set per item: FSC = 0.143 at the target resolution (dotted)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_examples(path: Path) -> None:
    """Central slices: each degradation alone on one crop, then complete items with their targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    atoms = read_structure(STRUCTURES[0]).atoms()
    base = dict(
        crop_voxels=64,
        voxel_size_A=1.0,
        random_rotation=False,
        postprocess_prob=0.0,
        local_resolution_prob=0.0,
        missing_density_prob=0.0,
        ligand_prob=0.0,
        micelle_prob=0.0,
        blob_prob=0.0,
        soft_mask_prob=0.0,
        hard_mask_prob=0.0,
        box_edge_prob=0.0,
        resolution_A=(4.0, 4.0),
        global_b_A2=(20.0, 20.0),
    )
    # noise_scale ≈ 0 shows the clean signal of each setting
    panels = [
        ("clean signal, 4 Å", dict(noise_scale=(1e-6, 1e-6))),
        ("+ local resolution", dict(noise_scale=(1e-6, 1e-6), local_resolution_prob=1.0, local_b_max_A2=(100, 100))),
        (
            "+ missing + ligands",
            dict(
                noise_scale=(1e-6, 1e-6),
                missing_density_prob=1.0,
                ligand_prob=1.0,
                missing_segments=(3, 3),
                n_ligands=(3, 3),
            ),
        ),
        ("+ micelle + blobs", dict(noise_scale=(1e-6, 1e-6), micelle_prob=1.0, blob_prob=1.0, n_blobs=(8, 8))),
        ("+ coloured noise (FSC 4 Å)", dict()),
        ("+ noise + roll-off", dict(postprocess_prob=1.0)),
        ("+ noise + soft mask", dict(postprocess_prob=1.0, soft_mask_prob=1.0)),
        ("+ noise + hard mask, box edge", dict(hard_mask_prob=1.0, box_edge_prob=1.0, box_edge_max_fraction=0.25)),
    ]
    fig, axes = plt.subplots(3, 8, figsize=(18, 7))
    for ax, (title, over) in zip(axes[0], panels):
        item = simulate_item(atoms, SimulationConfig(**{**base, **over}), item_seed(0, 1))
        ax.imshow(item.input_map.data[32], cmap="gray", origin="lower")
        ax.set_title(title, fontsize=8)
    for k, d in enumerate((2.5, 3.5, 4.5, 5.5, 6.5, 8.0, 5.0, 7.0)):
        st = STRUCTURES[k % len(STRUCTURES)]
        a = read_structure(st).atoms()
        item = simulate_item(a, SimulationConfig(resolution_A=(d, d)), item_seed(1, k))
        axes[1, k].imshow(item.input_map.data[32], cmap="gray", origin="lower")
        axes[1, k].set_title(f"input {d:g} Å ({st.name.split('_')[0].split('.')[0]})", fontsize=8)
        axes[2, k].imshow(item.target_map.data[32], cmap="gray", origin="lower")
        axes[2, k].set_title(f"target {SimulationConfig().target_resolution:g} Å", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        "Central z-slices of 64³ crops at 1 Å/voxel. Top: one degradation at a time (1OZ7); "
        "middle: default-config items; bottom: their sharp targets",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer seeds and items (a smoke run)")
    args = ap.parse_args()
    t0 = time.time()
    result = {
        "benchmark": "simulated_data",
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": _git(),
        "machine": _machine(),
    }
    if SHARED.is_dir():
        result["real_map_solvent_spectra"] = {k: solvent_spectrum(SHARED / v) for k, v in REAL_MAPS.items()}
        figure_spectra(result["real_map_solvent_spectra"], DOCS / "simulated_data_noise_spectra.png")
    else:
        result["real_map_solvent_spectra"] = None
    resolutions = (2.0, 3.0, 4.0, 5.0, 6.0, 8.0)
    result["fsc_accuracy"] = fsc_accuracy(resolutions, n_seeds=1 if args.quick else 3)
    figure_fsc(result["fsc_accuracy"], DOCS / "simulated_data_fsc.png")
    result["speed"] = speed(3 if args.quick else 8)
    figure_examples(DOCS / "simulated_data_examples.png")
    result["total_runtime_s"] = time.time() - t0
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("simulated_data_quick.json" if args.quick else "simulated_data.json")
    out.write_text(json.dumps(result, indent=1))
    for k, v in result["fsc_accuracy"]["per_resolution"].items():
        print(
            f"FSC 0.143 / target at {k} Å: mean {v['mean_ratio']:.3f} sd {v['sd_ratio']:.3f} "
            f"max |err| {v['max_abs_rel_error']:.3f} (n={v['n']})"
        )
    if result["real_map_solvent_spectra"]:
        for k, v in result["real_map_solvent_spectra"].items():
            print(
                f"{k}: roll-off {v['rolloff_A']:.2f} Å, B_noise fit {v['noise_bfactor_A2_fit']}, "
                f"power ×{v['power_ratio_0.025_past_rolloff']:.3f} at +0.025/Å, ×{v['power_ratio_0.05_past_rolloff']:.3f} "
                f"at +0.05/Å, floor {v['floor_power_ratio']:.4f}"
            )
    for v in result["speed"]:
        print(
            f"speed {v['crop_voxels']}³ at {v['voxel_size_A']} Å: median {v['median_s_per_item']:.2f} s/item "
            f"(CPU {v['median_cpu_s_per_item']:.2f} s), load {v['load_avg_1min_after']:.1f}"
        )
    print(f"wrote {out} in {result['total_runtime_s']:.0f} s")


if __name__ == "__main__":
    main()
