"""``cryostack validate`` end to end: report, JSON keys, plots, and clear errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from cryostack.examples import SPIKE_NTD_MAP, SPIKE_NTD_MODEL
from cryostack.io.maps import read_map, write_map
from cryostack.io.models import read_structure


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "cryostack.cli.main", "validate", *args], capture_output=True, text=True, timeout=600
    )


def test_validate_map_and_model_writes_report_json_plots(tmp_path):
    out = tmp_path / "v.json"
    r = run(
        "--model",
        str(SPIKE_NTD_MODEL),
        "--map",
        str(SPIKE_NTD_MAP),
        "--resolution",
        "3.2",
        "--json",
        str(out),
        "--plots",
        str(tmp_path / "plots"),
    )
    assert r.returncode == 0, r.stderr
    assert "CC_mask" in r.stdout and "Ramachandran" in r.stdout and "all-atom" in r.stdout
    assert "heavy atoms only" in r.stdout
    d = json.loads(out.read_text())
    for key in ("cc_mask", "cc_box", "cc_volume", "cc_peaks", "cc_mc", "cc_sc", "fsc05_resolution", "q_score"):
        assert isinstance(d["map_model"][key], float), key
    g = d["geometry"]
    for key in ("bond_rmsd", "angle_rmsd", "cbeta_deviations", "clashscore", "clashscore_heavy_atom"):
        assert key in g, key
    for section in ("ramachandran", "rotamer"):
        assert {"favored_pct", "allowed_pct", "outlier_pct", "outliers"} <= set(g[section])
    assert {p.name for p in (tmp_path / "plots").iterdir()} >= {"fsc.png", "per_residue.png", "ramachandran.png"}


def test_model_outside_map_is_a_clear_error(tmp_path):
    st = read_structure(SPIKE_NTD_MODEL)
    far = st.with_coordinates(st.atoms().coords + np.array([500.0, 0.0, 0.0]))
    path = far.write(tmp_path / "far.cif")
    out = tmp_path / "v.json"
    r = run("--model", str(path), "--map", str(SPIKE_NTD_MAP), "--resolution", "3.2", "--json", str(out))
    assert r.returncode == 2 and "outside the map" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()


def test_map_without_resolution_is_a_clear_error():
    r = run("--model", str(SPIKE_NTD_MODEL), "--map", str(SPIKE_NTD_MAP))
    assert r.returncode == 2 and "resolution" in r.stderr and "Traceback" not in r.stderr


def test_unknown_residue_is_reported(tmp_path):
    st = read_structure(SPIKE_NTD_MODEL).gemmi.clone()
    st[0]["A"][3].name = "ZZQ"
    path = tmp_path / "odd.pdb"
    st.write_pdb(str(path))
    r = run("--model", str(path))
    assert r.returncode == 0, r.stderr
    assert "ZZQ" in r.stdout and "no monomer-library entry" in r.stdout


def test_validate_against_reference(tmp_path):
    st = read_structure(SPIKE_NTD_MODEL)
    noisy = st.with_coordinates(st.atoms().coords + np.random.default_rng(0).normal(0, 0.8, (st.n_atoms, 3)))
    path = noisy.write(tmp_path / "noisy.cif")
    out = tmp_path / "r.json"
    r = run("--model", str(path), "--reference", str(SPIKE_NTD_MODEL), "--json", str(out))
    assert r.returncode == 0, r.stderr
    ref = json.loads(out.read_text())["reference"]
    assert 0.8 < ref["tm_score"] < 1.0 and 0.5 < ref["lddt"] < 0.95 and ref["coverage_3a"] > 0.95
    assert ref["dockq"] is None  # single chain


def _one_line_error(r, *words):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


def test_bad_outputs_are_refused_before_any_work(tmp_path):
    existing = tmp_path / "plots.png"
    existing.write_bytes(b"not a folder")
    r = run(
        "--model", str(SPIKE_NTD_MODEL), "--map", str(SPIKE_NTD_MAP), "--resolution", "3.2", "--plots", str(existing)
    )
    _one_line_error(r, "--plots", "existing file")
    assert r.stdout == "" and existing.read_bytes() == b"not a folder"
    r = run("--model", str(SPIKE_NTD_MODEL), "--json", str(tmp_path))
    _one_line_error(r, "folder")
    r = run("--model", str(SPIKE_NTD_MODEL), "--json", str(SPIKE_NTD_MODEL))
    _one_line_error(r, "overwrite an input")


def test_mismatched_reference_and_half_maps_are_clear_errors(tmp_path):
    other = Path(__file__).parent / "data" / "validate_rama" / "promod3_backbones.pdb"  # unrelated chains
    r = run("--model", str(SPIKE_NTD_MODEL), "--reference", str(other))
    _one_line_error(r, "share no aligned residues")
    small = tmp_path / "half.mrc"
    dmap = read_map(SPIKE_NTD_MAP)
    write_map(dmap.with_data(dmap.data[:-2], source=None), small)
    r = run(
        "--model",
        str(SPIKE_NTD_MODEL),
        "--map",
        str(SPIKE_NTD_MAP),
        "--resolution",
        "3.2",
        "--half-maps",
        str(small),
        str(SPIKE_NTD_MAP),
    )
    _one_line_error(r, "half map grid")


def test_usage_error_has_no_traceback():
    r = run("--map", str(SPIKE_NTD_MAP))
    assert r.returncode == 2 and "Missing option" in r.stderr and "Traceback" not in r.stderr
