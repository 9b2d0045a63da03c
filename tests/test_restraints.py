"""Differentiable geometry terms: restraints from the monomer library, Rama/rotamer priors, Cβ, clashes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryostack.examples import SPIKE_NTD_MODEL
from cryostack.geometry import restraints as R
from cryostack.geometry.cbeta import build_cbeta, cbeta_deviations, cbeta_loss
from cryostack.geometry.clash import ClashTerm
from cryostack.geometry.ramachandran_prior import build_rama, phi_psi, rama_energy, rama_loss
from cryostack.geometry.rotamer_prior import build_rotamers, rotamer_energy, rotamer_loss
from cryostack.io.models import read_structure
from cryostack.validate.cbeta import cbeta_deviations as validate_cbeta
from cryostack.validate.geometry import geometry
from cryostack.validate.ramachandran import ramachandran


@pytest.fixture(scope="module")
def ntd():
    return read_structure(SPIKE_NTD_MODEL)


@pytest.fixture(scope="module")
def ntd_rs(ntd):
    return R.build_restraints(ntd)


@pytest.fixture(scope="module")
def piece(ntd):
    """The first 30 residues of the NTD (fast optimisation tests)."""
    st = ntd.gemmi.clone()
    chain = st[0][0]
    for i in reversed(range(30, len(chain))):
        del chain[i]
    for ch in list(st[0])[1:]:
        st[0].remove_chain(ch.name)
    from cryostack.io.models import Structure

    return Structure(st)


def _x(structure) -> torch.Tensor:
    return torch.as_tensor(structure.atoms().coords, dtype=torch.float32)


def test_rmsds_equal_validate_on_real_model(ntd, ntd_rs):
    g = geometry(ntd)
    x = _x(ntd)
    assert ntd_rs.bond_index.shape[0] == g.n_bonds
    assert ntd_rs.angle_index.shape[0] == g.n_angles
    assert R.bond_rmsd(x, ntd_rs) == pytest.approx(g.bond_rmsd, abs=1e-5)
    assert R.angle_rmsd_deg(x, ntd_rs) == pytest.approx(g.angle_rmsd, abs=1e-4)


def test_atom_without_dictionary_entry_keeps_restraints_on_the_right_atoms(ntd):
    """An extra atom the dictionary lacks (3MFP's methylated His carries a CZ) is dropped from the
    topology; every later restraint must still name the right atoms (gemmi renumbers serials)."""
    import gemmi

    from cryostack.io.models import Structure

    st = ntd.gemmi.clone()
    res = next(r for r in st[0][0] if r.name in ("HIS", "TYR", "PHE"))
    extra = res[len(res) - 1].clone()
    extra.name = "CZ9"
    extra.pos = extra.pos + gemmi.Position(1.4, 0.0, 0.0)
    res.add_atom(extra)
    model = Structure(st)
    rs = R.build_restraints(model)
    g = geometry(model)
    assert any(m.endswith("/CZ9") for m in rs.residues_without_dictionary)
    x = _x(model)
    d = (x[rs.bond_index[:, 0]] - x[rs.bond_index[:, 1]]).norm(dim=1)
    assert float(d.max()) < 2.5  # no restraint joins atoms of the wrong residues
    assert R.bond_rmsd(x, rs) == pytest.approx(g.bond_rmsd, abs=1e-5)
    names = model.atoms().atom_names
    assert all(names[int(i)] != "CZ9" for i in rs.bond_index.flatten())


def test_restraint_set_covers_links_planes_chirality_omega(ntd, ntd_rs):
    arr = ntd.atoms()
    names = arr.atom_names
    # Peptide links across residues are restrained (C(i)-N(i+1) bonds).
    links = [(i, j) for i, j in ntd_rs.bond_index.tolist() if arr.residue_index[i] != arr.residue_index[j]]
    assert sum(1 for i, j in links if {names[i], names[j]} == {"C", "N"}) > 150
    assert ntd_rs.plane_index.shape[0] > 150 and ntd_rs.chiral_index.shape[0] > 150
    assert ntd_rs.omega_index.shape[0] > 150
    # A deposited model has its chiral centres right and its peptides near their ω targets.
    x = _x(ntd)
    vol = R.chiral_volumes(x, ntd_rs)
    assert (torch.sign(vol) == torch.sign(ntd_rs.chiral_ideal_A3)).float().mean() > 0.99
    assert R.plane_loss(x, ntd_rs) < 1.0 and R.omega_loss(x, ntd_rs) < 2.0


def test_ideal_is_minimum_and_distortion_raises_losses(piece):
    """Minimising the restraint losses alone drives them to ~0; distortion raises every term."""
    ntd_rs = R.build_restraints(piece)
    x0 = _x(piece)
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], max_iter=150, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = R.bond_loss(x, ntd_rs) + R.angle_loss(x, ntd_rs) + R.plane_loss(x, ntd_rs) + R.chirality_loss(x, ntd_rs)
        loss.backward()
        return loss

    opt.step(closure)
    ideal = x.detach()
    assert R.bond_loss(ideal, ntd_rs) < 0.05 and R.angle_loss(ideal, ntd_rs) < 0.1
    assert R.bond_rmsd(ideal, ntd_rs) < 0.005
    distorted = ideal + 0.1 * torch.randn(ideal.shape, generator=torch.Generator().manual_seed(0))
    for term in (R.bond_loss, R.angle_loss, R.plane_loss, R.chirality_loss, R.omega_loss):
        assert term(distorted, ntd_rs) > term(ideal, ntd_rs) + 0.1, term.__name__


def test_gradient_points_back_to_ideal_bond(ntd, ntd_rs):
    x = _x(ntd).clone()
    i, j = ntd_rs.bond_index[0].tolist()
    direction = (x[j] - x[i]) / (x[j] - x[i]).norm()
    x[j] = x[j] + 0.3 * direction  # stretch one bond
    x.requires_grad_(True)
    R.bond_loss(x, ntd_rs).backward()
    # Gradient descent moves atom j back toward i.
    assert float((-x.grad[j]) @ direction) < 0


def test_omega_restraint_is_periodic_and_keeps_cis(ntd):
    rs = R.build_restraints(ntd)
    x = _x(ntd)
    omega = R.dihedrals(x, rs.omega_index)
    trans = rs.omega_ideal_rad == math.pi
    # Trans targets at ±180° score the same either side of the wrap.
    assert torch.all(torch.cos(omega[trans]) < -0.8)


def test_stretched_link_still_restrained(ntd):
    """A perturbed start with C–N stretched past gemmi's connection test keeps its peptide restraints."""
    arr = ntd.atoms()
    shifted = arr.coords.copy()
    second = arr.residue_index == 1
    shifted[second] += np.array([1.2, 0.0, 0.0], dtype=np.float32)  # C(0)–N(1) now ~2.5 Å
    rs = R.build_restraints(ntd.with_coordinates(shifted))
    assert rs.bond_index.shape[0] == R.build_restraints(ntd).bond_index.shape[0]


def test_subset_and_involving_reindex(ntd, ntd_rs):
    arr = ntd.atoms()
    keep = arr.residue_index < 20
    sub = ntd_rs.subset(keep)
    assert sub.n_atoms == int(keep.sum())
    assert int(sub.bond_index.max()) < sub.n_atoms
    x = _x(ntd)
    # The kept bonds measure the same lengths in the subset's indexing.
    assert torch.allclose(
        R.bond_lengths(x[torch.as_tensor(keep)], sub).sort().values,
        R.bond_lengths(x, ntd_rs)[(torch.as_tensor(keep)[ntd_rs.bond_index]).all(1)].sort().values,
    )
    inv = ntd_rs.involving(torch.as_tensor(keep))
    assert 0 < inv.bond_index.shape[0] < ntd_rs.bond_index.shape[0]


def test_rama_prior_matches_validation_and_favours_favoured(ntd):
    arr = ntd.atoms()
    rama = build_rama(arr)
    val = ramachandran(ntd)
    assert rama.category.numel() == val.n_residues
    x = _x(ntd)
    phi, psi = phi_psi(x, rama)
    by_res = {(r.number, r.name): (r.phi_deg, r.psi_deg, r.classification) for r in val.residues}
    e = rama_energy(x, rama)
    fav, other = [], []
    for k, r in enumerate(rama.residue.tolist()):
        ref = by_res[(int(arr.residue_numbers[r]), arr.residue_names[r])]
        assert math.degrees(float(phi[k])) == pytest.approx(ref[0], abs=0.01)
        assert math.degrees(float(psi[k])) == pytest.approx(ref[1], abs=0.01)
        (fav if ref[2] == "favored" else other).append(float(e[k]))
    assert np.mean(fav) < np.mean(other)
    # General-case energies: alpha helix and beta sheet low, the empty (phi > 0, psi ~ -120) region high.
    from cryostack.chem.ramachandran import CATEGORIES
    from cryostack.geometry.ramachandran_prior import _PAD, energy_tables

    table = energy_tables()[CATEGORIES.index("general")]

    def at(phi_deg, psi_deg):
        return float(table[int((psi_deg + 179) / 2) + _PAD, int((phi_deg + 179) / 2) + _PAD])

    assert at(-63, -41) < 1.0 and at(-119, 131) < 1.0 and at(61, -121) > 4.0


def test_rama_gradient_moves_outlier_toward_favoured(piece):
    """Descending the prior from an outlier (phi, psi) raises the Top8000 score."""
    from cryostack.chem.ramachandran import score

    ntd = piece
    arr = ntd.atoms()
    rama = build_rama(arr)
    k = next(i for i in range(rama.category.numel()) if int(rama.category[i]) == 0)  # a general residue
    one = type(rama)(
        rama.phi_index[k : k + 1], rama.psi_index[k : k + 1], rama.category[k : k + 1], rama.residue[k : k + 1]
    )
    # Rotate the residue's psi into an outlier region by moving the following N (and beyond) about CA–C.
    x = _x(ntd).clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.02)
    target = torch.tensor([math.radians(60.0), math.radians(-120.0)])
    for _ in range(100):  # drive (phi, psi) into the outlier region first
        opt.zero_grad()
        phi, psi = phi_psi(x, one)
        (1 - torch.cos(phi - target[0]) + 1 - torch.cos(psi - target[1])).sum().backward()
        opt.step()
    phi, psi = (math.degrees(float(v)) for v in phi_psi(x.detach(), one))
    start = score("general", phi, psi)
    assert start < 0.02
    opt = torch.optim.Adam([x], lr=0.02)
    for _ in range(100):
        opt.zero_grad()
        rama_loss(x, one).backward()
        opt.step()
    phi2, psi2 = (math.degrees(float(v)) for v in phi_psi(x.detach(), one))
    assert score("general", phi2, psi2) > max(start, 0.02)


