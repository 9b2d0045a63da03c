"""Training the model builder on simulated maps of corpus chains (train split; validation on val).

Every example is simulated on the fly by the data module (:mod:`cryostack.data.synthetic`): a
map crop at 1.5 Å/voxel and 3–6 Å resolution with the realistic degradations (coloured noise,
local blur, B-factors, missing and extra density, detergent, masking), and the residues whose Cα
lie in it. A crop of a large chain holds several fragments of it; they keep their order and are
told apart by position jumps, as chains are at inference. A fraction of examples is given as
poly-UNK (the ``--no-sequence`` mode), so one network serves both.

The same entry point runs on the CPU, one GPU, or several under ``torchrun``
(:func:`cryostack.learn.loop.train`); ``RUN/last.pt`` resumes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cryostack.build.featurize import BUILD_VOXEL_A, BuildExample, collate, example_from_item
from cryostack.build.losses import calpha_voxels, dense_losses, dense_targets, pointer_loss, structure_losses
from cryostack.build.model import (
    MODEL_NAME,
    BuilderConfig,
    ModelBuilder,
    load_builder,
    save_builder,
    unknown_types_like,
)
from cryostack.data.datasets import SimulatedMapDataset
from cryostack.data.synthetic import SimulationConfig
from cryostack.geometry.frames import backbone_from_frames, frames_from_backbone, quaternion_update
from cryostack.learn.card import write_run_report
from cryostack.learn.loop import TrainConfig, TrainState
from cryostack.learn.loop import train as train_loop
from cryostack.learn.provenance import provenance

#: Weights of the loss terms (structure terms are averaged over the decoder layers first).
LOSS_WEIGHTS = {
    "global": 1.0, "fragment": 1.0, "pair": 0.5, "neighbour": 0.5, "distance": 0.05,
    "ca_presence": 1.0, "ca_offset": 0.3, "residue_type": 0.3, "confidence": 0.1, "pointer": 0.3,
}  # fmt: skip
#: Clamp of the pointer's frames' losses (Å): wider than the GNN layers' 10 Å, so residues placed
#: far from their density still feel a pull.
POINTER_CLAMP_A = 40.0


@dataclass
class BuildTrainConfig:
    """One builder training run (units in the names)."""

    steps: int = 3000
    batch: int = 2
    crop_voxels: int = 40  # at 1.5 Å/voxel: a 60 Å cube (multiple of 4)
    max_residues: int = 160
    resolution_A: tuple[float, float] = (3.0, 6.0)
    no_sequence_prob: float = 0.1
    # batches whose GNN starts from the true frames plus noise (it learns to refine locally while
    # the pointer is still poor); the pointer's own frames are trained on every batch
    noisy_start_prob: float = 0.5
    noisy_start_A: float = 2.0  # SD of the translation noise (Å); rotations get noise_A × 10° SD
    lr: float = 5e-4
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    warmup_steps: int = 100
    checkpoint_every: int = 50
    eval_every: int = 250
    val_items: int = 16
    max_hours: float | None = None
    init_checkpoint: str | None = None
    seed: int = 0
    model: dict[str, Any] = field(default_factory=dict)  # BuilderConfig overrides

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def simulation(self) -> SimulationConfig:
        return SimulationConfig(
            resolution_A=tuple(self.resolution_A),  # type: ignore[arg-type]
            voxel_size_A=BUILD_VOXEL_A,
            crop_voxels=self.crop_voxels,
        )


def _examples(dataset: SimulatedMapDataset, rng: np.random.Generator, n: int, max_residues: int) -> list[BuildExample]:
    out: list[BuildExample] = []
    while len(out) < n:
        ex = example_from_item(dataset.arrays(int(rng.integers(0, len(dataset)))), max_residues=max_residues)
        if ex is not None and len(ex.residue_type) >= 4:
            out.append(ex)
    return out


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    keys = ("density", "origin_A", "residue_type", "position", "residue_mask")
    return {k: batch[k].to(device) for k in keys}


def total_loss(out: dict[str, Any], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted sum of every term (structure terms averaged over decoder layers) and each term."""
    true_bb, mask, pos = batch["backbone_A"], batch["residue_mask"], batch["position"]
    terms: dict[str, torch.Tensor] = {}
    for layer, (rot, trans) in enumerate(out["frames"]):
        clamp = POINTER_CLAMP_A if layer == 0 else 10.0
        for k, v in structure_losses(rot, trans, true_bb, mask, pos, clamp_A=clamp).items():
            terms[k] = terms.get(k, 0) + v / len(out["frames"])
    heads = out["dense"]
    voxel, inside = calpha_voxels(true_bb, mask, heads.shape[2:], out["grid_origin_A"], out["grid_spacing_A"])
    terms["pointer"] = pointer_loss(out["pointer_logits"], voxel, inside)
    targets = dense_targets(
        true_bb, mask, batch["true_type"], heads.shape[2:], out["grid_origin_A"], out["grid_spacing_A"]
    )
    terms.update(dense_losses(heads, *targets))
    rot, trans = out["frames"][-1]
    ca_err = (backbone_from_frames(rot, trans)[..., 1, :] - true_bb[..., 1, :]).norm(dim=-1).detach()
    conf = F.binary_cross_entropy_with_logits(out["confidence_logit"], (ca_err < 3.0).float(), reduction="none")
    terms["confidence"] = (conf * mask).sum() / mask.sum().clamp(min=1)
    total = sum(LOSS_WEIGHTS[k] * v for k, v in terms.items())
    assert isinstance(total, torch.Tensor)
    return total, {k: float(v.detach()) for k, v in terms.items()}


