"""Half-map cross-validation of ``cryostack refine``: FSC_work / FSC_free / gap in the reports,
refinement against half map 1, ``density=auto`` and the bad-input refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cryostack.density.fsc import fsc_average, fsc_curve, fsc_shell_counts
from cryostack.density.simulate import grid_around_atoms, simulate_model_map
from cryostack.io.maps import DensityMap, write_map
from cryostack.pipeline.refine_crossval import AUTO_DENSITY_WEIGHTS
from cryostack.pipeline.refine_job import refine_files
from cryostack.refine import RefineConfig
from cryostack.validate.mapfit import model_vs_half_maps

RES = 3.2
#: Noise of each half map, in SDs of the noise-free map: enough that a model can fit half 1's
#: noise (a visible gap), little enough that 15 residues are still placed.
HALF_NOISE = 3.0
#: Cheap refinement for tests: one short recycle, no coarse, rigid-body or rotamer stage.
FAST = dict(
    max_recycles=1,
    steps_per_recycle=15,
    coarse_recycles=0,
    rigid_steps=0,
    fit_rotamers=False,
    b_factor_steps=20,
    max_rounds=1,
)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cryostack.cli.main", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def case(tmp_path_factory, spike_piece):
    """15 spike NTD residues; two half maps (the noise-free simulated map plus independent noise),
    the full map as their mean, and a start shifted 0.5 Å with 0.2 Å noise."""
    d = tmp_path_factory.mktemp("refine_halfmaps")
    s = spike_piece(15)
    grid = grid_around_atoms(s.atoms().coords, 1.0, margin_A=6.0)
    clean = simulate_model_map(s, grid, RES, use_b_factors=False)
    rng = np.random.default_rng(0)
    h1, h2 = (clean + rng.normal(0, HALF_NOISE * clean.std(), clean.shape) for _ in range(2))

    def mrc(data, name, voxel=grid.voxel_size):
        return write_map(DensityMap(data=data.astype(np.float32), voxel_size=voxel, origin=grid.origin), d / name)

    paths = {
        "map": mrc((h1 + h2) / 2, "map.mrc"),
        "h1": mrc(h1, "h1.mrc"),
        "h2": mrc(h2, "h2.mrc"),
        "h1_copy": mrc(h1, "h1_copy.mrc"),
        "h2_small": mrc(h2[:-2], "h2_small.mrc"),
        "h2_voxel": mrc(h2, "h2_voxel.mrc", voxel=tuple(v * 1.1 for v in grid.voxel_size)),
    }
    arr = s.atoms()
    noise = np.random.default_rng(1).normal(0, 0.2, arr.coords.shape)
    paths["start"] = s.with_coordinates(arr.coords + np.array([0.5, 0.0, 0.0]) + noise).write(d / "start.cif")
    return d, paths


def _one_line_error(r, *words):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_fsc_average_weights_shells_by_coefficients():
    freq = np.array([0.1, 0.2, 0.3, 0.4])
    fsc = np.array([1.0, 0.5, 0.0, -1.0])
    counts = np.array([1, 3, 6, 10])
    # Up to 1/0.3 Å⁻¹: (1·1 + 3·0.5 + 6·0) / 10; the shell beyond the resolution is left out.
    assert fsc_average(freq, fsc, counts, 1 / 0.3) == pytest.approx(0.25)
    assert fsc_average(freq, fsc, counts, 20.0) is None
    # The counts belong to fsc_curve's shells: same length, and they grow like the shell's area.
    shape, vox = (24, 20, 30), (1.0, 1.0, 1.0)
    f, _ = fsc_curve(np.random.default_rng(0).normal(size=shape), np.ones(shape), vox)
    n = fsc_shell_counts(shape, vox)
    assert n.shape == f.shape and n[10] > n[2] > 0


def test_model_vs_half_maps_on_identical_halves_has_no_gap(case, spike_piece):
    from cryostack.io.maps import read_map

    d, p = case
    h1 = read_map(p["h1"])
    fsc = model_vs_half_maps(spike_piece(15).atoms(), (h1, h1), RES)
    assert fsc["half1_average"] == pytest.approx(fsc["half2_average"]) and abs(fsc["half1_minus_half2"]) < 1e-12
    assert 0.3 < fsc["half1_average"] < 1.0
    assert len(fsc["half1_curve"]["fsc"]) == len(fsc["half1_curve"]["spatial_frequency_per_A"])


def test_cross_validation_refines_against_half1_and_reports_work_free(case):
    d, p = case
    out = d / "cv.cif"
    job = refine_files(
        p["start"], p["map"], RES, out=out, half_maps=(p["h1"], p["h2"]), cross_validate=True,
        config=RefineConfig(**FAST), compute_q=False,
    )  # fmt: skip
    report = json.loads((d / "cv_report.json").read_text())
    cv = report["cross_validation"]
    assert report["refined_against"] == "half_map_1" and cv["refined_against"] == "half_map_1"
    assert cv["free_is_independent"] is True and cv["density_weight_scan"] is None
    assert report["half_maps"] == [str(p["h1"]), str(p["h2"])]
    for when in ("before", "after"):
        assert set(cv[when]) == {"fsc_work_average", "fsc_free_average", "fsc_gap"}
        hv = report[when]["map_model"]["model_vs_half_maps"]
        assert {"half1_average", "half2_average", "half1_minus_half2", "half1_curve", "half2_curve"} <= set(hv)
    a, b = cv["after"], cv["before"]
    assert a["fsc_gap"] == pytest.approx(a["fsc_work_average"] - a["fsc_free_average"])
    # Refined against half 1 only: the free half agrees no better than the work half, and the
    # refinement still improved the fit to the free half (real signal, not only noise, was fitted).
    assert a["fsc_free_average"] <= a["fsc_work_average"] + 0.005
    assert a["fsc_free_average"] > b["fsc_free_average"]
    text = (d / "cv_report.txt").read_text()
    assert text == job.report_text
    for label in ("FSC_work avg", "FSC_free avg", "FSC gap (work − free)", "half map 1, cross-validation"):
        assert label in text
    html = (d / "cv_report.html").read_text()
    assert "Half-map cross-validation" in html and "FSC_free" in html


def test_default_refines_against_full_map_and_says_free_is_not_free(case):
    d, p = case
    refine_files(
        p["start"], p["map"], RES, out=d / "full.cif", half_maps=(p["h1"], p["h2"]),
        config=RefineConfig(**FAST), compute_q=False,
    )  # fmt: skip
    report = json.loads((d / "full_report.json").read_text())
    assert report["refined_against"] == "map"
    cv = report["cross_validation"]
    assert cv["free_is_independent"] is False and cv["after"]["fsc_free_average"] is not None
    assert "FSC_free is not independent" in (d / "full_report.txt").read_text()


def test_density_auto_picks_a_scanned_weight_and_records_the_scan(case):
    d, p = case
    job = refine_files(
        p["start"], p["map"], RES, out=d / "auto.cif", half_maps=(p["h1"], p["h2"]), cross_validate=True,
        config=RefineConfig(**FAST), weights="density=auto,rama=2", compute_q=False,
    )  # fmt: skip
    report = json.loads((d / "auto_report.json").read_text())
    scan = report["cross_validation"]["density_weight_scan"]
    assert scan["candidates"] == list(AUTO_DENSITY_WEIGHTS)
    assert [t["density"] for t in scan["trials"]] == list(AUTO_DENSITY_WEIGHTS)
    assert scan["chosen"] in AUTO_DENSITY_WEIGHTS and report["weights"]["density"] == scan["chosen"]
    assert report["weights"]["rama"] == 2.0
    free = [t["fsc_free_average"] for t in scan["trials"]]
    chosen = scan["trials"][list(AUTO_DENSITY_WEIGHTS).index(scan["chosen"])]
    assert chosen["fsc_free_average"] >= max(free) - scan["tie_tolerance"]
    for t in scan["trials"]:
        assert {"fsc_work_average", "fsc_free_average", "fsc_gap", "wall_s"} <= set(t)
    assert "density=auto" in job.report_text and f"chose {scan['chosen']:g}" in job.report_text


@pytest.mark.parametrize(
    "halves, extra, words",
    [
        (("h1", "h2_small"), (), ("h2_small.mrc", "grid")),
        (("h1", "h2_voxel"), (), ("h2_voxel.mrc", "Å")),
        (("h1", "h1_copy"), (), ("h1_copy.mrc", "identical", "no cross-validation possible")),
        (None, ("--weights", "density=auto"), ("density=auto", "half maps")),
        (None, ("--cross-validate",), ("half maps",)),
        (("h1", "h2"), ("--weights", "rama=auto"), ("only density can be auto",)),
    ],
)
def test_bad_half_map_input_fails_cleanly(case, tmp_path, halves, extra, words):
    d, p = case
    out = tmp_path / "o.cif"
    half = ("--half-maps", str(p[halves[0]]), str(p[halves[1]])) if halves else ()
    r = run("refine", "--model", str(p["start"]), "--map", str(p["map"]), "--resolution", str(RES),
            "--out", str(out), "--no-q-score", *half, *extra)  # fmt: skip
    _one_line_error(r, *words)
    assert not any(Path(tmp_path).iterdir())
