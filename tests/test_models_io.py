"""Atomic models: PDB/mmCIF reading and writing, the flat atom view, residue classes, bad input."""

from __future__ import annotations

import gzip

import gemmi
import numpy as np
import pytest

from cryostack.chem.residues import main_chain_mask
from cryostack.errors import InputError
from cryostack.io.models import DNA, OTHER, PROTEIN, RNA, WATER, read_structure, residue_class

FACTIN_PDB = "maps/emd_5168_factin/3MFP.pdb"
SPIKE_PDB = "maps/emd_21457_spike_ntd_segment/6vyb_Ndom.pdb"
AF3_CIF = "maps/cryonet_refine_boxed/6ksw_af3.cif"  # three chains


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def _residue(name, num, icode, atoms, *, het=False, x0=0.0):
    r = gemmi.Residue()
    r.name = name
    r.seqid = gemmi.SeqId(num, icode)
    r.het_flag = "H" if het else "A"
    for i, (atom_name, element) in enumerate(atoms):
        a = gemmi.Atom()
        a.name = atom_name
        a.element = gemmi.Element(element)
        a.pos = gemmi.Position(x0 + i * 0.51, 1.0 + i * 0.73, -2.0 + i * 0.37)
        a.b_iso = 10.0 + i
        a.occ = 1.0
        r.add_atom(a)
    return r


NA_ATOMS = [("P", "P"), ("OP1", "O"), ("C1'", "C"), ("N1", "N")]
AA_ATOMS = [("N", "N"), ("CA", "C"), ("C", "C"), ("O", "O"), ("CB", "C")]


def tiny_structure(n_models: int = 1) -> gemmi.Structure:
    """DNA chain D, RNA chain R, protein chain H with insertion codes 52, 52A, 52B, a water and a ligand."""
    st = gemmi.Structure()
    for m in range(n_models):
        model = gemmi.Model(str(m + 1))
        dna = gemmi.Chain("D")
        for i, name in enumerate(["DA", "DC", "DG", "DT"]):
            dna.add_residue(_residue(name, i + 1, " ", NA_ATOMS, x0=4.0 * i + m))
        rna = gemmi.Chain("R")
        for i, name in enumerate(["A", "C", "G", "U"]):
            rna.add_residue(_residue(name, i + 10, " ", NA_ATOMS, x0=20.0 + 4.0 * i + m))
        prot = gemmi.Chain("H")
        for i, (name, num, ic) in enumerate(
            [("ALA", 51, " "), ("GLY", 52, " "), ("SER", 52, "A"), ("LYS", 52, "B"), ("TRP", 53, " ")]
        ):
            prot.add_residue(_residue(name, num, ic, AA_ATOMS, x0=40.0 + 3.8 * i + m))
        prot.add_residue(_residue("NAG", 301, " ", [("C1", "C"), ("O1", "O")], het=True, x0=70.0 + m))
        prot.add_residue(_residue("HOH", 401, " ", [("O", "O")], het=True, x0=80.0 + m))
        for ch in (dna, rna, prot):
            model.add_chain(ch)
        st.add_model(model)
    st.setup_entities()
    return st


def assert_same_atoms(a, b, *, coord_tol=1e-3):
    assert a.n_atoms == b.n_atoms
    assert a.chain_ids == b.chain_ids
    np.testing.assert_array_equal(a.residue_numbers, b.residue_numbers)
    assert a.insertion_codes == b.insertion_codes
    assert a.residue_names == b.residue_names
    assert a.atom_names == b.atom_names
    assert a.elements == b.elements
    np.testing.assert_array_equal(a.residue_index, b.residue_index)
    np.testing.assert_array_equal(a.chain_index, b.chain_index)
    np.testing.assert_array_equal(a.residue_class, b.residue_class)
    np.testing.assert_allclose(a.coords, b.coords, atol=coord_tol)
    np.testing.assert_allclose(a.b_factors, b.b_factors, atol=0.01)
    np.testing.assert_allclose(a.occupancies, b.occupancies, atol=0.01)


def assert_one_line_input_error(excinfo, path) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and "\r" not in msg, msg
    assert str(path) in msg, msg
    return msg


@pytest.fixture
def tiny_pdb(tmp_path):
    path = tmp_path / "tiny.pdb"
    path.write_text(tiny_structure().make_pdb_string(gemmi.PdbWriteOptions()))
    return path


# =============================================================================================
# Reading
# =============================================================================================
def test_read_pdb(shared_file):
    path = shared_file(FACTIN_PDB)
    s = read_structure(path)
    ref = gemmi.read_structure(str(path))
    assert s.source == str(path)
    assert s.n_atoms == ref[0].count_atom_sites() > 2000
    a = s.atoms()
    assert a.n_atoms == s.n_atoms
    assert a.chain_ids == [ch.name for ch in ref[0]]
    assert a.coords.dtype == np.float32 and a.coords.shape == (s.n_atoms, 3)
    first = ref[0][0][0][0]
    np.testing.assert_allclose(a.coords[0], first.pos.tolist(), atol=1e-4)
    assert a.atom_names[0] == first.name
    assert a.residue_numbers[0] == ref[0][0][0].seqid.num
    assert (a.residue_class == PROTEIN).all()
    assert np.isfinite(s.center_of_mass()).all()


