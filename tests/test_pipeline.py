"""``cryostack run``: stages chosen from the inputs, stage records and reuse, resume after Ctrl-C,
refusals (one line, exit 2, nothing written), a failing stage named with its log and the report
still written, and the TOML config printed back."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cryostack.examples import SPIKE_NTD_MAP, SPIKE_NTD_MODEL
from cryostack.io.maps import read_map, write_map
from cryostack.particles.wizard import FINAL_SAMPLING, SEARCH_SAMPLING
from cryostack.pipeline.config import RunConfig, load_config
from cryostack.pipeline.run import RunInputs, plan
from cryostack.report.browser import check_page

MAP, MODEL = str(SPIKE_NTD_MAP), str(SPIKE_NTD_MODEL)
QUICK_TOML = "resolution_A = 3.2\n[refine]\nmax_recycles = 2\nmax_rounds = 1\n[validate]\nq_score = false\n"


def cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cryostack.cli.main", "run", "--no-progress", *map(str, args)],
        capture_output=True, text=True, timeout=900, **kw,
    )  # fmt: skip


def stages(out: Path) -> dict[str, str]:
    return {s["stage"]: s["status"] for s in json.loads((out / "report.json").read_text())["stages"]}


def one_line_error(r: subprocess.CompletedProcess, *words: str, code: int = 2) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
    assert lines and lines[-1].startswith("error:") and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[-1], (w, lines[-1])


def test_plan_follows_the_inputs():
    p = Path("x")
    assert plan(RunInputs(particles=p, model=p)) == [
        "particles",
        "map",
        "enhance",
        "dock",
        "refine",
        "validate",
        "report",
    ]
    assert plan(RunInputs(map=p)) == ["map", "enhance", "report"]
    assert plan(RunInputs(map=p, model=p, sequence=p)) == ["map", "enhance", "refine", "validate", "report"]
    assert plan(RunInputs(map=p, sequence=p)) == ["map", "enhance", "build", "refine", "validate", "report"]
    assert plan(RunInputs(model=p)) == ["validate", "report"]


def test_config_file_is_read_checked_and_overridden(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('resolution_A = 4\n[wizard]\nsymmetry = "C2"\ninitial_sizes = [300, 600]\n[wizard.engine]\nmpi = 5\n')
    cfg, text = load_config(f, resolution_A=3.5)
    assert cfg.resolution_A == 3.5 and cfg.wizard.symmetry == "C2" and cfg.wizard.engine.mpi == 5
    assert cfg.wizard.initial_sizes == (300, 600) and cfg.refine.max_recycles == RunConfig().refine.max_recycles
    f.write_text("[wizard.search]\ninitial_iterations = [4, 12, 4]\n")
    search = load_config(f)[0].wizard.search
    # a partial table changes only what it names: the rest stays the wizard's search sampling
    assert search.initial_iterations == (4, 12, 4)
    assert search.healpix_order == SEARCH_SAMPLING.healpix_order != FINAL_SAMPLING.healpix_order
    assert "symmetry" in text
    f.write_text("[refine]\nmax_recycle = 3\n")
    with pytest.raises(Exception, match="unknown setting 'refine.max_recycle'"):
        load_config(f)
    f.write_text("[validate]\nq_score = 3\n")
    with pytest.raises(Exception, match="true or false"):
        load_config(f)


@pytest.mark.parametrize(
    "args, words",
    [
        (("--particles", MODEL, "--map", MAP), ("particles or a map",)),
        (("--model", MODEL, "--half-maps", MAP, MAP), ("half maps need the full map",)),
        (("--map", MAP, "--model", MODEL), ("needs --resolution",)),
        (("--map", MAP, "--sequence", "SEQ"), ("needs --resolution",)),
        (("--sequence", "SEQ"), ("needs a map",)),
        (("--map", MAP, "--model", MODEL, "--resolution", "3.2", "--sequence", "WRONG"), ("identity",)),
        (
            (
                "--map",
                "missing.mrc",
            ),
            ("no such file",),
        ),
        ((), ("nothing to do",)),
    ],
)
def test_bad_inputs_are_refused_before_anything_is_written(tmp_path, args, words):
    seqs = {"SEQ": tmp_path / "s.fasta", "WRONG": tmp_path / "w.fasta"}
    seqs["SEQ"].write_text(">s\nMKV\n")
    seqs["WRONG"].write_text(">w\n" + "W" * 200 + "\n")
    out = tmp_path / "run"
    r = cli("--out", out, *(str(seqs.get(a, a)) for a in args))
    one_line_error(r, *words)
    assert not out.exists()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A map + model run, interrupted with Ctrl-C during refinement and then rerun to the end."""
    d = tmp_path_factory.mktemp("pipeline")
    toml = d / "quick.toml"
    toml.write_text(QUICK_TOML)
    out = d / "run"
    args = [sys.executable, "-m", "cryostack.cli.main", "run", "--no-progress", "--out", str(out), "--map", MAP,
            "--model", MODEL, "--config", str(toml)]  # fmt: skip
    # What a child would inherit for SIGINT (SIG_IGN if something in this test process ignores it):
    # a user's terminal never ignores Ctrl-C, so the run under test starts with the default.
    probe = "import signal; print(signal.getsignal(signal.SIGINT))"
    inherited = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip()
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    record = out / "03_refine" / "stage.json"
    deadline = time.monotonic() + 300
    seen_running = None  # seconds after start when the refine stage was seen running (for a failure message)
    t0 = time.monotonic()
    while time.monotonic() < deadline and proc.poll() is None:
        if record.is_file() and json.loads(record.read_text())["status"] == "running":
            seen_running = round(time.monotonic() - t0, 1)
            time.sleep(1.0)  # inside the refinement (it takes about 18 s)
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    interrupted = {"code": proc.returncode, "stderr": err, "stages": stages(out), "seen_running_s": seen_running,
                   "inherited_sigint": inherited}  # fmt: skip
    r = cli("--out", out, "--map", MAP, "--model", MODEL, "--config", toml)
    assert r.returncode == 0, r.stderr
    return d, out, toml, interrupted


