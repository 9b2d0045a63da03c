"""Model-versus-reference scores, checked against the reference tools on real structures.

- lDDT and Cα lDDT against OpenStructure's ``ost compare-structures`` (skipped without ``ost``),
- TM-score against the Debian ``TMalign`` binary and tmtools' own structural alignment,
- DockQ against the DockQ package's command line run independently.

Real structures: 3MFP (F-actin subunit) and 6VYB's NTD from ``../shared/data``; two deposited
complexes from ProMod3's StructureDB in ``tests/data/reference`` (1N7S, four chains; 1OZ7, two
chains: deposited backbone, rebuilt side chains; see ``make_fixtures.py``). Models are perturbed
copies made here with fixed seeds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gemmi
import numpy as np
import pytest

from cryostack.errors import InputError
from cryostack.io.models import Structure, read_structure
from cryostack.validate.reference import (
    SYMMETRIC_ATOMS,
    TMTOOLS_MAX_PAIRS,
    compare_to_reference,
    lddt,
)

DATA = Path(__file__).parent / "data" / "reference"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # as in conftest.py
SINGLE = {
    "3MFP": "maps/emd_5168_factin/3MFP.pdb",
    "6vyb": "maps/emd_21457_spike_ntd_segment/6vyb_Ndom.pdb",
}
COMPLEX = {"1N7S": DATA / "1N7S_promod.pdb.gz", "1OZ7": DATA / "1OZ7_promod.pdb.gz"}

LDDT_TOL = 0.01
TM_TOL = 0.005
DOCKQ_TOL = 0.01


# ---------------------------------------------------------------------------------------------
# structures and perturbations (deterministic)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def load():
    """``load(name)`` → Structure; skips when a shared-data structure is not available."""
    cache: dict[str, Structure] = {}

    def get(name: str) -> Structure:
        if name not in cache:
            path = COMPLEX.get(name) or SHARED_DATA / SINGLE[name]
            if not Path(path).is_file():
                pytest.skip(f"structure not available: {path}")
            cache[name] = read_structure(path)
        return cache[name]

    return get


def _rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=float)
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    th = np.deg2rad(degrees)
    return np.eye(3) + np.sin(th) * k + (1 - np.cos(th)) * k @ k


def noisy(st: Structure, sigma: float, seed: int = 0) -> Structure:
    xyz = st.atoms().coords.astype(np.float64)
    return st.with_coordinates(xyz + np.random.default_rng(seed).normal(0.0, sigma, xyz.shape))


def rigid(st: Structure, degrees: float = 60.0, shift=(150.0, 0.0, 0.0)) -> Structure:
    xyz = st.atoms().coords.astype(np.float64)
    c = xyz.mean(axis=0)
    return st.with_coordinates((xyz - c) @ _rotation([1, 2, 3], degrees).T + c + np.asarray(shift))


def shifted_part(st: Structure) -> Structure:
    """Rigid 15° + 3 Å move of the last chain (complex) or of the C-terminal half (one chain)."""
    arr = st.atoms()
    xyz = arr.coords.astype(np.float64)
    polymer = arr.is_polymer
    if len(set(arr.chain_index[polymer].tolist())) > 1:
        sel = arr.chain_index == arr.chain_index[polymer].max()
    else:
        sel = arr.residue_index >= np.median(arr.residue_index[polymer])
    c = xyz[sel].mean(axis=0)
    xyz[sel] = (xyz[sel] - c) @ _rotation([0, 0, 1], 15.0).T + c + np.array([3.0, 0.0, 0.0])
    return st.with_coordinates(xyz)


def swapped_symmetric(st: Structure) -> Structure:
    """Exchange the coordinates of every symmetric atom pair (a pure renaming of the model)."""
    g = st.gemmi.clone()
    for chain in g[0]:
        for res in chain:
            for a_name, b_name in SYMMETRIC_ATOMS.get(res.name, ()):
                a, b = res.find_atom(a_name, "*"), res.find_atom(b_name, "*")
                if a is not None and b is not None:
                    pa = gemmi.Position(a.pos.x, a.pos.y, a.pos.z)
                    pb = gemmi.Position(b.pos.x, b.pos.y, b.pos.z)
                    a.pos, b.pos = pb, pa
    return Structure(g)


def relabelled(st: Structure) -> Structure:
    """Residues renumbered (+1000, +37 per chain), chains renamed (A→X ...) and in reverse order."""
    g = st.gemmi.clone()
    chains = []
    for k, chain in enumerate(g[0]):
        c = chain.clone()
        c.name = "XYZWVU"[k]
        for res in c:
            res.seqid.num += 1000 + 37 * k
        chains.append(c)
    model = gemmi.Model("1")
    for c in reversed(chains):
        model.add_chain(c)
    out = gemmi.Structure()
    out.cell = g.cell
    out.add_model(model)
    out.setup_entities()
    return Structure(out)


def truncated(st: Structure, n_start: int = 20, n_end: int = 10) -> Structure:
    """Each chain without its first ``n_start`` and last ``n_end`` polymer residues."""
    g = st.gemmi.clone()
    g.remove_ligands_and_waters()
    for chain in g[0]:
        n = len(chain)
        for k in sorted(set(range(n_start)) | set(range(n - n_end, n)), reverse=True):
            del chain[k]
    return Structure(g)


def without_chain(st: Structure, name: str) -> Structure:
    g = st.gemmi.clone()
    g[0].remove_chain(name)
    return Structure(g)


def merged_single_chain(st: Structure, order: list[str]) -> Structure:
    """The polymer chains in ``order`` concatenated into one chain A, numbered 1..n (for TMalign)."""
    g = st.gemmi.clone()
    g.remove_ligands_and_waters()
    chain = gemmi.Chain("A")
    k = 0
    for name in order:
        for res in g[0][name]:
            r = res.clone()
            k += 1
            r.seqid = gemmi.SeqId(k, " ")
            chain.add_residue(r)
    model = gemmi.Model("1")
    model.add_chain(chain)
    out = gemmi.Structure()
    out.add_model(model)
    out.setup_entities()
    return Structure(out)


def homotrimer(st: Structure) -> Structure:
    """Three copies of a chain around an axis 22 Å from its centre (touching, like an oligomer)."""
    g = st.gemmi.clone()
    g.remove_ligands_and_waters()
    src = g[0][0]
    xyz = np.array([a.pos.tolist() for r in src for a in r])
    centre = xyz.mean(axis=0)
    axis_point = centre + np.array([22.0, 0.0, 0.0])
    model = gemmi.Model("1")
    for k, name in enumerate("ABC"):
        rot = _rotation([0, 0, 1], 120.0 * k)
        chain = src.clone()
        chain.name = name
        for res in chain:
            for atom in res:
                p = (np.array(atom.pos.tolist()) - axis_point) @ rot.T + axis_point
                atom.pos = gemmi.Position(*p)
        model.add_chain(chain)
    out = gemmi.Structure()
    out.add_model(model)
    out.setup_entities()
    return Structure(out)


def write(st: Structure, path: Path) -> Path:
    st.write(path)
    return path


# ---------------------------------------------------------------------------------------------
# reference tools
# ---------------------------------------------------------------------------------------------
def _ost_command() -> tuple[list[str], dict] | None:
    """How to run ``ost compare-structures`` here, or None."""
    exe = shutil.which("ost")
    if exe is None:
        return None
    env = dict(os.environ)
    probe = subprocess.run([exe, "compare-structures", "-h"], capture_output=True, text=True, env=env)
    if probe.returncode == 0 and "--lddt" in probe.stdout:
        return [exe, "compare-structures"], env
    # Debian bookworm's /usr/bin/ost looks for ost_startup.py under python3.11/dist-packages
    # while the package installs it under python3/dist-packages: start the action directly.
    startup = Path("/usr/lib/python3/dist-packages/ost/ost_startup.py")
    action = Path(exe).parent / "ost-compare-structures"
    if startup.is_file() and action.is_file():
        env.update(DNG_ROOT=str(Path(exe).parent.parent), OST_EXEC_DIR=str(Path(exe).parent))
        cmd = ["/usr/bin/python3", "-c", f"exec(open({str(startup)!r}).read())", str(action)]
        probe = subprocess.run(cmd + ["-h"], capture_output=True, text=True, env=env)
        if "--lddt" in probe.stdout:
            return cmd, env
    return None


_STANDARD = ("ALA ARG ASN ASP CYS GLN GLU GLY HIS ILE LEU LYS MET PHE PRO SER THR TRP TYR VAL MSE").split()


@pytest.fixture(scope="session")
def ost(tmp_path_factory):
    """``run(model, reference, mapping, ca=False, by_number=False) -> oligo lDDT`` via OpenStructure."""
    found = _ost_command()
    if found is None:
        pytest.skip("OpenStructure's `ost compare-structures` is not available")
    cmd, env = found
    chemlib = os.environ.get("OST_COMPOUNDS_CHEMLIB")
    if not chemlib or not Path(chemlib).is_file():
        for candidate in (Path("/usr/share/openstructure/compounds.chemlib"),):
            if candidate.is_file():
                chemlib = str(candidate)
                break
        else:
            # no compound library installed: build one for the standard amino acids (~5 s)
            components = Path("/usr/share/openstructure/components.cif.gz")
            tool = shutil.which("chemdict_tool")
            if not components.is_file() or tool is None:
                pytest.skip("no OpenStructure compound library (set OST_COMPOUNDS_CHEMLIB)")
            import gzip

            folder = tmp_path_factory.mktemp("ost_chemlib")
            blocks, keep, found_n = [], False, 0
            with gzip.open(components, "rt") as fh:
                for line in fh:
                    if line.startswith("data_"):
                        if found_n == len(_STANDARD) and not keep:
                            break
                        keep = line[5:].strip() in _STANDARD
                        found_n += keep
                    if keep:
                        blocks.append(line)
            (folder / "std.cif").write_text("".join(blocks))
            subprocess.run(
                [tool, "create", str(folder / "std.cif"), str(folder / "std.chemlib"), "pdb"],
                check=True,
                capture_output=True,
            )
            chemlib = str(folder / "std.chemlib")
    out_dir = tmp_path_factory.mktemp("ost_out")

    def run(model: Path, reference: Path, mapping: dict[str, str], ca: bool = False, by_number: bool = False) -> float:
        out = out_dir / f"{model.stem}_{reference.stem}_{int(ca)}{int(by_number)}.json"
        args = ["-m", str(model), "-r", str(reference), "--lddt", "-cl", chemlib, "-o", str(out)]
        args += ["-c", *[f"{r}:{m}" for m, r in mapping.items()]]  # reference:model pairs
        if ca:
            args.append("-ca")
        if by_number:
            args.append("-rna")
        proc = subprocess.run(cmd + args, capture_output=True, text=True, env=env)
        assert out.is_file(), proc.stdout[-2000:] + proc.stderr[-2000:]
        result = json.loads(out.read_text())["result"]
        scores = next(iter(next(iter(result.values())).values()))["lddt"]
        return float(scores["oligo_lddt"]["global_score"])

    return run


def _tmalign(model: Path, reference: Path) -> float:
    text = subprocess.run(["TMalign", str(model), str(reference)], capture_output=True, text=True).stdout
    return float(re.findall(r"TM-score= ([\d.]+) \(if normalized by length of Chain_2", text)[0])


def _dockq_cli(model: Path, reference: Path, out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "DockQ", str(model), str(reference), "--json", str(out), "--short"],
        capture_output=True,
        text=True,
    )
    assert out.is_file(), proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(out.read_text())


# ---------------------------------------------------------------------------------------------
# invariances
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["3MFP", "6vyb", "1N7S", "1OZ7"])
def test_identical_model_scores_perfectly(load, name):
    ref = load(name)
    r = compare_to_reference(ref, ref)
    assert r.tm_score == pytest.approx(1.0, abs=1e-6)
    assert r.rmsd == pytest.approx(0.0, abs=1e-6)
    assert r.lddt == 1.0 and r.ca_lddt == 1.0
    assert r.ca_displacement == pytest.approx(0.0, abs=1e-9)
    assert r.coverage_3a == 1.0 and r.sequence_match == 1.0
    assert r.chain_mapping == {c: c for c in ref.sequences()}
    if name in COMPLEX:
        assert r.dockq == pytest.approx(1.0, abs=1e-6)
        assert len(r.dockq_interfaces) >= 1
    else:
        assert r.dockq is None and r.dockq_interfaces == []


@pytest.mark.parametrize("name", ["3MFP", "1N7S"])
def test_rigid_body_motion_changes_only_frame_scores(load, name):
    ref = load(name)
    r = compare_to_reference(rigid(ref), ref)
    assert r.tm_score == pytest.approx(1.0, abs=1e-4)
    assert r.rmsd == pytest.approx(0.0, abs=1e-3)
    assert r.lddt == pytest.approx(1.0, abs=1e-9) and r.ca_lddt == pytest.approx(1.0, abs=1e-9)
    assert r.ca_displacement > 100.0  # it moved in the map frame ...
    assert r.coverage_3a == 0.0 and r.sequence_match is None  # ... so nothing is covered
    if name in COMPLEX:
        assert r.dockq == pytest.approx(1.0, abs=1e-4)


def test_renumbered_renamed_reordered_model_scores_the_same(load):
    ref = load("1N7S")
    model = noisy(ref, 0.7, seed=3)
    plain = compare_to_reference(model, ref)
    moved = compare_to_reference(relabelled(model), ref)
    assert moved.chain_mapping == {"X": "A", "Y": "B", "Z": "C", "W": "D"}
    for key in ("tm_score", "rmsd", "lddt", "ca_lddt", "ca_displacement", "coverage_3a", "sequence_match", "dockq"):
        assert getattr(moved, key) == pytest.approx(getattr(plain, key), abs=1e-9), key


def test_truncated_model_is_penalised_by_reference_length(load):
    ref = load("3MFP")
    r = compare_to_reference(truncated(ref, 20, 10), ref)
    n_ref = r.n_reference_residues
    assert r.n_aligned_residues == n_ref - 30
    assert r.rmsd == pytest.approx(0.0, abs=1e-6) and r.ca_displacement == pytest.approx(0.0, abs=1e-9)
    assert r.tm_score == pytest.approx((n_ref - 30) / n_ref, abs=1e-6)  # perfect pairs / reference length
    assert r.coverage_3a == pytest.approx((n_ref - 30) / n_ref)
    assert 0.8 < r.lddt < 0.9


def test_symmetric_side_chains_are_resolved(load):
    ref = load("3MFP")
    r = compare_to_reference(swapped_symmetric(ref), ref)
    assert r.lddt == 1.0


def test_homo_oligomer_chains_are_mapped_by_structure(load, tmp_path):
    ref = homotrimer(load("6vyb"))
    # the copies carry each other's names: model chain B sits where reference chain A is, ...
    g = noisy(ref, 0.5, seed=11).gemmi.clone()
    for chain, new in zip(g[0], "BCA"):
        chain.name = new
    model = Structure(g)
    for candidate in (model, rigid(model)):  # in the given frame, and after a rigid motion
        r = compare_to_reference(candidate, ref)
        assert r.chain_mapping == {"B": "A", "C": "B", "A": "C"}
        assert r.lddt > 0.8 and r.dockq is not None and r.dockq > 0.8
        cli = _dockq_cli(write(candidate, tmp_path / "m.pdb"), write(ref, tmp_path / "r.pdb"), tmp_path / "dq.json")
        assert {m: n for n, m in cli["best_mapping"].items()} == r.chain_mapping
        assert r.dockq == pytest.approx(cli["GlobalDockQ"], abs=DOCKQ_TOL)


def test_missing_and_extra_chains(load):
    ref = load("1N7S")
    r = compare_to_reference(without_chain(ref, "D"), ref)
    assert r.chain_mapping == {"A": "A", "B": "B", "C": "C"}
    assert any("D" in n for n in r.notes)
    assert r.lddt < 0.9 and r.tm_score < 0.85  # chain D counts as missing
    assert {tuple(sorted(i["reference_chains"])) for i in r.dockq_interfaces} <= {("A", "B"), ("A", "C"), ("B", "C")}
    assert r.dockq == pytest.approx(1.0, abs=1e-6)

    r = compare_to_reference(ref, without_chain(ref, "D"))  # the model has an extra chain
    assert r.chain_mapping == {"A": "A", "B": "B", "C": "C"}
    assert r.lddt == 1.0 and r.tm_score == pytest.approx(1.0, abs=1e-6)
    assert any("ignored" in n for n in r.notes)


def test_unrelated_or_empty_inputs_raise_one_line_errors(load):
    with pytest.raises(InputError, match="share no aligned residues") as err:
        compare_to_reference(load("6vyb"), load("3MFP"))
    assert "\n" not in str(err.value)

    g = load("3MFP").gemmi.clone()  # same chain, residue types scrambled
    names = [r.name for r in g[0][0]]
    for res, name in zip(g[0][0], np.random.default_rng(0).permutation(names)):
        res.name = str(name)
    with pytest.raises(InputError, match="share no aligned residues"):
        compare_to_reference(Structure(g), load("3MFP"))

    water = gemmi.read_structure(str(COMPLEX["1OZ7"]))
    for chain in water[0]:
        for res in chain:
            res.name = "HOH"
    with pytest.raises(InputError, match="no protein or nucleic-acid residues"):
        compare_to_reference(load("1OZ7"), Structure(water))


def test_result_serialises(load):
    ref = load("1OZ7")
    d = compare_to_reference(noisy(ref, 1.0), ref).to_dict()
    for key in (
        "tm_score",
        "rmsd",
        "lddt",
        "ca_lddt",
        "ca_displacement",
        "coverage_3a",
        "sequence_match",
        "dockq",
        "chain_mapping",
        "dockq_interfaces",
    ):
        assert key in d
    assert {"reference_chains", "model_chains", "dockq", "fnat", "irmsd", "lrmsd"} <= set(d["dockq_interfaces"][0])
    json.dumps(d)


def test_lddt_function_basics():
    rng = np.random.default_rng(0)
    xyz = rng.uniform(0, 20, (60, 3))
    res = np.arange(60) // 3
    assert lddt(xyz, xyz, res)[0] == 1.0
    missing = xyz.copy()
    missing[0] = np.nan
    score, n = lddt(xyz, missing, res)
    i, j = np.triu_indices(60, 1)
    d = np.linalg.norm(xyz[i] - xyz[j], axis=1)
    keep = (d <= 15.0) & (res[i] != res[j])
    assert n == keep.sum()
    assert score == pytest.approx(1.0 - (keep & ((i == 0) | (j == 0))).sum() / n)


# ---------------------------------------------------------------------------------------------
# agreement with OpenStructure (lDDT)
# ---------------------------------------------------------------------------------------------
LDDT_CASES = [
    # (case id, structure, perturbation, Cα-only, OpenStructure aligns by residue number)
    ("3MFP-noise1", "3MFP", lambda s: noisy(s, 1.0, seed=1), False, False),
    ("3MFP-noise1-ca", "3MFP", lambda s: noisy(s, 1.0, seed=1), True, False),
    ("3MFP-domain", "3MFP", shifted_part, False, False),
    ("3MFP-swapped-noise", "3MFP", lambda s: noisy(swapped_symmetric(s), 0.5, seed=2), False, False),
    ("6vyb-noise2", "6vyb", lambda s: noisy(s, 2.0, seed=4), False, False),
    # truncation: OpenStructure's BLOSUM alignment can slide a terminal residue onto a later
    # identical one; the copies keep their numbering, so let it align by number
    ("6vyb-truncated", "6vyb", truncated, False, True),
    ("1N7S-noise1", "1N7S", lambda s: noisy(s, 1.0, seed=5), False, False),
    ("1N7S-noise1-ca", "1N7S", lambda s: noisy(s, 1.0, seed=5), True, False),
    ("1N7S-relabelled", "1N7S", lambda s: relabelled(noisy(s, 0.5, seed=6)), False, False),
    ("1OZ7-chain-moved", "1OZ7", shifted_part, False, False),
    ("1OZ7-truncated", "1OZ7", truncated, False, True),
]


@pytest.fixture(scope="session")
def ost_lddt(load, ost, tmp_path_factory):
    """OpenStructure's lDDT for every case, computed in parallel once."""
    folder = tmp_path_factory.mktemp("lddt_cases")
    jobs = {}
    for case, name, perturb, ca, by_number in LDDT_CASES:
        ref = load(name)
        model = perturb(ref)
        mapping = compare_to_reference(model, ref).chain_mapping
        jobs[case] = (
            write(model, folder / f"{case}.pdb"),
            write(ref, folder / f"{case}_ref.pdb"),
            mapping,
            ca,
            by_number,
        )
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        futures = {case: pool.submit(ost, *args) for case, args in jobs.items()}
        return {case: f.result() for case, f in futures.items()}