def test_rotamer_prior_low_for_real_side_chains_and_descends(ntd):
    arr = ntd.atoms()
    rot = build_rotamers(arr)
    assert rot.n_residues > 150
    x = _x(ntd)
    e_real = rotamer_energy(x, rot)
    assert float(e_real.median()) < 1.5
    # Scrambled side chains score worse; descending the prior lowers the energy.
    noisy = x + 0.4 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    assert rotamer_loss(noisy, rot) > rotamer_loss(x, rot)
    y = noisy.clone().requires_grad_(True)
    opt = torch.optim.Adam([y], lr=0.02)
    for _ in range(15):
        opt.zero_grad()
        rotamer_loss(y, rot).backward()
        opt.step()
    assert rotamer_loss(y.detach(), rot) < rotamer_loss(noisy, rot)


def test_rotamer_energy_batched_equals_per_grid_lookup(ntd):
    """All grids in one look-up (padded to 4 chis) give each grid's own interpolation."""
    from cryostack.geometry.restraints import dihedrals
    from cryostack.geometry.rotamer_prior import _interpolate, energy_grid

    rot = build_rotamers(ntd.atoms())
    x = _x(ntd) + 0.3 * torch.randn(_x(ntd).shape, generator=torch.Generator().manual_seed(2))
    per_grid = []
    for name, q in rot.groups.items():
        s, n, _ = q.shape
        chis = torch.rad2deg(dihedrals(x, q.reshape(-1, 4))).reshape(s, n)
        per_grid.append(_interpolate(*energy_grid(name), chis))
    assert len(rot.groups) >= 10
    assert torch.allclose(rotamer_energy(x, rot), torch.cat(per_grid), atol=1e-4)


