"""DNA and RNA in refinement: restraints (links, base planes, sugar chirality), density of P,
protein-only priors skipping nucleotides, ``refine`` and ``validate`` on nucleic-acid models.

The models in ``tests/data/nucleic`` are built from monomer-library ideal coordinates and
regularised (see its README); maps are simulated from them, so they are the truth here.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import gemmi
import numpy as np
import pytest
import torch

from cryostack.density.simulate import simulate_density
from cryostack.geometry import restraints as R
from cryostack.geometry.cbeta import build_cbeta
from cryostack.geometry.ramachandran_prior import build_rama
from cryostack.geometry.rotamer_prior import build_rotamers
from cryostack.io.maps import GridSpec
from cryostack.io.models import DNA, PROTEIN, RNA, Structure, read_structure
from cryostack.refine import RefineConfig, RefinementObjective, refine
from cryostack.validate import validate
from cryostack.validate.geometry import geometry

DATA = Path(__file__).parent / "data" / "nucleic"
RES = 3.5
#: The monomer library's phosphodiester link: O3'(i)–P(i+1) ideal length and esd (Å).
O3P_IDEAL_A, O3P_ESD_A = 1.607, 0.01


def _model(name: str) -> Structure:
    return read_structure(DATA / f"{name}.pdb")


def _links(s: Structure, rs: R.RestraintSet) -> list[int]:
    """Rows of ``rs.bond_index`` that are O3'(i)–P(j) bonds between residues."""
    arr = s.atoms()
    out = []
    for k, (i, j) in enumerate(rs.bond_index.tolist()):
        if arr.residue_index[i] != arr.residue_index[j] and {arr.atom_names[i], arr.atom_names[j]} == {"O3'", "P"}:
            out.append(k)
    return out


def _rmsd_A(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((a - b) ** 2).sum(1).mean()))


@pytest.fixture(scope="module")
def models():
    return {n: _model(n) for n in ("rna8", "dna8", "protein_rna")}


# -- the truth models and their generator --------------------------------------------------------
def test_truth_models_are_at_library_geometry(models):
    kinds = {"rna8": {"R": "Rna"}, "dna8": {"D": "Dna"}, "protein_rna": {"A": "PeptideL", "R": "Rna"}}
    for name, s in models.items():
        assert s.polymer_types() == kinds[name]
        assert not any(s.atoms().is_hydrogen)
        g = geometry(s)
        assert g.bond_rmsd < 0.005 and g.angle_rmsd < 1.0, name
        assert not g.bond_outliers and not g.angle_outliers and not g.chirality_errors, name
        assert g.clashscore == 0.0 and not g.residues_without_dictionary, name


def test_generator_joins_ideal_monomers_by_ideal_links():
    spec = importlib.util.spec_from_file_location("nucleic_make_models", DATA / "make_models.py")
    mm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mm)
    residues = mm.assemble(["A", "U", "DG", "DC"], -153.0, -71.0)
    for prev, res in zip(residues, residues[1:]):
        p = {n: x for n, _, x in prev}
        r = {n: x for n, _, x in res}
        assert "OP3" not in r and all(e != "H" for _, e, _ in res)
        assert np.linalg.norm(r["P"] - p["O3'"]) == pytest.approx(O3P_IDEAL_A, abs=1e-3)
        u, v = p["C3'"] - p["O3'"], r["P"] - p["O3'"]
        assert math.degrees(math.acos(u @ v / np.linalg.norm(u) / np.linalg.norm(v))) == pytest.approx(121.08, abs=0.01)


