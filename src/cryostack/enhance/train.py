"""Training the enhancer on simulated maps of corpus chains (train split; validation on val).

Every batch is simulated on the fly by the data module (:mod:`cryostack.data.synthetic`): an
experimental-like map at 4–8 Å (coloured noise at the FSC-0.143 level, local blur, B-factors,
missing and extra density, detergent belts, masking) and the clean model map at 2 Å on the same
1 Å grid as the target. Items are drawn from the step's generator, so a resumed run sees exactly
the data an uninterrupted one would, and two ranks under ``torchrun`` see different items.

Structure embeddings (:mod:`cryostack.enhance.embed`) are computed once per training chain and
cached in the run directory. The network reads them at the bottleneck on a fraction
``1 - bypass_prob`` of items and bypasses them on the rest, so the bypass path used at inference
is trained too; the ablation without embeddings is the same run with ``bypass_prob = 1``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cryostack.data.datasets import SimulatedMapDataset
from cryostack.data.synthetic import SimulationConfig
from cryostack.enhance.embed import ProteinMPNNEmbedder, StructureEmbedder, backbone_chains, fixed_size_embedding
from cryostack.enhance.featurize import normalize, normalize_target, rotate_cube
from cryostack.enhance.model import MODEL_NAME, EnhanceUNet, UNetConfig, load_enhancer, save_enhancer
from cryostack.io.atomic import atomic_output
from cryostack.learn.card import write_run_report
from cryostack.learn.loop import TrainConfig, TrainState
from cryostack.learn.loop import train as train_loop
from cryostack.learn.provenance import provenance


@dataclass
class EnhanceTrainConfig:
    """One enhancer training run (units in the names)."""

    steps: int = 4000
    batch: int = 4
    crop_voxels: int = 40  # training cubes at 1 Å/voxel (multiple of 8)
    # > crop_voxels: simulate this box, normalise it whole (as inference normalises a whole map)
    # and train on a cube cut at a random place in it, so solvent-rich tiles are seen too
    sim_box_voxels: int = 0
    init_checkpoint: str | None = None  # start from these weights (fine-tuning), not at random
    resolution_A: tuple[float, float] = (4.0, 8.0)
    target_resolution_A: float = 2.0
    bypass_prob: float = 0.5  # items that skip the structure embeddings (1.0 = the ablation)
    embedding_length: int = 800
    smooth_l1_beta: float = 0.1  # in normalised map units (target 99.9th percentile = 1)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 0.5
    warmup_steps: int = 100
    checkpoint_every: int = 50
    eval_every: int = 250
    val_items: int = 24
    max_hours: float | None = None
    seed: int = 0
    model: dict[str, Any] = field(default_factory=dict)  # UNetConfig overrides

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def simulation(self, box_voxels: int | None = None) -> SimulationConfig:
        return SimulationConfig(
            resolution_A=tuple(self.resolution_A),  # type: ignore[arg-type]
            voxel_size_A=1.0,
            crop_voxels=box_voxels or self.crop_voxels,
            target_resolution_A=self.target_resolution_A,
        )


def full_atom_indices(corpus, split: str, *, allow_test: bool = False) -> np.ndarray:
    """Chains of ``split`` that have side chains (backbone-only chains make unrealistic maps);
    the test split only with ``allow_test`` (evaluation code)."""
    rows = corpus.table()
    idx = np.asarray(corpus.split_indices(split, allow_test=allow_test), dtype=np.int64)
    return np.array([i for i in idx if int(rows[int(i)]["has_sidechains"])], dtype=np.int64)


class EmbeddingCache:
    """Fixed-size structure embeddings per corpus chain, one ``.npy`` each under ``root``."""

    def __init__(self, root: str | Path, embedder: StructureEmbedder | None, length: int):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.embedder, self.length = embedder, length

    def get(self, index: int, structure_fn) -> np.ndarray:
        path = self.root / f"{int(index):06d}.npy"
        if path.is_file():
            return np.load(path)
        if self.embedder is None:
            raise RuntimeError("no embedder to compute a missing embedding")
        emb = fixed_size_embedding(self.embedder.embed(backbone_chains(structure_fn())), self.length)
        with atomic_output(path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, emb)
        return emb


def _pair(
    arrays: dict[str, np.ndarray], rotation: int, start: tuple[int, ...] | None = None, size: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(input, target) normalised over the whole simulated box, then cut at ``start`` (``size``³) and rotated."""
    x, y = normalize_or_zero(arrays["input_map"]), normalize_target(arrays["target_map"])
    if start is not None:
        cut = tuple(slice(s, s + size) for s in start)
        x, y = x[cut], y[cut]
    return np.ascontiguousarray(rotate_cube(x, rotation)), np.ascontiguousarray(rotate_cube(y, rotation))