@pytest.mark.parametrize("case", [c[0] for c in LDDT_CASES])
def test_lddt_agrees_with_openstructure(load, ost_lddt, case):
    _, name, perturb, ca, _ = next(c for c in LDDT_CASES if c[0] == case)
    ref = load(name)
    r = compare_to_reference(perturb(ref), ref)
    ours = r.ca_lddt if ca else r.lddt
    print(f"{case}: ours {ours:.4f}  OpenStructure {ost_lddt[case]:.4f}")
    assert ours == pytest.approx(ost_lddt[case], abs=LDDT_TOL)
    assert ours < 0.999  # a real test: the perturbation changed the score


# ---------------------------------------------------------------------------------------------
# agreement with TM-align (TMalign binary, tmtools)
# ---------------------------------------------------------------------------------------------
TM_CASES = [
    ("3MFP", lambda s: noisy(s, 1.0, seed=7)),
    ("3MFP", shifted_part),
    ("3MFP", truncated),
    ("6vyb", lambda s: noisy(s, 2.0, seed=8)),
    ("6vyb", lambda s: relabelled(noisy(s, 0.5, seed=9))),
    ("1N7S", lambda s: relabelled(noisy(s, 1.0, seed=10))),
    ("1OZ7", shifted_part),
]


@pytest.mark.parametrize("k", range(len(TM_CASES)))
def test_tm_score_agrees_with_tmalign(load, tmp_path, k):
    from tmtools import tm_align

    name, perturb = TM_CASES[k]
    ref = load(name)
    model = perturb(ref)
    r = compare_to_reference(model, ref)
    # the same chains as one chain each, in mapped order: TM-align's own structural alignment
    ref_order = [c for c in ref.sequences()]
    model_order = [m for rc in ref_order for m, rr in r.chain_mapping.items() if rr == rc]
    m1 = merged_single_chain(model, model_order)
    r1 = merged_single_chain(ref, ref_order)

    def ca(st):
        res = [x for x in st.gemmi[0][0] if x.find_atom("CA", "*") is not None]
        return (
            np.array([x.find_atom("CA", "*").pos.tolist() for x in res]),
            gemmi.one_letter_code([x.name for x in res]).upper(),
        )

    (x, sx), (y, sy) = ca(m1), ca(r1)
    tmtools_free = tm_align(x, y, sx, sy).tm_norm_chain2
    msg = f"ours {r.tm_score:.4f} tmtools {tmtools_free:.4f}"
    if shutil.which("TMalign"):
        tmalign = _tmalign(write(m1, tmp_path / "m.pdb"), write(r1, tmp_path / "r.pdb"))
        msg += f" TMalign {tmalign:.4f}"
        assert r.tm_score == pytest.approx(tmalign, abs=TM_TOL), msg
    print(msg)
    assert r.tm_score == pytest.approx(tmtools_free, abs=TM_TOL), msg
    assert r.tm_score < 0.999


