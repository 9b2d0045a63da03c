"""``particles wizard``: subset logic, engine steps and copies, bad inputs, and one end-to-end run
of the wizard with RELION at minimal sampling on a tiny simulated set (resumed once)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryostack.errors import CryostackError, InputError
from cryostack.io.maps import DensityMap, read_map, write_map
from cryostack.io.particles import read_star
from cryostack.particles.engine import (
    EngineConfig,
    EngineError,
    Sampling,
    even_box,
    resample_map_box,
    run_step,
    soft_sphere_mask,
    write_engine_copy,
)
from cryostack.particles.wizard import WizardConfig, check_symmetry, initial_sizes, rebalance, run_wizard

ROOT = Path(__file__).resolve().parents[1]
NTD = ROOT / "src/cryostack/examples/spike_ntd/6vyb_Ndom.pdb"
needs_relion = pytest.mark.skipif(
    not (shutil.which("relion_refine_mpi") and shutil.which("mpirun")), reason="RELION with MPI is not installed"
)
#: The least sampling RELION accepts: the tests check the plumbing, not the maps.
QUICK = Sampling(
    healpix_order=0, local_healpix_order=1, offset_range_px=2, offset_step_px=2, initial_iterations=(1, 2, 1),
    initial_subsets=(40, 60),
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    """160 simulated spike-NTD particles (25 % junk), 40 px at 3 Å."""
    out = tmp_path_factory.mktemp("tiny") / "sim"
    cmd = [sys.executable, "-m", "cryostack.cli.main", "particles", "simulate", "--model", str(NTD), "--out", str(out)]
    cmd += ["--n", "160", "--box", "40", "--pixel-size", "3.0", "--snr", "0.2", "--junk", "0.25", "--seed", "3"]
    subprocess.run([*cmd, "--no-progress"], check=True, capture_output=True)
    return out / "particles.star"


# --- pure logic ------------------------------------------------------------------------------


def test_initial_sizes_follow_the_paper_on_large_sets_and_scale_down_on_small_ones():
    assert initial_sizes(1_000_000, 200) == (50_000, 100_000)
    assert initial_sizes(200_000, 200) == (50_000, 100_000)
    assert initial_sizes(8_000, 200) == (2_000, 4_000)
    assert initial_sizes(500, 200) == (200, 250)
    assert initial_sizes(150, 200) == (150,)  # never more than there is; duplicates merged


def test_rebalance_caps_a_dominant_cluster_and_keeps_order():
    clusters = np.array([0] * 80 + [1] * 10 + [2] * 10 + [-1] * 5)
    rows = np.random.default_rng(0).permutation(len(clusters))
    kept = rebalance(rows, clusters, factor=2.0)
    counts = np.bincount(clusters[kept][clusters[kept] >= 0])
    assert counts[0] == 20 and counts[1] == 10 and counts[2] == 10  # cap = 2 × median (10)
    assert (clusters[kept] == -1).sum() == 5
    assert np.array_equal(kept, rows[np.isin(rows, kept)])  # best-first order kept


def test_symmetry_strings():
    assert check_symmetry("c1") == "C1" and check_symmetry("D7") == "D7" and check_symmetry("I2") == "I2"
    for bad in ("C0", "X3", "D1", "C", ""):
        with pytest.raises(InputError, match="point group"):
            check_symmetry(bad)


def test_even_box_and_soft_mask():
    assert even_box(256, 1.0, 4.0) == 64
    assert even_box(64, 2.0, 1.0) == 64  # never finer than the data
    assert even_box(40, 3.0, 10.0, min_px=24) == 24
    m = soft_sphere_mask((32, 32, 32), 2.0, 40.0, edge_A=6.0)
    assert m[16, 16, 16] == 1.0 and m[16, 16, 16 + 10] == 1.0  # 20 Å from the centre: inside
    assert m[16, 16, 16 + 13] == 0.0 and 0.0 < m[16, 16, 16 + 11] < 1.0


def test_resample_map_box_keeps_the_field_of_view(tmp_path):
    n, p = 32, 4.0
    z, y, x = (np.mgrid[:n, :n, :n] - n // 2) * p
    blob = np.exp(-((x - 12.0) ** 2 + y**2 + z**2) / (2 * 10.0**2)).astype(np.float32)
    write_map(DensityMap(data=blob, voxel_size=(p, p, p)), tmp_path / "a.mrc")
    out = read_map(resample_map_box(tmp_path / "a.mrc", 64, tmp_path / "b.mrc"))
    assert out.data.shape == (64, 64, 64) and out.voxel_size == pytest.approx((2.0, 2.0, 2.0))
    peak = np.unravel_index(np.argmax(out.data), out.data.shape)
    assert (peak[2] - 32) * 2.0 == pytest.approx(12.0, abs=2.0)  # the blob stays 12 Å off centre
    assert out.data.max() == pytest.approx(blob.max(), rel=0.05)  # values, not sums, are kept
    assert resample_map_box(tmp_path / "a.mrc", 32, tmp_path / "c.mrc") == tmp_path / "a.mrc"


# --- engine steps and copies -------------------------------------------------------------------


def test_run_step_skips_a_finished_step_reruns_a_changed_one_and_reports_failures(tmp_path):
    folder = tmp_path / "step"
    first = run_step("echo", folder, ["sh", "-c", "echo hello > out.txt"])
    assert not first.skipped and (folder / "out.txt").read_text() == "hello\n"
    assert run_step("echo", folder, ["sh", "-c", "echo hello > out.txt"]).skipped
    (folder / "stale").write_text("x")
    run_step("echo", folder, ["sh", "-c", "echo again > out.txt"])  # another command: a fresh folder
    assert not (folder / "stale").exists() and (folder / "out.txt").read_text() == "again\n"
    with pytest.raises(EngineError, match=r"exited with status 3[\s\S]*line 2 of the log"):
        run_step("fail", tmp_path / "bad", ["sh", "-c", "echo line 1; echo line 2 of the log; exit 3"])
    assert not (tmp_path / "bad" / "step.json").exists()  # a failed step is not recorded as done
    assert "line 2 of the log" in (tmp_path / "bad" / "engine.log").read_text()


def test_engine_copy_downsamples_renormalises_and_uses_absolute_paths(tiny_set, tmp_path):
    pset = read_star(tiny_set)
    star = write_engine_copy(pset, tmp_path / "copy", box_px=24, diameter_A=90.0)
    copy = read_star(star)
    assert copy.box_px == 24 and copy.pixel_size_A[0] == pytest.approx(40 * 3.0 / 24)
    assert all(Path(n.split("@")[1]).is_absolute() for n in copy.particles["rlnImageName"])
    assert np.allclose(copy.column("rlnOriginXAngst"), pset.column("rlnOriginXAngst"))  # Å: unchanged
    images = copy.images()
    yy, xx = np.mgrid[:24, :24] - 12
    bg = images[:, (yy**2 + xx**2) > (45.0 / 5.0) ** 2]  # outside the 90 Å diameter at 5 Å/px
    assert abs(float(bg.mean())) < 0.05 and float(bg.std(axis=1).mean()) == pytest.approx(1.0, abs=0.05)
    with mrcfile.open(tmp_path / "copy" / "particles.mrcs", permissive=True) as m:
        assert float(m.voxel_size.x) == pytest.approx(5.0)
    same = read_star(write_engine_copy(pset, tmp_path / "same"))  # no resampling: only the STAR
    assert same.box_px == 40 and np.allclose(same.images(np.arange(3)), pset.images(np.arange(3)))


# --- bad input ---------------------------------------------------------------------------------


def test_bad_inputs_are_refused_before_any_engine_work(tiny_set, tmp_path, monkeypatch):
    with pytest.raises(InputError, match="point group"):
        run_wizard(tiny_set, tmp_path / "a", WizardConfig(symmetry="Q5"), progress=False)
    with pytest.raises(InputError, match="no such particle file"):
        run_wizard(tmp_path / "missing.star", tmp_path / "b", progress=False)
    with pytest.raises(InputError, match="mpi must be at least 3"):
        run_wizard(tiny_set, tmp_path / "c", WizardConfig(engine=EngineConfig(mpi=2)), progress=False)
    with monkeypatch.context() as m:
        m.setenv("PATH", str(tmp_path / "nothing-here"))
        with pytest.raises(InputError, match="RELION is not installed"):
            run_wizard(tiny_set, tmp_path / "d", progress=False)
    if shutil.which("relion_refine_mpi") and shutil.which("mpirun"):
        with pytest.raises(InputError, match="must be positive and fit the 120.0 Å box"):
            run_wizard(tiny_set, tmp_path / "e", WizardConfig(mask_diameter_A=150.0), progress=False)
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "x").write_text("mine")
        with pytest.raises(InputError, match="not empty"):
            run_wizard(tiny_set, tmp_path / "full", progress=False)
    assert not any((tmp_path / n).exists() for n in "abcde")


def test_relative_paths_reach_relion_as_absolute_ones(tiny_set, tmp_path, monkeypatch):
    """RELION runs inside each step's folder: a relative --out once sent it looking for
    ``out/…/particles.star`` from there, and every reconstruction failed."""
    import cryostack.particles.wizard as wizard_module
    from cryostack.particles.engine import EngineError

    seen: list[list[str]] = []

    def record(name, folder, argv, **kw):
        seen.append([str(a) for a in argv])
        raise EngineError("stopped by the test")

    monkeypatch.setattr(wizard_module, "run_step", record)
    monkeypatch.setattr(EngineConfig, "check", lambda self: None)
    monkeypatch.chdir(tmp_path)
    rel = Path("particles.star")
    rel.symlink_to(tiny_set)
    with pytest.raises(CryostackError):
        run_wizard(rel, Path("out"), progress=False)
    inputs = [argv[argv.index("--i") + 1] for argv in seen if "--i" in argv]
    assert inputs and all(Path(p).is_absolute() for p in inputs)


# --- end to end --------------------------------------------------------------------------------


@needs_relion
def test_wizard_end_to_end_with_relion_then_resume(tiny_set, tmp_path, monkeypatch):
    """The whole wizard on 160 particles. The tiny maps are too coarse for a cFAR, so stage 2 is
    told its maps scored 0.0 (the physics of cFAR is tested in test_cfar.py): the rescue runs."""
    from cryostack.particles import wizard as wizard_mod

    real = wizard_mod.judge_refinement

    def judged(folder, **kw):
        j = real(folder, **kw)
        if "initial" in folder.parts:
            j.cfar = 0.0
        return j

    monkeypatch.setattr(wizard_mod, "judge_refinement", judged)
    cfg = WizardConfig(
        mask_diameter_A=90.0, initial_sizes=(80,), n_parts=2, min_subset=40, clusters=2, search=QUICK, final=QUICK,
        search_pixel_A=5.0, search_min_box_px=24,
    )  # fmt: skip
    out = tmp_path / "wiz"
    summary = run_wizard(tiny_set, out, cfg, progress=False)
    final = out / "final"
    for name in ("map.mrc", "half1.mrc", "half2.mrc", "mask.mrc", "fsc.json", "cfar.json"):
        assert (final / name).is_file(), name
    for name in ("particles.star", "log.json", "subsets.tsv", "subsets.png"):
        assert (final / name).is_file(), name
    log = json.loads((final / "log.json").read_text())
    stages = {s["stage"] for s in log["subsets"]}
    assert {"initial", "rescue", "final_search", "final"} <= stages
    assert any("preferred-orientation rescue" in n for n in log["notes"])
    for s in log["subsets"]:
        assert s["commands"] and all("relion_refine" in c for c in s["commands"])
        assert s["resolution_A"] is None or 6.0 < s["resolution_A"] < 200.0
        assert s["cfar"] is None or 0.0 <= s["cfar"] <= 1.0
    chosen = read_star(final / "particles.star")
    assert len(chosen) == summary["chosen"] > 0 and "rlnCryostackScore" in chosen.particles
    m = read_map(final / "map.mrc")
    assert m.data.shape == (40, 40, 40) and m.voxel_size[0] == pytest.approx(3.0)  # full box for the final run
    assert (out / "final" / "refine" / "refine" / "engine.log").is_file()  # RELION's own log is kept

    # a restart skips every finished engine run and reaches the same answer
    again = run_wizard(tiny_set, out, cfg, resume=True, progress=False)
    assert again["engine_seconds"] == pytest.approx(summary["engine_seconds"])
    assert again["final"]["resolution_A"] == summary["final"]["resolution_A"]
    with pytest.raises(InputError, match="pass --resume"):
        run_wizard(tiny_set, out, cfg, progress=False)
    other = tmp_path / "other.star"
    pset = read_star(tiny_set)
    from cryostack.io.particles import write_star

    write_star(pset.subset(np.arange(100)), other)
    with pytest.raises(InputError, match="another input"):
        run_wizard(other, out, cfg, resume=True, progress=False)


def test_cli_refuses_bad_input_with_one_line_and_exit_2(tiny_set, tmp_path):
    cmd = [sys.executable, "-m", "cryostack.cli.main", "particles", "wizard", "--particles", str(tiny_set)]
    r = subprocess.run([*cmd, "--out", str(tmp_path / "w"), "--symmetry", "Q5"], capture_output=True, text=True)
    assert r.returncode == 2 and "point group" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([*cmd, "--out", str(tmp_path / "w"), "--engine", "cryosparc"], capture_output=True, text=True)
    assert r.returncode == 2 and "not available" in r.stderr
    assert not (tmp_path / "w").exists()


def test_rank_stage_reads_cs_input_and_keeps_features(tiny_set, tmp_path):
    from cryostack.io.particles import read_particles, write_cs
    from cryostack.particles.wizard import Wizard

    cs = write_cs(read_star(tiny_set), tmp_path / "in" / "particles.cs")
    pset = read_particles(cs)
    wiz = Wizard(cs, tmp_path / "out", WizardConfig(), False, pset, 90.0)
    scores, feats = wiz.rank(pset)
    assert scores.shape == (160,) and feats.shape[0] == 160 and np.isfinite(feats).all()
    assert ((scores >= 0) & (scores <= 1)).all()
    assert (tmp_path / "out" / "rank" / "ranked.star").is_file()
    again, _ = wiz.rank(pset)  # a resumed run reads the ranking back instead of ranking again
    assert np.allclose(again, scores, atol=1e-6)


def test_robust_cfar_separates_uniform_from_single_view_and_declines_noisy_coarse_maps():
    """Half maps reconstructed from projections (test_cfar's helpers, 64³ at 2 Å): the wizard's
    judgement must tell uniform views from a single view, and say "not measurable" rather than
    guess on a map whose cones hold only a few noisy voxels below its resolution."""
    from cryostack.particles.engine import robust_cfar
    from test_cfar import SINGLE_VIEW_DEG, VOXEL_A, _half_maps

    rng = np.random.default_rng(5)
    n = 800
    psi = rng.uniform(-180, 180, n)
    uni = _half_maps(rng.uniform(-180, 180, n), np.degrees(np.arccos(rng.uniform(-1, 1, n))), psi, seed=6)
    one = _half_maps(SINGLE_VIEW_DEG[0] + rng.normal(0, 2, n), SINGLE_VIEW_DEG[1] + rng.normal(0, 2, n), psi, seed=7)
    mask = soft_sphere_mask(uni[0].shape, VOXEL_A, 100.0)

    def judged(pair):
        result, note = robust_cfar(*(DensityMap(data=h, voxel_size=(VOXEL_A,) * 3) for h in pair), mask)
        return (None if result is None else result.cfar), note

    u, note_u = judged(uni)
    s, note_s = judged(one)
    assert u is not None and u > 0.5, note_u
    assert s is not None and s < 0.15, note_s
    # the same maps Fourier-cropped to a 16 px box (8 Å/px, Nyquist 16 Å): too few shells for any cone
    crop = slice(32 - 8, 32 + 8)

    def small(h):
        f = np.fft.fftshift(np.fft.fftn(h))[crop, crop, crop]
        return np.fft.ifftn(np.fft.ifftshift(f)).real.astype(np.float32) / 64.0

    coarse = tuple(DensityMap(data=small(h), voxel_size=(8.0,) * 3) for h in uni)
    c, note_c = robust_cfar(*coarse, soft_sphere_mask((16, 16, 16), 8.0, 100.0))
    assert c is None and "not measurable" in note_c
