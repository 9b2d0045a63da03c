"""Where a trained model came from: code version, machine, data."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any


def git_commit(cwd: str | Path | None = None) -> str:
    """The commit checked out at ``cwd`` (default: this package's folder), ``"unknown"`` outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=cwd or Path(__file__).parent,
            timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict[str, Any]:
    """Platform, CPU count, torch version/threads and the CUDA device if one is used."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch": str(torch.__version__),  # TorchVersion would make the checkpoint unreadable with weights_only
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def provenance(data_files: dict[str, str | Path] | None = None) -> dict[str, Any]:
    """Commit, machine, UTC date and the sha256 of each named data file (e.g. split definitions)."""
    return {
        "git_commit": git_commit(),
        "machine": machine_info(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data_sha256": {name: sha256_file(p) for name, p in (data_files or {}).items() if Path(p).is_file()},
    }
