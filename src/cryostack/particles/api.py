"""Library API of the learned particle tools (the CLI commands are thin wrappers around these).

* :func:`pretrain_encoder` / :func:`finetune_ranker` — training runs (resumable, see
  :mod:`cryostack.particles.train`), each ending with a checkpoint and a draft model card.
* :func:`rank_particles` / :func:`embed_particles` — see :mod:`cryostack.particles.rank`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import torch

from cryostack.errors import InputError
from cryostack.learn.card import write_model_card
from cryostack.learn.checkpoint import load_checkpoint
from cryostack.learn.loop import TrainConfig
from cryostack.learn.provenance import provenance
from cryostack.particles.model import (
    ENCODER_NAME,
    PACKAGED_ENCODER,
    PACKAGED_RANKER,
    RANKER_NAME,
    VIT_PRESETS,
    MoCo,
    MoCoConfig,
    RankerConfig,
    ViTConfig,
    load_encoder,
    save_encoder,
    save_ranker,
)
from cryostack.particles.train import (
    RANKER_RANGES,
    PoolConfig,
    PretrainTask,
    RankerTask,
    SimulationRanges,
    corpus_files,
    describe,
    encoder_state_from,
    run_training,
)


def _open_corpus(corpus):
    from cryostack.data.corpus import Corpus

    if isinstance(corpus, (str, Path)):
        if not (Path(corpus) / "corpus.json").is_file():
            raise InputError(corpus, "not a cryostack corpus (no corpus.json)")
        return Corpus(corpus)
    return corpus


def _pool(batch: int, micrographs: int = 2) -> PoolConfig:
    if batch < 2 * micrographs:
        raise InputError(None, f"--batch must be at least {2 * micrographs}, got {batch}")
    return PoolConfig(particles_per_micrograph=batch // micrographs, micrographs_per_step=micrographs)


def _train_config(steps: int, lr: float, seed: int, max_minutes: float | None, max_warmup: int) -> TrainConfig:
    """AdamW with weight decay 0.05, warm-up (a tenth of the run, at most ``max_warmup`` steps),
    cosine to 5 %, checkpoints every 100 steps: both particle trainings."""
    return TrainConfig(
        steps=steps,
        lr=lr,
        weight_decay=0.05,
        warmup_steps=min(max_warmup, max(1, steps // 10)),
        final_lr_fraction=0.05,
        seed=seed,
        checkpoint_every=100,
        history_every=10,
        max_hours=max_minutes / 60 if max_minutes is not None else None,
    )


def pretrain_encoder(
    corpus,
    out_dir: str | Path,
    *,
    size: str = "tiny",
    steps: int = 3000,
    batch: int = 128,
    lr: float = 5e-4,
    max_minutes: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    pool: PoolConfig | None = None,
    ranges: SimulationRanges = SimulationRanges(),
    stop_at_step: int | None = None,
    vit: ViTConfig | None = None,
    denoise_weight: float = 1.0,
) -> dict[str, Any]:
    """MoCo v3 pretraining (resumes from ``out_dir/last.pt``); writes ``encoder.pt`` and ``card.md``.
    ``vit`` overrides the ``size`` preset (small test models); ``denoise_weight`` weighs the dense
    denoising auxiliary loss (:class:`~cryostack.particles.model.MoCoConfig`; 0 = MoCo v3 alone)."""
    if vit is None and size not in VIT_PRESETS:
        raise InputError(None, f"--size must be one of {', '.join(VIT_PRESETS)}, got {size!r}")
    out = Path(out_dir)
    corpus = _open_corpus(corpus)
    pool = pool or _pool(batch)
    model_cfg = MoCoConfig(
        vit=vit or VIT_PRESETS[size],
        hidden=256 if vit is not None else MoCoConfig.hidden,
        denoise_weight=denoise_weight,
    )
    cfg = _train_config(steps, lr, seed, max_minutes, max_warmup=200)
    t0 = time.monotonic()
    task = PretrainTask(corpus, model_cfg, ranges, pool, total_steps=steps, seed=seed)
    state = run_training(task, out, cfg, device=device, progress=progress, stop_at_step=stop_at_step)
    moco = cast(MoCo, state.model)
    prov = provenance(corpus_files(corpus))
    enc_path = save_encoder(
        out / "encoder.pt",
        moco.encoder,
        moco.config.features,
        prov,
        extra={"step": state.step, "steps": steps, "elapsed_s": state.elapsed_s},
    )
    write_model_card(
        out / "card.md",
        name=f"particle encoder ({size} ViT, MoCo v3)",
        summary=f"MoCo v3 pretraining on simulated particles: {state.step}/{steps} steps, {state.elapsed_s / 3600:.2f} h.",
        provenance=prov,
        sections={
            "Model": moco.config.to_dict(),
            "Training": cfg.to_dict(),
            "Data": describe(pool, ranges),
            "History (last 5)": state.history[-5:],
        },
    )
    return {
        "step": state.step,
        "wall_time_s": time.monotonic() - t0,
        "elapsed_s": state.elapsed_s,
        "encoder": enc_path,
        "history": state.history,
    }


def _encoder_state(encoder: str | Path | None, vit_cfg) -> tuple[dict[str, torch.Tensor] | None, RankerConfig]:
    """The starting weights of a ranker run: an encoder.pt, a MoCo run's last.pt, or None."""
    if encoder is not None and str(encoder).lower() == "none":
        return None, RankerConfig(vit=vit_cfg)
    if encoder is None:
        from cryostack.learn.registry import packaged_checkpoint

        encoder = packaged_checkpoint(PACKAGED_ENCODER)
    path = Path(encoder)
    ckpt = load_checkpoint(path, weights_only=False)
    if ckpt.get("model") == ENCODER_NAME + "-moco":
        moco_cfg = MoCoConfig.from_dict(ckpt["config"])
        return encoder_state_from(ckpt["state_dict"]), RankerConfig(vit=moco_cfg.vit, features=moco_cfg.features)
    vit, spec = load_encoder(path)
    return vit.state_dict(), RankerConfig(vit=vit.config, features=spec)


