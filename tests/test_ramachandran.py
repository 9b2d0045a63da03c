"""Ramachandran validation: table lookup, categories, chain breaks, altlocs, plots, and
residue-by-residue agreement with MolProbity's ramalyze (cctbx) on real structures."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import gemmi
import numpy as np
import pytest

from cryostack.chem.ramachandran import CATEGORIES, FAVORED_MIN, OUTLIER_BELOW, classify, grid_score, load_tables, score
from cryostack.io.models import read_structure
from cryostack.validate.ramachandran import RamachandranResult, plot_ramachandran, ramachandran

DATA = Path(__file__).parent / "data" / "validate_rama"
BACKBONES = DATA / "promod3_backbones.pdb"
MIXED = DATA / "mixed_break_ligand_na.pdb"
REPO = Path(__file__).resolve().parents[1]

_spec = importlib.util.spec_from_file_location("validate_rama_helpers", DATA / "helpers.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)


def _key(rec) -> tuple[str, int, str, str]:
    return (rec.chain, rec.number, rec.icode, rec.altloc)


def _angle_diff(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


# -- table and lookup -------------------------------------------------------------------------
def test_tables_shape_and_range():
    tables = load_tables()
    assert set(tables) == set(CATEGORIES)
    for table in tables.values():
        assert table.shape == (180, 180)
        assert np.all(table >= 0) and np.all(table <= 1)
        assert not table.flags.writeable


def test_tables_equal_source_data(shared_file):
    """The packaged arrays hold exactly the values of the Top8000 .data files."""
    spec = importlib.util.spec_from_file_location("build_rama_tables", REPO / "scripts" / "build_rama_tables.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    source = shared_file("top8000/rama/README").parent
    tables = load_tables()
    for key, name in build.SOURCES.items():
        np.testing.assert_array_equal(tables[key], build.read_table(source / name))


def test_packaged_licence_and_credit():
    folder = REPO / "src" / "cryostack" / "chem" / "data" / "rama"
    assert "Attribution 4.0 International" in (folder / "LICENSE").read_text()
    assert "Richardson lab, Duke University — Top8000 reference data (CC-BY 4.0)" in (folder / "README.md").read_text()


def test_grid_exact_at_bin_centres():
    table = load_tables()["general"]
    for i, j in [(0, 0), (10, 170), (57, 123), (179, 179), (90, 45)]:
        assert grid_score(table, -179.0 + 2 * i, -179.0 + 2 * j) == pytest.approx(table[i, j], abs=1e-15)


def test_grid_bilinear_between_centres():
    table = load_tables()["gly"]
    # (-64, 40): a quarter of the way from centre -65 to -63 on phi, half way from 39 to 41 on psi.
    i, j = (-65 + 179) // 2, (39 + 179) // 2
    expected = (
        table[i, j] * 0.5 * 0.5
        + table[i + 1, j] * 0.5 * 0.5
        + table[i, j + 1] * 0.5 * 0.5
        + table[i + 1, j + 1] * 0.5 * 0.5
    )
    assert grid_score(table, -64.0, 40.0) == pytest.approx(expected, rel=1e-12)
    t = 0.25
    expected_phi = table[i, j] * (1 - t) + table[i + 1, j] * t
    assert grid_score(table, -64.5, 39.0) == pytest.approx(expected_phi, rel=1e-12)


def test_grid_wraps_at_180():
    table = load_tables()["general"]
    # Between the centres 179 and -179 (= 181) the lookup interpolates across the seam.
    assert grid_score(table, 180.0, 0.0) == pytest.approx(grid_score(table, -180.0, 0.0), rel=1e-12)
    assert grid_score(table, 180.0, -59.0) == pytest.approx(0.5 * (table[179, 60] + table[0, 60]), rel=1e-12)
    for phi, psi in [(-63.0, -41.5), (120.2, 179.9), (-179.95, 3.0)]:
        value = grid_score(table, phi, psi)
        assert grid_score(table, phi + 360.0, psi - 360.0) == pytest.approx(value, rel=1e-12)
    assert grid_score(table, 179.999, 10.0) == pytest.approx(grid_score(table, -180.001, 10.0), rel=1e-9)


def test_known_regions():
    assert classify("general", score("general", -63.0, -43.0)) == "favored"  # alpha helix
    assert classify("general", score("general", -120.0, 130.0)) == "favored"  # beta strand
    for category in CATEGORIES:
        assert classify(category, score(category, 0.0, 180.0)) == "outlier"
        assert classify(category, score(category, -30.0, -150.0)) == "outlier"
    assert classify("gly", score("gly", 80.0, -170.0)) == "favored"  # Gly-only region
    assert classify("transpro", score("transpro", 60.0, 60.0)) == "outlier"


def test_classify_thresholds():
    for category in CATEGORIES:
        cut = OUTLIER_BELOW[category]
        assert classify(category, FAVORED_MIN) == "favored"
        assert classify(category, FAVORED_MIN * 0.999) == "allowed"
        assert classify(category, cut) == "allowed"
        assert classify(category, cut * 0.999) == "outlier"
    assert OUTLIER_BELOW["general"] == 0.0005 and OUTLIER_BELOW["cispro"] == 0.002
    assert {OUTLIER_BELOW[c] for c in ("gly", "transpro", "prepro", "ileval")} == {0.001}


# -- residues, categories, breaks ---------------------------------------------------------------
@pytest.fixture(scope="module")
def backbones() -> RamachandranResult:
    return ramachandran(read_structure(BACKBONES))


def test_categories_follow_names_and_omega(backbones):
    st = gemmi.read_structure(str(BACKBONES))
    chains = {ch.name: {(r.seqid.num, r.seqid.icode.strip()): i for i, r in enumerate(ch)} for ch in st[0]}
    seen = set()
    for rec in backbones.residues:
        chain = st[0][rec.chain]
        i = chains[rec.chain][(rec.number, rec.icode)]
        res, prev, nxt = chain[i], chain[i - 1], chain[i + 1]
        if rec.name == "GLY":
            expected = "gly"
        elif rec.name == "PRO":
            omega = math.degrees(gemmi.calculate_omega(prev, res))
            expected = "cispro" if abs(omega) < 90 else "transpro"
        elif nxt.name == "PRO":
            expected = "prepro"
        elif rec.name in ("ILE", "VAL"):
            expected = "ileval"
        else:
            expected = "general"
        assert rec.category == expected, rec
        seen.add(rec.category)
        phi, psi = gemmi.calculate_phi_psi(prev, res, nxt)
        assert _angle_diff(rec.phi_deg, math.degrees(phi)) < 1e-9
        assert _angle_diff(rec.psi_deg, math.degrees(psi)) < 1e-9
    assert seen == set(CATEGORIES)  # the fixture covers all six, cis-Pro included


def test_counts_and_percentages(backbones):
    r = backbones
    assert r.n_residues == len(r.residues) == 388  # 3 chains of 110 + 115 + 169, minus the ends
    assert r.n_favored + r.n_allowed + r.n_outliers == r.n_residues
    assert r.favored_pct + r.allowed_pct + r.outlier_pct == pytest.approx(100.0)
    assert r.n_outliers == len(r.outliers) == 5
    d = json.loads(json.dumps(r.to_dict()))
    assert set(d) >= {"favored_pct", "allowed_pct", "outlier_pct", "outliers"}
    assert d["favored_pct"] == pytest.approx(r.favored_pct, abs=1e-3)
    assert {"chain", "number", "icode", "name", "phi", "psi"} <= set(d["outliers"][0])


def test_chain_break_ligands_and_nucleic_acids_skipped():
    st = read_structure(MIXED)
    r = ramachandran(st)
    protein = [res for res in st.model["B"] if res.name not in ("SO4", "HOH")]
    numbers = [res.seqid.num for res in protein]
    gap = next(i for i in range(1, len(numbers)) if numbers[i] != numbers[i - 1] + 1)
    # Without the gap 59 residues would have both neighbours; the two flanking residues lose one.
    assert r.n_residues == len(protein) - 2 - 2 == 55
    evaluated = {rec.number for rec in r.residues}
    assert numbers[gap - 1] not in evaluated and numbers[gap] not in evaluated
    assert numbers[gap - 2] in evaluated and numbers[gap + 1] in evaluated
    assert {rec.chain for rec in r.residues} == {"B"}


def test_missing_backbone_atoms():
    st = gemmi.read_structure(str(BACKBONES))
    chain = st[0]["A"]
    chain[30].remove_atom("CA", "\0")  # residue 30 loses CA: no phi/psi for it nor for 29 (needs next CA)
    chain[60].remove_atom("N", "\0")  # no N: no peptide link 59-60, so neither 59 nor 60
    r = ramachandran(st)
    numbers = {rec.number for rec in r.residues if rec.chain == "A"}
    first = chain[0].seqid.num
    assert first + 30 not in numbers and first + 29 not in numbers and first + 31 in numbers
    assert not {first + 59, first + 60} & numbers and {first + 58, first + 61} <= numbers


def test_empty_and_nucleic_only():
    st = gemmi.read_structure(str(MIXED))
    st[0].remove_chain("B")
    r = ramachandran(st)
    assert r.n_residues == 0 and r.residues == [] and r.outliers == []
    assert r.to_dict()["favored_pct"] is None  # nothing scored: "—", not 0 %


def test_distorted_residues_are_outliers(tmp_path):
    path = helpers.make_distorted(BACKBONES, tmp_path / "distorted.pdb")
    r = ramachandran(read_structure(path))
    st = gemmi.read_structure(str(BACKBONES))
    distorted = {(c, st[0][c][i].seqid.num) for c, i in helpers.DISTORTED}
    records = {(rec.chain, rec.number): rec for rec in r.residues}
    for key in distorted:
        rec = records[key]
        phi, psi = helpers.DISTORTED_PHI_PSI
        assert _angle_diff(rec.phi_deg, phi) < 0.05 and _angle_diff(rec.psi_deg, psi) < 0.05  # PDB: 3 decimals
        assert rec.classification == "outlier"
    assert distorted <= {(o["chain"], o["number"]) for o in r.outliers}


def test_altlocs_one_count_per_residue(tmp_path):
    path = helpers.make_altlocs(BACKBONES, tmp_path / "altlocs.pdb")
    r = ramachandran(read_structure(path))
    base = ramachandran(read_structure(BACKBONES))
    assert r.n_residues == base.n_residues
    number = gemmi.read_structure(str(BACKBONES))[0]["A"][helpers.ALTLOC_INDEX].seqid.num
    alt = sorted(_key(rec) for rec in r.residues if rec.altloc)
    # The split residue and both neighbours (whose windows use its N or C) get an A and a B record.
    assert alt == [("A", n, "", a) for n in (number - 1, number, number + 1) for a in "AB"]
    by_key = {_key(rec): rec for rec in r.residues}
    assert _angle_diff(by_key[("A", number, "", "A")].phi_deg, by_key[("A", number, "", "B")].phi_deg) > 30


def test_plot_writes_png_atomically(tmp_path, backbones):
    out = tmp_path / "plots" / "rama.png"
    assert plot_ramachandran(backbones, out) == out
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert [p.name for p in out.parent.iterdir()] == ["rama.png"]  # no temporary left behind
    plot_ramachandran(ramachandran(read_structure(MIXED)), out)  # overwrite in place
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- agreement with MolProbity (cctbx) ----------------------------------------------------------
GENERATED = ("promod3_backbones", "mixed", "distorted", "altlocs", "3MFP_noTER")


@pytest.fixture(scope="module")
def reference(cctbx_reference):
    """cctbx ramalyze results for every available structure (session fixture in conftest)."""
    return {name: (path, ref["rama"]) for name, (path, ref) in cctbx_reference.items() if name != "mirrored"}


def _compare(ours: RamachandranResult, ref: dict) -> None:
    theirs = {(x["chain"], x["number"], x["icode"], x["altloc"]): x for x in ref["residues"]}
    mine = {_key(rec): rec for rec in ours.residues}
    assert set(mine) == set(theirs)
    for key, rec in mine.items():
        x = theirs[key]
        assert (rec.name, rec.category, rec.classification) == (x["name"], x["category"], x["classification"]), key
        assert _angle_diff(rec.phi_deg, x["phi"]) < 1e-6 and _angle_diff(rec.psi_deg, x["psi"]) < 1e-6, key
        # cctbx keeps the tables to 6 significant digits.
        assert rec.score == pytest.approx(x["score"], rel=1e-5, abs=1e-9), key
    for cls in ("outlier", "favored"):
        assert sorted(k for k, r in mine.items() if r.classification == cls) == sorted(
            k for k, x in theirs.items() if x["classification"] == cls
        )
    assert (ours.n_residues, ours.n_favored, ours.n_allowed, ours.n_outliers) == (
        ref["n_total"],
        ref["n_favored"],
        ref["n_allowed"],
        ref["n_outliers"],
    )


@pytest.mark.parametrize("name", [n for n in helpers.REAL_STRUCTURES if n != "3MFP"] + list(GENERATED))
def test_matches_ramalyze(reference, name):
    if name not in reference:
        pytest.skip(f"{name} not available on this machine")
    path, ref = reference[name]
    _compare(ramachandran(read_structure(path)), ref)


def test_matches_ramalyze_3mfp_except_ter_flanks(reference):
    """3MFP has TER records inside chain A at numbering gaps whose residues are still peptide
    bonded (C–N 1.3 Å). cctbx ends the chain at each TER; cryostack links residues by geometry
    only, so it evaluates the residues on both sides of those TERs — and nothing else differs."""
    if "3MFP" not in reference:
        pytest.skip("3MFP not available")
    path, ref = reference["3MFP"]
    ours = ramachandran(read_structure(path))
    theirs = {(x["chain"], x["number"], x["icode"]) for x in ref["residues"]}
    mine = {(r.chain, r.number, r.icode) for r in ours.residues}
    assert theirs <= mine
    assert mine - theirs == helpers.ter_flanks(path)
    outliers = sorted((x["chain"], x["number"]) for x in ref["residues"] if x["classification"] == "outlier")
    assert sorted((o["chain"], o["number"]) for o in ours.outliers) == outliers
    _compare(ours, reference["3MFP_noTER"][1])
