"""Collections of simulated particle sets from the corpus: ``cryostack particles dataset``.

Three kinds, each a :class:`DatasetSpec` preset (:data:`PRESETS`), each set written by
:func:`~cryostack.particles.simulate.simulate_particles` into ``out_dir/set_NNN/``:

* ``pretrain`` — contrastive pretraining: many structures per set, and per set a pixel size, SNR
  and junk fraction drawn from wide ranges (defocus, astigmatism and B-factor are drawn per
  micrograph inside the set from wide ranges too).
* ``ranking`` — particle ranking: one structure per set and a known junk fraction drawn
  uniformly in 0.1–0.7 per set.
* ``subset`` — subset selection and preferred orientation: one structure per set, 5,000–50,000
  particles per set (log-uniform), half of the sets with preferred orientation.

Structures come from one corpus split only (``train`` or ``val``; ``test`` only with
``allow_test=True``), and consecutive sets take the next chains of one seeded permutation of that
split, so sets of one structure are different structures until the split is used up. Everything
is drawn from ``seed``. ``out_dir/dataset.json`` records the request, the corpus and the sha256
of its ``splits/splits.json``, and per set its seed, settings, structures (corpus index, PDB id,
chain, split) and counts; :func:`verify_dataset` checks the structures against the corpus.
Rerunning with the same request resumes: a set whose folder holds its ``particles.star`` and
matching ``manifest.json`` is kept as it is.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from cryostack.errors import InputError
from cryostack.io.atomic import atomic_output, check_writable, jsonable
from cryostack.particles.simulate import SimulationConfig, simulate_particles
from cryostack.particles.sources import ParticleSource, source_from_structure

#: The kinds of dataset, in the order the docs present them.
KINDS = ("pretrain", "ranking", "subset")
#: Format tag of ``dataset.json``.
DATASET_FORMAT = "cryostack-particle-dataset"
#: Water residues are not part of a particle (as in :mod:`cryostack.particles.sources`).
_WATER = {"HOH", "WAT", "DOD", "H2O"}
#: A particle's radius may be at most this fraction of the box edge (as ``particles simulate --corpus``).
_MAX_RADIUS_FRACTION = 0.45
_TAG_SET, _TAG_ORDER = 11, 13


@dataclass(frozen=True)
class DatasetSpec:
    """What one dataset holds. Ranges are ``(low, high)``: ``pixel_size_range_A`` and
    ``junk_range`` are drawn uniformly per set, ``snr_range`` and ``n_range`` log-uniformly per
    set; ``defocus_range_A`` (Å, underfocus positive), ``astigmatism_range_A`` (Å) and
    ``b_factor_range_A2`` (Å²) are drawn per micrograph inside a set; ``voltage_kV``, ``cs_mm`` and
    ``amplitude_contrast`` are choices per micrograph. ``n_particles`` (when set) fixes the number
    of particles of every set instead of ``n_range``. ``preferred_fraction`` of the sets (drawn per
    set) have preferred orientation. Chains shorter than ``min_residues`` are not used.
    """

    kind: str
    n_sets: int = 2
    n_particles: int | None = None
    n_range: tuple[int, int] = (10_000, 10_000)
    structures_per_set: int = 1
    box_px: int = 128
    pixel_size_range_A: tuple[float, float] = (1.0, 1.8)
    snr_range: tuple[float, float] = (0.02, 0.1)
    junk_range: tuple[float, float] = (0.0, 0.0)
    defocus_range_A: tuple[float, float] = (8000.0, 25000.0)
    astigmatism_range_A: tuple[float, float] = (0.0, 1000.0)
    b_factor_range_A2: tuple[float, float] = (20.0, 150.0)
    voltage_kV: tuple[float, ...] = (300.0,)
    cs_mm: tuple[float, ...] = (2.7,)
    amplitude_contrast: tuple[float, ...] = (0.1,)
    preferred_fraction: float = 0.0
    particles_per_micrograph: int = 200
    min_residues: int = 50

    def validate(self) -> None:
        """Raise :class:`InputError` (one line, naming the argument) for any value out of range."""

        def bad(problem: str) -> InputError:
            return InputError(None, problem)

        if self.kind not in KINDS:
            raise bad(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not (1 <= self.n_sets <= 100_000):
            raise bad(f"n_sets must be 1 to 100,000, got {self.n_sets}")
        if self.n_particles is not None and not (1 <= self.n_particles <= 10_000_000):
            raise bad(f"n_particles must be 1 to 10,000,000 per set, got {self.n_particles}")
        lo, hi = self.n_range
        if not (1 <= lo <= hi <= 10_000_000):
            raise bad(f"n_range must be 1 <= low <= high <= 10,000,000, got {lo} {hi}")
        if not (1 <= self.structures_per_set <= 1000):
            raise bad(f"structures_per_set must be 1 to 1000, got {self.structures_per_set}")
        if self.kind in ("ranking", "subset") and self.structures_per_set != 1:
            raise bad(f"{self.kind} sets hold one structure each, got structures_per_set {self.structures_per_set}")
        p_lo, p_hi = self.pixel_size_range_A
        if not (0.1 <= p_lo <= p_hi <= 20):
            raise bad(f"pixel_size_range_A must be 0.1 <= low <= high <= 20 Å, got {p_lo} {p_hi}")
        s_lo, s_hi = self.snr_range
        if not (0 < s_lo <= s_hi < math.inf):
            raise bad(f"snr_range must be 0 < low <= high (finite), got {s_lo} {s_hi}")
        j_lo, j_hi = self.junk_range
        if not (0 <= j_lo <= j_hi <= 1):
            raise bad(f"junk_range must be 0 <= low <= high <= 1, got {j_lo} {j_hi}")
        if not (0 <= self.preferred_fraction <= 1):
            raise bad(f"preferred_fraction must be 0 to 1, got {self.preferred_fraction}")
        if self.min_residues < 1:
            raise bad(f"min_residues must be at least 1, got {self.min_residues}")
        # Everything else (box, CTF ranges, ...) is checked as the simulator would, at both pixel-size ends.
        for px in (p_lo, p_hi):
            replace(self._base_config(), pixel_size_A=px, snr=s_lo).validate()

    def _base_config(self) -> SimulationConfig:
        return SimulationConfig(
            n_particles=self.n_particles or self.n_range[0],
            box_px=self.box_px,
            pixel_size_A=self.pixel_size_range_A[0],
            snr=self.snr_range[0],
            junk_fraction=self.junk_range[0],
            particles_per_micrograph=self.particles_per_micrograph,
            defocus_range_A=self.defocus_range_A,
            astigmatism_range_A=self.astigmatism_range_A,
            b_factor_range_A2=self.b_factor_range_A2,
            voltage_kV=self.voltage_kV,
            cs_mm=self.cs_mm,
            amplitude_contrast=self.amplitude_contrast,
        )

    def to_dict(self) -> dict:
        return asdict(self)


#: The presets of :func:`dataset_spec` (the sizes recommended in ``docs/particles.md``).
PRESETS: dict[str, DatasetSpec] = {
    "pretrain": DatasetSpec(
        kind="pretrain",
        n_sets=50,
        n_range=(20_000, 20_000),
        structures_per_set=16,
        pixel_size_range_A=(1.0, 2.5),
        snr_range=(0.01, 0.5),
        junk_range=(0.0, 0.3),
        defocus_range_A=(5000.0, 35000.0),
        astigmatism_range_A=(0.0, 2000.0),
        b_factor_range_A2=(0.0, 250.0),
        voltage_kV=(200.0, 300.0),
        cs_mm=(2.7, 0.01),
        amplitude_contrast=(0.07, 0.1),
        preferred_fraction=0.2,
    ),
    "ranking": DatasetSpec(
        kind="ranking",
        n_sets=20,
        n_range=(10_000, 10_000),
        junk_range=(0.1, 0.7),
    ),
    "subset": DatasetSpec(
        kind="subset",
        n_sets=10,
        n_range=(5_000, 50_000),
        junk_range=(0.0, 0.3),
        preferred_fraction=0.5,
    ),
}


def dataset_spec(kind: str, **overrides) -> DatasetSpec:
    """The preset of ``kind`` with ``overrides`` (field names of :class:`DatasetSpec`), validated."""
    if kind not in PRESETS:
        raise InputError(None, f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    unknown = sorted(set(overrides) - set(DatasetSpec.__dataclass_fields__) - {"kind"})
    if unknown:
        raise InputError(None, f"unknown dataset setting(s): {', '.join(unknown)}")
    spec = replace(PRESETS[kind], **{k: v for k, v in overrides.items() if k != "kind"})
    spec.validate()
    return spec


@dataclass
class SetPlan:
    """One set: its folder name, seed, settings and structures (corpus indices and names)."""

    name: str
    seed: int
    n_particles: int
    pixel_size_A: float
    snr: float
    junk_fraction: float
    orientation: str
    structures: list[dict] = field(default_factory=list)

    def config(self, spec: DatasetSpec, device: str = "cpu") -> SimulationConfig:
        return replace(
            spec._base_config(),
            n_particles=self.n_particles,
            pixel_size_A=self.pixel_size_A,
            snr=self.snr,
            junk_fraction=self.junk_fraction,
            orientation=self.orientation,
            device=device,
        )


@dataclass
class DatasetResult:
    """Where the dataset went: the manifest, every set's entry, and how many sets this run built."""

    out_dir: Path
    manifest_path: Path
    kind: str
    split: str
    sets: list[dict]
    built: int
    skipped: int
    n_particles: int
    seconds: float