def normalize_or_zero(data: np.ndarray) -> np.ndarray:
    """Per-map normalisation; a crop with no density above its mean (empty corner) stays zero."""
    try:
        return normalize(data)
    except ValueError:
        return np.zeros_like(data, dtype=np.float32)


class EnhanceTask:
    """The :class:`~cryostack.learn.loop.TrainTask` of the enhancer."""

    model_name = MODEL_NAME

    def __init__(self, dataset: SimulatedMapDataset, cfg: EnhanceTrainConfig, embeddings: EmbeddingCache | None):
        self.dataset, self.cfg, self.embeddings = dataset, cfg, embeddings

    def build_model(self, config: dict[str, Any] | None) -> EnhanceUNet:
        if config is None and self.cfg.init_checkpoint:
            return load_enhancer(self.cfg.init_checkpoint)  # a resumed run's own weights replace these
        return EnhanceUNet(UNetConfig.from_dict(config) if config else UNetConfig(**self.cfg.model))

    def model_config(self, model) -> dict[str, Any]:
        return model.cfg.to_dict()

    def sample(self, rng: np.random.Generator, step: int) -> dict[str, Any]:
        xs, ys, ctx, use = [], [], [], []
        for _ in range(self.cfg.batch):
            i = int(rng.integers(0, len(self.dataset)))
            arrays = self.dataset.arrays(i)
            rotation = int(rng.integers(0, 24))
            box, c = arrays["input_map"].shape[0], self.cfg.crop_voxels
            start = tuple(int(v) for v in rng.integers(0, box - c + 1, 3)) if box > c else None
            x, y = _pair(arrays, rotation, start, c)
            xs.append(x)
            ys.append(y)
            # drawn whether or not embeddings are used, so the ablation sees the very same items
            with_structure = rng.random() >= self.cfg.bypass_prob and self.embeddings is not None
            use.append(with_structure)
            if self.embeddings is not None:
                j = int(arrays["structure_index"])
                ctx.append(self.embeddings.get(j, lambda i=i: self.dataset.structure(i)))
        batch: dict[str, Any] = {
            "input": torch.from_numpy(np.stack(xs))[:, None],
            "target": torch.from_numpy(np.stack(ys))[:, None],
        }
        if ctx:
            batch["context"] = torch.from_numpy(np.stack(ctx))
            batch["use_context"] = torch.tensor(use)
        return batch

    def loss(self, model, batch: dict[str, Any], gen: torch.Generator, device: torch.device) -> torch.Tensor:
        x, y = batch["input"].to(device), batch["target"].to(device)
        ctx = batch.get("context")
        if ctx is None:
            pred = model(x, None)
        else:  # one pass; gated-off items bypass the embeddings (every parameter stays in the graph for DDP)
            pred = model(x, ctx.to(device), context_gate=batch["use_context"].to(device))
        return F.smooth_l1_loss(pred, y, beta=self.cfg.smooth_l1_beta)


def _cc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    d = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / d) if d > 0 else 0.0


