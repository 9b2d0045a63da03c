"""``cryostack run``: the stages that apply to the given inputs, each resumable, and one report.

Stages, in order, and when they run::

    particles  --particles given        CryoWizard on RELION -> map, half maps, FSC, cFAR
    map        a map (given or made)    grid facts, half-map FSC (0.143) and cFAR when halves exist
    enhance    a map of 4–10 Å          cryostack enhance -> enhanced map + confidence map, for
                                        looking and building (later stages use the experimental map)
    build      a sequence, a map and    cryostack build -> model (backbone from the network, side chains
               no model                 from ProMod3) in the map's frame; refine and validate use it.
                                        With a model given, the sequence is checked against it instead
    dock       particles and a model    the reconstruction (any orientation, either hand) aligned
                                        onto the model's simulated map; half maps moved with it
    refine     a model and a map        cryostack refine -> refined model, before/after record
    validate   a model                  map fit (when a map exists), geometry, per residue
    report     always                   OUT/report.html (+ report.json)

Each stage works in ``OUT/NN_stage/`` and leaves ``stage.json``: its inputs with SHA-256, its
parameters, package versions, wall time and outputs. A rerun reuses a stage whose record says
done with the same inputs and parameters (outputs still present); a stage interrupted while
running continues in its folder (the wizard resumes its RELION jobs); a stage whose inputs or
parameters changed starts afresh. ``OUT/run.json`` holds the run's input files: a rerun on
other inputs is refused.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryostack.errors import CryostackError, InputError
from cryostack.io.atomic import atomic_output, jsonable
from cryostack.learn.provenance import sha256_file
from cryostack.pipeline.config import RunConfig

STAGES = ("particles", "map", "enhance", "build", "dock", "refine", "validate", "report")
#: Stages of the mission not in this release: the plan lists them, the report says so.
NOT_AVAILABLE: dict[str, str] = {}


class _Skipped(Exception):
    """A stage that does not apply to this run's data (the reason is shown in the report)."""


#: Docking: the chosen hand must fit better than the mirror image by this much CC to count as decided.
HAND_MARGIN = 0.02


class StageFailed(CryostackError):
    """A stage stopped the run; ``exit_code`` 2 when the stage refused an input, 1 for a bug."""

    def __init__(self, stage: str, error: BaseException, log: Path):
        self.stage, self.log = stage, log
        self.exit_code = 2 if isinstance(error, CryostackError) else 1
        what = str(error) if isinstance(error, CryostackError) else f"{type(error).__name__}: {error}"
        super().__init__(" ".join(f"stage {stage} failed: {what} (log: {log})".split()))


@dataclass
class RunInputs:
    """The files of one run; which stages run follows from which are given."""

    particles: Path | None = None
    map: Path | None = None
    half_maps: tuple[Path, Path] | None = None
    sequence: Path | None = None
    model: Path | None = None

    def files(self) -> dict[str, Path]:
        out = {k: getattr(self, k) for k in ("particles", "map", "sequence", "model")}
        if self.half_maps:
            out["half_map_1"], out["half_map_2"] = self.half_maps
        return {k: Path(v) for k, v in out.items() if v is not None}


@dataclass
class StageRecord:
    stage: str
    status: str  # planned, running, done, reused, failed, skipped, not available
    folder: str = ""
    wall_s: float | None = None
    inputs: dict[str, dict] = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    error: str | None = None

    def key(self) -> dict:
        return stage_key(self.__dict__)


def stage_key(record: dict) -> dict:
    """What decides whether a stage's earlier work still holds: its inputs' hashes and parameters."""
    return {"inputs": {k: v["sha256"] for k, v in record.get("inputs", {}).items()}, "params": record.get("params")}


def plan(inputs: RunInputs) -> list[str]:
    """The stages that will run for ``inputs``, in order (see the module docstring)."""
    stages = []
    has_map = inputs.particles is not None or inputs.map is not None
    if inputs.particles is not None:
        stages.append("particles")
    if has_map:
        stages += ["map", "enhance"]
    if inputs.sequence is not None and inputs.model is None and has_map:
        # a model built into the map sits in the map's frame: no docking, straight to refinement
        return stages + ["build", "refine", "validate", "report"]
    if inputs.model is not None:
        # a map from particles is in RELION's frame; a given map is taken to hold the model already
        stages += (["dock"] if inputs.particles is not None else []) + (["refine"] if has_map else []) + ["validate"]
    return stages + ["report"]


