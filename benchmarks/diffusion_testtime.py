"""Probe of the diffusion optimiser's per-atom stage against direct optimisation, step by step.

From one placed model (the shared coarse and rigid-body stages of :mod:`cryostack.refine.stages`,
run once), the refinement loss is traced every few steps for

* ``direct``: Adam on the coordinates (``RefineConfig.lr``, no decay);
* ``raw``: test-time Adam on the denoiser's weights with the paper's raw one-step output, at each
  ``--sigmas`` and ``--raw-lrs``;
* ``residual``: the same with ``TestTimeConfig.residual`` (input + change of the output since
  pretraining) at each ``--residual-lrs`` and each ``--adapt-blocks`` (every weight, or only
  the last blocks').

It answers where the diffusion optimiser loses to direct: the loss of the pretrained output
before any adaptation, how fast adaptation lowers the loss, and what a step costs (network
forward, objective, backward). Cases are those of ``benchmarks/refine.py`` (prepared there under
``--work``). Results: ``benchmarks/results/diffusion_testtime_cpu.json`` with machine and commit.

    .venv/bin/python benchmarks/diffusion_testtime.py --cases 4uft,sim:/work/simtest/corpus:0:3.0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refine as refine_bench  # noqa: E402  (the refinement benchmark: cases and machine info)

RESULTS = refine_bench.ROOT / "benchmarks" / "results" / "diffusion_testtime_cpu.json"


def trace(objective, step_fn, steps: int, every: int) -> dict:
    """Loss, bond z², CC every ``every`` steps of ``step_fn(step) -> (coords, loss)`` (which also
    takes its optimiser step), and the mean time per step."""
    points, t0 = [], time.perf_counter()
    for step in range(steps + 1):
        x, loss, terms = step_fn(step, last=step == steps)
        if step % every == 0 or step == steps:
            points.append(
                {
                    "step": step,
                    "loss": round(float(loss), 4),
                    "bond_z2": round(float(terms["bond"]), 4),
                    "cc": round(1.0 - float(terms["density"]), 4),
                }
            )
    return {
        "trace": points,
        "best_loss": min(p["loss"] for p in points),
        "s_per_step": (time.perf_counter() - t0) / (steps + 1),
    }


def direct_fn(objective, x0: torch.Tensor, lr: float):
    movable = objective.movable
    delta = torch.zeros_like(x0[movable], requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)

    def step(_, last=False):
        x = x0.clone()
        x[movable] = x0[movable] + delta
        loss, terms = objective(x)
        if not last:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return x, loss.detach(), terms

    return step


def denoiser_fn(objective, x0: torch.Tensor, pretrained, feats, ttc, timing: dict):
    """Test-time Adam on the denoiser's weights (``ttc``: sigma, lr, residual, adapt_blocks)."""
    from cryostack.refine.diffusion.testtime import _adapted, _base_offset, _denoiser_of, _trainable_copy

    net = _trainable_copy(pretrained, x0.device, ttc)
    opt = torch.optim.Adam(_adapted(net), lr=ttc.lr)
    graph = net.graph(x0, feats)
    base = _base_offset(pretrained, x0, feats, graph, ttc)
    t_trunk = time.perf_counter()
    denoise = _denoiser_of(net, x0, feats, graph, ttc)
    timing["trunk_once_s"] = time.perf_counter() - t_trunk
    movable = objective.movable.bool()[:, None]

    def step(_, last=False):
        t0 = time.perf_counter()
        x = torch.where(movable, denoise() - base, x0)
        t1 = time.perf_counter()
        loss, terms = objective(x)
        t2 = time.perf_counter()
        if not last:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        t3 = time.perf_counter()
        for k, v in (("network_s", t1 - t0), ("objective_s", t2 - t1), ("backward_and_step_s", t3 - t2)):
            timing[k] = timing.get(k, 0.0) + v
        timing["n"] = timing.get("n", 0) + 1
        return x.detach(), loss.detach(), terms

    return step