def test_tmalign_binary_available():
    """Not a failure when absent (the TM-score test then checks tmtools only), but say so."""
    if shutil.which("TMalign") is None:
        pytest.skip("Debian `tm-align` (TMalign) is not installed: TM-score checked against tmtools only")


@pytest.mark.parametrize("k", range(len(TM_CASES)))
def test_numpy_tm_search_agrees_with_tmtools(load, monkeypatch, k):
    """The search used above TMTOOLS_MAX_PAIRS pairs gives tmtools' (TM-align -I) score."""
    from cryostack.validate import reference

    name, perturb = TM_CASES[k]
    ref = load(name)
    model = perturb(ref)
    with_tmtools = compare_to_reference(model, ref).tm_score
    monkeypatch.setattr(reference, "TMTOOLS_MAX_PAIRS", 0)
    with_numpy = compare_to_reference(model, ref).tm_score
    assert with_numpy == pytest.approx(with_tmtools, abs=TM_TOL)


def test_large_complex_uses_numpy_tm_search(load):
    """Five copies of 3MFP (1,845 residues): above TMTOOLS_MAX_PAIRS, compared with tmtools -I."""
    from tmtools import tm_align

    base = load("3MFP")
    g = base.gemmi.clone()
    g.remove_ligands_and_waters()
    src = g[0][0]
    model = gemmi.Model("1")
    for k in range(5):
        chain = src.clone()
        chain.name = "ABCDE"[k]
        rot = _rotation([0, 0, 1], -166.6 * k)
        for res in chain:
            for atom in res:
                atom.pos = gemmi.Position(*(rot @ np.array(atom.pos.tolist()) + np.array([0.0, 0.0, 27.5 * k])))
        model.add_chain(chain)
    st = gemmi.Structure()
    st.add_model(model)
    st.setup_entities()
    ref = Structure(st)
    mdl = shifted_part(noisy(ref, 1.0, seed=12))
    r = compare_to_reference(mdl, ref)
    assert r.n_aligned_residues > TMTOOLS_MAX_PAIRS
    assert r.chain_mapping == {c: c for c in "ABCDE"}
    x = np.concatenate(
        [np.array([a.pos.tolist() for res in mdl.gemmi[0][c] for a in res if a.name == "CA"]) for c in "ABCDE"]
    )
    y = np.concatenate(
        [np.array([a.pos.tolist() for res in ref.gemmi[0][c] for a in res if a.name == "CA"]) for c in "ABCDE"]
    )
    s = "A" * len(x)
    assert r.tm_score == pytest.approx(tm_align(x, y, s, s, [s, s]).tm_norm_chain2, abs=TM_TOL)