def check_inputs(inputs: RunInputs, cfg: RunConfig) -> None:
    """Refuse contradictory or incomplete inputs before any work (one line, exit 2)."""
    for name, p in inputs.files().items():
        if not p.is_file():
            raise InputError(p, f"no such file (--{name.replace('_', '-')})")
    if inputs.particles is not None and inputs.map is not None:
        raise InputError(None, "give particles or a map, not both: the particles stage makes the map")
    if inputs.half_maps is not None and inputs.map is None:
        raise InputError(None, "half maps need the full map as well (--map)")
    if inputs.sequence is not None and inputs.model is None and not (inputs.map or inputs.particles):
        raise InputError(inputs.sequence, "model building needs a map (--map or --particles) as well as the sequence")
    if not (inputs.particles or inputs.map or inputs.model):
        raise InputError(None, "nothing to do: give --particles, --map or --model")
    if inputs.particles is not None:
        cfg.wizard.engine.check()  # RELION installed, MPI settings sane
    needs_model_work = inputs.model is not None or inputs.sequence is not None
    if inputs.map is not None and inputs.half_maps is None and cfg.resolution_A is None and needs_model_work:
        raise InputError(None, "a map without half maps needs --resolution (nothing to measure it from)")
    if inputs.sequence is not None and inputs.model is not None:
        from cryostack.io.models import read_structure
        from cryostack.io.sequences import align_chains_to_fasta, read_fasta

        align_chains_to_fasta(read_structure(inputs.model), read_fasta(inputs.sequence), fasta_path=inputs.sequence)
    if cfg.device not in ("cpu", "cuda") and not cfg.device.startswith("cuda:"):
        raise InputError(None, f"device must be cpu or cuda[:N], got {cfg.device!r}")


def _file_record(path: Path) -> dict:
    return {"path": str(path.resolve()), "sha256": sha256_file(path)}


@functools.cache
def _versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("cryostack", "torch", "gemmi", "numpy")}