# -- restraints ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, chiral_centres", [("rna8", {"C1'", "C2'", "C3'", "C4'"}), ("dna8", {"C1'", "C3'", "C4'"})]
)
def test_restraints_cover_links_base_planes_and_sugar_chirality(models, name, chiral_centres):
    s = models[name]
    arr = s.atoms()
    n_res = len(arr.residue_names)
    rs = R.build_restraints(s)
    assert not rs.residues_without_dictionary
    # One O3'–P link per step, at the library's ideal, and the link's four angles.
    links = _links(s, rs)
    assert len(links) == n_res - 1
    assert torch.allclose(rs.bond_ideal_A[links], torch.tensor(O3P_IDEAL_A)) and torch.allclose(
        rs.bond_esd_A[links], torch.tensor(O3P_ESD_A)
    )
    cross = [
        tuple(arr.atom_names[i] for i in row) for row in rs.angle_index.tolist() if len(set(arr.residue_index[row])) > 1
    ]
    names = {frozenset([a[0], a[2]]) | {a[1] + "*"} for a in cross}
    assert len(cross) == 4 * (n_res - 1)
    assert names == {
        frozenset({"C3'", "P", "O3'*"}),
        frozenset({"O5'", "O3'", "P*"}),
        frozenset({"OP1", "O3'", "P*"}),
        frozenset({"OP2", "O3'", "P*"}),
    }
    # A base plane per residue that includes C1'; sugar chiral centres with the library's signs.
    plane_atoms = [{arr.atom_names[i] for i in row[m].tolist()} for row, m in zip(rs.plane_index, rs.plane_mask)]
    assert len(plane_atoms) == n_res and all("C1'" in p and "C4" in p and "C2" in p for p in plane_atoms)
    centres = [arr.atom_names[i] for i in rs.chiral_index[:, 0].tolist()]
    assert len(centres) == len(chiral_centres) * n_res and set(centres) == chiral_centres
    x = torch.as_tensor(arr.coords)
    assert torch.equal(torch.sign(R.chiral_volumes(x, rs)), torch.sign(rs.chiral_ideal_A3))
    assert rs.omega_index.shape[0] == 0
    for loss in (R.bond_loss, R.angle_loss, R.plane_loss, R.chirality_loss):
        assert float(loss(x, rs)) < 1.0
    # The mirror image inverts every sugar centre: the restraint and validate both see it.
    mirror = s.with_coordinates(arr.coords * np.array([-1.0, 1.0, 1.0]))
    assert float(R.chirality_loss(torch.as_tensor(mirror.atoms().coords), rs)) > 100.0
    assert len(geometry(mirror).chirality_errors) == len(centres)


def test_stretched_link_is_still_restrained(models):
    s = models["rna8"]
    arr = s.atoms()
    look = arr.atom_lookup()
    xyz = arr.coords.copy()
    o3, p = xyz[look[(3, "O3'")]], xyz[look[(4, "P")]]
    xyz[arr.residue_index >= 4] += 1.5 * (p - o3) / np.linalg.norm(p - o3)
    stretched = s.with_coordinates(xyz)
    assert np.linalg.norm(xyz[look[(4, "P")]] - xyz[look[(3, "O3'")]]) > 3.0
    assert len(_links(stretched, R.build_restraints(stretched))) == len(arr.residue_names) - 1


def test_real_nucleotides_link_only_consecutive_residues_and_no_omega_across_a_gap():
    # Six nucleotides of PDB 1ZBL (chain C: A2, U11; chain D: DG13, DA14, DT16, DC17) and a
    # protein backbone with one residue deleted (C(i)–N(i+2) 3.2 Å apart).
    s = read_structure(Path(__file__).parent / "data" / "validate_rama" / "mixed_break_ligand_na.pdb")
    arr = s.atoms()
    rs = R.build_restraints(s)
    pairs = sorted(
        (int(arr.residue_numbers[arr.residue_index[i]]), int(arr.residue_numbers[arr.residue_index[j]]))
        for i, j in rs.bond_index[_links(s, rs)].tolist()
    )
    assert [tuple(sorted(p)) for p in pairs] == [(13, 14), (16, 17)]
    nums = arr.residue_numbers[arr.residue_index[rs.omega_index[:, [0, 3]].numpy()]]
    assert len(nums) > 50 and np.all(nums[:, 1] - nums[:, 0] == 1)


# -- density and the objective ------------------------------------------------------------------
def test_phosphorus_density_integrates_to_its_scattering_factor():
    grid = GridSpec((40, 40, 40), (0.5, 0.5, 0.5), (-10.0, -10.0, -10.0))
    for element in ("P", "C", "O", "N"):
        el = gemmi.Element(element)
        m = simulate_density(
            torch.zeros(1, 3, dtype=torch.float64), torch.tensor([el.atomic_number]), grid, resolution_A=RES
        )
        assert float(m.sum()) * 0.125 == pytest.approx(sum(el.c4322.get_coefs()[:5]), rel=1e-3)


