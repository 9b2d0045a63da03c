"""One checkpoint format for every learned tool.

A checkpoint is a ``torch.save`` dict with ``format`` (``"cryostack-checkpoint"``), ``version``,
``model`` (the architecture's name), ``config`` (plain dict that rebuilds the architecture),
``state_dict``, ``provenance`` (:func:`cryostack.learn.provenance.provenance`) and, for a run in
progress, the optimiser state, step, elapsed time and history. Files written before this format
(``config`` + ``state_dict`` only) still load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cryostack.errors import InputError
from cryostack.io.atomic import atomic_output

CHECKPOINT_FORMAT = "cryostack-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(
    path: str | Path,
    *,
    model_name: str,
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    provenance: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (the file appears whole or not at all)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": model_name,
        "config": config,
        "state_dict": state_dict,
        "provenance": provenance or {},
        **(extra or {}),
    }
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(
    path: str | Path,
    *,
    map_location: str | torch.device = "cpu",
    weights_only: bool = True,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Read a checkpoint; bad files raise :class:`~cryostack.errors.InputError` naming the file.

    ``weights_only`` (default) refuses pickled code; a run's ``last.pt`` with optimiser state
    is read with ``weights_only=False`` by the training loop only. ``model_name``, if given,
    must match the checkpoint's architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as exc:  # truncated, foreign or pickled-code files
        raise InputError(path, f"not a cryostack checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt:
        raise InputError(path, "not a cryostack checkpoint (no config/state_dict)")
    found = ckpt.get("model")
    if model_name is not None and found is not None and found != model_name:
        raise InputError(path, f"checkpoint holds a {found!r} model, not {model_name!r}")
    return ckpt
