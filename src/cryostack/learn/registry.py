"""The checkpoints shipped inside the package: ``cryostack/weights/registry.json``.

Each entry names a checkpoint file, its sha256 and its model card, all in ``cryostack/weights/``.
:func:`packaged_checkpoint` checks the hash before handing out the path, so a truncated or
swapped file is caught before a tool runs on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

from cryostack.errors import InputError
from cryostack.learn.provenance import sha256_file

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
REGISTRY_FILE = WEIGHTS_DIR / "registry.json"


@dataclass(frozen=True)
class PackagedModel:
    """One registry entry; paths are absolute."""

    name: str
    architecture: str
    file: Path
    sha256: str
    card: Path
    used_by: str = ""


@lru_cache(maxsize=1)
def registry() -> dict[str, PackagedModel]:
    """Name → entry, read from ``registry.json``."""
    data = json.loads(REGISTRY_FILE.read_text())
    return {
        m["name"]: PackagedModel(
            name=m["name"],
            architecture=m["architecture"],
            file=WEIGHTS_DIR / m["file"],
            sha256=m["sha256"],
            card=WEIGHTS_DIR / m["card"],
            used_by=m.get("used_by", ""),
        )
        for m in data["models"]
    }


@cache
def _verified(path: Path, sha256: str) -> bool:
    return sha256_file(path) == sha256


def packaged_checkpoint(name: str) -> Path:
    """Path of the packaged checkpoint ``name`` after checking its sha256."""
    models = registry()
    if name not in models:
        raise InputError(None, f"no packaged model {name!r} (known: {', '.join(sorted(models))})")
    entry = models[name]
    if not entry.file.is_file():
        raise InputError(entry.file, "packaged checkpoint missing from the installation")
    if not _verified(entry.file, entry.sha256):
        raise InputError(entry.file, f"packaged checkpoint does not match its registry sha256 {entry.sha256[:12]}…")
    return entry.file
