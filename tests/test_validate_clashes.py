"""All-atom clashscore: riding hydrogens from the monomer library, Probe's contact rules, the result keys."""

from __future__ import annotations

from pathlib import Path

import gemmi
import numpy as np
import pytest

from cryostack.chem.monlib import topology
from cryostack.errors import InputError
from cryostack.examples import SPIKE_NTD_MODEL
from cryostack.io.models import Structure, read_structure
from cryostack.validate import validate
from cryostack.validate.clashes import (
    ALL_ATOM_METHOD,
    DEFAULT_RADIUS_A,
    add_riding_hydrogens,
    all_atom_clashes,
    heavy_atom_clashes,
)
from cryostack.validate.geometry import geometry

DATA = Path(__file__).parent / "data" / "validate_clashes"

#: What MolProbity's code (cctbx-base 2025.11 mmtbx.clashscore2, keep_hydrogens=True) reports for
#: the fixture: pair → overlap (Å). See tests/data/validate_clashes/README.md.
PROBE_CLASHES = {
    frozenset({"A/HIS66/HD1", "A/ALA67/H"}): 0.588,
    frozenset({"A/HIS66/HD1", "A/ALA67/N"}): 0.544,
    frozenset({"A/VAL130/CG2", "A/PHE168/H"}): 0.467,
    frozenset({"A/TYR266/CD1", "A/TYR266/N"}): 0.411,
}


@pytest.fixture(scope="module")
def spike():
    return read_structure(SPIKE_NTD_MODEL)


def _two_chlorides(distance_A: float) -> Structure:
    """Two chloride ions (a dictionary, no hydrogens, no hydrogen-bond donor) ``distance_A`` apart."""
    st = gemmi.Structure()
    model = gemmi.Model("1")
    for k, chain_name in enumerate("AB"):
        atom = gemmi.Atom()
        atom.name, atom.element = "CL", gemmi.Element("Cl")
        atom.pos, atom.occ, atom.b_iso = gemmi.Position(k * distance_A, 0.0, 0.0), 1.0, 20.0
        res = gemmi.Residue()
        res.name, res.seqid, res.het_flag = "CL", gemmi.SeqId(1, " "), "H"
        res.add_atom(atom)
        chain = gemmi.Chain(chain_name)
        chain.add_residue(res)
        model.add_chain(chain)
    st.add_model(model)
    st.setup_entities()
    return Structure(st)


def test_half_angstrom_overlap_is_a_clash_and_three_tenths_is_not():
    contact_A = 2 * DEFAULT_RADIUS_A  # chlorine has no entry in the radius table
    hit = all_atom_clashes(_two_chlorides(contact_A - 0.5))
    assert len(hit.clashes) == 1 and hit.clashes[0]["overlap_A"] == pytest.approx(0.5, abs=0.01)
    assert hit.clashscore == pytest.approx(1000.0 * 1 / 2) and hit.n_hydrogens == 0
    miss = all_atom_clashes(_two_chlorides(contact_A - 0.3))
    assert miss.clashes == [] and miss.clashscore == 0.0


def test_contact_rules_match_probe_on_the_same_hydrogens():
    """Same coordinates as Probe saw (Reduce's H kept): the same four serious overlaps, and no
    LINK records, so the disulfide and glycosylation links must be found by distance."""
    r = all_atom_clashes(read_structure(DATA / "6vyb_Ndom_reduce2_H.pdb.gz"), keep_hydrogens=True)
    found = {frozenset({c["atom1"], c["atom2"]}): c["overlap_A"] for c in r.clashes}
    assert set(found) == set(PROBE_CLASHES)
    for pair, overlap in PROBE_CLASHES.items():
        assert found[pair] == pytest.approx(overlap, abs=0.02), pair
    assert r.n_atoms == 2961 and r.n_hydrogens == 1346
    assert r.clashscore == pytest.approx(1.35, abs=0.01)