# ---------------------------------------------------------------------------------------------
# agreement with DockQ run on its own
# ---------------------------------------------------------------------------------------------
DOCKQ_CASES = [
    ("1N7S", lambda s: noisy(s, 1.0, seed=13)),
    ("1N7S", lambda s: relabelled(noisy(s, 0.7, seed=14))),
    ("1N7S", shifted_part),
    ("1OZ7", lambda s: noisy(s, 2.0, seed=15)),
    ("1OZ7", shifted_part),
]


@pytest.mark.parametrize("k", range(len(DOCKQ_CASES)))
def test_dockq_agrees_with_dockq_cli(load, tmp_path, k):
    name, perturb = DOCKQ_CASES[k]
    ref = load(name)
    model = perturb(ref)
    r = compare_to_reference(model, ref)
    cli = _dockq_cli(write(model, tmp_path / "model.pdb"), write(ref, tmp_path / "ref.pdb"), tmp_path / "dq.json")
    print(f"{name}[{k}]: ours {r.dockq:.4f}  DockQ CLI {cli['GlobalDockQ']:.4f}")
    assert r.dockq == pytest.approx(cli["GlobalDockQ"], abs=DOCKQ_TOL)
    assert r.dockq < 0.999
    assert {m: n for n, m in cli["best_mapping"].items()} == r.chain_mapping
    theirs = {tuple(sorted((v["chain1"], v["chain2"]))): v["DockQ"] for v in cli["best_result"].values()}
    ours = {tuple(sorted(i["model_chains"])): i["dockq"] for i in r.dockq_interfaces}
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key] == pytest.approx(theirs[key], abs=DOCKQ_TOL)