def test_ctrl_c_exits_130_leaves_a_report_and_the_rerun_continues(finished):
    _, out, _, interrupted = finished
    assert interrupted["code"] == 130, (
        interrupted["seen_running_s"],
        interrupted["inherited_sigint"],
        interrupted["stderr"],
    )
    assert "interrupted" in interrupted["stderr"] and "Traceback" not in interrupted["stderr"]
    assert interrupted["stages"]["map"] == "done" and interrupted["stages"]["refine"] == "running"
    # the rerun reused the map stage and finished the rest
    assert stages(out) == {"map": "reused", "enhance": "skipped", "refine": "done", "validate": "done", "report": "done"}  # fmt: skip
    rec = json.loads((out / "03_refine" / "stage.json").read_text())
    assert rec["status"] == "done" and rec["params"]["max_recycles"] == 2
    assert set(rec["inputs"]) == {"model", "map"} and all(len(v["sha256"]) == 64 for v in rec["inputs"].values())
    assert {"cryostack", "torch", "gemmi"} <= set(rec["versions"]) and rec["wall_s"] > 0
    assert (out / "03_refine" / "model.cif").is_file() and (out / "04_validate" / "validation.json").is_file()


def test_report_of_the_run_renders_with_every_section(finished):
    _, out, _, _ = finished
    check = check_page(out / "report.html")
    assert check.ok, check.errors
    assert check.facts["sections"] == ["stages", "inputs", "map", "refinement", "model"]
    assert check.facts["images"] >= 5  # slices, history, FSC, per-residue, Ramachandran
    data = json.loads((out / "report.json").read_text())
    assert data["parameters"]["refine"]["max_recycles"] == 2
    assert "max_recycles = 2" in (out / "report.html").read_text()  # the config file printed back
    v = data["validation"]["map_model"]
    assert v["cc_mask"] > 0.5


def test_a_rerun_reuses_everything_and_a_changed_setting_reruns_what_depends_on_it(finished):
    d, out, toml, _ = finished
    before = (out / "03_refine" / "model.cif").stat().st_mtime_ns
    r = cli("--out", out, "--map", MAP, "--model", MODEL, "--config", toml)
    assert r.returncode == 0, r.stderr
    assert stages(out) == {"map": "reused", "enhance": "skipped", "refine": "reused", "validate": "reused", "report": "done"}  # fmt: skip
    assert (out / "03_refine" / "model.cif").stat().st_mtime_ns == before
    changed = d / "q.toml"
    changed.write_text(QUICK_TOML.replace("q_score = false", "q_score = true"))
    r = cli("--out", out, "--map", MAP, "--model", MODEL, "--config", changed)
    assert r.returncode == 0, r.stderr
    # the Q-score is a validation setting, and the refinement's own report too
    s = stages(out)
    assert s["map"] == "reused" and s["refine"] == "done" and s["validate"] == "done"
    assert json.loads((out / "04_validate" / "validation.json").read_text())["map_model"]["q_score"] is not None


