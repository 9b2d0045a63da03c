"""Options shared by several commands, defined once so names, help and checks never drift."""

from __future__ import annotations

from pathlib import Path

import typer

from cryostack.errors import InputError

RESOLUTION: float | None = typer.Option(None, "--resolution", help="Map resolution in Å (0.5–50).")
RESOLUTION_REQUIRED: float = typer.Option(..., "--resolution", help="Resolution in Å (0.5–50).")
DEVICE: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N.")
SEED: int = typer.Option(0, "--seed", help="Random seed (runs are deterministic given it).")
JSON_OUT: Path | None = typer.Option(None, "--json", help="Write every number as JSON here.")


def check_device(device: str) -> str:
    """``device`` if it names a usable torch device, else :class:`InputError`."""
    if device != "cpu" and device != "cuda" and not device.startswith("cuda:"):
        raise InputError(None, f"device must be cpu, cuda or cuda:N, not {device!r}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InputError(None, f"device {device!r} requested but no CUDA device is available")
    return device