# ---------------------------------------------------------------------------------------------
# scale (correctness only; the timing is reported by the benchmark, not asserted)
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_five_thousand_residue_complex(load):
    base = load("3MFP")
    g = base.gemmi.clone()
    g.remove_ligands_and_waters()
    src = g[0][0]
    names = "ABCDEFGHIJKLMN"
    model = gemmi.Model("1")
    for k, name in enumerate(names):  # an F-actin-like helix of 14 subunits, 5,166 residues
        chain = src.clone()
        chain.name = name
        rot = _rotation([0, 0, 1], -166.6 * k)
        for res in chain:
            for atom in res:
                atom.pos = gemmi.Position(*(rot @ np.array(atom.pos.tolist()) + np.array([0.0, 0.0, 27.5 * k])))
        model.add_chain(chain)
    st = gemmi.Structure()
    st.add_model(model)
    st.setup_entities()
    ref = Structure(st)
    mdl = noisy(ref, 0.7, seed=16).gemmi.clone()
    for chain, new in zip(mdl[0], reversed(names.lower())):
        chain.name = new
    r = compare_to_reference(Structure(mdl), ref)
    assert r.n_reference_residues > 5000
    assert r.chain_mapping == {n: o for n, o in zip(reversed(names.lower()), names)}
    assert 0.6 < r.lddt < 0.9 and r.tm_score > 0.95 and r.dockq > 0.7
