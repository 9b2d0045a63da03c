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


THREADS: int | None = typer.Option(
    None, "--threads", min=1, help="CPU threads (default: the cores this process may use: affinity, cgroup quota)."
)


def available_cpus() -> int:
    """Cores this process may actually use: its CPU affinity, capped by a cgroup v2 CPU quota."""
    import math
    import os

    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def apply_threads(threads: int | None) -> int:
    """Set torch's CPU threads to ``threads`` or :func:`available_cpus` (torch's own default counts
    every core of the machine, which oversubscribes a container or a shared node); returns it."""
    import torch

    n = threads or available_cpus()
    torch.set_num_threads(n)
    return n
