"""RELION as the wizard's reconstruction engine: resumable steps, downsampled copies, judged maps.

Every engine run is a *step*: a folder holding RELION's outputs, its own log (``engine.log``) and,
once it finished, ``step.json`` (the command, exit status, seconds). A step whose ``step.json``
records the same command is skipped, so an interrupted wizard resumes where it stopped; a step
folder without it (an interrupted run) is emptied and run again. A failed run raises
:class:`EngineError` with the last lines of RELION's log and the log's path.

Parallelism: ``threads`` is RELION's ``--j``. 3D auto-refine runs ``relion_refine_mpi`` under
``mpirun -n mpi``: a leader and ``mpi − 1`` followers, at least one per half set, so ``mpi`` ≥ 3
(RELION 3.1's serial program refuses to split half sets; on two cores the leader mostly waits, so
three processes keep both cores busy). The de novo initial model runs the serial
``relion_refine`` with ``threads``. A cluster user keeps the same commands and replaces the
launcher (see ``docs/particles_wizard.md``).

Maps are judged by us, not by RELION's own numbers, so that every subset is scored the same
way: the gold-standard FSC between the unfiltered half maps inside a soft spherical mask of the
particle diameter (0.143 resolution) and cFAR (:mod:`cryostack.density.cfar`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cryostack.density.cfar import CFARResult, cfar
from cryostack.density.fourier import fourier_crop_or_pad
from cryostack.density.fsc import fsc_curve, fsc_resolution
from cryostack.errors import CryostackError, InputError
from cryostack.io.atomic import atomic_output
from cryostack.io.maps import DensityMap, read_map, write_map
from cryostack.io.particles import ParticleSet, write_mrcs, write_star
from cryostack.particles.featurize import fourier_resample

#: Fewest FSC shells between the first measurable cone shell and the resolution for a cFAR.
MIN_CFAR_SHELLS = 4
#: Fourier voxels every cone needs in a shell before it enters the cFAR areas (noise ≈ 1/√100).
MIN_CFAR_CONE_VOXELS = 100
#: Cone half-angles tried, narrowest first (see :func:`robust_cfar`).
CFAR_CONE_ANGLES_DEG = (20.0, 30.0, 45.0)
#: Lines of an engine log quoted in an error.
_LOG_TAIL_LINES = 15


class EngineError(CryostackError):
    """An engine run failed; the message's first line says which and where the log is, the lines
    after it quote the end of the log (the CLI prints it and exits 2, as for a bad input)."""


@dataclass(frozen=True)
class EngineConfig:
    """How RELION is launched: ``mpi`` processes (1 = the serial program) of ``threads`` each."""

    mpi: int = 3
    threads: int = 1
    launcher: tuple[str, ...] = ("mpirun",)

    def check(self) -> None:
        if self.mpi < 3 or self.threads < 1:
            raise InputError(
                None,
                f"mpi must be at least 3 (a leader and one follower per half set) and threads at least 1, "
                f"got {self.mpi} and {self.threads}",
            )
        missing = [p for p in ("relion_refine", "relion_refine_mpi", self.launcher[0]) if not shutil.which(p)]
        if missing:
            raise InputError(
                None, f"RELION is not installed or not on PATH (missing {', '.join(missing)}); `make setup` installs it"
            )

    def refine_program(self, need_followers: int = 0) -> list[str]:
        """``relion_refine`` (``need_followers`` 0) or its MPI launch with ``mpi`` processes."""
        if need_followers == 0:
            return ["relion_refine"]
        if self.mpi - 1 < need_followers:
            raise InputError(
                None,
                f"mpi {self.mpi} is too few for this RELION job: it needs 1 leader and {need_followers} "
                f"followers (mpi {need_followers + 1})",
            )
        extra = ["--allow-run-as-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
        return [*self.launcher, *extra, "--oversubscribe", "-n", str(self.mpi), "relion_refine_mpi"]


def relion_version() -> str | None:
    """RELION's version string (``relion_refine --version``), or None when it is not installed."""
    if not shutil.which("relion_refine"):
        return None
    out = subprocess.run(["relion_refine", "--version"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        if "version" in line.lower():
            return line.split(":", 1)[-1].strip()
    return out.strip() or None


# --- steps ------------------------------------------------------------------------------------


@dataclass
class StepRecord:
    """One finished engine run: its folder, command, wall time and whether this call skipped it."""

    name: str
    folder: Path
    argv: list[str]
    seconds: float
    skipped: bool = False


def run_step(name: str, folder: Path, argv: Sequence[str], *, log_name: str = "engine.log") -> StepRecord:
    """Run ``argv`` in ``folder`` (RELION writes relative to it) unless it already finished there."""
    argv = [str(a) for a in argv]
    record = folder / "step.json"
    if record.is_file():
        done = json.loads(record.read_text())
        if done.get("argv") == argv and done.get("returncode") == 0:
            return StepRecord(name, folder, argv, float(done["seconds"]), skipped=True)
    if folder.exists():
        shutil.rmtree(folder)  # an interrupted or different run: its partial outputs must not be reused
    folder.mkdir(parents=True)
    log = folder / log_name
    t0 = time.monotonic()
    with open(log, "w") as fh:
        fh.write("$ " + " ".join(argv) + "\n")
        fh.flush()
        try:
            proc = subprocess.run(argv, cwd=folder, stdout=fh, stderr=subprocess.STDOUT, check=False)
        except OSError as e:
            raise EngineError(f"{name}: could not start {argv[0]} ({e}); log {log}") from e
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
        raise EngineError(
            f"{name}: {argv[0]} exited with status {proc.returncode} after {seconds:.0f} s; last lines of {log}:\n"
            + "\n".join("  " + line for line in tail)
        )
    with atomic_output(record) as tmp:
        tmp.write_text(json.dumps({"argv": argv, "returncode": 0, "seconds": round(seconds, 2)}, indent=1))
    return StepRecord(name, folder, argv, seconds)


# --- particle copies for the engine -------------------------------------------------------------


def even_box(n_px: int, pixel_size_A: float, target_A: float, min_px: int = 24) -> int:
    """Even box edge (px) that samples ``n_px × pixel_size_A`` Å at about ``target_A`` Å/px (never
    finer than the data, never below ``min_px``)."""
    m = int(round(n_px * pixel_size_A / target_A / 2.0)) * 2
    return int(min(n_px, max(min(min_px, n_px), m)))


def write_engine_copy(
    pset: ParticleSet, folder: Path, *, box_px: int | None = None, diameter_A: float | None = None, batch: int = 2048
) -> Path:
    """``folder/particles.star`` (+ one ``.mrcs``) for RELION: the set with its images Fourier-cropped
    to ``box_px`` (same field of view, pixel size ``box × p / box_px``; None = unchanged images,
    only the STAR). Origins are in Å and stay valid; the optics table gets the new pixel size and
    box. A cropped image is renormalised as RELION expects (background outside ``diameter_A``
    at mean 0 and SD 1): cropping removes noise power, so the input's normalisation no longer
    holds. Image paths are absolute. One pixel size per set is required (checked by the caller)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = pset.subset(None)
    n = pset.box_px
    if box_px is not None and box_px != n:
        p = float(pset.pixel_size_A[0])
        new_p = n * p / box_px
        stack = folder / "particles.mrcs"
        images = np.lib.format.open_memmap(
            folder / "particles.tmp.npy", mode="w+", dtype=np.float32, shape=(len(pset), box_px, box_px)
        )
        yy, xx = np.mgrid[:box_px, :box_px] - box_px // 2
        radius_px = (diameter_A if diameter_A is not None else 0.75 * n * p) / (2.0 * new_p)
        background = (yy**2 + xx**2) > min(radius_px, 0.45 * box_px) ** 2
        for rows, imgs in pset.iter_batches(batch):
            small = fourier_resample(torch.from_numpy(imgs), box_px).numpy()
            bg = small[:, background]
            sd = bg.std(axis=1)
            small = (small - bg.mean(axis=1)[:, None, None]) / np.where(sd > 0, sd, 1.0)[:, None, None]
            images[rows] = small
        write_mrcs(stack, images, new_p)
        del images
        (folder / "particles.tmp.npy").unlink()
        # RELION resolves image paths from its working folder, not from the STAR file's
        out.particles["rlnImageName"] = [f"{i + 1}@{stack.absolute()}" for i in range(len(pset))]
        if out.optics is None:
            raise InputError(pset.source, "a RELION 3.0 STAR file reached the engine copy; convert it first")
        out.optics = out.optics.copy()
        out.optics["rlnImagePixelSize"] = new_p
        out.optics["rlnImageSize"] = box_px
        out.root = folder
        return write_star(out, folder / "particles.star", image_paths="keep")
    return write_star(out, folder / "particles.star", image_paths="absolute")


def resample_map_box(path: Path, box_px: int, out: Path) -> Path:
    """``path`` brought to a ``box_px`` cube over the same field of view (3D Fourier crop or pad),
    written to ``out``; ``path`` itself when it already has that box. A search-stage map becomes
    the reference of a run on a finer copy of the particles this way."""
    m = read_map(path)
    n = m.data.shape[0]
    if n == box_px:
        return path
    data = fourier_crop_or_pad(m.data, box_px)
    voxel = tuple(v * n / box_px for v in m.voxel_size)
    write_map(DensityMap(data=data.astype(np.float32), voxel_size=voxel), out)  # type: ignore[arg-type]
    return out


# --- RELION commands -------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    """RELION sampling of one stage (coarse for the searches, full for the final run).

    The initial model samples at HEALPix order ``initial_healpix_order`` (0: 30°, 15° after
    RELION's oversampling), enough for the 35–15 Å an initial model works at, and runs
    ``initial_iterations`` (initial, in-between, final) SGD iterations: RELION's GUI defaults are
    50/200/50, cut fivefold for CPU time (measured: about 7 s per iteration at HEALPix order 1
    on two cores for a 24 px box). Offsets are in pixels of the copy the stage runs on.
    """

    healpix_order: int = 2
    local_healpix_order: int = 4
    initial_healpix_order: int = 0
    offset_range_px: float = 5.0
    offset_step_px: float = 2.0
    initial_iterations: tuple[int, int, int] = (10, 40, 10)
    initial_subsets: tuple[int, int] = (100, 500)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def initial_model_argv(
    star: Path,
    out_prefix: str,
    *,
    diameter_A: float,
    pixel_size_A: float,
    sampling: Sampling,
    cfg: EngineConfig,
    seed: int,
) -> list[str]:
    """De novo initial model by stochastic gradient descent (RELION 3.1 ``--sgd --denovo_3dref``),
    in C1 (symmetry is imposed by the refinement that follows). The serial program gets the
    threads of the refinement's followers (``threads × (mpi − 1)``)."""
    ini, mid, fin = sampling.initial_iterations
    lo, hi = sampling.initial_subsets
    argv: list[object] = [
        *cfg.refine_program(0),
        "--o", f"./{out_prefix}", "--i", str(star), "--sgd", "--denovo_3dref",
        "--sgd_ini_iter", ini, "--sgd_inbetween_iter", mid, "--sgd_fin_iter", fin, "--sgd_write_iter", ini + mid + fin,
        "--sgd_ini_resol", 35, "--sgd_fin_resol", max(15.0, 2.5 * pixel_size_A),
        "--sgd_ini_subset", lo, "--sgd_fin_subset", hi, "--sgd_stepsize", 0.5,
        "--ctf", "--K", 1, "--sym", "C1", "--flatten_solvent", "--zero_mask", "--dont_combine_weights_via_disc",
        "--pool", 3, "--pad", 1, "--skip_gridding", "--particle_diameter", round(diameter_A, 1),
        "--oversampling", 1, "--healpix_order", sampling.initial_healpix_order,
        "--offset_range", sampling.offset_range_px, "--offset_step", sampling.offset_step_px * 2, "--j", cfg.threads * (cfg.mpi - 1), "--random_seed", seed,
    ]  # fmt: skip
    return [str(a) for a in argv]


def refine_argv(
    star: Path,
    reference: Path,
    out_prefix: str,
    *,
    diameter_A: float,
    symmetry: str,
    initial_lowpass_A: float,
    sampling: Sampling,
    cfg: EngineConfig,
    seed: int,
) -> list[str]:
    """3D auto-refine with gold-standard half sets from ``reference`` (low-passed to ``initial_lowpass_A``)."""
    argv: list[object] = [
        *cfg.refine_program(2),
        "--o", f"./{out_prefix}", "--auto_refine", "--split_random_halves", "--i", str(star), "--ref", str(reference),
        "--firstiter_cc", "--ini_high", round(initial_lowpass_A, 1), "--ctf", "--particle_diameter", round(diameter_A, 1),
        "--flatten_solvent", "--zero_mask", "--oversampling", 1, "--healpix_order", sampling.healpix_order,
        "--auto_local_healpix_order", sampling.local_healpix_order, "--offset_range", sampling.offset_range_px,
        "--offset_step", sampling.offset_step_px, "--sym", symmetry, "--low_resol_join_halves", 40, "--norm", "--scale",
        "--dont_combine_weights_via_disc", "--pool", 3, "--pad", 2, "--j", cfg.threads, "--random_seed", seed,
    ]  # fmt: skip
    return [str(a) for a in argv]


def last_iteration_map(folder: Path, prefix: str = "run") -> Path:
    """The last ``{prefix}_itNNN_class001.mrc`` a RELION run in ``folder`` wrote."""
    maps = sorted(folder.glob(f"{prefix}_it*_class001.mrc"))
    if not maps:
        raise EngineError(f"no {prefix}_it*_class001.mrc in {folder}; see {folder / 'engine.log'}")
    return maps[-1]


# --- judging a refinement ----------------------------------------------------------------------


@dataclass
class MapJudgement:
    """A refinement's result as judged by cryostack: masked half-map FSC and cFAR."""

    map_path: Path
    half1: Path
    half2: Path
    data_star: Path
    resolution_A: float | None
    cfar: float | None
    relion_resolution_A: float | None
    fsc_freq_per_A: np.ndarray = field(repr=False)
    fsc: np.ndarray = field(repr=False)
    cfar_note: str = ""
    cfar_result: CFARResult | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {
            "map": str(self.map_path),
            "half1": str(self.half1),
            "half2": str(self.half2),
            "data_star": str(self.data_star),
            "resolution_A": self.resolution_A,
            "cfar": self.cfar,
            "cfar_note": self.cfar_note,
            "relion_resolution_A": self.relion_resolution_A,
        }


def soft_sphere_mask(shape: tuple[int, ...], voxel_size_A: float, diameter_A: float, edge_A: float = 6.0) -> np.ndarray:
    """``(z, y, x)`` float32 mask: 1 inside the sphere of ``diameter_A`` about the box centre, a
    cosine edge ``edge_A`` wide outside it, 0 beyond (RELION's box centre: index ``n // 2``)."""
    axes = [(np.arange(n) - n // 2) * voxel_size_A for n in shape]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    r = np.sqrt(x * x + y * y + z * z)
    r0 = diameter_A / 2.0
    mask = np.where(r <= r0, 1.0, np.where(r >= r0 + edge_A, 0.0, 0.5 + 0.5 * np.cos(np.pi * (r - r0) / edge_A)))
    return mask.astype(np.float32)


def _relion_final_resolution(model_star: Path) -> float | None:
    from cryostack.io.star import read_star_blocks

    try:
        general = read_star_blocks(model_star).get("model_general")
    except Exception:  # noqa: BLE001 - RELION's own number is informative only
        return None
    if general is None or "rlnCurrentResolution" not in general:
        return None
    return float(np.asarray(general["rlnCurrentResolution"]).ravel()[0])


def robust_cfar(
    half1: DensityMap, half2: DensityMap, mask: np.ndarray, fsc_threshold: float = 0.143
) -> tuple[CFARResult | None, str]:
    """cFAR of a map (the result, with the cones used), or None with the reason when it cannot
    be trusted.

    A cone's FSC in a shell of ``n`` Fourier voxels scatters by about ``1/√n``, and cFAR is a
    ratio of extremes over many cones, so noisy cones drag it to 0 (seen: 0.00 and 0.05 for
    uniform-view search maps at 17–24 Å in a 40 px box with 20° cones from 10 voxels). The areas
    here start where every cone holds :data:`MIN_CFAR_CONE_VOXELS` voxels, and the narrowest of
    :data:`CFAR_CONE_ANGLES_DEG` that leaves :data:`MIN_CFAR_SHELLS` shells below the resolution
    is used (wider cones still see a single view: its filled plane lies 90° from the beam).
    """
    reason = ""
    for angle in CFAR_CONE_ANGLES_DEG:
        try:
            c = cfar(
                half1.data, half2.data, half1.voxel_size, mask=mask, fsc_threshold=fsc_threshold,
                cone_half_angle_deg=angle, min_cone_voxels=MIN_CFAR_CONE_VOXELS,
            )  # fmt: skip
        except InputError as e:  # too little signal, or cones too sparse below the resolution
            reason = str(e)
            continue
        low_A, high_A = c.area_band_A
        shells = int(np.count_nonzero((c.freq_per_A >= 1.0 / low_A) & (c.freq_per_A <= 1.0 / high_A)))
        if shells >= MIN_CFAR_SHELLS:
            return c, f"{angle:g}° cones over {low_A:.1f}-{high_A:.1f} Å ({shells} shells)"
        reason = f"{angle:g}° cones span only {shells} shells ({low_A:.1f}-{high_A:.1f} Å)"
    return None, f"not measurable: {reason}"


def judge_half_maps(
    half1: DensityMap, half2: DensityMap, mask: np.ndarray, fsc_threshold: float = 0.143
) -> tuple[np.ndarray, np.ndarray, float | None, CFARResult | None, str]:
    """Masked half-map FSC and cFAR: ``(freq 1/Å, FSC, resolution Å or None, cFAR result or None,
    cFAR note)``."""
    freq, curve = fsc_curve(half1.data * mask, half2.data * mask, half1.voxel_size)
    cf, note = robust_cfar(half1, half2, mask, fsc_threshold)
    return freq, curve, fsc_resolution(freq, curve, fsc_threshold), cf, note


def judge_refinement(
    folder: Path, *, diameter_A: float, prefix: str = "run", fsc_threshold: float = 0.143
) -> MapJudgement:
    """Gold-standard FSC resolution and cFAR of the auto-refine result in ``folder``."""
    half1, half2 = folder / f"{prefix}_half1_class001_unfil.mrc", folder / f"{prefix}_half2_class001_unfil.mrc"
    final = folder / f"{prefix}_class001.mrc"
    for p in (half1, half2, final):
        if not p.is_file():
            raise EngineError(f"the refinement in {folder} did not write {p.name}; see {folder / 'engine.log'}")
    m1, m2 = read_map(half1), read_map(half2)
    mask = soft_sphere_mask(m1.data.shape, m1.voxel_size[0], diameter_A)
    freq, curve, res, result, note = judge_half_maps(m1, m2, mask, fsc_threshold)
    return MapJudgement(
        map_path=final,
        half1=half1,
        half2=half2,
        data_star=folder / f"{prefix}_data.star",
        resolution_A=res,
        cfar=None if result is None else float(result.cfar),
        cfar_note=note,
        cfar_result=result,
        relion_resolution_A=_relion_final_resolution(folder / f"{prefix}_model.star"),
        fsc_freq_per_A=freq,
        fsc=curve,
    )


def write_mask(path: Path, like: DensityMap, diameter_A: float) -> Path:
    """The soft spherical mask used for judging, on ``like``'s grid."""
    mask = soft_sphere_mask(like.data.shape, like.voxel_size[0], diameter_A)
    write_map(DensityMap(data=mask, voxel_size=like.voxel_size, origin=like.origin, nstart=like.nstart), path)
    return path
