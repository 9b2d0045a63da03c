"""Geometry against the monomer library: RMSDs, outliers, chirality, ω, clashes."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest

from cryostack.examples import SPIKE_NTD_MODEL
from cryostack.io.models import Structure, read_structure
from cryostack.validate.clashes import ALL_ATOM_METHOD
from cryostack.validate.geometry import geometry


@pytest.fixture(scope="module")
def spike():
    return read_structure(SPIKE_NTD_MODEL)


def test_deposited_model_has_sane_geometry(spike):
    g = geometry(spike)
    assert 0.003 < g.bond_rmsd < 0.03 and 0.5 < g.angle_rmsd < 3.0
    assert g.n_bonds > 1500 and not g.chirality_errors
    assert g.clashscore is not None and g.clashscore < 10
    assert g.clashscore_method == ALL_ATOM_METHOD and g.clashscore_heavy_atom is not None


def test_distortions_are_detected(spike):
    st = spike.gemmi.clone()
    res = st[0]["A"][10]
    ca = res.find_atom("CA", "*")
    cb = res.find_atom("CB", "*")
    # Stretch one bond by 0.3 Å and invert the CA chirality by mirroring CB through the N-C-CA plane.
    n, c = res.find_atom("N", "*").pos, res.find_atom("C", "*").pos
    v = np.array(cb.pos.tolist()) - np.array(ca.pos.tolist())
    normal = np.cross(np.array(n.tolist()) - ca.pos.tolist(), np.array(c.tolist()) - ca.pos.tolist())
    normal /= np.linalg.norm(normal)
    mirrored = np.array(ca.pos.tolist()) + v - 2 * np.dot(v, normal) * normal
    cb.pos = gemmi.Position(*mirrored)
    o = res.find_atom("O", "*")
    co = np.array(o.pos.tolist()) - np.array(c.tolist())
    o.pos = gemmi.Position(*(np.array(c.tolist()) + co * (1 + 0.3 / np.linalg.norm(co))))
    # Put an atom of residue 40 onto residue 80.
    st[0]["A"][40].find_atom("CA", "*").pos = st[0]["A"][80].find_atom("CA", "*").pos + gemmi.Position(0.5, 0.5, 0.5)
    g = geometry(Structure(st))
    number = res.seqid.num
    assert any(o["number"] == number for o in g.chirality_errors)
    assert any(o["number"] == number and "O" in o["atoms"] for o in g.bond_outliers)
    assert g.clashes and g.clashes[0]["overlap_A"] > 1.0


def test_cis_peptide_detected(spike):
    st = spike.gemmi.clone()
    chain = st[0]["A"]
    # Rotate everything after residue 30 about the C–N bond by 180° to make ω cis.
    prev, res = chain[30], chain[31]
    c = np.array(prev.find_atom("C", "*").pos.tolist())
    n = np.array(res.find_atom("N", "*").pos.tolist())
    axis = (n - c) / np.linalg.norm(n - c)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + 2 * k @ k  # 180° rotation
    for r in list(chain)[31:]:
        for atom in r:
            p = np.array(atom.pos.tolist())
            atom.pos = gemmi.Position(*(rot @ (p - n) + n))
    g = geometry(Structure(st))
    assert any(x["number"] == res.seqid.num for x in g.cis_peptides)


def test_unknown_residue_is_reported_not_fatal(spike):
    st = spike.gemmi.clone()
    st[0]["A"][5].name = "ZZQ"
    g = geometry(Structure(st))
    assert "ZZQ" in g.residues_without_dictionary and g.bond_rmsd is not None
