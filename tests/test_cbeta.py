"""Cβ deviation: ideal-Cβ construction, residue selection, altlocs, D-amino acids, and
agreement with MolProbity's cbetadev (cctbx) on real structures."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import gemmi
import numpy as np
import pytest

from cryostack.chem.cbeta import ideal_cbeta, ideal_geometry, place_atom
from cryostack.io.models import read_structure
from cryostack.validate.cbeta import OUTLIER_MIN_A, CbetaResult, cbeta_deviations

DATA = Path(__file__).parent / "data" / "validate_rama"
BACKBONES = DATA / "promod3_backbones.pdb"
MIXED = DATA / "mixed_break_ligand_na.pdb"

_spec = importlib.util.spec_from_file_location("validate_rama_helpers", DATA / "helpers.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)


def _xyz(atom: gemmi.Atom) -> np.ndarray:
    return np.array([atom.pos.x, atom.pos.y, atom.pos.z])


def _key(rec) -> tuple[str, int, str, str]:
    return (rec.chain, rec.number, rec.icode, rec.altloc)


# -- construction ---------------------------------------------------------------------------------
def test_place_atom_geometry():
    a, b, c = np.array([1.2, -0.3, 0.4]), np.array([0.0, 0.1, 0.0]), np.array([0.2, 1.6, 0.3])
    for bond, angle, dihedral in [(1.53, 110.1, 122.8), (1.0, 95.0, -60.0), (2.0, 150.0, 179.0)]:
        d = place_atom(a, b, c, bond, angle, dihedral)
        pa, pb, pc, pd = (gemmi.Position(*p) for p in (a, b, c, d))
        assert pc.dist(pd) == pytest.approx(bond, abs=1e-9)
        assert math.degrees(gemmi.calculate_angle(pb, pc, pd)) == pytest.approx(angle, abs=1e-7)
        assert math.degrees(gemmi.calculate_dihedral(pa, pb, pc, pd)) == pytest.approx(dihedral, abs=1e-7)
    assert np.isnan(place_atom(a, b, b + (b - a), 1.5, 110.0, 120.0)).all()  # collinear: undefined


def test_ideal_geometry_by_residue():
    assert ideal_geometry("ALA").ca_cb_A == 1.536
    assert ideal_geometry("PRO").n_ca_cb_deg == 103.0
    assert ideal_geometry("ILE") == ideal_geometry("THR") == ideal_geometry("VAL")
    assert ideal_geometry("LEU") == ideal_geometry("MSE") == ideal_geometry("XYZ")
    assert ideal_geometry("DAL", -2.5).n_c_ca_cb_deg == pytest.approx(-122.9)  # D name: mirrored
    assert ideal_geometry("ALA", 2.5) == ideal_geometry("ALA")  # common L name: never mirrored
    assert ideal_geometry("XYZ", 2.5).c_n_ca_cb_deg == pytest.approx(122.6)  # D-like hand
    assert ideal_geometry("XYZ", -2.5) == ideal_geometry("XYZ")


def test_ideal_cbeta_reproduces_ideal_residue():
    n, ca, c = np.array([1.458, 0.0, 0.0]), np.zeros(3), np.array([-0.551, 1.42, 0.0])
    for name in ("ALA", "PRO", "VAL", "SER"):
        ideal = ideal_geometry(name)
        cb = ideal_cbeta(n, ca, c, ideal)
        assert np.linalg.norm(cb - ca) == pytest.approx(ideal.ca_cb_A, abs=1e-12)
        # An L residue: CB on the side given by the negative chiral volume.
        assert np.dot(n - ca, np.cross(cb - ca, c - ca)) < 0


# -- selection, altlocs, outliers -------------------------------------------------------------------
def test_selection_and_counts():
    st = read_structure(BACKBONES)
    r = cbeta_deviations(st)
    non_gly = [res for ch in st.model for res in ch if res.name != "GLY"]
    assert r.n_residues == len(non_gly) == len(r.residues)
    assert r.outliers == [] and 0 < r.max_deviation_A < OUTLIER_MIN_A
    d = json.loads(json.dumps(r.to_dict()))
    assert d["n_residues"] == r.n_residues and d["outliers"] == []


def test_ligands_nucleic_acids_and_missing_atoms_skipped():
    st = gemmi.read_structure(str(MIXED))
    r = cbeta_deviations(st)
    assert {rec.chain for rec in r.residues} == {"B"}
    assert all(rec.name not in ("SO4", "HOH", "GLY") for rec in r.residues)
    n_before = r.n_residues
    st[0]["B"][5].remove_atom("CB", "\0")
    assert cbeta_deviations(st).n_residues == n_before - 1
    empty = CbetaResult()
    assert empty.max_deviation_A is None and empty.to_dict()["max_deviation_A"] is None


def test_distorted_backbone_gives_outliers(tmp_path):
    """Rotating C about N–CA (phi) moves the ideal Cβ away from the modelled one."""
    path = helpers.make_distorted(BACKBONES, tmp_path / "distorted.pdb")
    r = cbeta_deviations(read_structure(path))
    st = gemmi.read_structure(str(BACKBONES))
    expected = {(c, st[0][c][i].seqid.num) for c, i in helpers.DISTORTED if st[0][c][i].name != "GLY"}
    assert expected and expected <= {(o["chain"], o["number"]) for o in r.outliers}
    assert all(o["deviation_A"] >= OUTLIER_MIN_A for o in r.outliers)
    assert r.max_deviation_A == max(rec.deviation_A for rec in r.residues) >= OUTLIER_MIN_A


def test_altloc_conformers(tmp_path):
    path = helpers.make_altlocs(BACKBONES, tmp_path / "altlocs.pdb")
    r = cbeta_deviations(read_structure(path))
    number = gemmi.read_structure(str(BACKBONES))[0]["A"][helpers.ALTLOC_INDEX].seqid.num
    records = {rec.altloc: rec for rec in r.residues if (rec.chain, rec.number) == ("A", number)}
    assert set(records) == {"A", "B"}
    assert records["A"].deviation_A < OUTLIER_MIN_A <= records["B"].deviation_A
    assert r.outliers == [records["B"].as_dict()]


def test_mirror_image_and_d_amino_acids(tmp_path):
    path = helpers.make_mirrored(BACKBONES, tmp_path / "mirrored.pdb")
    r = cbeta_deviations(read_structure(path))
    by_chain = {c: [rec for rec in r.residues if rec.chain == c] for c in "ABD"}
    # D names and an unknown name (judged by its hand) fit their mirrored Cβ; L names do not.
    assert all(rec.deviation_A < OUTLIER_MIN_A for rec in by_chain["A"] if rec.name in helpers.D_NAMES.values())
    assert all(rec.deviation_A < OUTLIER_MIN_A for rec in by_chain["B"])
    assert all(rec.deviation_A > 1.0 for rec in by_chain["D"])


# -- agreement with MolProbity (cctbx) ----------------------------------------------------------
GENERATED = ("promod3_backbones", "mixed", "distorted", "altlocs", "mirrored")


@pytest.fixture(scope="module")
def reference(cctbx_reference):
    """cctbx cbetadev results for every available structure (session fixture in conftest)."""
    return {name: (path, ref["cbeta"]) for name, (path, ref) in cctbx_reference.items() if name != "3MFP_noTER"}


@pytest.mark.parametrize("name", list(helpers.REAL_STRUCTURES) + list(GENERATED))
def test_matches_cbetadev(reference, name):
    if name not in reference:
        pytest.skip(f"{name} not available on this machine")
    path, ref = reference[name]
    ours = cbeta_deviations(read_structure(path))
    theirs = {(x["chain"], x["number"], x["icode"], x["altloc"]): x for x in ref["residues"]}
    mine = {_key(rec): rec for rec in ours.residues}
    assert set(mine) == set(theirs)
    for key, rec in mine.items():
        assert rec.name == theirs[key]["name"]
        assert rec.deviation_A == pytest.approx(theirs[key]["deviation"], abs=1e-6), key
    their_outliers = sorted(k for k, x in theirs.items() if x["deviation"] >= 0.25)
    assert sorted((o["chain"], o["number"], o["icode"], o["altloc"]) for o in ours.outliers) == their_outliers
    assert len(ours.outliers) == ref["n_outliers"]