class Run:
    """One pipeline run into ``out``; :meth:`execute` runs the plan and writes the report."""

    def __init__(
        self,
        out: Path,
        inputs: RunInputs,
        cfg: RunConfig,
        config_text: str = "",
        *,
        progress: bool = True,
        say: Callable[[str], None] | None = None,
    ):
        self.out, self.inputs, self.cfg, self.config_text = Path(out), inputs, cfg, config_text
        self.progress = progress
        self.say = say or (lambda _t: None)
        self.records: list[StageRecord] = []
        self.failure: dict | None = None
        self.products: dict[str, Path] = {}  # what later stages read: map, half maps, model, ...
        self.resolution_A: float | None = cfg.resolution_A
        self.notes: list[str] = []

    # -- the run folder ----------------------------------------------------------------------
    def _claim_folder(self) -> None:
        files = {k: _file_record(p) for k, p in self.inputs.files().items()}
        record = self.out / "run.json"
        if record.is_file():
            old = json.loads(record.read_text()).get("inputs", {})
            if {k: v["sha256"] for k, v in old.items()} != {k: v["sha256"] for k, v in files.items()}:
                mine = ", ".join(sorted(files)) or "none"
                theirs = ", ".join(f"{k}={Path(v['path']).name}" for k, v in sorted(old.items()))
                raise InputError(self.out, f"holds a run of other inputs ({theirs}; this run: {mine}); choose another --out")  # fmt: skip
        elif self.out.exists() and any(self.out.iterdir()):
            raise InputError(self.out, "exists and is not a cryostack run folder; choose another --out")
        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_output(record) as tmp:
            tmp.write_text(json.dumps({"inputs": files}, indent=1))

    # -- stages --------------------------------------------------------------------------------
    def execute(self) -> Path:
        """Run every planned stage; returns the report's path. On a failure the report is still
        written (showing what finished) and :class:`StageFailed` is raised."""
        check_inputs(self.inputs, self.cfg)
        self._claim_folder()
        stages = plan(self.inputs)
        self.records = [StageRecord(s, "planned") for s in stages]
        try:
            for i, rec in enumerate(self.records):
                if rec.stage == "report":
                    break
                self.say(f"stage {i + 1}/{len(stages)}: {rec.stage}")
                self._run_stage(i, rec)
        except KeyboardInterrupt:
            self.failure = {"stage": next((r.stage for r in self.records if r.status == "running"), "?"), "error": "interrupted (Ctrl-C); rerun the same command to continue", "log": ""}  # fmt: skip
            self._report()
            raise
        except StageFailed as exc:
            self.failure = {"stage": exc.stage, "error": str(exc), "log": str(exc.log)}
            self._report()
            raise
        return self._report()

    def _run_stage(self, index: int, rec: StageRecord) -> None:
        if rec.stage in NOT_AVAILABLE:
            rec.status, rec.error = "not available", NOT_AVAILABLE[rec.stage]
            return
        folder = self.out / f"{index + 1:02d}_{rec.stage}"
        rec.folder = str(folder.relative_to(self.out))
        log = folder / "stage.log"
        try:
            stage_inputs, params, fn = getattr(self, f"_prepare_{rec.stage}")()
        except _Skipped as why:
            rec.status, rec.folder = "skipped", ""
            self.notes.append(f"{rec.stage} skipped: {why}")
            return
        except CryostackError as exc:  # e.g. no resolution to refine at: refused before any work
            folder.mkdir(parents=True, exist_ok=True)
            log.write_text(f"{exc}\n")
            rec.status, rec.error = "failed", str(exc)
            raise StageFailed(rec.stage, exc, log) from exc
        rec.inputs = {k: _file_record(p) for k, p in stage_inputs.items()}
        rec.params = jsonable(params)
        record_path = folder / "stage.json"
        old = json.loads(record_path.read_text()) if record_path.is_file() else None
        same = old is not None and stage_key(old) == rec.key()
        if (
            same
            and old is not None
            and old["status"] == "done"
            and all((folder / p).exists() for p in old["outputs"].values())
        ):
            rec.status, rec.wall_s, rec.outputs, rec.info = "reused", old["wall_s"], old["outputs"], old.get("info", {})
            self._take_outputs(rec, folder)
            return
        if old is not None and not same:
            shutil.rmtree(folder)  # our own stage folder, made for other inputs or parameters
        folder.mkdir(parents=True, exist_ok=True)
        rec.status = "running"
        self._write_record(rec, folder)
        t0 = time.perf_counter()
        try:
            outputs, info = fn(folder)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            with open(log, "a") as fh:
                fh.write("".join(traceback.format_exception(exc)))
            rec.status, rec.error, rec.wall_s = "failed", str(exc), round(time.perf_counter() - t0, 2)
            self._write_record(rec, folder)
            raise StageFailed(rec.stage, exc, log) from exc
        rec.wall_s = round(time.perf_counter() - t0, 2)
        rec.outputs = {k: str(Path(v).relative_to(folder)) for k, v in outputs.items()}
        rec.info, rec.status = jsonable(info), "done"
        self._write_record(rec, folder)
        self._take_outputs(rec, folder)

    def _write_record(self, rec: StageRecord, folder: Path) -> None:
        d = {**rec.__dict__, "versions": _versions()}
        with atomic_output(folder / "stage.json") as tmp:
            tmp.write_text(json.dumps(jsonable(d), indent=1))

    def _take_outputs(self, rec: StageRecord, folder: Path) -> None:
        for k, v in rec.outputs.items():
            self.products[k] = folder / v
        if rec.info.get("resolution_A") and self.resolution_A is None:
            self.resolution_A = float(rec.info["resolution_A"])
            self.notes.append(f"resolution {self.resolution_A:.2f} Å (FSC 0.143) measured by the {rec.stage} stage; used from there on")  # fmt: skip
        if rec.info.get("note"):
            self.notes.append(f"{rec.stage}: {rec.info['note']}")

    # -- what each stage needs and does: (inputs, parameters, fn(folder) -> (outputs, info)) --
    def _prepare_particles(self):
        src = self.inputs.particles
        assert src is not None
        wcfg = replace(self.cfg.wizard, device=self.cfg.device)

        def fn(folder: Path):
            from cryostack.particles.wizard import run_wizard

            wdir = folder / "wizard"
            summary = run_wizard(src, wdir, wcfg, resume=wdir.exists(), progress=self.progress)
            final = wdir / "final"
            outputs = {n: final / f for n, f in (("map", "map.mrc"), ("half_map_1", "half1.mrc"), ("half_map_2", "half2.mrc"), ("mask", "mask.mrc"), ("wizard_log", "log.json"))}  # fmt: skip
            res = summary["final"]["resolution_A"]
            return outputs, {"resolution_A": res, "cfar": summary["final"]["cfar"], "chosen": summary["chosen"]}

        return {"particles": src}, wcfg.to_dict(), fn

    def _map_inputs(self, *, mask: bool = False) -> dict[str, Path]:
        """The current map and its half maps (and the wizard's mask with ``mask``), given or made."""
        if "map" in self.products:
            names = ("map", "half_map_1", "half_map_2") + (("mask",) if mask else ())
            return {k: self.products[k] for k in names if k in self.products}
        assert self.inputs.map is not None
        d = {"map": self.inputs.map}
        if self.inputs.half_maps:
            d["half_map_1"], d["half_map_2"] = self.inputs.half_maps
        return d

    @staticmethod
    def _halves(files: dict[str, Path]) -> tuple[Path, Path] | None:
        return (files["half_map_1"], files["half_map_2"]) if "half_map_1" in files else None

    def _prepare_map(self):
        stage_inputs = self._map_inputs(mask=True)

        def fn(folder: Path):
            from cryostack.pipeline.map_stage import map_summary

            summary = map_summary(stage_inputs, folder / "map_summary.json")
            return {"map_summary": folder / "map_summary.json"}, {"resolution_A": summary.get("resolution_A"), "cfar": summary.get("cfar")}  # fmt: skip

        return stage_inputs, {"fsc_threshold": 0.143}, fn

    def _prepare_enhance(self):
        from cryostack.enhance.api import TRAINED_RESOLUTION_A, WARN_RESOLUTION_A

        settings = self.cfg.enhance
        res = self.resolution_A
        if not settings.enabled:
            raise _Skipped("turned off ([enhance] enabled = false)")
        if res is None or not WARN_RESOLUTION_A[0] <= res <= WARN_RESOLUTION_A[1]:
            lo, hi = TRAINED_RESOLUTION_A
            at = "an unknown resolution" if res is None else f"{res:.2f} Å"
            raise _Skipped(f"the map is at {at}; the enhancer is trained for {lo:g}–{hi:g} Å maps")
        m = self._map_inputs()
        stage_inputs = {"map": m["map"]}

        def fn(folder: Path):
            from cryostack.enhance.api import EnhanceConfig, enhance_files

            outputs = {"enhanced_map": folder / "map_enhanced.mrc"}
            if settings.confidence:
                outputs["enhance_confidence"] = folder / "confidence.mrc"
            result = enhance_files(
                m["map"], outputs["enhanced_map"], resolution_A=res, confidence_out=outputs.get("enhance_confidence"),
                cfg=EnhanceConfig(views=settings.views, device=self.cfg.device),
            )  # fmt: skip
            note = "enhanced map written for looking and building; docking, refinement and validation use the experimental map"  # fmt: skip
            return outputs, {**result.info, "warnings": result.warnings, "note": note}

        return stage_inputs, {**settings.__dict__, "resolution_A": res, "device": self.cfg.device}, fn

    def _prepare_dock(self):
        model = self.inputs.model
        assert model is not None
        m = self._map_inputs()
        res = self._needs_resolution("docking")
        stage_inputs = {"model": model, **m}

        def fn(folder: Path):
            from cryostack.density.align import dock_map_on_model
            from cryostack.io.maps import read_map, write_map
            from cryostack.io.models import read_structure

            density = read_map(m["map"])
            docked, al = dock_map_on_model(density, read_structure(model), res)
            outputs = {"map": write_map(docked, folder / "map_docked.mrc")}
            for k in ("half_map_1", "half_map_2"):
                if k in m:
                    outputs[k] = write_map(docked.with_data(al.apply(read_map(m[k]).data)), folder / f"{k}_docked.mrc")
            hand = (
                "the mirror image of the reconstruction (its hand was wrong) " if al.mirrored else "the reconstruction "
            )
            note = f"{hand}was aligned onto the model's map at {res:.1f} Å: CC {al.cc:.3f} (other hand {al.cc_other_hand:.3f})"
            if al.cc - al.cc_other_hand < HAND_MARGIN:
                note += "; the hands fit almost equally well, so the hand is not decided at this resolution"
            return outputs, {"alignment": al.to_dict(), "resolution_A": res, "note": note}

        return stage_inputs, {"resolution_A": res, "seed": 0}, fn

    def _needs_resolution(self, what: str) -> float:
        if self.resolution_A is None:
            raise InputError(None, f"{what} needs a resolution: give --resolution (the half-map FSC could not measure one)")  # fmt: skip
        return self.resolution_A

    def _prepare_build(self):
        assert self.inputs.sequence is not None
        m = self._map_inputs()
        res = self._needs_resolution("model building")
        stage_inputs = {"map": m["map"], "sequence": self.inputs.sequence}

        def fn(folder: Path):
            from cryostack.build.api import BuildConfig
            from cryostack.pipeline.build_job import build_files

            job = build_files(
                m["map"], stage_inputs["sequence"], res, folder / "model_built.cif",
                BuildConfig(resolution_A=res, device=self.cfg.device),
            )  # fmt: skip
            model, record, html = job.outputs
            s = job.build.summary()
            note = (
                f"built {s['residues']} residues in {len(s['chains'])} chain(s), mean confidence {s['mean_confidence']}"
            )
            return {"model": model, "build_record": record, "build_html": html}, {**s, "note": note}

        return stage_inputs, {"resolution_A": res, "device": self.cfg.device}, fn

    def _prepare_refine(self):
        model = self.products.get("model", self.inputs.model)
        assert model is not None
        m = self._map_inputs()
        res = self._needs_resolution("refinement")
        settings = self.cfg.refine
        stage_inputs = {"model": model, **m}
        halves = self._halves(m)

        def fn(folder: Path):
            from cryostack.pipeline.refine_job import refine_files
            from cryostack.refine import RefineConfig

            config = RefineConfig(
                method=settings.method,
                max_recycles=settings.max_recycles,
                max_rounds=settings.max_rounds,
                round_tolerance_A=settings.round_tolerance_A,
                seed=settings.seed,
                device=self.cfg.device,
            )
            job = refine_files(
                stage_inputs["model"], m["map"], res, out=folder / "model.cif", half_maps=halves, config=config,
                weights=settings.weights, compute_q=q,
            )  # fmt: skip
            model, _, record, html = job.outputs
            info = {
                "recycles": job.refinement.n_recycles,
                "rounds": len(job.refinement.rounds),
                "converged": job.refinement.converged,
                "resolution_A": res,
            }
            return {"model": model, "refine_record": record, "refine_html": html}, info

        q = self.cfg.validate.q_score  # the refinement's own before/after report
        return stage_inputs, {**settings.__dict__, "resolution_A": res, "device": self.cfg.device, "q_score": q}, fn

    def _prepare_validate(self):
        model = self.products.get("model", self.inputs.model)
        assert model is not None
        has_map = "map" in self.products or self.inputs.map is not None
        stage_inputs: dict[str, Path] = {"model": model, **(self._map_inputs() if has_map else {})}
        res = self._needs_resolution("map-model validation") if has_map else None
        q = self.cfg.validate.q_score

        def fn(folder: Path):
            from cryostack.validate.api import validate

            halves = self._halves(stage_inputs)
            result = validate(model, density=stage_inputs.get("map"), resolution_A=res, half_maps=halves, compute_q=q)
            path = result.write_json(folder / "validation.json")
            return {"validation": path}, {"resolution_A": res}

        return stage_inputs, {"resolution_A": res, "q_score": q}, fn

    # -- report --------------------------------------------------------------------------------
    def _report(self) -> Path:
        from cryostack.report.pages import run_page

        rec = self.records[-1]
        rec.status, rec.folder = "done", "."
        t0 = time.perf_counter()
        path = run_page(
            self.out / "report.html",
            stages=[r.__dict__ for r in self.records],
            products=self.products,
            inputs={k: _file_record(p) for k, p in self.inputs.files().items()},
            parameters=self.cfg.to_dict(),
            config_text=self.config_text,
            failure=self.failure,
            notes=self.notes,
        )
        rec.wall_s = round(time.perf_counter() - t0, 2)
        return path


def run_pipeline(
    out: str | Path,
    inputs: RunInputs,
    cfg: RunConfig | None = None,
    config_text: str = "",
    *,
    progress: bool = True,
    say: Callable[[str], None] | None = None,
) -> Path:
    """Run the stages for ``inputs`` into ``out`` (resuming what an earlier run finished);
    returns the HTML report's path."""
    return Run(Path(out), inputs, cfg or RunConfig(), config_text, progress=progress, say=say).execute()


__all__ = ["RunInputs", "StageRecord", "StageFailed", "Run", "plan", "check_inputs", "run_pipeline", "STAGES"]
