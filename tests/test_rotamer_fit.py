"""Rotamer fitting (refine.rotamer_fit) and its stage in the direct optimiser."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryostack.chem.rotamers import FAVORED_MIN, OUTLIER_BELOW, score_chis
from cryostack.examples import SPIKE_NTD_MODEL
from cryostack.geometry.restraints import angle_rmsd_deg, bond_lengths, dihedrals
from cryostack.io.models import read_structure
from cryostack.refine import RefineConfig, RefinementObjective, refine
from cryostack.refine.rotamer_fit import fit_rotamers, set_chis, side_chain_topology

RES = 3.2
#: Outlier conformations put on side chains of the piece (residue index → chis, degrees).
OUTLIERS = {14: (60.0, 60.0, 60.0, 60.0), 5: (-120.0, 0.0), 17: (180.0, 60.0, -60.0, 120.0), 29: (60.0, 60.0)}


@pytest.fixture(scope="module")
def piece(spike_piece, simulated_map):
    """The first 30 residues of the spike NTD (a real fragment), a slightly noisy map simulated
    from it, and its objective."""
    s = spike_piece(30)
    dmap = simulated_map(s, RES)
    return s, dmap, RefinementObjective(s, dmap, RES)


def _chis(x, quads) -> np.ndarray:
    return np.degrees(dihedrals(x, torch.as_tensor(quads)).numpy())


def _circular_deg(a, b, period=360.0) -> np.ndarray:
    d = np.mod(np.asarray(a) - np.asarray(b), period)
    return np.minimum(d, period - d)


def test_topology_from_bond_graph(piece):
    s, _, obj = piece
    topo = side_chain_topology(obj)
    names = s.atoms().residue_names
    assert names[12] == "PRO" and 12 not in topo  # chi1 bond inside the ring
    assert names[8] == "GLY" and 8 not in topo
    arr = obj.atoms
    moved = lambda r, k: sorted(arr.atom_names[i] for i in topo[r][1][k])  # noqa: E731
    assert names[7] == "ARG" and moved(7, 0) == ["CD", "CG", "CZ", "NE", "NH1", "NH2"]
    assert moved(7, 3) == ["CZ", "NH1", "NH2"]  # chi4 turns about CD–NE: the guanidinium moves
    assert names[1] == "TYR" and moved(1, 1) == ["CD1", "CD2", "CE1", "CE2", "CZ", "OH"]


def test_chi_rotation_sets_angle_and_keeps_geometry(piece):
    _, _, obj = piece
    x = obj.init_coords
    rs = obj.restraints
    for r, chis in OUTLIERS.items():
        y = set_chis(obj, x, r, chis)
        quads = side_chain_topology(obj)[r][0]
        assert np.all(_circular_deg(_chis(y, quads), chis) < 1e-2)
        assert torch.allclose(bond_lengths(y, rs), bond_lengths(x, rs), atol=1e-4)
        assert abs(angle_rmsd_deg(y, rs) - angle_rmsd_deg(x, rs)) < 1e-3
        moved = (y - x).norm(dim=1) > 1e-5
        assert set(obj.atoms.residue_index[moved.numpy()]) == {r}


def test_outliers_are_restored_to_the_right_rotamer(piece):
    s, _, obj = piece
    x = obj.init_coords
    bad = x
    for r, chis in OUTLIERS.items():
        bad = set_chis(obj, bad, r, chis)
    names = s.atoms().residue_names
    for r in OUTLIERS:
        assert score_chis(names[r], _chis(bad, side_chain_topology(obj)[r][0])) < FAVORED_MIN  # tried
    fitted, stats = fit_rotamers(obj, bad)
    assert stats["changed"] == len(OUTLIERS) and stats["tried"] >= len(OUTLIERS)
    assert stats["outliers_after"] == 0
    for r in OUTLIERS:
        quads = side_chain_topology(obj)[r][0]
        truth, got = _chis(x, quads), _chis(fitted, quads)
        # Phe chi2 is symmetric (ring flip): compare modulo 180°.
        period = np.array([180.0 if names[r] == "PHE" and k == 1 else 360.0 for k in range(len(quads))])
        assert np.all(_circular_deg(got, truth, period) < 20.0), (names[r], truth, got)
    # Only the refitted side chains moved, and the result is deterministic.
    moved = (fitted - bad).norm(dim=1) > 1e-5
    assert set(obj.atoms.residue_index[moved.numpy()]) == set(OUTLIERS)
    again, stats2 = fit_rotamers(obj, bad)
    assert torch.equal(again, fitted) and stats2 == stats


def test_outlier_leaves_even_when_the_map_holds_it(piece, simulated_map):
    """A rotamer outlier that the map itself holds still goes to a named rotamer, unless
    ``keep_outliers`` (then the current conformation, which fits the map best, stays). The prior
    is switched off so that the density alone decides."""
    s, _, obj = piece
    r, chis = 29, (-125.0, -125.0)  # Leu between the m and t wells (an outlier on 6vrc)
    bad = set_chis(obj, obj.init_coords, r, chis)
    outlier_model = s.with_coordinates(bad.numpy())
    obj_bad = RefinementObjective(outlier_model, simulated_map(outlier_model, RES), RES)
    quads = side_chain_topology(obj_bad)[r][0]
    name = s.atoms().residue_names[r]
    assert score_chis(name, _chis(bad, quads)) < OUTLIER_BELOW
    kept, lenient = fit_rotamers(obj_bad, bad, keep_outliers=True, prior_weight=0.0)
    assert torch.equal(kept[obj_bad.atoms.residue_index == r], bad[obj_bad.atoms.residue_index == r])
    assert lenient["outliers_after"] >= 1
    fitted, strict = fit_rotamers(obj_bad, bad, prior_weight=0.0)
    assert score_chis(name, _chis(fitted, quads)) >= FAVORED_MIN
    assert strict["outliers_after"] == lenient["outliers_after"] - 1


def test_correct_model_is_left_alone(piece):
    _, _, obj = piece
    fitted, stats = fit_rotamers(obj, obj.init_coords)
    assert stats["changed"] == 0
    assert torch.equal(fitted, obj.init_coords)


def test_direct_optimiser_fits_rotamers_and_records_the_stage(piece):
    s, dmap, obj = piece
    bad = obj.init_coords
    for r, chis in OUTLIERS.items():
        bad = set_chis(obj, bad, r, chis)
    start = s.with_coordinates(bad.numpy())
    config = RefineConfig(max_recycles=1, steps_per_recycle=5, rigid_steps=0, seed=0)
    refined, result = refine(start, dmap, RES, config)
    assert result.rotamer_fit["changed"] >= len(OUTLIERS) - 1
    stages = [r.stage for r in result.history]
    assert stages[0] == "start" and stages[-2:] == ["rotamer_fit", "polish"]
    assert result.to_dict()["rotamer_fit"]["tried"] >= result.rotamer_fit["changed"]
    assert result.rotamer_fit["kept"] and result.best_recycle == len(result.history) - 1
    assert result.history[-1].cc > result.history[0].cc
    names = s.atoms().residue_names
    arr = refined.atoms()
    y = torch.as_tensor(arr.coords)
    for r in OUTLIERS:
        assert score_chis(names[r], _chis(y, side_chain_topology(obj)[r][0])) >= OUTLIER_BELOW
    # Switched off: no extra stages, no stats.
    _, plain = refine(
        start, dmap, RES, RefineConfig(max_recycles=1, steps_per_recycle=5, rigid_steps=0, fit_rotamers=False)
    )
    assert plain.rotamer_fit is None and all(r.stage in ("start", "adam") for r in plain.history)


def test_rejected_strict_fit_falls_back_to_the_lenient_one(piece):
    """When the polished strict fit (outliers always moved) loses too much loss, a lenient fit is
    tried; when that is rejected too, the earlier model comes back."""
    from cryostack.refine.stages import fit_rotamers_and_polish

    _, _, obj = piece
    bad = obj.init_coords
    for r, chis in OUTLIERS.items():
        bad = set_chis(obj, bad, r, chis)
    with torch.no_grad():
        best_loss = float(obj(bad)[0])
    wrecked = []

    def polish_first_call_wrecks(x):  # the first polish ruins the model, the second does nothing
        wrecked.append(True)
        return x + (3.0 if len(wrecked) == 1 else 0.0)

    history = []
    out, _, stats = fit_rotamers_and_polish(obj, bad, best_loss, 0, history, None, polish_first_call_wrecks)
    assert len(wrecked) == 2 and stats["kept"] and stats["outliers_kept_as_candidates"]
    assert [h.stage for h in history] == ["rotamer_fit", "polish", "rotamer_fit", "polish"]
    assert not torch.equal(out, bad)

    out, _, stats = fit_rotamers_and_polish(obj, bad, best_loss, 0, [], None, lambda x: x + 3.0)
    assert not stats["kept"] and torch.equal(out, bad)


def test_linked_side_chains_are_not_turned():
    """Glycosylated Asn and disulfide Cys of the spike NTD example: turning them would tear the link."""
    from cryostack.examples import SPIKE_NTD_MAP
    from cryostack.io.maps import read_map

    s = read_structure(SPIKE_NTD_MODEL)
    obj = RefinementObjective(s, read_map(SPIKE_NTD_MAP), RES)
    topo = side_chain_topology(obj)
    arr = obj.atoms
    bonds = obj.restraints.bond_index.numpy()
    ri = arr.residue_index
    cross = ri[bonds[:, 0]] != ri[bonds[:, 1]]
    names = np.asarray(arr.atom_names)
    linked = {int(ri[i]) for i, j in bonds[cross] for i in (i, j) if names[i] in ("SG", "ND2", "OG", "OG1")}
    assert any(arr.residue_names[r] == "ASN" for r in linked) and any(arr.residue_names[r] == "CYS" for r in linked)
    assert not linked & set(topo)
    assert sum(arr.residue_names[r] == "ASN" for r in topo) > 0  # unlinked ones are still fitted