def _draw_settings(spec: DatasetSpec, seed: int, k: int) -> SetPlan:
    rng = np.random.default_rng([int(seed), _TAG_SET, k])
    set_seed = int(rng.integers(2**31 - 1))
    pixel = round(float(rng.uniform(*spec.pixel_size_range_A)), 3)
    snr = float(f"{math.exp(rng.uniform(math.log(spec.snr_range[0]), math.log(spec.snr_range[1]))):.4g}")
    snr = min(max(snr, spec.snr_range[0]), spec.snr_range[1])
    junk = round(float(rng.uniform(*spec.junk_range)), 3)
    n_lo, n_hi = spec.n_range
    n_drawn = int(round(math.exp(rng.uniform(math.log(n_lo), math.log(n_hi)))))
    n = spec.n_particles or min(max(n_drawn, n_lo), n_hi)
    preferred = bool(rng.random() < spec.preferred_fraction)
    return SetPlan(
        name=f"set_{k:03d}",
        seed=set_seed,
        n_particles=n,
        pixel_size_A=pixel,
        snr=snr,
        junk_fraction=junk,
        orientation="preferred" if preferred else "uniform",
    )


def _chain_radius_A(structure) -> float:
    """Radius (Å) of a chain's non-hydrogen, non-water atoms about their mean (a source's ``radius_A``)."""
    arr = structure.atoms()
    if not arr.n_atoms:
        return math.inf
    res_names = np.asarray(arr.residue_names, dtype=object)[arr.residue_index]
    keep = ~arr.is_hydrogen & ~np.isin(res_names, list(_WATER))
    if not keep.any():
        return math.inf
    xyz = arr.coords[keep].astype(np.float64)
    return float(np.sqrt(((xyz - xyz.mean(axis=0)) ** 2).sum(axis=1)).max())


