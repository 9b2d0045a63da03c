"""The command line: info, simulate-map, demo, and one-line errors with exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cryostack.examples import SPIKE_NTD_MAP, SPIKE_NTD_MODEL
from cryostack.io.maps import read_map


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cryostack.cli.main", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_info_map_and_model():
    r = run("info", str(SPIKE_NTD_MAP))
    assert r.returncode == 0, r.stderr
    assert "voxel_size_A" in r.stdout and "1.05" in r.stdout and "ORIGIN field" in r.stdout
    r = run("info", str(SPIKE_NTD_MODEL), "--json", "-")
    assert r.returncode == 0, r.stderr
    import json

    summary = json.loads(r.stdout)
    assert summary["chains"] == 1 and summary["residues"] == 201
    assert summary["chain_details"][0]["sequence"].startswith("AYTNSFTRGVYYPDKVFRSS")


def test_simulate_map_like_keeps_grid(tmp_path):
    out = tmp_path / "sim.mrc"
    r = run(
        "simulate-map",
        "--model",
        str(SPIKE_NTD_MODEL),
        "--resolution",
        "3.2",
        "--like",
        str(SPIKE_NTD_MAP),
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    sim, ref = read_map(out), read_map(SPIKE_NTD_MAP)
    assert sim.shape == ref.shape and sim.voxel_size == ref.voxel_size
    assert np.allclose(sim.origin, ref.origin) and sim.axis_order == ref.axis_order
    assert np.corrcoef(sim.data.ravel(), ref.data.ravel())[0, 1] > 0.4


def test_simulate_map_voxel_size_box(tmp_path):
    out = tmp_path / "sim.mrc.gz"
    r = run(
        "simulate-map", "--model", str(SPIKE_NTD_MODEL), "--resolution", "6", "--voxel-size", "2.0", "--out", str(out)
    )
    assert r.returncode == 0, r.stderr
    m = read_map(out)
    assert m.voxel_size == (2.0, 2.0, 2.0)
    # The box is placed in Å: the model's atoms fall inside it.
    from cryostack.io.models import read_structure

    idx = m.angstrom_to_voxel(read_structure(SPIKE_NTD_MODEL).atoms().coords)
    assert np.all(idx >= 0) and np.all(idx <= np.array(m.shape) - 1)


def _assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda p: None, "file not found"),
        (lambda p: p.write_bytes(b"\x00" * 100), "truncated"),
        (lambda p: p.write_bytes(SPIKE_NTD_MAP.read_bytes()[:-4000]), "bytes"),
        (lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000)), ""),
    ],
    ids=["missing", "short-header", "truncated-data", "garbage"],
)
def test_bad_map_one_line_exit_2_no_output(tmp_path, make, problem):
    bad = tmp_path / "bad.mrc"
    make(bad)
    out = tmp_path / "out.mrc"
    r = run("simulate-map", "--model", str(SPIKE_NTD_MODEL), "--resolution", "3", "--like", str(bad), "--out", str(out))
    _assert_one_line_error(r, str(bad), problem)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == (["bad.mrc"] if bad.exists() else [])


@pytest.mark.parametrize(
    "content, problem",
    [("this is not a structure file\n", "bad.pdb"), ("HEADER    EMPTY\nEND\n", "no atoms")],
    ids=["unparsable", "empty"],
)
def test_bad_model_one_line_exit_2_no_output(tmp_path, content, problem):
    bad = tmp_path / "bad.pdb"
    bad.write_text(content)
    out = tmp_path / "out.mrc"
    r = run("simulate-map", "--model", str(bad), "--resolution", "3", "--voxel-size", "1", "--out", str(out))
    _assert_one_line_error(r, str(bad), problem)
    assert not out.exists()


def test_info_unknown_type(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    _assert_one_line_error(run("info", str(f)), str(f), "unknown file type")


def test_refuses_to_overwrite_input(tmp_path):
    target = tmp_path / "map.mrc"
    target.write_bytes(SPIKE_NTD_MAP.read_bytes())
    before = target.read_bytes()
    r = run(
        "simulate-map",
        "--model",
        str(SPIKE_NTD_MODEL),
        "--resolution",
        "3",
        "--like",
        str(target),
        "--out",
        str(target),
    )
    _assert_one_line_error(r, "overwrite")
    assert target.read_bytes() == before


def test_absurd_resolution(tmp_path):
    out = tmp_path / "o.mrc"
    r = run(
        "simulate-map", "--model", str(SPIKE_NTD_MODEL), "--resolution", "-3", "--voxel-size", "1", "--out", str(out)
    )
    _assert_one_line_error(r, "resolution")
    assert not out.exists()


def test_demo_runs(tmp_path):
    r = run("demo", "--out", str(tmp_path / "demo"))
    assert r.returncode == 0, r.stderr
    import json

    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    # The deposited model fits its map, and a 2 Å displacement fits clearly worse.
    assert report["cc_near_atoms"] > 0.4
    assert report["cc_near_atoms_shifted_2A"] < report["cc_near_atoms"] - 0.1
    assert (tmp_path / "demo" / "model_map.mrc").exists() and (tmp_path / "demo" / "model.cif").exists()