def test_a_folder_of_another_run_is_refused(finished, tmp_path):
    _, out, toml, _ = finished
    report = (out / "report.html").read_bytes()
    other = tmp_path / "other.pdb"
    other.write_text("REMARK another model\n" + Path(MODEL).read_text())
    r = cli("--out", out, "--map", MAP, "--model", other, "--config", toml)
    one_line_error(r, "holds a run of other inputs")
    assert (out / "report.html").read_bytes() == report


def test_a_failing_stage_is_named_its_log_kept_and_the_report_shows_what_finished(tmp_path):
    m = read_map(SPIKE_NTD_MAP)
    h = tmp_path / "h.mrc"
    write_map(m.with_data(m.data + np.float32(0.01), source=None), h)
    out = tmp_path / "run"
    r = cli("--out", out, "--map", MAP, "--half-maps", h, h)
    one_line_error(r, "stage map failed", "identical to the other half map", "stage.log")
    assert "identical" in (out / "01_map" / "stage.log").read_text()
    assert json.loads((out / "01_map" / "stage.json").read_text())["status"] == "failed"
    assert stages(out)["map"] == "failed"
    check = check_page(out / "report.html")
    assert check.ok and check.facts["sections"][:2] == ["stages", "inputs"]
    assert "stage map failed" in (out / "report.html").read_text()


def test_half_maps_give_the_resolution_and_the_report_its_fsc(tmp_path):
    rng = np.random.default_rng(0)
    m = read_map(SPIKE_NTD_MAP)
    halves = []
    for i in (1, 2):
        noise = rng.normal(0, 0.3 * m.data.std(), m.data.shape).astype(np.float32)
        halves.append(write_map(m.with_data(m.data + noise, source=None), tmp_path / f"h{i}.mrc"))
    out = tmp_path / "run"
    r = cli("--out", out, "--map", MAP, "--half-maps", *halves)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "01_map" / "map_summary.json").read_text())
    assert summary["resolution_A"] is not None and 2.0 < summary["resolution_A"] < 20
    assert summary["fsc"]["mask"].startswith("soft sphere")
    assert stages(out) == {"map": "done", "enhance": "skipped", "report": "done"}


def test_a_map_in_the_enhancers_range_is_enhanced_and_shown_beside_the_experimental_one(tmp_path):
    out = tmp_path / "run"
    r = cli("--out", out, "--map", MAP, "--resolution", "6")
    assert r.returncode == 0, r.stderr
    assert stages(out) == {"map": "done", "enhance": "done", "report": "done"}
    enhanced, given = read_map(out / "02_enhance" / "map_enhanced.mrc"), read_map(MAP)
    assert enhanced.shape == given.shape and enhanced.origin == given.origin and enhanced.voxel_size == given.voxel_size
    assert (out / "02_enhance" / "confidence.mrc").is_file()
    check = check_page(out / "report.html")
    assert check.ok and "enhanced" in check.facts["sections"]
    assert "use the experimental map" in (out / "report.html").read_text()