def finetune_ranker(
    corpus,
    out_dir: str | Path,
    *,
    encoder: str | Path | None = None,
    steps: int = 1500,
    batch: int = 128,
    lr: float = 2e-4,
    max_minutes: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    pool: PoolConfig | None = None,
    ranges: SimulationRanges = RANKER_RANGES,
    stop_at_step: int | None = None,
) -> dict[str, Any]:
    """CryoRanker fine-tuning of the whole network (resumes from ``out_dir/last.pt``); writes
    ``ranker.pt`` and ``card.md``."""
    out = Path(out_dir)
    corpus = _open_corpus(corpus)
    pool = pool or _pool(batch)
    state_dict, model_cfg = _encoder_state(encoder, VIT_PRESETS["tiny"])
    cfg = _train_config(steps, lr, seed, max_minutes, max_warmup=100)
    t0 = time.monotonic()
    task = RankerTask(corpus, model_cfg, ranges, pool, encoder_state=state_dict, seed=seed)
    state = run_training(task, out, cfg, device=device, progress=progress, stop_at_step=stop_at_step)
    prov = provenance(corpus_files(corpus))
    path = save_ranker(
        out / "ranker.pt",
        state.model,  # type: ignore[arg-type]
        prov,
        extra={"step": state.step, "steps": steps, "elapsed_s": state.elapsed_s, "encoder": str(encoder)},
    )
    write_model_card(
        out / "card.md",
        name="particle ranker (CryoRanker head on the particle encoder)",
        summary=f"Fine-tuned (whole network) on simulated particles: {state.step}/{steps} steps, "
        f"{state.elapsed_s / 3600:.2f} h, from {encoder or PACKAGED_ENCODER}.",
        provenance=prov,
        sections={
            "Model": model_cfg.to_dict(),
            "Training": cfg.to_dict(),
            "Data": describe(pool, ranges),
            "History (last 5)": state.history[-5:],
        },
    )
    return {"step": state.step, "wall_time_s": time.monotonic() - t0, "ranker": path, "history": state.history}


__all__ = ["PACKAGED_ENCODER", "PACKAGED_RANKER", "RANKER_NAME", "finetune_ranker", "pretrain_encoder"]
