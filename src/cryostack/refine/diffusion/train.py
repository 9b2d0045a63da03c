"""Denoising pretraining of the atom denoiser on the corpus train split (EDM noise, seeded, resumable).

Run ``cryostack train denoiser --corpus DIR --out DIR``. Each step draws chains from the TRAIN
split only, takes a spatial crop, adds isotropic Gaussian noise of a log-normally drawn sigma (Å)
and regresses the clean coordinates with EDM's loss weight. The loop itself (schedule,
checkpoints, resume, budget, DDP) is :func:`cryostack.learn.loop.train`; this module supplies the
data sampler, the model and the loss (:class:`DenoiserTask`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from cryostack.io.atomic import atomic_output
from cryostack.learn.card import write_model_card
from cryostack.learn.loop import TrainConfig, TrainState, unwrap
from cryostack.learn.loop import train as train_loop
from cryostack.learn.provenance import provenance
from cryostack.nn.edm import edm_loss_weight
from cryostack.refine.diffusion.config import DenoiserConfig, PretrainConfig
from cryostack.refine.diffusion.featurize import AtomFeatures, featurize, featurize_backbone
from cryostack.refine.diffusion.model import MODEL_NAME, AtomDenoiser, save_denoiser


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


def denoising_loss(
    model: torch.nn.Module, batch: list[Example], sigmas: list[float], gen: torch.Generator, device: str = "cpu"
) -> torch.Tensor:
    """EDM-weighted mean squared error (per coordinate, unit-variance target) over a batch of chains.

    ``model`` is an :class:`AtomDenoiser`, possibly wrapped in DistributedDataParallel.
    """
    feats = AtomFeatures.concatenate([b.feats for b in batch]).to(device)
    clean = torch.as_tensor(np.concatenate([b.coords for b in batch]), device=device)
    sigma = torch.cat([torch.full((b.coords.shape[0],), s) for b, s in zip(batch, sigmas)]).to(device)
    group = torch.cat([torch.full((b.coords.shape[0],), i) for i, b in enumerate(batch)]).to(device)
    noisy = clean + sigma[:, None] * torch.randn(clean.shape, generator=gen).to(device)
    out = model(noisy, sigma, feats, group=group)
    w = edm_loss_weight(sigma, cast(AtomDenoiser, unwrap(model)).cfg.sigma_data_A)
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
        res[f"{s:g}"] = {
            "sigma_A": float(s),
            "rmsd_denoised_A": math.sqrt(sq_out / n),
            "rmsd_noisy_A": math.sqrt(sq_in / n),
            "atoms": int(n),
        }
    model.train()
    return res


@dataclass
class DenoiserTask:
    """The denoiser's part of :func:`cryostack.learn.loop.train`: crops of train-split chains, noise, EDM loss.

    ``examples`` is a sequence, or a callable ``i -> Example`` with ``len`` given; it must only
    ever hold train-split chains.
    """

    examples: Any
    pcfg: PretrainConfig
    mcfg: DenoiserConfig = field(default_factory=DenoiserConfig)
    model_name: str = MODEL_NAME

    def __post_init__(self) -> None:
        self._n = len(self.examples)
        self._get: Callable[[int], Example] = self.examples if callable(self.examples) else self.examples.__getitem__

    def build_model(self, config: dict[str, Any] | None) -> AtomDenoiser:
        return AtomDenoiser(DenoiserConfig(**config) if config else self.mcfg)

    def model_config(self, model: torch.nn.Module) -> dict[str, Any]:
        return cast(AtomDenoiser, model).cfg.to_dict()

    def sample(self, rng: np.random.Generator, step: int) -> tuple[list[Example], list[float]]:
        batch, sigmas = [], []
        for _ in range(self.pcfg.batch_chains):
            ex = spatial_crop(self._get(int(rng.integers(self._n))), self.pcfg.crop_atoms, rng)
            if self.pcfg.random_rotation:
                ex = Example(ex.feats, (ex.coords @ _random_rotation(rng).T).astype(np.float32), ex.name)
            batch.append(ex)
            sigmas.append(sample_sigma(self.pcfg, rng))
        return batch, sigmas

    def loss(self, model: torch.nn.Module, batch, gen: torch.Generator, device: torch.device) -> torch.Tensor:
        examples, sigmas = batch
        return denoising_loss(model, examples, sigmas, gen, str(device))


def train_config(pcfg: PretrainConfig) -> TrainConfig:
    """The shared loop's settings for a :class:`PretrainConfig` (100-step warm-up, cosine to 10 %)."""
    return TrainConfig(
        steps=pcfg.steps,
        lr=pcfg.lr,
        weight_decay=pcfg.weight_decay,
        grad_clip=pcfg.grad_clip,
        warmup_steps=100,
        final_lr_fraction=0.1,
        seed=pcfg.seed,
        checkpoint_every=pcfg.checkpoint_every,
        eval_every=pcfg.val_every,
        max_hours=pcfg.max_hours,
    )