def test_particles_stage_feeds_dock_refine_and_validate(tmp_path, monkeypatch):
    """The chain after the wizard, with the wizard replaced by a reconstruction in RELION's frame
    (origin 0, turned and mirrored): the wizard itself is tested end to end with RELION in
    test_particles_wizard.py. The dock stage must find the hand and put the map on the model."""
    import torch
    from scipy.spatial.transform import Rotation

    import cryostack.particles.wizard as wizard_module
    from cryostack.density.align import rotate_volumes
    from cryostack.density.simulate import simulate_model_map
    from cryostack.io.maps import DensityMap, GridSpec
    from cryostack.io.models import read_structure
    from cryostack.particles.engine import EngineConfig
    from cryostack.pipeline.run import run_pipeline

    n, v, res = 40, 3.0, 8.0
    st = read_structure(SPIKE_NTD_MODEL)
    c = st.atoms().coords
    grid = GridSpec((n, n, n), (v, v, v), tuple(0.5 * (c.min(axis=0) + c.max(axis=0)) - 0.5 * n * v))
    truth = simulate_model_map(st, grid, res)
    rot = torch.from_numpy(Rotation.random(random_state=2).as_matrix().astype(np.float32))
    turned = np.flip(rotate_volumes(torch.from_numpy(truth), rot[None])[0].numpy(), axis=0)
    rng = np.random.default_rng(0)

    def fake_wizard(particles, out, cfg, *, resume=False, progress=True):
        final = Path(out) / "final"
        final.mkdir(parents=True, exist_ok=True)
        for name, sd in (("map.mrc", 0.0), ("half1.mrc", 0.2), ("half2.mrc", 0.2)):
            data = turned + rng.normal(0, sd * turned.std(), turned.shape)
            write_map(DensityMap(data=data.astype(np.float32), voxel_size=(v, v, v)), final / name)
        write_map(DensityMap(data=np.ones_like(turned), voxel_size=(v, v, v)), final / "mask.mrc")
        summary = {"input": str(particles), "particles": 100, "chosen": 60, "subsets": [],
                   "final": {"resolution_A": res, "cfar": 0.6}, "notes": []}  # fmt: skip
        (final / "log.json").write_text(json.dumps(summary))
        return summary

    monkeypatch.setattr(wizard_module, "run_wizard", fake_wizard)
    monkeypatch.setattr(EngineConfig, "check", lambda self: None)
    star = tmp_path / "particles.star"
    star.write_text("# stands in for a particle file: the wizard is replaced\n")
    cfg, _ = load_config(None)
    cfg = RunConfig(
        resolution_A=res, refine=type(cfg.refine)(max_recycles=1, max_rounds=1), validate=type(cfg.validate)(q_score=False),
        enhance=type(cfg.enhance)(enabled=False),
    )  # fmt: skip
    out = tmp_path / "run"
    report = run_pipeline(out, RunInputs(particles=star, model=Path(MODEL)), cfg, progress=False)
    assert stages(out) == {"particles": "done", "map": "done", "enhance": "skipped", "dock": "done", "refine": "done", "validate": "done", "report": "done"}  # fmt: skip
    dock = json.loads((out / "04_dock" / "stage.json").read_text())
    assert dock["info"]["alignment"]["mirrored"] is True and dock["info"]["alignment"]["cc"] > 0.8
    docked = read_map(out / "04_dock" / "map_docked.mrc")
    assert docked.voxel_size == (v, v, v) and np.allclose(docked.origin, grid.origin, atol=v)
    refine = json.loads((out / "05_refine" / "stage.json").read_text())
    assert refine["inputs"]["map"]["path"].endswith("map_docked.mrc")
    v_cc = json.loads((out / "06_validate" / "validation.json").read_text())["map_model"]["cc_mask"]
    assert v_cc > 0.5  # the model sits in the docked map
    check = check_page(report)
    assert check.ok, check.errors
    assert check.facts["sections"] == ["stages", "inputs", "particles", "map", "refinement", "model"]


def test_map_and_sequence_build_a_model_that_refine_and_validate_use(tmp_path):
    """The build stage (the packaged builder) makes the model; refinement and validation take it."""
    import gemmi

    from cryostack.build.sidechains import sidechains_available

    fasta = tmp_path / "ntd.fa"
    ntd = gemmi.read_structure(MODEL)
    # the first 40 residues keep the refinement short; the map holds the whole NTD
    seq = gemmi.one_letter_code([r.name for r in ntd[0][0]]).upper().replace("X", "")[:40]
    fasta.write_text(f">6VYB_1|Chains A|Spike NTD\n{seq}\n")
    toml = tmp_path / "quick.toml"
    toml.write_text(QUICK_TOML.replace("max_recycles = 2", "max_recycles = 1") + "[enhance]\nenabled = false\n")
    out = tmp_path / "run"
    r = cli("--out", out, "--map", MAP, "--sequence", fasta, "--config", toml)
    assert r.returncode == 0, r.stderr
    st = stages(out)
    assert st["build"] == "done" and st["refine"] == "done" and st["validate"] == "done", st
    built = gemmi.read_structure(str(next(out.glob("*_build/model_built.cif"))))
    assert [c.name for c in built[0]] == ["A"] and len(built[0]["A"]) == len(seq)
    if sidechains_available():
        assert built[0]["A"][0].find_atom("CB", "*") is not None
    refine_rec = json.loads(next(out.glob("*_refine/stage.json")).read_text())
    assert "_build/model_built.cif" in refine_rec["inputs"]["model"]["path"]
    assert (out / "report.html").is_file()
