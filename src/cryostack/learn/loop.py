"""One training loop for every learned tool.

A tool hands over a :class:`TrainTask` — how to build its model, how to draw a batch from a
seeded generator, its loss and (optionally) a held-out evaluation — and :func:`train` does the
rest: AdamW with linear warm-up and cosine decay, gradient clipping, a checkpoint every few
steps (``last.pt``, resumed on the next call with the same ``out_dir``), a wall-clock budget that
stops cleanly, a loss history and a rich progress bar.

Determinism: the batch of step ``s`` is drawn from ``numpy.random.default_rng([seed, s])`` (plus
the rank under DDP), so a resumed run draws exactly the data and noise an uninterrupted one
would, and any step can be reproduced on its own.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in
``DistributedDataParallel`` (NCCL on CUDA, Gloo on the CPU); each rank draws its own batch and
only rank 0 writes checkpoints and shows progress. The same code runs on one CPU core.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from cryostack.learn.checkpoint import load_checkpoint, save_checkpoint
from cryostack.learn.provenance import provenance


@dataclass
class TrainConfig:
    """Optimiser, schedule and bookkeeping of one training run (units in the names)."""

    steps: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0  # max gradient norm; None = no clipping
    warmup_steps: int = 100  # linear warm-up from lr / warmup_steps
    final_lr_fraction: float = 0.1  # cosine decays to this fraction of lr at the last step
    seed: int = 0
    checkpoint_every: int = 100
    eval_every: int = 0  # 0 = evaluate only when the caller asks
    history_every: int = 10
    max_hours: float | None = None  # wall-clock budget; the run stops cleanly and can resume

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_tool(cls, tool_config: Any) -> TrainConfig:
        """The loop's settings from a tool's run config that carries them under the same names
        (``steps``, ``lr``, ``warmup_steps``, ...); the rest keep their defaults."""
        names = [f.name for f in fields(cls)]
        return cls(**{n: getattr(tool_config, n) for n in names if hasattr(tool_config, n)})


class TrainTask(Protocol):
    """What a tool supplies to :func:`train`."""

    model_name: str

    def build_model(self, config: dict[str, Any] | None) -> nn.Module:
        """A fresh model (``config`` None = the task's default) or one rebuilt from a checkpoint's config."""
        ...

    def model_config(self, model: nn.Module) -> dict[str, Any]:
        """The plain dict that :meth:`build_model` rebuilds ``model`` from."""
        ...

    def sample(self, rng: np.random.Generator, step: int) -> Any:
        """The batch of ``step``, drawn only from ``rng`` (never from global state)."""
        ...

    def loss(self, model: nn.Module, batch: Any, gen: torch.Generator, device: torch.device) -> torch.Tensor:
        """Scalar loss of ``batch``; any noise it adds comes from ``gen``. ``model`` may be DDP-wrapped."""
        ...


@dataclass
class TrainState:
    """Everything a resumed run needs: weights, optimiser, step, elapsed seconds, history."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: int = 0
    elapsed_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier at ``step`` (0-based): linear warm-up times cosine decay."""
    warm = min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
    f = cfg.final_lr_fraction
    return warm * (f + (1.0 - f) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / cfg.steps))))


def step_generators(seed: int, step: int, rank: int = 0) -> tuple[np.random.Generator, torch.Generator]:
    """The numpy generator of a step's data and a torch generator for its noise, from (seed, step, rank)."""
    rng = np.random.default_rng([seed, step] if rank == 0 else [seed, step, rank])
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    return rng, gen


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def _distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); starts the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        # torch 2.13: importing torch._dynamo (the optimisers and DDP do, lazily) after the group
        # exists keeps the group alive past destroy_process_group; its Gloo threads then abort the
        # process at interpreter exit (SIGABRT) about one run in four, after training finished.
        import torch._dynamo  # noqa: F401

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _any_rank(flag: bool, world: int, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank (a rank-local stop condition, agreed)."""
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _save(path: Path, task: TrainTask, state: TrainState, cfg: TrainConfig, data_files: dict[str, Any]) -> None:
    model = unwrap(state.model)
    save_checkpoint(
        path,
        model_name=task.model_name,
        config=task.model_config(model),
        state_dict=model.state_dict(),
        provenance=provenance(data_files),
        extra={
            "optimizer": state.optimizer.state_dict(),
            "step": state.step,
            "elapsed_s": state.elapsed_s,
            "history": state.history,
            "train_config": cfg.to_dict(),
        },
    )


def train(
    task: TrainTask,
    cfg: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    stop_at_step: int | None = None,
    evaluate: Any = None,
    model_config: dict[str, Any] | None = None,
    data_files: dict[str, str | Path] | None = None,
) -> TrainState:
    """Train (or resume) ``task``'s model for ``cfg.steps`` steps.

    With ``out_dir``, resumes from ``out_dir/last.pt`` if present and writes it every
    ``cfg.checkpoint_every`` steps and at the end. ``stop_at_step`` ends this call early (as an
    interruption would) without changing the schedule. ``evaluate(model) -> dict``, if given,
    runs every ``cfg.eval_every`` steps and is recorded in the history. ``model_config`` builds a
    fresh model (ignored on resume: the checkpoint's config wins). ``data_files`` are hashed into
    every checkpoint's provenance.
    """
    dev = torch.device(device)
    rank, world = _distributed(dev)
    out = Path(out_dir) if out_dir is not None else None
    last = out / "last.pt" if out is not None else None
    files = dict(data_files or {})

    torch.manual_seed(cfg.seed)
    ckpt = None
    if last is not None and last.is_file():
        ckpt = load_checkpoint(last, map_location=dev, weights_only=False)
    model = task.build_model(ckpt["config"] if ckpt else model_config).to(dev)
    if ckpt:
        model.load_state_dict(ckpt["state_dict"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = TrainState(model, opt)
    if ckpt:
        opt.load_state_dict(ckpt["optimizer"])
        state = TrainState(model, opt, ckpt["step"], ckpt["elapsed_s"], ckpt["history"])
    if world > 1:
        state.model = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    state.model.train()

    writer = last is not None and rank == 0
    t_start = time.monotonic() - state.elapsed_s
    budget_s = cfg.max_hours * 3600.0 if cfg.max_hours is not None else math.inf
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    cols = [
        TextColumn(task.model_name),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    running: float | None = None
    with Progress(*cols, disable=not progress or rank != 0) as bar:
        bar_task = bar.add_task(task.model_name, total=cfg.steps, completed=state.step, info="")
        while state.step < cfg.steps:
            # the wall clock differs between ranks: a rank that left alone would hang the others
            out_of_time = _any_rank(time.monotonic() - t_start > budget_s, world, dev)
            if out_of_time or (stop_at_step is not None and state.step >= stop_at_step):
                break
            rng, gen = step_generators(cfg.seed, state.step, rank)
            batch = task.sample(rng, state.step)
            for g in opt.param_groups:
                g["lr"] = cfg.lr * lr_factor(state.step, cfg)
            loss = task.loss(state.model, batch, gen, dev)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip)
            opt.step()
            state.step += 1
            value = float(loss.detach())
            running = value if running is None else 0.98 * running + 0.02 * value
            state.elapsed_s = time.monotonic() - t_start
            if state.step % cfg.history_every == 0 or state.step == 1:
                state.history.append(
                    {"step": state.step, "loss": value, "loss_ema": running, "elapsed_s": round(state.elapsed_s, 1)}
                )
            bar.update(bar_task, completed=state.step, info=f"loss {running:.4f}")
            if evaluate is not None and cfg.eval_every and state.step % cfg.eval_every == 0:
                state.history.append({"step": state.step, "val": evaluate(unwrap(state.model))})
                state.model.train()
            if writer and state.step % cfg.checkpoint_every == 0:
                _save(last, task, state, cfg, files)  # type: ignore[arg-type]
    state.elapsed_s = time.monotonic() - t_start
    if writer:
        _save(last, task, state, cfg, files)  # type: ignore[arg-type]
    state.model = unwrap(state.model)
    return state