class BuildTask:
    """The :class:`~cryostack.learn.loop.TrainTask` of the model builder."""

    model_name = MODEL_NAME

    def __init__(self, dataset: SimulatedMapDataset, cfg: BuildTrainConfig):
        self.dataset, self.cfg = dataset, cfg

    def build_model(self, config: dict[str, Any] | None) -> ModelBuilder:
        if config is None and self.cfg.init_checkpoint:
            return load_builder(self.cfg.init_checkpoint).train()
        return ModelBuilder(BuilderConfig.from_dict(config) if config else BuilderConfig(**self.cfg.model))

    def model_config(self, model) -> dict[str, Any]:
        return model.cfg.to_dict()

    def sample(self, rng: np.random.Generator, step: int) -> dict[str, Any]:
        batch = collate(_examples(self.dataset, rng, self.cfg.batch, self.cfg.max_residues))
        batch["true_type"] = batch["residue_type"].clone()
        no_seq = torch.from_numpy(rng.random(self.cfg.batch) < self.cfg.no_sequence_prob)
        batch["residue_type"][no_seq] = unknown_types_like(batch["residue_type"][no_seq])
        return batch

    def loss(self, model, batch: dict[str, Any], gen: torch.Generator, device: torch.device) -> torch.Tensor:
        start = None
        if float(torch.rand((), generator=gen)) < self.cfg.noisy_start_prob:
            start = noisy_true_frames(batch["backbone_A"], self.cfg.noisy_start_A, gen)
            start = (start[0].to(device), start[1].to(device))
        out = model(**model_inputs(batch, device), gnn_start=start)
        total, _ = total_loss(out, {k: v.to(device) for k, v in batch.items()})
        return total