@torch.no_grad()
def evaluate(model: EnhanceUNet, items: list[dict[str, np.ndarray]], device: str = "cpu") -> dict[str, float]:
    """Held-out loss-free scores in the inference mode (bypass): mean CC of input and of the
    prediction with the target over the crops, and their gain."""
    model.eval()
    cc_in, cc_out = [], []
    for arrays in items:
        x, y = _pair(arrays, 0)
        pred = model(torch.from_numpy(x)[None, None].to(device), None)[0, 0].cpu().numpy()
        cc_in.append(_cc(x, y))
        cc_out.append(_cc(pred, y))
    model.train()
    return {
        "cc_input": float(np.mean(cc_in)),
        "cc_enhanced": float(np.mean(cc_out)),
        "cc_gain": float(np.mean(cc_out) - np.mean(cc_in)),
        "items": len(items),
    }


def train_enhancer(
    corpus_dir: str | Path,
    out_dir: str | Path,
    cfg: EnhanceTrainConfig,
    *,
    device: str = "cpu",
    progress: bool = True,
    embedder: StructureEmbedder | None = None,
    stop_at_step: int | None = None,
) -> dict[str, Any]:
    """Train (or resume from ``out_dir/last.pt``) on the corpus's full-atom train chains.

    Writes ``last.pt`` (resumable), ``enhancer.pt`` (weights), ``report.json`` and a draft
    model card ``enhancer.md``. Returns the report.
    """
    from cryostack.data.corpus import Corpus, corpus_data_files

    corpus = Corpus(corpus_dir, cache_shards=64)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sim = cfg.simulation(max(cfg.sim_box_voxels, cfg.crop_voxels))
    train_idx, val_idx = full_atom_indices(corpus, "train"), full_atom_indices(corpus, "val")
    if train_idx.size == 0:
        raise ValueError(f"{corpus_dir}: no full-atom train chains (export the corpus with --sidechains)")
    train_set = SimulatedMapDataset(corpus, sim, split="train", indices=train_idx.tolist(), length=10**9, seed=cfg.seed)
    val_src = val_idx if val_idx.size else corpus.split_indices("val")
    val_set = SimulatedMapDataset(
        corpus, cfg.simulation(), split="val", indices=val_src.tolist(), length=cfg.val_items, seed=cfg.seed + 1
    )
    val_items = [val_set.arrays(i) for i in range(len(val_set))]
    embeddings = None
    if cfg.bypass_prob < 1.0:
        embeddings = EmbeddingCache(out / "embeddings", embedder or ProteinMPNNEmbedder(), cfg.embedding_length)
    task = EnhanceTask(train_set, cfg, embeddings)
    loop_cfg = TrainConfig.from_tool(cfg)
    data_files = corpus_data_files(corpus_dir)
    state: TrainState = train_loop(
        task, loop_cfg, out_dir=out, device=device, progress=progress, stop_at_step=stop_at_step,
        evaluate=lambda m: evaluate(m, val_items, device), data_files=data_files,
    )  # fmt: skip
    model = state.model
    assert isinstance(model, EnhanceUNet)
    final = evaluate(model, val_items, device)
    prov = provenance(data_files)
    save_enhancer(out / "enhancer.pt", model, prov, extra={"train_config": cfg.to_dict()})
    return write_run_report(
        out, card_file="enhancer.md", card_name="Map enhancer (draft card)",
        card_summary="3D U-Net with linear attention trained on simulated 4–8 Å maps of corpus chains.",
        provenance=prov,
        data={
            "corpus": str(Path(corpus_dir).resolve()),
            "train_chains_full_atom": int(train_idx.size),
            "val_chains_full_atom": int(val_idx.size),
            "embedder": getattr(embeddings.embedder, "name", None) if embeddings else None,
        },
        steps_done=state.step, steps_planned=cfg.steps, wall_time_s=state.elapsed_s, model=model,
        train_config=cfg.to_dict(), val=final, history=state.history,
    )  # fmt: skip