def run_case(case: str, work: Path, args) -> dict:
    from cryostack.io.maps import read_map
    from cryostack.io.models import read_structure
    from cryostack.refine import LossWeights, RefineConfig
    from cryostack.refine.diffusion.config import TestTimeConfig
    from cryostack.refine.diffusion.featurize import featurize
    from cryostack.refine.diffusion.model import load_denoiser
    from cryostack.refine.objective import RefinementObjective
    from cryostack.refine.stages import place

    info = refine_bench.prepare(case, work)
    dmap = read_map(info["map"])
    start = read_structure(info["model"])
    objective = RefinementObjective(start, dmap, info["resolution_A"], LossWeights())
    torch.manual_seed(0)
    t0 = time.perf_counter()
    x0 = place(objective, objective.init_coords.detach(), RefineConfig()).detach()
    place_s = time.perf_counter() - t0
    with torch.no_grad():
        loss0, terms0 = objective(x0)
    out = {
        "case": case,
        "atoms": int(x0.shape[0]),
        "place_s": place_s,
        "placed": {"loss": float(loss0), "bond_z2": float(terms0["bond"]), "cc": 1.0 - float(terms0["density"])},
        "runs": [],
    }
    out["runs"].append(
        {
            "method": "direct",
            "lr": RefineConfig.lr,
            **trace(objective, direct_fn(objective, x0, RefineConfig.lr), args.steps, args.every),
        }
    )
    pretrained = load_denoiser(None)
    feats = featurize(objective.atoms)
    variants = [("raw", s, lr, None) for s in args.sigmas for lr in args.raw_lrs]
    variants += [("residual", args.residual_sigma, lr, k) for lr in args.residual_lrs for k in args.adapt_blocks]
    for kind, sigma, lr, adapt in variants:
        timing: dict = {}
        ttc = TestTimeConfig(sigma_A=sigma, lr=lr, residual=kind == "residual", adapt_blocks=adapt)
        fn = denoiser_fn(objective, x0, pretrained, feats, ttc, timing)
        row = {
            "method": f"diffusion_{kind}",
            "sigma_A": sigma,
            "lr": lr,
            "adapt_blocks": adapt,
            **trace(objective, fn, args.steps, args.every),
        }
        n = timing.pop("n")
        row.update({k: v / n for k, v in timing.items() if k != "trunk_once_s"})
        row["trunk_once_s"] = timing["trunk_once_s"]
        out["runs"].append(row)
        print(
            f"{case} {row['method']} sigma {sigma} lr {lr} adapt_blocks {adapt}: best loss {row['best_loss']:.3f} "
            f"(placed {out['placed']['loss']:.3f}, direct {out['runs'][0]['best_loss']:.3f}) "
            f"{row['s_per_step'] * 1000:.0f} ms/step",
            flush=True,
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="4uft")
    ap.add_argument("--work", default="/tmp/cryostack_refine_bench")
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--sigmas", type=lambda s: [float(v) for v in s.split(",") if v], default=[0.05, 0.5])
    ap.add_argument("--raw-lrs", type=lambda s: [float(v) for v in s.split(",") if v], default=[1e-3, 1e-2])
    ap.add_argument("--residual-sigma", type=float, default=0.5)
    ap.add_argument("--residual-lrs", type=lambda s: [float(v) for v in s.split(",") if v], default=[1e-4, 3e-4])
    ap.add_argument(
        "--adapt-blocks",
        type=lambda s: [None if v == "all" else int(v) for v in s.split(",")],
        default=[None],
        help="comma list of TestTimeConfig.adapt_blocks for the residual runs: 'all' or a block count",
    )
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = [run_case(c, Path(args.work), args) for c in args.cases.split(",")]
    from cryostack.io.atomic import atomic_output

    with atomic_output(Path(args.out)) as tmp:
        Path(tmp).write_text(
            json.dumps(
                {"machine": refine_bench.machine(), "args": {k: v for k, v in vars(args).items()}, "cases": results},
                indent=1,
            )
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
