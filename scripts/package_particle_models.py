"""Copy a trained particle encoder and ranker into ``src/cryostack/weights`` and register them.

    .venv/bin/python scripts/package_particle_models.py --encoder RUN_E/encoder.pt \
        --ranker RUN_R/ranker.pt --corpus /work/corpus

The checkpoints are copied as they are, except that their provenance gains the sha256 of the
corpus split file when the run did not record it (runs before that was recorded). The model
cards (``particle_encoder_v1.md``, ``particle_ranker_v1.md``) are written by hand from the
training logs and ``benchmarks/results/particles_eval.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from cryostack.learn.provenance import sha256_file
from cryostack.particles.model import PACKAGED_ENCODER, PACKAGED_RANKER

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "cryostack" / "weights"
ENTRIES = {
    PACKAGED_ENCODER: ("particles.model.ParticleViT", "cryostack particles embed; cryostack train ranker"),
    PACKAGED_RANKER: ("particles.model.Ranker", "cryostack particles rank"),
}


def package(src: Path, name: str, corpus: Path) -> dict:
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    data = ckpt["provenance"].setdefault("data_sha256", {})
    if not data.get("corpus_splits"):
        data["corpus_splits"] = sha256_file(corpus / "splits" / "splits.json")
    dst = WEIGHTS / f"{name}.pt"
    torch.save(ckpt, dst)
    torch.load(dst, weights_only=True)  # the shipped file must load without pickle
    architecture, used_by = ENTRIES[name]
    return {
        "name": name,
        "architecture": architecture,
        "file": dst.name,
        "sha256": sha256_file(dst),
        "card": f"{name}.md",
        "used_by": used_by,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoder", type=Path, required=True)
    ap.add_argument("--ranker", type=Path, required=True)
    ap.add_argument("--corpus", type=Path, required=True)
    args = ap.parse_args()
    registry_file = WEIGHTS / "registry.json"
    registry = json.loads(registry_file.read_text())
    new = [
        package(args.encoder, PACKAGED_ENCODER, args.corpus),
        package(args.ranker, PACKAGED_RANKER, args.corpus),
    ]
    names = {e["name"] for e in new}
    registry["models"] = [m for m in registry["models"] if m["name"] not in names] + new
    registry_file.write_text(json.dumps(registry, indent=2) + "\n")
    for e in new:
        print(e["name"], e["sha256"])


if __name__ == "__main__":
    main()