def test_riding_hydrogens_on_a_real_model(spike):
    st, topo, missing = add_riding_hydrogens(spike)
    atoms = [a for ch in st[0] for res in ch for a in res]
    n_h = sum(a.is_hydrogen() for a in atoms)
    n_heavy = len(atoms) - n_h
    assert not missing and n_heavy == spike.n_atoms
    assert 0.8 < n_h / n_heavy < 1.2  # a protein has about one H per heavy atom
    assert all(np.isfinite(a.pos.tolist()).all() for a in atoms)
    # Electron-cloud X–H distances (MolProbity's default), not nuclear ones (C–H 1.09 Å).
    ch = [b.calculate() for b in topo.bonds if {b.atoms[0].element.name, b.atoms[1].element.name} == {"C", "H"}]
    assert len(ch) > 500 and 0.95 < np.mean(ch) < 1.0


def test_all_atom_score_is_at_least_the_heavy_atom_score(spike, shared_file):
    for model in (spike, read_structure(shared_file("maps/emd_5168_factin/3MFP.pdb"))):
        g = geometry(model)
        assert g.clashscore_method == ALL_ATOM_METHOD
        assert g.clashscore >= g.clashscore_heavy_atom > 0
    # The theoretical actin model is crowded: far more clashes once hydrogens are there.
    assert g.clashscore > 1.2 * g.clashscore_heavy_atom


def test_hydrogens_in_the_model_are_replaced(spike):
    """A model with its own H (here pushed out to nuclear-like X–H distances) scores as without them."""
    st, _, _ = add_riding_hydrogens(spike)
    for ch in st[0]:
        for res in ch:
            heavy = [a for a in res if not a.is_hydrogen()]
            for h in (a for a in res if a.is_hydrogen()):
                parent = min(heavy, key=lambda a: a.pos.dist(h.pos))
                h.pos = parent.pos + (h.pos - parent.pos) * (1.0 + 0.12 / h.pos.dist(parent.pos))
    with_h = Structure(st)
    assert any(with_h.atoms().is_hydrogen)
    assert all_atom_clashes(with_h).clashes == all_atom_clashes(spike).clashes


def test_undeclared_disulfide_is_not_a_clash(spike):
    st = spike.gemmi.clone()
    assert any(c.type == gemmi.ConnectionType.Disulf for c in st.connections)
    st.connections.clear()  # as in an AlphaFold model: no SSBOND/LINK records
    bare = all_atom_clashes(Structure(st))
    assert not any("/SG" in c["atom1"] and "/SG" in c["atom2"] for c in bare.clashes)
    assert bare.clashes == all_atom_clashes(spike).clashes


def test_heavy_atom_score_is_unchanged_by_hydrogens(spike):
    st, topo, _ = topology(spike)
    h_st, h_topo, _ = add_riding_hydrogens(spike)
    assert heavy_atom_clashes(h_st, h_topo).clashes == heavy_atom_clashes(st, topo).clashes


def test_result_keys_and_notes(spike):
    g = geometry(spike).to_dict()
    assert {"clashscore", "clashscore_method", "clashscore_heavy_atom", "clashes"} <= set(g)
    assert g["clashscore_method"] == ALL_ATOM_METHOD and g["clashscore"] >= g["clashscore_heavy_atom"]
    assert not any(n.startswith("clashscore") for n in validate(spike).notes)

    st = spike.gemmi.clone()
    st[0]["A"][5].name = "ZZQ"
    odd = validate(Structure(st))
    assert odd.geometry.clashscore_method == ALL_ATOM_METHOD
    assert "clashscore: no hydrogens placed on ZZQ (no monomer-library entry)" in odd.notes


def test_heavy_atom_fallback_when_hydrogens_cannot_be_placed(spike, monkeypatch):
    def refuse(structure):
        raise InputError("model", "no restraint topology (cannot place H)")

    monkeypatch.setattr("cryostack.validate.geometry.all_atom_clashes", refuse)
    result = validate(spike)
    g = result.geometry
    assert g.clashscore_method.startswith("heavy-atom (hydrogens could not be placed")
    assert g.clashscore == g.clashscore_heavy_atom
    assert any(n.startswith("clashscore is heavy-atom") and "MolProbity" in n for n in result.notes)