def test_read_mmcif(shared_file):
    path = shared_file(AF3_CIF)
    s = read_structure(path)
    ref = gemmi.read_structure(str(path))
    assert s.n_atoms == ref[0].count_atom_sites()
    summary = s.summary()
    assert summary["chains"] == len(ref[0]) == 3
    assert summary["atoms"] == s.n_atoms
    for detail in summary["chain_details"]:
        assert detail["polymer_type"] == "PeptideL" and len(detail["sequence"]) == detail["residues"]


def test_glycan_is_other(shared_file):
    s = read_structure(shared_file(SPIKE_PDB))
    a = s.atoms()
    nag = [i for i, n in enumerate(a.residue_names) if n == "NAG"]
    assert nag and all(a.residue_class[i] == OTHER for i in nag)
    assert not a.is_polymer[np.isin(a.residue_index, nag)].any()


def test_gzipped_model(tmp_path, tiny_pdb):
    gz = tmp_path / "tiny.pdb.gz"
    gz.write_bytes(gzip.compress(tiny_pdb.read_bytes()))
    assert_same_atoms(read_structure(gz).atoms(), read_structure(tiny_pdb).atoms())


# =============================================================================================
# Writing
# =============================================================================================
@pytest.mark.parametrize("suffix", [".cif", ".pdb", ".cif.gz", ".pdb.gz", ".mmcif", ".ent"])
def test_round_trip_tiny(suffix, tmp_path, tiny_pdb):
    s = read_structure(tiny_pdb)
    out = s.write(tmp_path / f"out{suffix}")
    raw = out.read_bytes()
    if suffix.endswith(".gz"):
        assert raw[:2] == b"\x1f\x8b"
        raw = gzip.decompress(raw)
    text = raw.decode()
    if ".pdb" in suffix or suffix == ".ent":
        assert text.count("\nATOM  ") + text.count("\nHETATM") + text.startswith("ATOM") >= s.n_atoms - 1
        assert "data_" not in text
    else:
        assert text.startswith("data_") and "_atom_site." in text
    s2 = read_structure(out)
    assert_same_atoms(s.atoms(), s2.atoms())
    assert s2.atoms().insertion_codes[8:13] == ["", "", "A", "B", ""]
    assert s2.polymer_types() == {"D": "Dna", "R": "Rna", "H": "PeptideL"}


@pytest.mark.parametrize("model_rel", [FACTIN_PDB, AF3_CIF, SPIKE_PDB])
@pytest.mark.parametrize("suffix", [".cif", ".pdb"])
def test_round_trip_real(model_rel, suffix, shared_file, tmp_path):
    s = read_structure(shared_file(model_rel))
    s2 = read_structure(s.write(tmp_path / f"out{suffix}"))
    assert_same_atoms(s.atoms(), s2.atoms())
    assert s2.sequences() == s.sequences()


def test_mmcif_keeps_author_chain_ids_and_numbering(tmp_path, tiny_pdb):
    s = read_structure(tiny_pdb)
    out = s.write(tmp_path / "out.cif")
    block = gemmi.cif.read(str(out)).sole_block()
    table = block.find("_atom_site.", ["auth_asym_id", "auth_seq_id", "pdbx_PDB_ins_code"])
    auth = {(row[0], row[1], row[2]) for row in table}
    assert ("H", "52", "A") in auth and ("H", "52", "B") in auth and ("D", "1", "?") in auth


def test_write_refuses_to_overwrite_source(tmp_path, tiny_pdb):
    before = tiny_pdb.read_bytes()
    s = read_structure(tiny_pdb)
    with pytest.raises(InputError) as ei:
        s.write(tiny_pdb)
    assert_one_line_input_error(ei, tiny_pdb)
    other = tmp_path / "map.mrc"
    other.write_bytes(b"x")
    with pytest.raises(InputError):
        s.write(other, protect=(other,))
    assert tiny_pdb.read_bytes() == before and other.read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.mrc", "tiny.pdb"]


def test_multi_model_first_used_others_kept(tmp_path):
    path = tmp_path / "nmr.pdb"
    path.write_text(tiny_structure(n_models=2).make_pdb_string(gemmi.PdbWriteOptions()))
    s = read_structure(path)
    assert len(s.gemmi) == 2
    a = s.atoms()
    assert a.n_atoms == s.gemmi[0].count_atom_sites()
    moved = s.with_coordinates(a.coords + 5.0)
    s2 = read_structure(moved.write(tmp_path / "nmr_out.pdb"))
    assert len(s2.gemmi) == 2
    np.testing.assert_allclose(s2.atoms().coords, a.coords + 5.0, atol=1e-3)
    second_before = np.array([cra.atom.pos.tolist() for cra in s.gemmi[1].all()])
    second_after = np.array([cra.atom.pos.tolist() for cra in s2.gemmi[1].all()])
    np.testing.assert_allclose(second_after, second_before, atol=1e-3)