def test_cbeta_term_agrees_with_validation(ntd):
    arr = ntd.atoms()
    cb = build_cbeta(arr)
    x = _x(ntd)
    ours = cbeta_deviations(x, cb).numpy()
    ref = validate_cbeta(ntd)
    theirs = {(d.number, d.name): d.deviation_A for d in ref.residues if not d.altloc}
    pairs = [
        (ours[k], theirs[(int(arr.residue_numbers[r]), arr.residue_names[r])])
        for k, r in enumerate(arr.residue_index[cb.index[:, 1].numpy()])
        if (int(arr.residue_numbers[r]), arr.residue_names[r]) in theirs
    ]
    assert len(pairs) > 150
    a, b = np.array(pairs).T
    assert np.max(np.abs(a - b)) < 2e-3
    # Moving CB off its ideal position raises the loss.
    y = x.clone()
    y[cb.index[:, 3]] += 0.3
    assert cbeta_loss(y, cb) > cbeta_loss(x, cb) + 1.0


def test_clash_term_excludes_bonded_and_repels_overlaps(ntd, ntd_rs):
    arr = ntd.atoms()
    term = ClashTerm(arr.elements, ntd_rs.excluded_pairs)
    x = _x(ntd)
    base = float(term(x))
    assert base < 0.05  # a deposited model: bonded neighbours are excluded, few contacts penalised
    # Push two non-bonded atoms of different residues together: the term rises and its gradient separates them.
    i = int(np.nonzero(arr.residue_index == 10)[0][0])
    far = np.linalg.norm(arr.coords - arr.coords[i], axis=1)
    cand = np.nonzero((arr.residue_index > 20) & (far < 8))[0]
    j = int(cand[0])
    y = x.clone()
    y[j] = y[i] + torch.tensor([1.5, 0.0, 0.0])
    y.requires_grad_(True)
    loss = term(y)
    assert float(loss.detach()) > base + 0.1
    loss.backward()
    assert float((y.grad[j] - y.grad[i])[0]) < 0  # descent moves j further along +x from i


def test_clash_pair_list_kept_between_rebuilds_misses_nothing(ntd, ntd_rs):
    """The pair list keeps only pairs that can touch before the next rebuild; after every atom has
    moved just under half the skin (no rebuild) it gives the same loss as a fresh list."""
    arr = ntd.atoms()
    term = ClashTerm(arr.elements, ntd_rs.excluded_pairs)
    x = _x(ntd)
    term(x)
    g = torch.Generator().manual_seed(3)
    step = torch.randn(x.shape, generator=g)
    y = x + 0.49 * term.skin_A * step / step.norm(dim=1, keepdim=True)
    rebuilds = term.rebuilds
    moved = term(y)
    assert term.rebuilds == rebuilds
    fresh = ClashTerm(arr.elements, ntd_rs.excluded_pairs)(y)
    assert float(fresh) > 1.0  # the moves created clashes to find
    assert torch.allclose(moved, fresh)