def plan_dataset(corpus, spec: DatasetSpec, split: str, *, seed: int = 0, allow_test: bool = False) -> list[SetPlan]:
    """Every set's settings and structures, drawn from ``seed`` (reads chains, simulates nothing).

    Structures are the chains of ``split`` with at least ``spec.min_residues`` residues, in one
    seeded permutation, taken in turn (cyclically) by the sets; a chain too large for a set's box
    (radius above 0.45 × box × pixel size) is passed over for that set.
    """
    idx = corpus.split_indices(split, allow_test=allow_test)
    idx = idx[corpus.lengths[idx] >= spec.min_residues]
    if len(idx) < spec.structures_per_set:
        raise InputError(
            None,
            f"corpus split {split!r} has {len(idx)} chains of at least {spec.min_residues} residues, "
            f"{spec.structures_per_set} needed per set",
        )
    order = np.random.default_rng([int(seed), _TAG_ORDER]).permutation(idx)
    info: dict[int, dict] = {}

    def describe(i: int) -> dict:
        if i not in info:
            record = corpus.chain(i, allow_test=allow_test)
            info[i] = {
                "name": f"{record.pdb_id}_{record.chain_id}",
                "corpus_index": i,
                "pdb_id": record.pdb_id,
                "chain_id": record.chain_id,
                "split": str(corpus.splits[i]),
                "residues": len(record),
                "radius_A": round(_chain_radius_A(record.to_structure()), 3),
            }
        return info[i]

    plans = []
    cursor = 0
    for k in range(spec.n_sets):
        plan = _draw_settings(spec, seed, k)
        max_radius = _MAX_RADIUS_FRACTION * spec.box_px * plan.pixel_size_A
        chosen: list[dict] = []
        for _ in range(len(order)):
            d = describe(int(order[cursor % len(order)]))
            cursor += 1
            if d["radius_A"] <= max_radius and all(c["corpus_index"] != d["corpus_index"] for c in chosen):
                chosen.append(dict(d))
                if len(chosen) == spec.structures_per_set:
                    break
        if len(chosen) < spec.structures_per_set:
            raise InputError(
                None,
                f"corpus split {split!r} has only {len(chosen)} chains that fit a box of {spec.box_px} px at "
                f"{plan.pixel_size_A} Å (radius ≤ {max_radius:.1f} Å), {spec.structures_per_set} needed per set",
            )
        plan.structures = chosen
        plans.append(plan)
    return plans


