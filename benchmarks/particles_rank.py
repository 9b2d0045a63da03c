"""Speed of ``cryostack particles rank``: particles per second, end to end and by stage.

A stack of ``--n`` particles (Gaussian noise: the time does not depend on what the pixels show)
is written as a RELION 3.1 STAR + ``.mrcs`` at two common samplings, 128 px at 1.5 Å and 256 px
at 1.0 Å, and ranked with the shipped ranker (or ``--ranker``) by :func:`rank_particles`
(reading, phase flip, Fourier resampling to the encoder's 3 Å/px, the network, writing the STAR
and histogram). The featurisation and the network alone are timed too. CPU runs use 2 threads
(this machine's cores); a CUDA device is timed as well when one is present.

Writes ``benchmarks/results/particles_rank_<device>.json`` (machine, date, commit).
Run: ``.venv/bin/python benchmarks/particles_rank.py [--n 5000] [--ranker R]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cryostack.learn.provenance import git_commit, machine_info
from cryostack.particles.model import PACKAGED_RANKER

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
#: The issue's goals, particles per second.
GOAL_CPU, GOAL_GPU = 500.0, 5000.0


def write_stack(folder: Path, n: int, box: int, px: float, seed: int = 0) -> Path:
    import mrcfile
    import pandas as pd
    import starfile

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(folder / "stack.mrcs", overwrite=True) as m:
        m.set_data(rng.normal(size=(n, box, box)).astype(np.float32))
        m.voxel_size = px
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnImagePixelSize": [px],
            "rlnImageSize": [box],
            "rlnImageDimensionality": [2],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
        }
    )
    defocus = rng.uniform(8000, 25000, n)
    parts = pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@stack.mrcs" for i in range(n)],
            "rlnMicrographName": [f"mic_{i // 200:05d}.mrc" for i in range(n)],
            "rlnOpticsGroup": np.ones(n, dtype=int),
            "rlnDefocusU": defocus,
            "rlnDefocusV": defocus + 300,
            "rlnDefocusAngle": rng.uniform(0, 180, n),
        }
    )
    star = folder / "particles.star"
    starfile.write({"optics": optics, "particles": parts}, star, overwrite=True)
    return star


def time_stages(star: Path, ckpt: Path, device: str, batch: int) -> dict:
    from cryostack.io.particles import read_particles
    from cryostack.particles.featurize import ctf_params_from_set, featurize
    from cryostack.particles.model import load_ranker

    model = load_ranker(ckpt, map_location=device).eval()
    spec = model.config.features
    pset = read_particles(star)
    rows = np.arange(min(len(pset), 4096))
    images = pset.images(rows)
    ctf = ctf_params_from_set(pset, rows)
    px = float(pset.pixel_size_A[0])
    t0 = time.monotonic()
    x = torch.cat(
        [featurize(images[i : i + batch], px, ctf.take(np.arange(i, min(i + batch, len(rows)))), spec, device=device)
         for i in range(0, len(rows), batch)]
    )  # fmt: skip
    _sync(device)
    t_feat = time.monotonic() - t0
    with torch.no_grad():
        model(x[:batch])  # warm-up
        _sync(device)
        t0 = time.monotonic()
        for i in range(0, len(x), batch):
            model.features_and_scores(x[i : i + batch])
        _sync(device)
    t_net = time.monotonic() - t0
    return {"featurize_per_s": len(rows) / t_feat, "network_per_s": len(rows) / t_net, "n_timed": len(rows)}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--ranker", type=Path, default=None)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    from cryostack.learn.registry import packaged_checkpoint
    from cryostack.particles.rank import rank_particles

    torch.set_num_threads(2)
    ckpt = args.ranker or packaged_checkpoint(PACKAGED_RANKER)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for box, px in ((128, 1.5), (256, 1.0)):
                star = write_stack(Path(tmp) / f"b{box}", args.n, box, px)
                stages = time_stages(star, ckpt, device, args.batch)
                out = Path(tmp) / f"ranked_{box}.star"
                t0 = time.monotonic()
                r = rank_particles(star, out, checkpoint=ckpt, device=device, batch=args.batch, progress=False)
                wall = time.monotonic() - t0
                row = {
                    "box_px": box,
                    "pixel_size_A": px,
                    "particles": r.n_particles,
                    "end_to_end_s": wall,
                    "end_to_end_per_s": r.n_particles / wall,
                    "encode_loop_per_s": r.particles_per_second,
                    **stages,
                }
                print(device, {k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()})
                rows.append(row)
        goal = GOAL_GPU if device == "cuda" else GOAL_CPU
        result = {
            "benchmark": "particles_rank",
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "commit": git_commit(REPO),
            "machine": machine_info(),
            "device": device,
            "torch_threads": torch.get_num_threads(),
            "ranker": str(ckpt),
            "batch": args.batch,
            "goal_per_s": goal,
            "rows": rows,
            "meets_goal": all(r["end_to_end_per_s"] >= goal for r in rows),
        }
        path = RESULTS / f"particles_rank_{device}.json"
        path.write_text(json.dumps(result, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