# =============================================================================================
# Atom arrays and with_coordinates
# =============================================================================================
def test_with_coordinates_identity(shared_file):
    s = read_structure(shared_file(FACTIN_PDB))
    a = s.atoms()
    same = s.with_coordinates(a.coords)
    assert_same_atoms(a, same.atoms(), coord_tol=1e-5)
    assert same.gemmi.make_pdb_string() == s.gemmi.make_pdb_string()


def test_with_coordinates_shift_moves_atoms_keeps_metadata(tmp_path, tiny_pdb):
    s = read_structure(tiny_pdb)
    a = s.atoms()
    moved = s.with_coordinates(a.coords + np.array([1.0, 1.0, 1.0], dtype=np.float32))
    b = moved.atoms()
    np.testing.assert_allclose(b.coords - a.coords, 1.0, atol=1e-5)
    assert b.atom_names == a.atom_names and b.chain_ids == a.chain_ids
    np.testing.assert_array_equal(b.b_factors, a.b_factors)
    np.testing.assert_array_equal(b.residue_numbers, a.residue_numbers)
    assert b.insertion_codes == a.insertion_codes
    # the original is untouched
    np.testing.assert_array_equal(s.atoms().coords, a.coords)
    # new B-factors when asked; survives writing
    new_b = np.linspace(5, 50, a.n_atoms).astype(np.float32)
    rewritten = read_structure(s.with_coordinates(a.coords, b_factors=new_b).write(tmp_path / "b.cif"))
    np.testing.assert_allclose(rewritten.atoms().b_factors, new_b, atol=0.01)
    with pytest.raises(ValueError):
        s.with_coordinates(a.coords[:-1])


def test_nucleic_acids_classified(tiny_pdb):
    s = read_structure(tiny_pdb)
    a = s.atoms()
    by_name = dict(zip(a.residue_names, a.residue_class.tolist()))
    for name in ("DA", "DC", "DG", "DT"):
        assert by_name[name] == DNA
    for name in ("A", "C", "G", "U"):
        assert by_name[name] == RNA
    assert by_name["ALA"] == PROTEIN and by_name["HOH"] == WATER and by_name["NAG"] == OTHER
    assert s.polymer_types() == {"D": "Dna", "R": "Rna", "H": "PeptideL"}
    assert s.sequences() == {"D": "ACGT", "R": "ACGU", "H": "AGSKW"}
    classes = s.summary()["residues_by_class"]
    assert classes == {"protein": 5, "DNA": 4, "RNA": 4, "water": 1, "other": 1}
    # per-atom masks: phosphate backbone counts, bases and ligand atoms do not
    names = np.array(a.atom_names)
    assert main_chain_mask(a)[(names == "P") | (names == "C1'")].all()
    assert not main_chain_mask(a)[names == "N1"].any()
    assert not a.is_polymer[np.array(a.residue_class)[a.residue_index] >= WATER].any()
    assert not a.is_hydrogen.any()


def test_residue_class_function():
    assert residue_class("GLY") == PROTEIN
    assert residue_class("DT") == DNA
    assert residue_class("U") == RNA
    assert residue_class("HOH") == WATER
    assert residue_class("ZZZ_NOT_A_RESIDUE") == OTHER


# =============================================================================================
# Bad input
# =============================================================================================
@pytest.mark.parametrize(
    "name,content",
    [
        ("header_only.pdb", "HEADER    NOTHING HERE\nEND\n"),
        ("empty.pdb", ""),
        ("empty.cif", ""),
        ("prose.pdb", "This is a lab notebook entry, not a model.\nNothing to see.\n"),
        ("broken.cif", "data_x\n_cell.length_a 10 'unterminated\nloop_\n_atom_site.id\n"),
        ("notcif.cif", "this is not a cif file at all\n"),
        ("binary.pdb", bytes(range(256)) * 4),
        ("no_sites.cif", "data_x\n_entry.id X\n"),
    ],
)
def test_bad_models(name, content, tmp_path):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(InputError) as ei:
        read_structure(path)
    assert_one_line_input_error(ei, path)


def test_missing_model(tmp_path):
    path = tmp_path / "missing.cif"
    with pytest.raises(InputError) as ei:
        read_structure(path)
    assert "not found" in assert_one_line_input_error(ei, path)


def test_directory_is_not_a_model(tmp_path):
    with pytest.raises(InputError) as ei:
        read_structure(tmp_path)
    assert_one_line_input_error(ei, tmp_path)