def train(
    train_examples: Sequence[Example] | Callable[[int], Example],
    pcfg: PretrainConfig,
    *,
    mcfg: DenoiserConfig | None = None,
    val_examples: list[Example] | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    device: str = "cpu",
    stop_at_step: int | None = None,
    data_files: dict[str, str | Path] | None = None,
) -> TrainState:
    """Pretrain (or resume from ``out_dir/last.pt``) a denoiser; see :class:`DenoiserTask`.

    ``stop_at_step`` ends this run early (as an interruption would) without changing the schedule.
    """
    task = DenoiserTask(train_examples, pcfg, mcfg or DenoiserConfig())

    def validate(model: AtomDenoiser) -> dict:  # the loop passes the unwrapped model
        return evaluate(model, val_examples or [], pcfg.val_sigmas_A)

    return train_loop(
        task,
        train_config(pcfg),
        out_dir=out_dir,
        device=device,
        progress=progress,
        stop_at_step=stop_at_step,
        evaluate=validate if val_examples else None,
        data_files=data_files,
    )


def _heldout_entries(corpora) -> set[str]:
    """PDB entries in the val or test split of any of ``corpora`` (never trained on)."""
    out: set[str] = set()
    for c in corpora:
        out |= {r["pdb_id"].upper() for r in c.table() if r["split"] in ("val", "test")}
    return out


def _corpus_examples(
    corpus,
    split: str,
    full_atom: bool,
    limit: int | None = None,
    exclude_entries: frozenset[str] | set[str] = frozenset(),
    full_atom_from=None,
):
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


def pretrain_from_corpus(
    corpus_dir: str | Path,
    out_dir: str | Path,
    pcfg: PretrainConfig,
    *,
    full_atom_from: str | Path | None = None,
    hold_out_from: Sequence[str | Path] = (),
    progress: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Pretrain on a corpus's train split into ``out_dir`` (resumable); returns the run report.

    Writes ``out_dir/last.pt`` (resumable state), ``denoiser.pt`` (weights in the shared
    checkpoint format) and ``report.json`` (provenance, data, held-out denoising RMSD, history).
    ``full_atom_from`` (another corpus) supplies full-atom chains for the same chains;
    entries in the val/test split of any ``hold_out_from`` corpus are never trained on.
    """
    from cryostack.data.corpus import Corpus, corpus_data_files

    corpus = Corpus(corpus_dir, cache_shards=64)
    fa_corpus = Corpus(full_atom_from) if full_atom_from else None
    held = _heldout_entries([Corpus(d) for d in hold_out_from])
    # a full-atom chain is only used when the main corpus puts its entry in train (checked by index)
    get_train, train_idx = _corpus_examples(
        corpus, "train", pcfg.full_atom, exclude_entries=held, full_atom_from=fa_corpus
    )
    get_val, val_idx = _corpus_examples(corpus, "val", pcfg.full_atom, limit=pcfg.val_chains)
    vrng = np.random.default_rng(7)
    val = [spatial_crop(get_val(i), 2000, vrng) for i in range(get_val.n)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_files = corpus_data_files(corpus_dir)
    state = train(
        _Sized(get_train), pcfg, val_examples=val, out_dir=out, progress=progress, device=device, data_files=data_files
    )
    model = cast(AtomDenoiser, state.model)  # train() returns the unwrapped model
    final_val = evaluate(model, val, pcfg.val_sigmas_A)
    prov = provenance(data_files)
    save_denoiser(out / "denoiser.pt", model, prov)
    report = {
        "date": prov["date_utc"],
        "git_commit": prov["git_commit"],
        "machine": prov["machine"],
        "data_sha256": prov["data_sha256"],
        "corpus": str(Path(corpus_dir).resolve()),
        "train_chains_used": int(len(train_idx)),
        "train_chains_full_atom": int(get_train.n_full_atom),
        "held_out_entries_from_other_corpora": sorted(held),
        "full_atom_from": str(Path(full_atom_from).resolve()) if full_atom_from else None,
        "corpus_splits": corpus.info.get("splits"),
        "val_chains_evaluated": int(len(val_idx)),
        "steps": state.step,
        "wall_time_s": round(state.elapsed_s, 1),
        "parameters": model.n_parameters(),
        "pretrain_config": pcfg.to_dict(),
        "model_config": model.cfg.to_dict(),
        "val": final_val,
        "history": state.history,
    }
    with atomic_output(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    write_model_card(
        out / "model_card.md",
        name=f"{MODEL_NAME} ({state.step} steps)",
        summary="Draft card of a denoising-pretraining run of the refinement denoiser (train split only).",
        provenance=prov,
        sections={
            "Data and split": {k: report[k] for k in ("corpus", "corpus_splits", "train_chains_used",
                                                       "train_chains_full_atom", "val_chains_evaluated")},
            "Training": {"steps": state.step, "wall_time_s": report["wall_time_s"], "config": pcfg.to_dict()},
            "Held-out denoising RMSD (val split)": final_val,
        },
    )  # fmt: skip
    return report
