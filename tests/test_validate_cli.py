"""``cryostack validate`` end to end: report, JSON keys, plots, and clear errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from cryostack.examples import SPIKE_NTD_MAP, SPIKE_NTD_MODEL
from cryostack.io.models import read_structure


def run(*args):
    return subprocess.run([sys.executable, "-m", "cryostack.cli.main", "validate", *args],
                          capture_output=True, text=True, timeout=600)


def test_validate_map_and_model_writes_report_json_plots(tmp_path):
    out = tmp_path / "v.json"
    r = run("--model", str(SPIKE_NTD_MODEL), "--map", str(SPIKE_NTD_MAP), "--resolution", "3.2",
            "--json", str(out), "--plots", str(tmp_path / "plots"))
    assert r.returncode == 0, r.stderr
    assert "CC_mask" in r.stdout and "Ramachandran" in r.stdout and "heavy-atom" in r.stdout
    d = json.loads(out.read_text())
    for key in ("cc_mask", "cc_box", "cc_volume", "cc_peaks", "cc_mc", "cc_sc", "fsc05_resolution", "q_score"):
        assert isinstance(d["map_model"][key], float), key
    g = d["geometry"]
    for key in ("bond_rmsd", "angle_rmsd", "cbeta_deviations", "clashscore"):
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