def _set_complete(set_dir: Path, plan: SetPlan) -> dict | None:
    """The set's ``manifest.json`` if the folder holds the finished set ``plan`` describes."""
    star, manifest = set_dir / "particles.star", set_dir / "manifest.json"
    if not (star.is_file() and manifest.is_file()):
        return None
    try:
        m = json.loads(manifest.read_text())
    except ValueError:
        return None
    names = [s.get("name") for s in m.get("sources", [])]
    if m.get("seed") != plan.seed or m.get("n_particles") != plan.n_particles:
        return None
    if names != [s["name"] for s in plan.structures]:
        return None
    return m


def _request(spec: DatasetSpec, split: str, seed: int, corpus_dir: Path, splits_sha: str | None) -> dict:
    return {
        "kind": spec.kind,
        "split": split,
        "seed": int(seed),
        "corpus": str(corpus_dir.resolve()),
        "corpus_splits_sha256": splits_sha,
        "settings": spec.to_dict(),
    }


def _check_out_dir(out_dir: Path, request: dict) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "exists and is not a folder")
    manifest = out_dir / "dataset.json"
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text())
        except ValueError:
            raise InputError(manifest, "unreadable dataset manifest; choose another output folder") from None
        if jsonable(old.get("request")) != jsonable(request):
            keys = [k for k in request if jsonable(old.get("request", {}).get(k)) != jsonable(request[k])]
            raise InputError(
                out_dir,
                f"holds a dataset made with other {', '.join(keys) or 'settings'}; rerun with those or choose "
                "another output folder",
            )
    elif out_dir.is_dir() and any(out_dir.iterdir()):
        raise InputError(out_dir, "is not empty and holds no dataset.json; choose another output folder")
    check_writable(manifest)


