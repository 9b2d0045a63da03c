"""Denoising pretraining of the atom denoiser on the corpus train split (EDM noise, seeded, resumable).

Run ``python -m cryostack.refine.diffusion.pretrain --corpus DIR --out DIR``. Each step draws
chains from the TRAIN split only, takes a spatial crop, adds isotropic Gaussian noise of a
log-normally drawn sigma (Å) and regresses the clean coordinates with EDM's loss weight. A
checkpoint (model, optimiser, step, history) is written every few hundred steps and on stop;
rerunning with the same ``--out`` resumes. Sampling is a pure function of (seed, step), so a
resumed run draws the same data and noise as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryostack.refine.diffusion.config import DenoiserConfig, PretrainConfig
from cryostack.refine.diffusion.featurize import AtomFeatures, featurize, featurize_backbone
from cryostack.refine.diffusion.model import AtomDenoiser, edm_loss_weight, save_checkpoint


@dataclass
class Example:
    """One training/validation chain: features and clean coordinates ``(N, 3)`` Å."""

    feats: AtomFeatures
    coords: np.ndarray
    name: str = ""


def example_from_structure(structure, name: str = "") -> Example:
    """Polymer heavy atoms of a Structure as an :class:`Example` (ligands, waters, H dropped)."""
    arr = structure.atoms()
    keep = np.flatnonzero(arr.is_polymer & ~arr.is_hydrogen)
    return Example(featurize(arr).subset(keep), arr.coords[keep].astype(np.float32), name)


def example_from_chain(record, *, full_atom: bool = True, name: str = "") -> Example:
    """A corpus chain: full atoms where the corpus has them (and ``full_atom``), else N CA C O CB."""
    fa = getattr(record, "full_atom", None)
    if full_atom and fa is not None:
        return example_from_structure(fa, name)
    feats, coords = featurize_backbone(record.sequence, record.backbone)
    return Example(feats, coords, name)


def spatial_crop(ex: Example, n_atoms: int, rng: np.random.Generator) -> Example:
    """The ``n_atoms`` atoms nearest a random atom (all of them if the chain is smaller)."""
    n = ex.coords.shape[0]
    if n <= n_atoms:
        return ex
    centre = ex.coords[rng.integers(n)]
    keep = np.sort(np.argsort(((ex.coords - centre) ** 2).sum(1), kind="stable")[:n_atoms])
    return Example(ex.feats.subset(keep), ex.coords[keep], ex.name)


def sample_sigma(cfg: PretrainConfig, rng: np.random.Generator) -> float:
    """EDM-style log-normal noise level in Å, clipped to the configured range."""
    s = math.exp(rng.normal(cfg.log_sigma_mean, cfg.log_sigma_std))
    return float(min(max(s, cfg.sigma_min_A), cfg.sigma_max_A))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def denoising_loss(model: AtomDenoiser, batch: list[Example], sigmas: list[float], gen: torch.Generator,
                   device: str = "cpu") -> torch.Tensor:
    """EDM-weighted mean squared error (per coordinate, unit-variance target) over a batch of chains."""
    feats = AtomFeatures.concatenate([b.feats for b in batch]).to(device)
    clean = torch.as_tensor(np.concatenate([b.coords for b in batch]), device=device)
    sigma = torch.cat([torch.full((b.coords.shape[0],), s) for b, s in zip(batch, sigmas)]).to(device)
    group = torch.cat([torch.full((b.coords.shape[0],), i) for i, b in enumerate(batch)]).to(device)
    noisy = clean + sigma[:, None] * torch.randn(clean.shape, generator=gen).to(device)
    out = model(noisy, sigma, feats, group=group)
    w = edm_loss_weight(sigma, model.cfg.sigma_data_A)
    return (w[:, None] * (out - clean) ** 2).mean()


@torch.no_grad()
def evaluate(model: AtomDenoiser, examples: list[Example], sigmas_A, seed: int = 1234) -> dict[str, dict]:
    """Denoising RMSD (Å) on held-out chains at each sigma, against the identity (noisy input).

    Noise is drawn from a fixed seed, so numbers are comparable between checkpoints.
    """
    model.eval()
    res = {}
    for s in sigmas_A:
        gen = torch.Generator().manual_seed(seed)
        sq_out = sq_in = n = 0.0
        for ex in examples:
            clean = torch.as_tensor(ex.coords)
            noisy = clean + s * torch.randn(clean.shape, generator=gen)
            out = model(noisy, float(s), ex.feats)
            sq_out += float(((out - clean) ** 2).sum())
            sq_in += float(((noisy - clean) ** 2).sum())
            n += clean.shape[0]
        res[f"{s:g}"] = {"sigma_A": float(s), "rmsd_denoised_A": math.sqrt(sq_out / n),
                         "rmsd_noisy_A": math.sqrt(sq_in / n), "atoms": int(n)}
    model.train()
    return res


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except Exception:
        return "unknown"


class TrainState:
    """Everything a resumed run needs: weights, optimiser, step, elapsed seconds, history."""

    def __init__(self, model, opt, step=0, elapsed_s=0.0, history=None):
        self.model, self.opt, self.step, self.elapsed_s = model, opt, step, elapsed_s
        self.history = history or []

    def save(self, path: Path, pcfg: PretrainConfig) -> None:
        save_checkpoint(path, self.model, {"optimizer": self.opt.state_dict(), "step": self.step,
                                           "elapsed_s": self.elapsed_s, "history": self.history,
                                           "pretrain_config": pcfg.to_dict()})


def train(
    train_examples,
    pcfg: PretrainConfig,
    *,
    mcfg: DenoiserConfig | None = None,
    val_examples: list[Example] | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    device: str = "cpu",
    stop_at_step: int | None = None,
) -> TrainState:
    """Pretrain (or resume) a denoiser.

    ``train_examples`` is a sequence, or a callable ``i -> Example`` with ``len`` given by
    ``train_examples.n``; it must only ever hold train-split chains. With ``out_dir``, resumes
    from ``out_dir/last.pt`` if present and writes it every ``pcfg.checkpoint_every`` steps.
    ``stop_at_step`` ends this run early (as an interruption would) without changing the schedule.
    """
    out = Path(out_dir) if out_dir is not None else None
    torch.manual_seed(pcfg.seed)
    model = AtomDenoiser(mcfg or DenoiserConfig()).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=pcfg.lr, weight_decay=pcfg.weight_decay)
    state = TrainState(model, opt)
    last = out / "last.pt" if out is not None else None
    if last is not None and last.is_file():
        ckpt = torch.load(last, map_location=device, weights_only=False)
        model = AtomDenoiser(DenoiserConfig(**ckpt["config"])).to(device)
        model.load_state_dict(ckpt["state_dict"])
        opt = torch.optim.AdamW(model.parameters(), lr=pcfg.lr, weight_decay=pcfg.weight_decay)
        opt.load_state_dict(ckpt["optimizer"])
        state = TrainState(model, opt, ckpt["step"], ckpt["elapsed_s"], ckpt["history"])
    n_train = len(train_examples)
    get = train_examples if callable(train_examples) else train_examples.__getitem__
    model.train()
    t_start = time.monotonic() - state.elapsed_s
    budget_s = pcfg.max_hours * 3600.0
    warmup = 100

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    cols = [TextColumn("pretrain"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*cols, disable=not progress) as bar:
        task = bar.add_task("pretrain", total=pcfg.steps, completed=state.step, info="")
        running = None
        while state.step < pcfg.steps:
            if time.monotonic() - t_start > budget_s or (stop_at_step is not None and state.step >= stop_at_step):
                break
            rng = np.random.default_rng([pcfg.seed, state.step])
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            batch, sigmas = [], []
            for _ in range(pcfg.batch_chains):
                ex = spatial_crop(get(int(rng.integers(n_train))), pcfg.crop_atoms, rng)
                if pcfg.random_rotation:
                    ex = Example(ex.feats, (ex.coords @ _random_rotation(rng).T).astype(np.float32), ex.name)
                batch.append(ex)
                sigmas.append(sample_sigma(pcfg, rng))
            for g in opt.param_groups:  # linear warm-up, then cosine decay to 10 %
                f = min(1.0, (state.step + 1) / warmup)
                f *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, state.step / pcfg.steps)))
                g["lr"] = pcfg.lr * f
            loss = denoising_loss(model, batch, sigmas, gen, device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), pcfg.grad_clip)
            opt.step()
            state.step += 1
            lv = float(loss.detach())
            running = lv if running is None else 0.98 * running + 0.02 * lv
            state.elapsed_s = time.monotonic() - t_start
            if state.step % 10 == 0 or state.step == 1:
                state.history.append({"step": state.step, "loss": lv, "loss_ema": running,
                                      "elapsed_s": round(state.elapsed_s, 1)})
            bar.update(task, completed=state.step, info=f"loss {running:.4f}")
            if val_examples and (state.step % pcfg.val_every == 0):
                state.history.append({"step": state.step, "val": evaluate(model, val_examples, pcfg.val_sigmas_A)})
            if last is not None and state.step % pcfg.checkpoint_every == 0:
                state.save(last, pcfg)
    state.elapsed_s = time.monotonic() - t_start
    if last is not None:
        state.save(last, pcfg)
    return state


def _heldout_entries(corpora) -> set[str]:
    """PDB entries in the val or test split of any of ``corpora`` (never trained on)."""
    out: set[str] = set()
    for c in corpora:
        out |= {r["pdb_id"].upper() for r in c.table() if r["split"] in ("val", "test")}
    return out


def _corpus_examples(corpus, split: str, full_atom: bool, limit: int | None = None,
                     exclude_entries: set[str] = frozenset(), full_atom_from=None):
    """Lazily loaded examples of ``split``; ``full_atom_from`` (another corpus) supplies
    full-atom chains for the same (PDB entry, chain) where it has them."""
    rows = corpus.table()
    idx = np.asarray(corpus.split_indices(split))
    idx = np.array([i for i in idx if rows[i]["pdb_id"].upper() not in exclude_entries], dtype=np.int64)
    if limit is not None:
        idx = idx[:limit]
    extra = {}
    if full_atom_from is not None and full_atom:
        for r in full_atom_from.table():
            if r["split"] != "test" and int(r["has_sidechains"]):
                extra[(r["pdb_id"].upper(), r["chain_id"])] = int(r["index"])
    cache: dict[int, Example] = {}

    def get(i: int) -> Example:
        j = int(idx[i])
        if j not in cache:
            key = (rows[j]["pdb_id"].upper(), rows[j]["chain_id"])
            if key in extra:
                rec = full_atom_from.chain(extra[key])
            else:
                rec = corpus.chain(j)
            cache[j] = example_from_chain(rec, full_atom=full_atom, name=f"{key[0]}_{key[1]}")
        return cache[j]

    get.n = len(idx)  # type: ignore[attr-defined]
    get.n_full_atom = sum(1 for j in idx if (rows[j]["pdb_id"].upper(), rows[j]["chain_id"]) in extra)  # type: ignore[attr-defined]
    return get, idx


class _Sized:
    def __init__(self, get):
        self.get = get

    def __len__(self):
        return self.get.n

    def __call__(self, i):
        return self.get(i)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cryostack.refine.diffusion.pretrain",
                                description="Denoising pretraining of the refinement denoiser (train split only).")
    p.add_argument("--corpus", required=True, help="corpus directory (cryostack data corpus)")
    p.add_argument("--out", required=True, help="run directory: last.pt (resumable), denoiser.pt, report.json")
    p.add_argument("--steps", type=int, default=PretrainConfig.steps)
    p.add_argument("--max-minutes", type=float, default=PretrainConfig.max_hours * 60)
    p.add_argument("--batch-chains", type=int, default=PretrainConfig.batch_chains)
    p.add_argument("--crop-atoms", type=int, default=PretrainConfig.crop_atoms)
    p.add_argument("--val-chains", type=int, default=PretrainConfig.val_chains)
    p.add_argument("--backbone-only", action="store_true", help="ignore full-atom chains")
    p.add_argument("--full-atom-from", help="another corpus (e.g. a sample with ProMod3 side chains) whose "
                   "full-atom chains replace the same chains of --corpus")
    p.add_argument("--hold-out-from", action="append", default=[],
                   help="also never train on entries in the val/test split of this corpus (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from cryostack.data.corpus import Corpus

    corpus = Corpus(a.corpus, cache_shards=64)
    fa_corpus = Corpus(a.full_atom_from) if a.full_atom_from else None
    held = _heldout_entries([Corpus(d) for d in a.hold_out_from])
    # a full-atom chain is only used when the main corpus puts its entry in train (checked by index)
    pcfg = PretrainConfig(steps=a.steps, max_hours=a.max_minutes / 60, batch_chains=a.batch_chains,
                          crop_atoms=a.crop_atoms, val_chains=a.val_chains, seed=a.seed,
                          full_atom=not a.backbone_only)
    get_train, train_idx = _corpus_examples(corpus, "train", pcfg.full_atom, exclude_entries=held,
                                            full_atom_from=fa_corpus)
    get_val, val_idx = _corpus_examples(corpus, "val", pcfg.full_atom, limit=pcfg.val_chains)
    vrng = np.random.default_rng(7)
    val = [spatial_crop(get_val(i), 2000, vrng) for i in range(get_val.n)]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    state = train(_Sized(get_train), pcfg, val_examples=val, out_dir=out, progress=not a.no_progress)
    final_val = evaluate(state.model, val, pcfg.val_sigmas_A)
    save_checkpoint(out / "denoiser.pt", state.model)
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": _git_commit(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch_threads": torch.get_num_threads()},
        "corpus": str(Path(a.corpus).resolve()),
        "train_chains_used": int(len(train_idx)),
        "train_chains_full_atom": int(get_train.n_full_atom),
        "held_out_entries_from_other_corpora": sorted(held),
        "full_atom_from": str(Path(a.full_atom_from).resolve()) if a.full_atom_from else None,
        "corpus_splits": corpus.info.get("splits"),
        "val_chains_evaluated": int(len(val_idx)),
        "steps": state.step,
        "wall_time_s": round(state.elapsed_s, 1),
        "parameters": state.model.n_parameters(),
        "pretrain_config": pcfg.to_dict(),
        "model_config": state.model.cfg.to_dict(),
        "val": final_val,
        "history": state.history,
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
