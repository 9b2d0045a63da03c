"""CryoWizard on RELION: rank particles, search subsets, reconstruct, judge, rescue orientation.

The automation of the Cryo-IEF paper's CryoWizard, driving RELION instead of cryoSPARC:

1. **Rank**: every particle is scored by CryoRanker and its encoder features are kept.
2. **Initial model**: for each size in ``initial_sizes`` (the paper's 50k and 100k; scaled to the
   data here, see :func:`initial_sizes`), the top-scored particles get a de novo initial model and
   a 3D auto-refine; each map is judged by its half-map FSC (0.143) and cFAR.
3. **Final subset**: the particles scoring above τ (0.4) are split into ``n_parts`` (4)
   score-ordered parts and the top ``j`` parts are refined for each ``j`` from the stage-2 map;
   among the maps with cFAR ≥ 0.15 the best resolution wins and is refined once more at full
   box and full sampling (the searches run on a downsampled copy at coarse sampling).
4. **Preferred-orientation rescue** (when every stage-2 map has cFAR < 0.15): the high-scoring
   particles are clustered (k-means++, k = 8) on their features; each cluster gets an initial
   model and refinement; the best-resolved cluster map with cFAR ≥ 0.15 becomes the reference,
   and the stage-3 subsets are rebalanced so that no cluster holds more than twice the median
   cluster's share (a dominant view is cut down instead of swamping the others).

Every engine run is a resumable step (:mod:`cryostack.particles.engine`); ``wizard.json`` in the
output folder fixes the input and settings, so ``--resume`` refuses another input.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from cryostack.errors import InputError
from cryostack.io.atomic import atomic_output
from cryostack.io.maps import read_map
from cryostack.io.particles import ParticleSet, read_particles, write_cs, write_star
from cryostack.learn.provenance import sha256_file
from cryostack.particles.engine import (
    EngineConfig,
    EngineError,
    MapJudgement,
    Sampling,
    StepRecord,
    even_box,
    initial_model_argv,
    judge_refinement,
    last_iteration_map,
    refine_argv,
    relion_version,
    resample_map_box,
    run_step,
    write_engine_copy,
    write_mask,
)

#: Paper's stage-2 subset sizes (particles), used as they are once the data set is large enough.
PAPER_INITIAL_SIZES = (50_000, 100_000)
#: Coarse sampling of the search stages and full sampling of the final refinement.
SEARCH_SAMPLING = Sampling(healpix_order=1, local_healpix_order=3, offset_range_px=4, offset_step_px=2)
FINAL_SAMPLING = Sampling(healpix_order=2, local_healpix_order=4, offset_range_px=5, offset_step_px=1)
_SYMMETRY = re.compile(r"^(C[1-9]\d*|D[2-9]\d*|D1\d+|T|O|I[1-5]?)$", re.IGNORECASE)


@dataclass(frozen=True)
class WizardConfig:
    """Settings of one wizard run (physical units in names; see the module docstring)."""

    symmetry: str = "C1"
    mask_diameter_A: float | None = None
    score_threshold: float = 0.4
    n_parts: int = 4
    cfar_threshold: float = 0.15
    clusters: int = 8
    initial_sizes: tuple[int, ...] | None = None
    min_subset: int = 200
    search_pixel_A: float | None = None
    search_min_box_px: int = 32
    search: Sampling = SEARCH_SAMPLING
    final: Sampling = FINAL_SAMPLING
    initial_lowpass_A: float = 30.0
    seed: int = 0
    ranker: str | None = None
    #: Where the ranker runs (``cpu``, ``cuda``, ``cuda:N``); RELION is set by ``engine``.
    device: str = "cpu"
    engine: EngineConfig = field(default_factory=EngineConfig)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["engine"] = asdict(self.engine)
        return d


@dataclass
class SubsetRun:
    """One reconstructed subset: what it was, how it was judged, what it cost."""

    stage: str
    name: str
    size: int
    judgement: MapJudgement | None
    seconds: float
    commands: list[str]
    note: str = ""
    rows: np.ndarray | None = field(default=None, repr=False)

    @property
    def resolution_A(self) -> float | None:
        return None if self.judgement is None else self.judgement.resolution_A

    @property
    def cfar(self) -> float | None:
        return None if self.judgement is None else self.judgement.cfar

    def to_dict(self) -> dict:
        return {
            "stage": self.stage,
            "name": self.name,
            "size": self.size,
            "resolution_A": self.resolution_A,
            "cfar": self.cfar,
            "seconds": round(self.seconds, 1),
            "commands": self.commands,
            "note": self.note,
            **({"result": self.judgement.to_dict()} if self.judgement else {}),
        }


def check_symmetry(symmetry: str) -> str:
    if not _SYMMETRY.match(symmetry.strip()):
        raise InputError(None, f"--symmetry {symmetry!r} is not a RELION point group (C1, C2, D3, T, O, I1-I5, ...)")
    return symmetry.strip().upper()


def initial_sizes(n_ranked: int, min_subset: int) -> tuple[int, ...]:
    """Stage-2 subset sizes: the paper's 50k and 100k once there are at least 200k particles,
    otherwise a quarter and a half of the data (never below ``min_subset``; duplicates merged)."""
    if n_ranked >= 4 * PAPER_INITIAL_SIZES[-1] // 2:
        sizes = PAPER_INITIAL_SIZES
    else:
        sizes = (n_ranked // 4, n_ranked // 2)
    return tuple(sorted({min(n_ranked, max(min_subset, s)) for s in sizes}))


def _fingerprint(path: Path) -> dict:
    return {"path": str(path.resolve()), "sha256": sha256_file(path)}


def _prepare_folder(out: Path, src: Path, cfg: WizardConfig, resume: bool) -> None:
    record = out / "wizard.json"
    identity = json.loads(json.dumps({"input": _fingerprint(src), "config": cfg.to_dict()}))  # as stored
    if record.is_file():
        if not resume:
            raise InputError(out, "holds an earlier wizard run; pass --resume to continue it or choose another --out")
        earlier = json.loads(record.read_text())
        if earlier.get("input", {}).get("sha256") != identity["input"]["sha256"]:
            raise InputError(
                out, f"was a wizard run on another input ({earlier.get('input', {}).get('path')}); refusing to resume"
            )
        if earlier.get("config") != identity["config"]:
            raise InputError(out, "was a wizard run with other settings; refusing to resume (choose another --out)")
        return
    if out.exists() and any(out.iterdir()):
        raise InputError(out, "is not empty and holds no wizard run; choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(record) as tmp:
        tmp.write_text(json.dumps(identity, indent=1))


class Wizard:
    """One wizard run in ``out`` (see :func:`run_wizard`)."""

    def __init__(self, src: Path, out: Path, cfg: WizardConfig, progress: bool, pset: ParticleSet, diameter_A: float):
        self.src, self.out, self.cfg, self.progress = src, out, cfg, progress
        self.pset, self.diameter_A = pset, diameter_A
        self.runs: list[SubsetRun] = []
        self.notes: list[str] = []
        self.stage_seconds: dict[str, float] = {}
        self.engine_seconds = 0.0

    def log(self, message: str) -> None:
        self.notes.append(message)
        if self.progress:
            from rich.console import Console

            Console(stderr=True).print(f"[bold]wizard[/bold] {message}")

    # -- engine work ---------------------------------------------------------------------------
    def _steps(self, steps: list[StepRecord]) -> tuple[float, list[str]]:
        seconds = sum(s.seconds for s in steps)
        self.engine_seconds += seconds
        return seconds, [" ".join(s.argv) for s in steps]

    def reconstruct(
        self,
        stage: str,
        name: str,
        pset: ParticleSet,
        *,
        reference: Path | None,
        box_px: int | None,
        sampling: Sampling,
        initial_lowpass_A: float | None = None,
    ) -> SubsetRun:
        """Engine copy → (initial model when ``reference`` is None) → auto-refine → judgement."""
        cfg = self.cfg
        folder = self.out / stage / name
        star = write_engine_copy(pset, folder / "data", box_px=box_px, diameter_A=self.diameter_A)
        if reference is not None:
            reference = resample_map_box(reference, box_px or pset.box_px, folder / "data" / "reference.mrc")
        px = float(pset.pixel_size_A[0]) * pset.box_px / (box_px or pset.box_px)
        steps: list[StepRecord] = []
        seed = cfg.seed + 1
        try:
            if reference is None:
                steps.append(
                    run_step(
                        f"{stage}/{name} initial model",
                        folder / "initial",
                        initial_model_argv(
                            star, "run", diameter_A=self.diameter_A, pixel_size_A=px, sampling=sampling,
                            cfg=cfg.engine, seed=seed,
                        ),
                    )
                )  # fmt: skip
                reference = last_iteration_map(folder / "initial")
            steps.append(
                run_step(
                    f"{stage}/{name} refine",
                    folder / "refine",
                    refine_argv(
                        star, reference, "run", diameter_A=self.diameter_A, symmetry=cfg.symmetry,
                        initial_lowpass_A=initial_lowpass_A or cfg.initial_lowpass_A, sampling=sampling,
                        cfg=cfg.engine, seed=seed,
                    ),
                )
            )  # fmt: skip
            judged = judge_refinement(folder / "refine", diameter_A=self.diameter_A)
            note = ""
        except EngineError as e:
            if stage == "final":
                raise
            judged, note = None, f"engine failed: {e}"
            self.log(f"{stage}/{name}: {note.splitlines()[0]} (kept going)")
        seconds, commands = self._steps(steps)
        run = SubsetRun(stage, name, len(pset), judged, seconds, commands, note)
        self.runs.append(run)
        if judged is not None:
            res = "n/a" if judged.resolution_A is None else f"{judged.resolution_A:.2f} Å"
            cf = "not measurable" if judged.cfar is None else f"{judged.cfar:.2f}"
            self.log(f"{stage}/{name}: {len(pset):,} particles → {res}, cFAR {cf} ({seconds:.0f} s)")
        return run

    # -- the stages ---------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        t = time.monotonic()
        pset = self.pset
        if len(pset) < 2 * cfg.min_subset:
            self.log(f"only {len(pset)} particles: every subset is the whole set or close to it")
        scores, feats = self.rank(pset)
        self.stage_seconds["rank"] = time.monotonic() - t
        order = np.lexsort((np.arange(len(scores)), -scores))  # best first, ties by input order
        p = float(pset.pixel_size_A[0])
        search_px = cfg.search_pixel_A or max(p, self.diameter_A / 24.0)
        self.search_box = even_box(pset.box_px, p, search_px, cfg.search_min_box_px)
        self.log(
            f"{len(pset):,} particles, box {pset.box_px} px at {p:.3f} Å; searches on {self.search_box} px "
            f"({pset.box_px * p / self.search_box:.2f} Å/px), mask diameter {self.diameter_A:.0f} Å"
        )

        t = time.monotonic()
        sizes = cfg.initial_sizes or initial_sizes(len(pset), cfg.min_subset)
        if max(sizes) > len(pset):
            self.log(f"stage-2 sizes {', '.join(map(str, sizes))} exceed the {len(pset):,} particles; capped")
        sizes = tuple(sorted({min(len(pset), s) for s in sizes}))
        stage2 = [
            self.reconstruct("initial", f"top{n}", pset.subset(order[:n]), reference=None, box_px=self.search_box, sampling=cfg.search)
            for n in sizes
        ]  # fmt: skip
        self.stage_seconds["initial"] = time.monotonic() - t
        good2 = [r for r in stage2 if _passes_cfar(r, cfg.cfar_threshold)]
        clusters = None
        best2: SubsetRun | None
        if good2:
            best2 = min(good2, key=_resolution_key)
        else:
            t = time.monotonic()
            self.log(f"every stage-2 map has cFAR < {cfg.cfar_threshold}: preferred-orientation rescue")
            best2, clusters = self.rescue(pset, scores, feats, order)
            self.stage_seconds["rescue"] = time.monotonic() - t
        if best2 is None or best2.judgement is None:
            raise EngineError(
                "no stage-2 or rescue reconstruction succeeded; see the engine logs under " + str(self.out)
            )

        t = time.monotonic()
        above = order[scores[order] > cfg.score_threshold]
        k = len(above)
        if k < cfg.min_subset:
            self.log(
                f"only {k} particles score above τ = {cfg.score_threshold}; using the top {min(len(pset), cfg.min_subset)} instead"
            )
            above = order[: min(len(pset), cfg.min_subset)]
            k = len(above)
        parts = max(1, min(cfg.n_parts, k // max(1, cfg.min_subset // 2)))
        if parts < cfg.n_parts:
            self.log(
                f"{k} particles above τ make {parts} parts, not {cfg.n_parts} (each needs ≥ {cfg.min_subset // 2})"
            )
        part = k // parts
        stage3 = []
        for j in range(1, parts + 1):
            rows = above[: part * j] if j < parts else above
            if clusters is not None:
                rows = rebalance(rows, clusters)
            stage3.append(
                self.reconstruct(
                    "final_search", f"top{j}of{parts}", pset.subset(rows), reference=best2.judgement.map_path,
                    box_px=self.search_box, sampling=cfg.search,
                )
            )  # fmt: skip
            stage3[-1].rows = rows
        self.stage_seconds["final_search"] = time.monotonic() - t
        ok3 = [r for r in stage3 if _passes_cfar(r, cfg.cfar_threshold)]
        if not ok3:
            self.log(f"no stage-3 map reached cFAR {cfg.cfar_threshold}; keeping the best resolution regardless")
            ok3 = [r for r in stage3 if r.judgement] or []
        if not ok3:
            raise EngineError("every stage-3 refinement failed; see the engine logs under " + str(self.out))
        best3 = min(ok3, key=_resolution_key)

        t = time.monotonic()
        chosen = best3.rows
        assert chosen is not None and best3.judgement is not None
        final = self.reconstruct(
            "final", "refine", pset.subset(chosen), reference=best3.judgement.map_path, box_px=None,
            sampling=cfg.final, initial_lowpass_A=max(2 * (best3.resolution_A or 15.0), 10.0),
        )  # fmt: skip
        self.stage_seconds["final"] = time.monotonic() - t
        return self.write_outputs(pset, scores, chosen, final)

    def rank(self, pset: ParticleSet) -> tuple[np.ndarray, np.ndarray]:
        from cryostack.particles.rank import rank_particles

        folder = self.out / "rank"
        ranked, feats_path = folder / "ranked.star", folder / "features.npy"
        if not (ranked.is_file() and feats_path.is_file()):
            # a STAR record for STAR and .cs input alike: the scores are read back from it on resume
            rank_particles(
                self.src,
                ranked,
                checkpoint=self.cfg.ranker,
                progress=self.progress,
                features_out=feats_path,
                device=self.cfg.device,
            )
        scored = read_particles(ranked)
        return scored.column("rlnCryostackScore").astype(np.float64), np.load(feats_path)

    def rescue(
        self, pset: ParticleSet, scores: np.ndarray, feats: np.ndarray, order: np.ndarray
    ) -> tuple[SubsetRun | None, np.ndarray]:
        from scipy.cluster.vq import kmeans2

        cfg = self.cfg
        high = order[scores[order] > cfg.score_threshold]
        if len(high) < cfg.clusters * cfg.min_subset // 4:
            high = order[: min(len(pset), cfg.clusters * cfg.min_subset // 4 * 2)]
        f = feats[high]
        f = (f - f.mean(0)) / (f.std(0) + 1e-6)
        _, labels = kmeans2(f, cfg.clusters, minit="++", seed=cfg.seed, iter=50)
        clusters = np.full(len(pset), -1, dtype=np.int64)
        clusters[high] = labels
        runs = []
        for c in range(cfg.clusters):
            rows = high[labels == c]
            if len(rows) < cfg.min_subset // 4:
                self.log(f"cluster {c}: {len(rows)} particles, too few to reconstruct; skipped")
                continue
            runs.append(
                self.reconstruct("rescue", f"cluster{c}", pset.subset(rows), reference=None, box_px=self.search_box, sampling=cfg.search)
            )  # fmt: skip
        ok = [r for r in runs if _passes_cfar(r, cfg.cfar_threshold)]
        if not ok:
            self.log(f"no cluster map reached cFAR {cfg.cfar_threshold}; continuing from the most isotropic one")
            ok = sorted((r for r in runs if r.judgement), key=lambda r: -(r.cfar or 0))[:1]
        best = min(ok, key=_resolution_key) if ok else None
        return best, clusters

    # -- outputs ------------------------------------------------------------------------------
    def write_outputs(self, pset: ParticleSet, scores: np.ndarray, chosen: np.ndarray, final: SubsetRun) -> dict:
        out = self.out / "final"
        j = final.judgement
        assert j is not None
        for name, src in (("map.mrc", j.map_path), ("half1.mrc", j.half1), ("half2.mrc", j.half2)):
            shutil.copyfile(src, out / name)
        write_mask(out / "mask.mrc", read_map(j.half1), self.diameter_A)
        with atomic_output(out / "fsc.json") as tmp:
            tmp.write_text(
                json.dumps(
                    {"freq_per_A": j.fsc_freq_per_A.tolist(), "fsc": j.fsc.tolist(), "resolution_A": j.resolution_A}
                )
            )
        from cryostack.density.cfar import plot_fsc_sphere

        # the judgement's own cFAR, so cfar.json and log.json report the same number
        c = j.cfar_result
        with atomic_output(out / "cfar.json") as tmp:
            tmp.write_text(
                json.dumps({"cfar": None, "note": j.cfar_note} if c is None else {**c.to_dict(), "note": j.cfar_note})
            )
        if c is None:
            self.log(f"final map: cFAR {j.cfar_note}")
        else:
            plot_fsc_sphere(c, out / "fsc_sphere.png")
        sub = pset.subset(np.sort(chosen))
        sub.particles["rlnCryostackScore"] = scores[np.sort(chosen)]
        write_star(sub, out / "particles.star", protect=(self.src,))
        if self.src.suffix.lower() == ".cs":
            write_cs(sub, out / "particles.cs", protect=(self.src,))
        summary = {
            "input": str(self.src),
            "relion": relion_version(),
            "particles": len(pset),
            "chosen": len(chosen),
            "final": final.to_dict(),
            "subsets": [r.to_dict() for r in self.runs],
            "notes": self.notes,
            "stage_seconds": {k: round(v, 1) for k, v in self.stage_seconds.items()},
            "engine_seconds": round(self.engine_seconds, 1),
            "overhead_fraction": round(max(0.0, sum(self.stage_seconds.values()) - self.engine_seconds - self.stage_seconds.get("rank", 0.0)) / max(self.engine_seconds, 1e-9), 4),
        }  # fmt: skip
        with atomic_output(out / "log.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=1))
        _summary_table(self.runs, out / "subsets.tsv")
        _summary_plot(self.runs, out / "subsets.png")
        return summary


def _passes_cfar(run: SubsetRun, threshold: float) -> bool:
    """A judged map whose cFAR reaches ``threshold``, or could not be measured: a map too coarse
    for the cones is no evidence of preferred orientation, so it does not trigger the rescue."""
    return run.judgement is not None and (run.cfar is None or run.cfar >= threshold)


def _resolution_key(run: SubsetRun) -> float:
    return math.inf if run.resolution_A is None else run.resolution_A


def rebalance(rows: np.ndarray, clusters: np.ndarray, factor: float = 2.0) -> np.ndarray:
    """``rows`` (best first) with each feature cluster capped at ``factor`` × the median cluster's
    count among them (particles outside any cluster, label −1, are kept); order is kept."""
    labels = clusters[rows]
    counts = np.bincount(labels[labels >= 0])
    counts = counts[counts > 0]
    if len(counts) == 0:
        return rows
    cap = int(math.ceil(factor * float(np.median(counts))))
    keep = np.ones(len(rows), dtype=bool)
    seen: dict[int, int] = {}
    for i, lab in enumerate(labels):
        if lab < 0:
            continue
        seen[lab] = seen.get(lab, 0) + 1
        keep[i] = seen[lab] <= cap
    return rows[keep]


def _summary_table(runs: list[SubsetRun], path: Path) -> None:
    lines = ["stage\tname\tparticles\tresolution_A\tcfar\tseconds"]
    for r in runs:
        res = "" if r.resolution_A is None else f"{r.resolution_A:.2f}"
        cf = "" if r.cfar is None else f"{r.cfar:.3f}"
        lines.append(f"{r.stage}\t{r.name}\t{r.size}\t{res}\t{cf}\t{r.seconds:.0f}")
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _summary_plot(runs: list[SubsetRun], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    for stage, marker in (("initial", "o"), ("rescue", "^"), ("final_search", "s"), ("final", "*")):
        rs = [r for r in runs if r.stage == stage and r.judgement is not None]
        if not rs:
            continue
        a.scatter([r.size for r in rs], [r.resolution_A or np.nan for r in rs], marker=marker, label=stage)
        b.scatter([r.size for r in rs], [np.nan if r.cfar is None else r.cfar for r in rs], marker=marker, label=stage)
    a.set(xlabel="particles", ylabel="resolution (Å, FSC 0.143)")
    b.set(xlabel="particles", ylabel="cFAR")
    b.axhline(0.15, color="grey", lw=0.8, ls="--")
    a.legend(fontsize=7)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def run_wizard(
    particles: str | Path,
    out: str | Path,
    cfg: WizardConfig = WizardConfig(),
    *,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Run the wizard on ``particles`` (STAR or .cs) into the folder ``out``; returns the summary
    also written to ``out/final/log.json``."""
    # absolute: RELION runs in each step's own folder, where a relative path means something else
    src, folder = Path(particles).resolve(), Path(out).resolve()
    if not src.is_file():
        raise InputError(src, "no such particle file")
    cfg = replace(cfg, symmetry=check_symmetry(cfg.symmetry))
    cfg.engine.check()
    pset = read_particles(src)
    diameter_A = _check_set(pset, src, cfg.mask_diameter_A)
    _prepare_folder(folder, src, cfg, resume)
    (folder / "final").mkdir(exist_ok=True)
    return Wizard(src, folder, cfg, progress, pset, diameter_A).run()


def _check_set(pset: ParticleSet, src: Path, mask_diameter_A: float | None) -> float:
    """The mask diameter (Å) to use; refuses sets the wizard cannot reconstruct."""
    if len(pset) == 0:
        raise InputError(src, "holds no particles")
    px = np.unique(np.round(pset.pixel_size_A, 4))
    if len(px) > 1:
        raise InputError(src, f"has several pixel sizes ({', '.join(map(str, px))} Å); the wizard needs one")
    box_A = pset.box_px * float(px[0])
    d = mask_diameter_A if mask_diameter_A is not None else 0.75 * box_A
    if d <= 0 or d > box_A:
        raise InputError(None, f"mask diameter {d:.1f} Å must be positive and fit the {box_A:.1f} Å box")
    return float(d)


__all__ = ["WizardConfig", "SubsetRun", "rebalance", "initial_sizes", "run_wizard", "check_symmetry"]