def build_dataset(
    kind: str,
    corpus_dir: str | Path,
    out_dir: str | Path,
    *,
    split: str = "train",
    n: int | None = None,
    sets: int | None = None,
    seed: int = 0,
    allow_test: bool = False,
    write_cs: bool = True,
    workers: int = 1,
    device: str = "cpu",
    progress: bool = True,
    **overrides,
) -> DatasetResult:
    """Build (or resume) a dataset of ``kind`` from ``split`` of the corpus at ``corpus_dir``.

    ``n`` fixes the particles per set and ``sets`` the number of sets (default: the preset's);
    ``overrides`` are further :class:`DatasetSpec` fields (``box_px``, ``pixel_size_range_A``,
    ``snr_range``, ``junk_range``, ...). Everything is checked before any set is simulated. Each
    set goes to ``out_dir/set_NNN/`` (see :func:`simulate_particles`); ``out_dir/dataset.json``
    is rewritten after each set (``status`` ``"building"``, then ``"complete"``). A rerun with the
    same arguments keeps the finished sets; other arguments in the same folder are refused.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from cryostack.data.corpus import Corpus
    from cryostack.learn.provenance import sha256_file

    if n is not None:
        overrides["n_particles"] = n
    if sets is not None:
        overrides["n_sets"] = sets
    spec = dataset_spec(kind, **overrides)
    if seed < 0:
        raise InputError(None, f"seed must be ≥ 0, got {seed}")
    if not (1 <= workers <= 256):
        raise InputError(None, f"workers must be 1 to 256, got {workers}")
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    corpus = Corpus(corpus_dir)
    corpus.split_indices(split, allow_test=allow_test)  # unknown split, or test without allow_test
    splits_file = corpus_dir / "splits" / "splits.json"
    splits_sha = sha256_file(splits_file) if splits_file.is_file() else None
    request = _request(spec, split, seed, corpus_dir, splits_sha)
    _check_out_dir(out_dir, request)
    plans = plan_dataset(corpus, spec, split, seed=seed, allow_test=allow_test)

    start = time.perf_counter()
    entries: list[dict] = []
    for plan in plans:
        entry = {**asdict(plan), "folder": plan.name, "done": False, "counts": None}
        entry["box_px"] = spec.box_px
        entries.append(entry)
    manifest_path = out_dir / "dataset.json"

    def write_manifest(status: str) -> None:
        manifest = {
            "format": DATASET_FORMAT,
            "version": 1,
            "status": status,
            "request": request,
            "kind": spec.kind,
            "split": split,
            "seed": int(seed),
            "corpus": str(corpus_dir.resolve()),
            "corpus_splits_sha256": splits_sha,
            "settings": spec.to_dict(),
            "n_sets": len(entries),
            "n_particles": sum(e["n_particles"] for e in entries),
            "structures": sorted({s["name"] for e in entries for s in e["structures"]}),
            "sets": entries,
        }
        with atomic_output(manifest_path) as tmp:
            tmp.write_text(json.dumps(jsonable(manifest), indent=2))

    out_dir.mkdir(parents=True, exist_ok=True)
    write_manifest("building")  # from now on the folder is this dataset's (a rerun resumes it)
    built = skipped = 0
    columns = (TextColumn(f"building {spec.kind} sets"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("sets", total=sum(p.n_particles for p in plans))
        for plan, entry in zip(plans, entries):
            set_dir = out_dir / plan.name
            done = _set_complete(set_dir, plan)
            if done is None:
                sources = _sources(corpus, plan, allow_test)
                result = simulate_particles(
                    plan.config(spec, device),
                    sources,
                    set_dir,
                    seed=plan.seed,
                    overwrite=True,  # an unfinished set of this dataset
                    progress=False,
                    write_cs=write_cs,
                    source_description={
                        "dataset": spec.kind,
                        "corpus": str(corpus_dir.resolve()),
                        "split": split,
                        "chains": [s["name"] for s in plan.structures],
                    },
                    workers=workers,
                )
                entry["counts"] = result.counts
                built += 1
            else:
                entry["counts"] = done.get("counts")
                skipped += 1
            entry["done"] = True
            write_manifest("building")
            bar.advance(task, plan.n_particles)
    write_manifest("complete")
    return DatasetResult(
        out_dir=out_dir,
        manifest_path=manifest_path,
        kind=spec.kind,
        split=split,
        sets=entries,
        built=built,
        skipped=skipped,
        n_particles=sum(p.n_particles for p in plans),
        seconds=time.perf_counter() - start,
    )


def _sources(corpus, plan: SetPlan, allow_test: bool) -> list[ParticleSource]:
    out = []
    for s in plan.structures:
        record = corpus.chain(s["corpus_index"], allow_test=allow_test)
        resolution_A = 2.0 * plan.pixel_size_A  # SimulationConfig.effective_resolution_A
        src = source_from_structure(record.to_structure(), plan.pixel_size_A, resolution_A, name=s["name"])
        src.info.update({"corpus_index": s["corpus_index"], "split": s["split"], "residues": s["residues"]})
        out.append(src)
    return out


def verify_dataset(out_dir: str | Path, corpus_dir: str | Path) -> list[str]:
    """Problems found checking ``out_dir/dataset.json`` against the corpus (empty: none).

    Every structure of every set must be the recorded chain of the corpus, in the dataset's split;
    the corpus's ``splits/splits.json`` must have the recorded sha256.
    """
    from cryostack.data.corpus import Corpus
    from cryostack.learn.provenance import sha256_file

    path = Path(out_dir) / "dataset.json"
    if not path.is_file():
        raise InputError(path, "no dataset manifest here")
    try:
        manifest = json.loads(path.read_text())
    except ValueError:
        raise InputError(path, "unreadable dataset manifest") from None
    corpus = Corpus(corpus_dir)
    problems = []
    splits_file = Path(corpus_dir) / "splits" / "splits.json"
    sha = sha256_file(splits_file) if splits_file.is_file() else None
    if sha != manifest.get("corpus_splits_sha256"):
        problems.append("the corpus splits differ from those the dataset was made with (sha256)")
    labels, rows = corpus.splits, corpus.metadata
    for entry in manifest.get("sets", []):
        for s in entry.get("structures", []):
            i = int(s["corpus_index"])
            if not 0 <= i < len(rows):
                problems.append(f"{entry['name']}: corpus index {i} out of range")
                continue
            if (rows[i]["pdb_id"], rows[i]["chain_id"]) != (s["pdb_id"], s["chain_id"]):
                problems.append(f"{entry['name']}: corpus index {i} is not {s['name']}")
            if labels[i] != manifest.get("split"):
                problems.append(f"{entry['name']}: {s['name']} is in split {labels[i]}, not {manifest.get('split')}")
    return problems