def test_objective_skips_protein_priors_for_nucleotides(models, simulated_map):
    s = models["rna8"]
    arr = s.atoms()
    assert build_rama(arr).phi_index.shape[0] == 0 and build_rotamers(arr).n_residues == 0
    assert build_cbeta(arr).index.shape[0] == 0
    obj = RefinementObjective(s, simulated_map(s, RES), RES)
    assert bool(obj.movable.all())
    x = (obj.init_coords + 0.1 * torch.randn_like(obj.init_coords)).requires_grad_(True)
    total, terms = obj(x)
    for k in ("omega", "rama", "rotamer", "cbeta"):
        assert float(terms[k]) == 0.0
    total.backward()
    assert torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0
    # In a protein + RNA model the priors cover exactly the protein residues (12, 10 with φ and ψ).
    mixed = models["protein_rna"].atoms()
    protein = set(np.nonzero(mixed.residue_class == PROTEIN)[0].tolist())
    rama = build_rama(mixed)
    assert rama.phi_index.shape[0] == 10 and set(rama.residue.tolist()) <= protein
    rot = build_rotamers(mixed)
    assert rot.n_residues > 0
    assert all(set(mixed.residue_index[q.numpy().ravel()].tolist()) <= protein for q in rot.groups.values())
    assert set(mixed.residue_index[build_cbeta(mixed).index.numpy().ravel()].tolist()) <= protein


# -- refinement and validation -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["rna8", "dna8", "protein_rna"])
def test_refine_nucleic_acid_recovers_truth(models, name, simulated_map):
    truth = models[name]
    dmap = simulated_map(truth, RES)
    ref = truth.atoms().coords
    rng = np.random.default_rng(1)
    start = truth.with_coordinates(ref + np.array([0.8, -0.5, 0.4]) + rng.normal(0, 0.25, ref.shape))
    config = RefineConfig(max_recycles=4, steps_per_recycle=25, rigid_steps=20, seed=1)
    refined, result = refine(start, dmap, RES, config)

    cc0, cc1 = result.history[0].cc, result.history[result.best_recycle].cc
    assert cc1 > 0.97 and cc1 > cc0 + 0.1
    out = refined.atoms().coords
    assert _rmsd_A(out, ref) < 0.4 * _rmsd_A(start.atoms().coords, ref)
    arr = truth.atoms()
    na = np.isin(arr.residue_class[arr.residue_index], (DNA, RNA))
    assert _rmsd_A(out[na], ref[na]) < 0.4

    rs = R.build_restraints(truth)
    x = torch.as_tensor(out)
    assert R.bond_rmsd(x, rs) <= 0.02 and R.angle_rmsd_deg(x, rs) < 2.5
    links = R.bond_lengths(x, rs)[_links(truth, rs)]
    assert len(links) == 7 and float((links - O3P_IDEAL_A).abs().max()) < 0.05

    g = geometry(refined)
    assert not g.chirality_errors and g.n_bonds == rs.bond_index.shape[0]


def test_validate_reports_nucleic_geometry_and_skips_protein_sections(models, simulated_map):
    rna = models["rna8"]
    result = validate(rna, density=simulated_map(rna, RES), resolution_A=RES, compute_q=False)
    rs = R.build_restraints(rna)
    assert result.geometry.n_bonds == rs.bond_index.shape[0] and result.geometry.n_angles == rs.angle_index.shape[0]
    assert result.geometry.bond_rmsd == pytest.approx(
        R.bond_rmsd(torch.as_tensor(rna.atoms().coords, dtype=torch.float64), rs), abs=1e-4
    )
    assert result.ramachandran is None and result.rotamer is None and result.cbeta is None
    assert any("no protein residues" in n for n in result.notes)
    assert result.map_model.cc_mask > 0.95
    assert result.to_dict()["geometry"]["cis_peptides"] == []

    # Protein + RNA: the geometry RMSDs cover both chains, the protein sections only the protein.
    mixed = validate(models["protein_rna"], compute_q=False)
    assert (
        mixed.geometry.n_bonds == R.build_restraints(models["protein_rna"]).bond_index.shape[0] > rs.bond_index.shape[0]
    )
    assert mixed.ramachandran.n_residues == 10 and 0 < mixed.rotamer.n_residues <= 12
    assert all(r["chain"] == "A" for r in mixed.to_dict()["geometry"]["cis_peptides"])
