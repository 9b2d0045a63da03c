"""Scoring and embedding particle sets: ``cryostack particles rank`` and ``particles embed``.

:func:`rank_particles` reads a RELION STAR or cryoSPARC ``.cs`` file, featurises every image
(:mod:`cryostack.particles.featurize`: phase flip with the file's CTF, the encoder's sampling),
scores it with CryoRanker and writes the same particles back, every column and the optics
table intact, with two more: ``rlnCryostackScore`` (0-1, higher is better) and
``rlnCryostackRank`` (1 = best) in STAR, ``cryostack/score`` and ``cryostack/rank`` in ``.cs``.
A histogram of the scores is written beside it (``<out>.scores.png``).

:func:`embed_particles` writes the encoder's features ``(n, dim)`` as ``.npy`` and a CSV index
(row, image name and, from a ``.cs``, uid) for clustering.

Large stacks: results are kept every ``checkpoint_every`` particles in ``<out>.partial.npz``
(tied to the input file, the checkpoint and the batch size by a key); an interrupted run
started again with the same arguments carries on from there, and the file goes when the
output is written.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch

from cryostack.errors import InputError
from cryostack.io.atomic import atomic_output, check_writable
from cryostack.io.particles import ParticleSet, read_particles, write_star
from cryostack.learn.provenance import sha256_file
from cryostack.particles.featurize import FeatureSpec, ctf_params_from_set, featurize
from cryostack.particles.model import (
    PACKAGED_ENCODER,
    PACKAGED_RANKER,
    ParticleViT,
    Ranker,
    load_encoder,
    load_ranker,
)

#: Columns (STAR) and fields (.cs) that ``rank`` adds.
SCORE_COLUMN, RANK_COLUMN = "rlnCryostackScore", "rlnCryostackRank"
SCORE_FIELD, RANK_FIELD = "cryostack/score", "cryostack/rank"


@dataclass
class RankResult:
    """What :func:`rank_particles` wrote and measured."""

    out: Path
    histogram: Path | None
    n_particles: int
    scores: np.ndarray
    seconds: float
    resumed_from: int = 0

    @property
    def particles_per_second(self) -> float:
        return (self.n_particles - self.resumed_from) / max(self.seconds, 1e-9)


def _output_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".star", ".cs"):
        raise InputError(path, "output must end in .star or .cs")
    return suffix[1:]


def _check_set(pset: ParticleSet, path: Path) -> None:
    if len(pset) == 0:
        raise InputError(path, "no particles")
    if "rlnImageName" not in pset.particles.columns:
        raise InputError(path, "no image column (rlnImageName / blob/path): nothing to score")


def _image_sign(pset: ParticleSet) -> np.ndarray:
    """+1 per particle, or cryoSPARC's ``blob/sign`` (−1: dark protein as stored, which the
    encoder, trained on white protein, must see inverted)."""
    ds = pset.cs_dataset
    if ds is not None and "blob/sign" in ds.fields():
        return np.asarray(ds["blob/sign"], dtype=np.float32)
    return np.ones(len(pset), dtype=np.float32)


def check_box(pset: ParticleSet, spec: FeatureSpec, diameter_A: float | None, path: Path) -> None:
    """Warn when the particle does not fit the images' box or the encoder's field of view."""
    if diameter_A is None:
        return
    box_A = float(pset.box_px * np.median(pset.pixel_size_A))
    if box_A < diameter_A:
        warnings.warn(
            f"{path}: box {box_A:.0f} Å is smaller than the particle diameter {diameter_A:.0f} Å", stacklevel=2
        )
    if spec.field_of_view_A < diameter_A:
        warnings.warn(
            f"{path}: the encoder sees {spec.field_of_view_A:.0f} Å around the centre, less than the particle "
            f"diameter {diameter_A:.0f} Å; scores judge the central part only",
            stacklevel=2,
        )


def _run_key(path: Path, checkpoint: Path, batch: int, what: str) -> str:
    h = hashlib.sha256()
    for part in (str(path.resolve()), str(os.path.getsize(path)), str(os.path.getmtime(path)), sha256_file(checkpoint)):
        h.update(part.encode())
    h.update(f"{batch}:{what}".encode())
    return h.hexdigest()


def _load_partial(partial: Path, key: str) -> dict[str, np.ndarray] | None:
    if not partial.is_file():
        return None
    try:
        with np.load(partial, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            return {k: z[k] for k in z.files}
    except Exception:  # a half-written or foreign file: start over
        return None


def _save_partial(partial: Path, key: str, done: int, **arrays: np.ndarray) -> None:
    with atomic_output(partial) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, key=np.array(key), done=np.array(done), **{k: v[:done] for k, v in arrays.items()})


def _encode(
    pset: ParticleSet,
    src: Path,
    dst: Path,
    checkpoint: Path,
    model: torch.nn.Module,
    spec: FeatureSpec,
    *,
    batch: int,
    device: str,
    checkpoint_every: int,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray | None, int, Path]:
    """Features ``(n, dim)``, scores ``(n,)`` (a :class:`Ranker`; None for an encoder), the
    number of particles taken from ``<dst>.partial.npz`` and that file's path (kept every
    ``checkpoint_every`` particles, keyed to input, checkpoint, batch and task)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    scores = isinstance(model, Ranker)
    label = "rank" if scores else "embed"
    partial = dst.with_name(dst.name + ".partial.npz")
    key = _run_key(src, checkpoint, batch, label)
    n = len(pset)
    encoder = model.encoder if isinstance(model, Ranker) else model
    dim = cast(ParticleViT, encoder).dim
    feats = np.zeros((n, dim), dtype=np.float32)
    score = np.zeros(n, dtype=np.float32)
    start = 0
    if (saved := _load_partial(partial, key)) is not None:
        start = int(saved["done"])
        feats[:start] = saved["features"]
        score[:start] = saved["scores"]
    ctf = ctf_params_from_set(pset)
    px = pset.pixel_size_A
    sign = _image_sign(pset)
    model = model.to(device).eval()
    last_saved = start
    cols = [TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*cols, disable=not progress) as bar, torch.inference_mode():
        task = bar.add_task(label, total=n, completed=start)
        for lo in range(start, n, batch):
            rows = np.arange(lo, min(n, lo + batch))
            images = pset.images(rows)
            bad = ~np.isfinite(images).reshape(len(rows), -1).all(axis=1)
            if bad.any():
                raise InputError(src, f"particle {int(rows[np.argmax(bad)]) + 1} has NaN or infinite pixels")
            images *= sign[rows, None, None]
            pxs = px[rows]
            x_parts = []
            # Particles of several optics groups may differ in pixel size: featurise each apart.
            for p in np.unique(pxs):
                sel = np.flatnonzero(pxs == p)
                x_parts.append(
                    (
                        sel,
                        featurize(
                            images[sel], float(p), None if ctf is None else ctf.take(rows[sel]), spec, device=device
                        ),
                    )
                )
            x = torch.empty((len(rows), spec.box_px, spec.box_px), device=device)
            for sel, xp in x_parts:
                x[torch.as_tensor(sel, device=device)] = xp
            if isinstance(model, Ranker):
                f, s = model.features_and_scores(x)
                score[rows] = s.float().cpu().numpy()
            else:
                f = model(x)
            feats[rows] = f.float().cpu().numpy()
            done = int(rows[-1]) + 1
            if done - last_saved >= checkpoint_every and done < n:
                _save_partial(partial, key, done, features=feats, scores=score)
                last_saved = done
            bar.update(task, completed=done)
    return feats, (score if scores else None), start, partial