def noisy_true_frames(
    backbone_A: torch.Tensor, noise_A: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """True frames of ``backbone_A`` ``(B, R, 3, 3)`` with Gaussian translation noise (SD ``noise_A``
    Å) and a random rotation about a random axis (angle SD ``noise_A`` × 10°)."""
    rot, trans = frames_from_backbone(backbone_A[..., 0, :], backbone_A[..., 1, :], backbone_A[..., 2, :])
    shape = trans.shape
    axis = torch.nn.functional.normalize(torch.randn(shape, generator=gen), dim=-1)
    angle = torch.randn(shape[:-1], generator=gen) * math.radians(10.0 * noise_A)
    d_rot = quaternion_update(axis * torch.tan(angle / 2)[..., None])
    return rot @ d_rot, trans + noise_A * torch.randn(shape, generator=gen)


@torch.no_grad()
def evaluate(model: ModelBuilder, batches: list[dict[str, torch.Tensor]], device: str = "cpu") -> dict[str, float]:
    """Held-out scores: mean Cα error (Å) after the pointer and after the GNN, the fraction of
    residues with the final Cα within 3 Å of the truth, and the GNN's error when it starts from
    noised true frames (what it can do locally)."""
    model.eval()
    first: list[torch.Tensor] = []
    last: list[torch.Tensor] = []
    within: list[torch.Tensor] = []
    refined: list[torch.Tensor] = []
    gen = torch.Generator().manual_seed(0)
    for batch in batches:
        out = model(**model_inputs(batch, device))
        mask = batch["residue_mask"].to(device)
        true_ca = batch["backbone_A"][..., 1, :].to(device)
        for store, (_, trans) in ((first, out["frames"][0]), (last, out["frames"][-1])):
            store.append((trans - true_ca).norm(dim=-1)[mask].cpu())
        within.append(((out["frames"][-1][1] - true_ca).norm(dim=-1)[mask] < 3.0).float().cpu())
        start = tuple(t.to(device) for t in noisy_true_frames(batch["backbone_A"], 2.0, gen))
        out = model(**model_inputs(batch, device), gnn_start=start)
        refined.append((out["frames"][-1][1] - true_ca).norm(dim=-1)[mask].cpu())
    model.train()
    return {
        "ca_error_pointer_A": float(torch.cat(first).mean()),
        "ca_error_A": float(torch.cat(last).mean()),
        "ca_within_3A": float(torch.cat(within).mean()),
        # the GNN alone: from true frames plus 2 Å / 20° noise (the start's own Cα error is ~3.2 Å)
        "ca_error_gnn_from_noisy_truth_A": float(torch.cat(refined).mean()),
        "residues": int(torch.cat(last).numel()),
    }


def train_builder(
    corpus_dir: str | Path,
    out_dir: str | Path,
    cfg: BuildTrainConfig,
    *,
    device: str = "cpu",
    progress: bool = True,
    stop_at_step: int | None = None,
) -> dict[str, Any]:
    """Train (or resume from ``out_dir/last.pt``) on the corpus's full-atom train chains.

    Writes ``last.pt`` (resumable), ``builder.pt`` (weights), ``report.json`` and a draft model
    card ``builder.md``. Returns the report.
    """
    from cryostack.data.corpus import Corpus, corpus_data_files

    corpus = Corpus(corpus_dir, cache_shards=64)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = corpus.table()

    def full_atom(split: str) -> list[int]:
        return [int(i) for i in corpus.split_indices(split) if int(rows[int(i)]["has_sidechains"])]

    train_idx, val_idx = full_atom("train"), full_atom("val")
    if not train_idx:
        raise ValueError(f"{corpus_dir}: no full-atom train chains (export the corpus with --sidechains)")
    sim = cfg.simulation()
    train_set = SimulatedMapDataset(corpus, sim, split="train", indices=train_idx, length=10**9, seed=cfg.seed)
    val_set = SimulatedMapDataset(corpus, sim, split="val", indices=val_idx or None, length=10**6, seed=cfg.seed + 1)
    vrng = np.random.default_rng(cfg.seed + 1)
    val_batches = []
    for _ in range(max(1, cfg.val_items // 2)):
        b = collate(_examples(val_set, vrng, 2, cfg.max_residues))
        b["true_type"] = b["residue_type"].clone()
        val_batches.append(b)
    task = BuildTask(train_set, cfg)
    loop_cfg = TrainConfig.from_tool(cfg)
    data_files = corpus_data_files(corpus_dir)
    state: TrainState = train_loop(
        task, loop_cfg, out_dir=out, device=device, progress=progress, stop_at_step=stop_at_step,
        evaluate=lambda m: evaluate(m, val_batches, device), data_files=data_files,
    )  # fmt: skip
    model = state.model
    assert isinstance(model, ModelBuilder)
    final = evaluate(model, val_batches, device)
    prov = provenance(data_files)
    save_builder(out / "builder.pt", model, prov, extra={"train_config": cfg.to_dict()})
    return write_run_report(
        out, card_file="builder.md", card_name="Model builder (draft card)",
        card_summary="Map + sequence → backbone frames, trained on simulated 3–6 Å maps of corpus chains.",
        provenance=prov,
        data={
            "corpus": str(Path(corpus_dir).resolve()),
            "train_chains_full_atom": len(train_idx),
            "val_chains_full_atom": len(val_idx),
        },
        steps_done=state.step, steps_planned=cfg.steps, wall_time_s=state.elapsed_s, model=model,
        train_config=cfg.to_dict(), val=final, history=state.history,
    )  # fmt: skip
