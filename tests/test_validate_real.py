"""``validate`` on every real map/model pair in ``../shared/data/maps`` (skipped without it).

The cryonet boxes hold AlphaFold3 models (``*_af3.cif``): they are read from the shared folder
for these checks only and never copied into the project.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cryostack.io.models import read_structure
from cryostack.validate import validate
from cryostack.validate.report import text_table

# (model, map, resolution Å). The cryonet maps' resolutions are not in the data; 3.5 Å is a
# nominal value for their deposited range.
PAIRS = {
    "factin": ("emd_5168_factin/3MFP.pdb", "emd_5168_factin/emd_5168.map", 6.6),
    "factin_monomer": ("emd_5168_factin/3MFP.pdb", "emd_5168_factin/emd_5168_monomer.mrc", 6.6),
    "spike_ntd": ("emd_21457_spike_ntd_segment/6vyb_Ndom.pdb", "emd_21457_spike_ntd_segment/emd_21457_seg.mrc", 3.2),
    "4uft": ("cryonet_refine_boxed/4uft_af3.cif", "cryonet_refine_boxed/4uft.mrc", 3.5),
    "6ksw": ("cryonet_refine_boxed/6ksw_af3.cif", "cryonet_refine_boxed/6ksw.mrc", 3.5),
    "6vrc": ("cryonet_refine_boxed/6vrc_af3.cif", "cryonet_refine_boxed/6vrc.mrc", 3.5),
}

_cache: dict = {}


@pytest.fixture(params=sorted(PAIRS))
def pair(request, shared_file):
    """(name, model path, result) with Q-score, computed once per pair."""
    name = request.param
    return name, shared_file(f"maps/{PAIRS[name][0]}"), _result(name, shared_file)


def _result(name: str, shared_file):
    """The full validation (with Q-score) of pair ``name``, computed once per session."""
    model_rel, map_rel, res = PAIRS[name]
    if name not in _cache:
        _cache[name] = validate(
            shared_file(f"maps/{model_rel}"), density=shared_file(f"maps/{map_rel}"), resolution_A=res
        )
    return _cache[name]


def _in_unit(x) -> bool:
    return x is not None and math.isfinite(x) and -1.0 <= x <= 1.0


def test_map_fit_numbers_are_sane(pair):
    name, model_path, result = pair
    mm = result.map_model.to_dict()
    for key in ("cc_mask", "cc_box", "cc_volume", "cc_peaks", "cc_mc", "cc_sc", "q_score"):
        assert _in_unit(mm[key]), (name, key, mm[key])
    # Every one of these models sits in its map: the local fit is clearly positive.
    assert mm["cc_mask"] > 0.2 and mm["cc_mc"] > 0.2 and mm["q_score"] > 0.05
    assert mm["fsc05_resolution"] is not None and mm["fsc05_resolution"] >= mm["resolution"]
    fsc = np.array(mm["fsc_curve"]["fsc"])
    assert np.all(np.abs(fsc) <= 1.0 + 1e-9) and fsc[0] > 0.9
    atoms = read_structure(model_path).atoms()
    assert [c["chain"] for c in mm["per_chain"]] == list(atoms.chain_ids)
    assert len(mm["per_residue"]) == len(atoms.residue_names)
    ccs = [r["cc"] for r in mm["per_residue"] if r["cc"] is not None]
    assert all(_in_unit(c) for c in ccs) and np.median(ccs) > 0.2


def test_geometry_is_sane(pair):
    name, _, result = pair
    g = result.to_dict()["geometry"]
    assert 0.0 < g["bond_rmsd"] < 0.05 and 0.0 < g["angle_rmsd"] < 5.0
    assert g["ramachandran"]["favored_pct"] > 85.0 and g["rotamer"]["n_residues"] > 0
    assert g["clashscore"] is not None and g["clashscore"] >= 0


def test_report_and_json_round_trip(pair, tmp_path):
    name, _, result = pair
    text = text_table(result)
    assert "CC_mask" in text and "Q-score" in text and "nan" not in text.lower()
    path = result.write_json(tmp_path / "v.json")
    d = json.loads(path.read_text())  # no NaN/Infinity tokens: strict JSON parses
    assert d["map_model"]["cc_mask"] == pytest.approx(result.map_model.cc_mask)


def test_partly_outside_multichain_model(shared_file):
    """6ksw: three chains, 11 % of the AF3 model's atoms beyond the boxed map."""
    result = _result("6ksw", shared_file)
    mm = result.map_model
    assert 0.05 < mm.atoms_outside_map_fraction < 0.2
    assert any("outside the map box" in n for n in result.notes)
    # Atoms whose Q-score shells leave the box get none, rather than a score from zero padding.
    assert mm.q_score_undefined_atoms > 0 and any("no Q-score" in n for n in result.notes)
    assert {c["chain"] for c in mm.per_chain} == {"A", "B", "C"}
    assert "Chain B: CC / Q-score" in text_table(result)
    fully_out = [r for r in mm.per_residue if r["cc"] is None]
    assert fully_out and all(r["q_score"] is None for r in fully_out)


def test_partial_model_in_filament_map_is_noted(shared_file):
    """One actin subunit in the whole EMD-5168 filament: CC_peaks is negative and the report says why."""
    result = _result("factin", shared_file)
    assert result.map_model.cc_peaks < 0 < result.map_model.cc_mask
    assert any(n.startswith("CC_peaks < 0") for n in result.notes)
    assert not any(n.startswith("CC_peaks") for n in _result("factin_monomer", shared_file).notes)


def test_shifted_model_fits_worse(shared_file):
    """The real fit is measurably better than the same model moved by 3 Å (no Q-score: speed)."""
    model_rel, map_rel, res = PAIRS["spike_ntd"]
    st = read_structure(shared_file(f"maps/{model_rel}"))
    map_path = shared_file(f"maps/{map_rel}")
    good = validate(st, density=map_path, resolution_A=res, compute_q=False).map_model
    moved = st.with_coordinates(st.atoms().coords + np.array([3.0, 0.0, 0.0]))
    bad = validate(moved, density=map_path, resolution_A=res, compute_q=False).map_model
    assert good.cc_mask > bad.cc_mask + 0.15 and good.cc_mc > bad.cc_mc + 0.15