def _histogram(path: Path, scores: np.ndarray, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.hist(scores, bins=50, range=(0, 1), color="#4477aa")
    ax.set_xlabel("CryoRanker score (higher = better particle)")
    ax.set_ylabel("particles")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def ranks_from_scores(scores: np.ndarray) -> np.ndarray:
    """1 for the best score, n for the worst (ties broken by file order, stably)."""
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty(len(scores), dtype=np.int64)
    ranks[order] = np.arange(1, len(scores) + 1)
    return ranks


def _packaged(name: str) -> Path:
    from cryostack.learn.registry import packaged_checkpoint

    return packaged_checkpoint(name)


def rank_particles(
    particles: str | Path,
    out: str | Path,
    *,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    batch: int = 256,
    diameter_A: float | None = None,
    histogram: bool = True,
    progress: bool = True,
    checkpoint_every: int = 20_000,
    relion_label: str | None = None,
    features_out: str | Path | None = None,
) -> RankResult:
    """Score every particle of ``particles`` (STAR or .cs) and write them with score and rank to
    ``out`` (``.star`` or ``.cs``; see the module docstring). ``checkpoint`` None = the packaged ranker.

    ``relion_label`` (STAR output): also write the score into this RELION label, which must be a
    numeric one RELION knows and the input must not have (e.g. ``rlnParticleFigureOfMerit``).
    RELION keeps but cannot select on labels it does not know, such as ``rlnCryostackScore``.
    ``features_out`` (``.npy``): also keep the ranker encoder's features ``(n, dim)`` of every
    particle, in input order (the same pass: no second encoding).
    """
    import time

    src, dst = Path(particles), Path(out)
    kind = _output_kind(dst)
    check_writable(dst)
    if batch < 1:
        raise InputError(None, f"--batch must be at least 1, got {batch}")
    pset = read_particles(src)
    _check_set(pset, src)
    if relion_label is not None:
        if kind != "star":
            raise InputError(dst, "--relion-label applies to STAR output only")
        if not relion_label.startswith("rln") or not relion_label[3:].isidentifier():
            raise InputError(
                None, f"--relion-label must be a RELION label such as rlnParticleFigureOfMerit, got {relion_label!r}"
            )
        if relion_label in pset.particles.columns:
            raise InputError(
                src, f"already has {relion_label}; choose another --relion-label (inputs are never overwritten)"
            )
    ckpt = Path(checkpoint) if checkpoint is not None else _packaged(PACKAGED_RANKER)
    model = load_ranker(ckpt)
    spec = model.config.features
    if dst.resolve() in {p.resolve() for p in pset.sources}:
        raise InputError(dst, "the output would overwrite the input")
    check_box(pset, spec, diameter_A, src)
    t0 = time.monotonic()
    feats, scores, start, partial = _encode(
        pset,
        src,
        dst,
        ckpt,
        model,
        spec,
        batch=batch,
        device=device,
        checkpoint_every=checkpoint_every,
        progress=progress,
    )
    seconds = time.monotonic() - t0
    assert scores is not None
    ranks = ranks_from_scores(scores)
    pset.particles[SCORE_COLUMN] = scores.astype(np.float64)
    pset.particles[RANK_COLUMN] = ranks
    if relion_label is not None:
        pset.particles[relion_label] = scores.astype(np.float64)
    if kind == "star":
        write_star(pset, dst)
    else:
        ds = pset.to_cs_dataset()
        for name, dtype, values in ((SCORE_FIELD, "<f4", scores), (RANK_FIELD, "<i8", ranks)):
            if name not in ds.fields():
                ds.add_fields([(name, dtype)])
            ds[name][...] = values.astype(dtype)
        with atomic_output(dst, protect=pset.sources) as tmp:
            ds.save(tmp)
    if features_out is not None:
        with atomic_output(Path(features_out)) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, feats)
    hist = None
    if histogram:
        hist = _histogram(dst.with_name(dst.name + ".scores.png"), scores, f"{src.name}: {len(scores):,} particles")
    partial.unlink(missing_ok=True)
    return RankResult(dst, hist, len(scores), scores, seconds, start)


