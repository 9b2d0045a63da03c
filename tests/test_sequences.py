"""FASTA reading (RCSB headers, bad letters) and chain-to-sequence assignment."""

from __future__ import annotations

import pytest

from cryostack.errors import InputError
from cryostack.io.models import read_structure
from cryostack.io.sequences import align_chains_to_fasta, read_fasta

FACTIN_PDB = "maps/emd_5168_factin/3MFP.pdb"

# Hen egg-white lysozyme: unrelated to actin.
LYSOZYME = (
    "KVFGRCELAAAMKRHGLDNYRGYSLGNWVCAAKFESNFNTQATNRNTDGSTDYGILQINSRWWCNDGRTPGSRNLCNIPCSALLSSDITASVNCAKKIVSDGNGMNAWVAWRNRCKGTDVQAWIRGCRL"
)


def write(tmp_path, text, name="seq.fasta"):
    path = tmp_path / name
    path.write_text(text)
    return path


def assert_one_line_input_error(excinfo, path) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and "\r" not in msg, msg
    assert str(path) in msg, msg
    return msg


def test_multi_record_fasta(tmp_path):
    path = write(
        tmp_path,
        ">heavy some description\nEVQLVESGGG\nLVQPGGSLRL\n\n>light\nDIQMTQSPSS\n; a comment line\nLSASVGDRVT\n>dna\nACGTTGCA\n",
    )
    entries = read_fasta(path)
    assert [e.name for e in entries] == ["heavy", "light", "dna"]
    assert entries[0].sequence == "EVQLVESGGGLVQPGGSLRL"
    assert entries[0].description == "heavy some description"
    assert entries[1].sequence == "DIQMTQSPSSLSASVGDRVT"
    assert [e.molecule for e in entries] == ["protein", "protein", "nucleic"]
    assert all(e.chains == [] for e in entries)


def test_rcsb_headers(tmp_path):
    path = write(
        tmp_path,
        ">7K3G_1|Chains A, B[auth C]|Spike glycoprotein|Severe acute respiratory syndrome coronavirus 2 (2697049)\n"
        "MFVFLVLLPLVSSQCVNLT\n"
        ">7K3G_2|Chain D|Nanobody|Lama glama (9844)\n"
        "QVQLQESGGG\n"
        ">1ABC_1|Chains E[auth AA], F[auth BB]|thing|x\n"
        "GGG\n",
    )
    entries = read_fasta(path)
    assert entries[0].name == "7K3G_1"
    assert entries[0].chains == ["A", "C"]
    assert entries[0].description.startswith("7K3G_1|Chains A, B[auth C]|Spike")
    assert entries[1].chains == ["D"]
    assert entries[2].chains == ["AA", "BB"]


def test_lowercase_and_trailing_stop(tmp_path):
    entries = read_fasta(write(tmp_path, ">a\nmkvl*\n>b\nAcDe\nfGh*\n"))
    assert entries[0].sequence == "MKVL"
    assert entries[1].sequence == "ACDEFGH"


@pytest.mark.parametrize("bad_line", ["MKV1L", "MKV@L", "MK-VL"])
def test_invalid_letters(bad_line, tmp_path):
    path = write(tmp_path, f">first\nMKVL\n>second\nMKVL\n{bad_line}\n")
    with pytest.raises(InputError) as ei:
        read_fasta(path)
    msg = assert_one_line_input_error(ei, path)
    assert "line 5" in msg and "second" in msg


@pytest.mark.parametrize(
    "content,problem",
    [
        ("", "no FASTA records"),
        ("\n\n   \n", "no FASTA records"),
        ("MKVL\n>a\nMKVL\n", "before the first"),
        (">a\n>b\nMKVL\n", "empty sequence"),
    ],
)
def test_empty_or_malformed(content, problem, tmp_path):
    path = write(tmp_path, content)
    with pytest.raises(InputError) as ei:
        read_fasta(path)
    assert problem in assert_one_line_input_error(ei, path)


def test_missing_and_binary_fasta(tmp_path):
    missing = tmp_path / "missing.fasta"
    with pytest.raises(InputError) as ei:
        read_fasta(missing)
    assert_one_line_input_error(ei, missing)
    binary = tmp_path / "binary.fasta"
    binary.write_bytes(b">a\n\xff\xfe\x00\x81")
    with pytest.raises(InputError) as ei:
        read_fasta(binary)
    assert_one_line_input_error(ei, binary)


def test_align_actin_chain_to_its_record(shared_file, tmp_path):
    structure = read_structure(shared_file(FACTIN_PDB))
    seqs = structure.sequences()
    assert list(seqs) == ["A"]
    # The deposited construct: the model's sequence plus residues the model does not resolve.
    actin = "MCDD" + seqs["A"]
    path = write(tmp_path, f">decoy|Chains B|lysozyme\n{LYSOZYME}\n>actin|Chains A|Actin\n{actin[:60]}\n{actin[60:]}\n")
    result = align_chains_to_fasta(structure, read_fasta(path))
    assert len(result) == 1
    hit = result[0]
    assert hit.chain == "A" and hit.entry == "actin"
    assert hit.identity >= 99.0
    assert hit.score > 0 and "M" in hit.cigar


def test_align_picks_best_score_when_headers_name_no_chain(shared_file, tmp_path):
    structure = read_structure(shared_file(FACTIN_PDB))
    actin = "MCDD" + structure.sequences()["A"]
    path = write(tmp_path, f">decoy\n{LYSOZYME}\n>actin\n{actin}\n")
    (hit,) = align_chains_to_fasta(structure, read_fasta(path))
    assert hit.entry == "actin" and hit.identity >= 99.0
    # against the decoy alone the identity is low
    (poor,) = align_chains_to_fasta(structure, read_fasta(write(tmp_path, f">decoy\n{LYSOZYME}\n", "d.fasta")))
    assert poor.entry == "decoy" and poor.identity < 50.0
