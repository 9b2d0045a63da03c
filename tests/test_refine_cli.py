"""``cryostack refine``: outputs (mmCIF, text and JSON report) and one-line errors with no output."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from cryostack.density.simulate import grid_around_atoms, simulate_model_map
from cryostack.examples import SPIKE_NTD_MODEL
from cryostack.io.maps import DensityMap, write_map
from cryostack.io.models import Structure, read_structure

RES = 3.2


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cryostack.cli.main", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A 20-residue fragment of the spike NTD plus one water, its simulated map, and a shifted start."""
    d = tmp_path_factory.mktemp("refine_cli")
    st = read_structure(SPIKE_NTD_MODEL).gemmi.clone()
    chain = st[0][0]
    for i in reversed(range(20, len(chain))):
        del chain[i]
    for ch in list(st[0])[1:]:
        st[0].remove_chain(ch.name)
    # A water near the fragment: must come out exactly where it went in.
    ca = chain[10]["CA"][0].pos
    wat = st[0].add_chain(__import__("gemmi").Chain("W"))
    import gemmi

    res = gemmi.Residue()
    res.name, res.seqid = "HOH", gemmi.SeqId("1")
    res.entity_type = gemmi.EntityType.Water
    atom = gemmi.Atom()
    atom.name, atom.element, atom.pos, atom.occ, atom.b_iso = (
        "O",
        gemmi.Element("O"),
        gemmi.Position(ca.x + 6, ca.y, ca.z),
        1.0,
        30.0,
    )
    res.add_atom(atom)
    wat.add_residue(res)
    s = Structure(st)
    grid = grid_around_atoms(s.atoms().coords, 1.0, margin_A=8.0)
    dmap = DensityMap(
        data=simulate_model_map(s, grid, RES, use_b_factors=False), voxel_size=grid.voxel_size, origin=grid.origin
    )
    map_path = write_map(dmap, d / "map.mrc")
    arr = s.atoms()
    shifted = arr.coords + arr.is_polymer[:, None] * np.array([0.6, 0.0, 0.0], dtype=np.float32)
    model_path = s.with_coordinates(shifted).write(d / "start.cif")
    return d, model_path, map_path, s


def _one_line_error(r, *words):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_refine_writes_model_and_reports(case):
    d, model_path, map_path, truth = case
    out = d / "refined.cif"
    r = run(
        "refine",
        "--model",
        str(model_path),
        "--map",
        str(map_path),
        "--resolution",
        str(RES),
        "--out",
        str(out),
        "--max-recycles",
        "2",
        "--max-rounds",
        "2",
        "--no-q-score",
        "--seed",
        "3",
    )
    assert r.returncode == 0, r.stderr
    assert "rounds: " in r.stdout and "Cα RMS shift per round" in r.stdout
    assert "CC_mask" in r.stdout and "bond RMSD" in r.stdout
    refined = read_structure(out)
    start = read_structure(model_path)
    a, b = refined.atoms(), start.atoms()
    assert a.atom_names == b.atom_names and a.chain_ids == b.chain_ids
    assert np.array_equal(a.residue_numbers, b.residue_numbers)
    water = np.asarray(a.residue_names)[a.residue_index] == "HOH"
    assert water.sum() == 1 and np.allclose(a.coords[water], b.coords[water], atol=1e-3)
    assert not np.allclose(a.coords[~water], b.coords[~water])
    report = json.loads((d / "refined_report.json").read_text())
    assert report["after"]["map_model"]["cc_mask"] > report["before"]["map_model"]["cc_mask"]
    assert len(report["refinement"]["history"]) >= 2
    rounds = report["refinement"]["rounds"]
    assert 1 <= len(rounds) <= 2 and rounds[0]["ca_shift_rms_A"] > 0
    assert report["refinement"]["converged"] == (rounds[-1]["ca_shift_rms_A"] < 0.05 * RES)
    assert (d / "refined_report.txt").read_text().startswith("cryostack refine")
    from cryostack.report.browser import check_page

    page = check_page(d / "refined_report.html")
    assert page.ok, page.errors
    assert page.facts["sections"] == ["inputs", "refinement", "map", "model"]
    assert "Convergence" in (d / "refined_report.html").read_text()


@pytest.mark.parametrize(
    "args, words",
    [
        ((), ("resolution",)),
        (("--resolution", "0.01"), ("sensible range",)),
        (("--resolution", "3.2", "--method", "nonsense"), ("method",)),
        (("--resolution", "3.2", "--weights", "bogus=3"), ("weights",)),
    ],
)
def test_bad_options_fail_cleanly(case, args, words, tmp_path):
    d, model_path, map_path, _ = case
    out = tmp_path / "o.cif"
    r = run("refine", "--model", str(model_path), "--map", str(map_path), "--out", str(out), *args)
    _one_line_error(r, *words)
    assert not any(tmp_path.iterdir())


def test_model_outside_map_fails_cleanly(case, tmp_path):
    d, model_path, map_path, truth = case
    far = truth.with_coordinates(truth.atoms().coords + np.array([400.0, 0, 0], dtype=np.float32))
    far_path = far.write(tmp_path / "far.cif")
    out = tmp_path / "o.cif"
    r = run("refine", "--model", str(far_path), "--map", str(map_path), "--resolution", "3.2", "--out", str(out))
    _one_line_error(r, "far.cif", "outside the map")
    assert not out.exists()


def test_unknown_residue_fails_cleanly(case, tmp_path):
    d, model_path, map_path, truth = case
    st = truth.gemmi.clone()
    st[0][0][5].name = "ZZQ"
    bad = Structure(st).write(tmp_path / "unknown.cif")
    out = tmp_path / "o.cif"
    r = run("refine", "--model", str(bad), "--map", str(map_path), "--resolution", "3.2", "--out", str(out))
    _one_line_error(r, "unknown.cif", "ZZQ")
    assert not out.exists()