def embed_particles(
    particles: str | Path,
    out: str | Path,
    *,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    batch: int = 256,
    progress: bool = True,
    checkpoint_every: int = 20_000,
) -> tuple[Path, Path, np.ndarray]:
    """Encoder features of every particle: ``out`` (``.npy``, ``(n, dim)`` float32) and
    ``out`` with ``.csv`` (row, image name, uid). ``checkpoint`` None = the packaged encoder;
    a ranker checkpoint gives its fine-tuned encoder."""
    src, dst = Path(particles), Path(out)
    if dst.suffix.lower() != ".npy":
        raise InputError(dst, "output must end in .npy")
    check_writable(dst)
    pset = read_particles(src)
    _check_set(pset, src)
    ckpt = Path(checkpoint) if checkpoint is not None else _packaged(PACKAGED_ENCODER)
    encoder, spec = load_encoder(ckpt)
    feats, _, _, partial = _encode(
        pset,
        src,
        dst,
        ckpt,
        encoder,
        spec,
        batch=batch,
        device=device,
        checkpoint_every=checkpoint_every,
        progress=progress,
    )
    index = dst.with_suffix(".csv")
    import pandas as pd

    table = pd.DataFrame({"row": np.arange(len(pset)), "image": pset.particles["rlnImageName"].to_numpy()})
    if pset.cs_dataset is not None and "uid" in pset.cs_dataset.fields():
        table["uid"] = np.asarray(pset.cs_dataset["uid"]).astype(np.uint64)
    with atomic_output(dst) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, feats)
    with atomic_output(index) as tmp:
        table.to_csv(tmp, index=False)
    partial.unlink(missing_ok=True)
    return dst, index, feats


__all__ = ["RankResult", "embed_particles", "rank_particles", "ranks_from_scores"]
