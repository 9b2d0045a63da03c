"""Test helpers shared by ``tests/test_ramachandran.py`` and ``tests/test_cbeta.py``.

Locates the real structures used for the cctbx agreement tests, builds the derived test models
(distorted backbone, alternate conformations, mirror image) and runs the cctbx reference in a
subprocess (cctbx's extensions crash when loaded after gemmi in one interpreter).
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import gemmi
import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2].parent / "shared" / "data"
REFERENCE_SCRIPT = HERE / "cctbx_reference.py"

#: Real deposited structures: name → (where, path). ``shared``: ../shared/data; otherwise the
#: test data of an installed package (cctbx, tmtools). AlphaFold files are deliberately absent.
REAL_STRUCTURES: dict[str, tuple[str, str]] = {
    "3MFP": ("shared", "maps/emd_5168_factin/3MFP.pdb"),  # F-actin model fitted in EMD-5168
    "6vyb_Ndom": ("shared", "maps/emd_21457_spike_ntd_segment/6vyb_Ndom.pdb"),  # cryo-EM 3.2 Å
    "2gtl": ("tmtools", "data/2gtl.pdb"),  # X-ray 3.5 Å, 2,365 Rama residues
    "7ok9": ("tmtools", "data/7ok9.pdb"),  # X-ray, 6,009 Rama residues
    "3jd6": ("iotbx", "regression/secondary_structure/3jd6_noh.pdb"),  # cryo-EM
    "4a7h_C": ("iotbx", "regression/secondary_structure/4a7h_chainC.pdb"),
    "5a63_B": ("iotbx", "regression/secondary_structure/5a63_chainBp.pdb"),  # cryo-EM
    "2ERL": ("iotbx", "regression/data/2ERL.pdb"),  # 1.0 Å X-ray, alternate conformations
    "1ahq": ("mmtbx", "geometry/tests/1ahq_trunc.pdb"),  # alternate conformations
}


def package_dir(name: str) -> Path | None:
    """Directory of an installed top-level package, without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def real_structure(name: str) -> Path | None:
    """Path of a real structure from :data:`REAL_STRUCTURES`, ``None`` if not on this machine."""
    where, relative = REAL_STRUCTURES[name]
    base = SHARED if where == "shared" else package_dir(where)
    if base is None:
        return None
    path = base / relative
    return path if path.is_file() else None


def cctbx_reference(paths: list[Path], out_json: Path) -> dict[str, dict]:
    """MolProbity ramalyze + cbetadev results for ``paths`` (one subprocess for all)."""
    cmd = [sys.executable, str(REFERENCE_SCRIPT), str(out_json), *map(str, paths)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"cctbx reference failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(out_json.read_text())


def agreement_inputs(backbones: Path, mixed: Path, tmp: Path) -> dict[str, Path]:
    """Structures both cctbx agreement tests use: available real ones, the committed fixtures,
    and distorted / altloc variants of the backbones written into ``tmp``."""
    paths = {name: p for name in REAL_STRUCTURES if (p := real_structure(name)) is not None}
    paths["promod3_backbones"] = backbones
    paths["mixed"] = mixed
    paths["distorted"] = make_distorted(backbones, tmp / "distorted.pdb")
    paths["altlocs"] = make_altlocs(backbones, tmp / "altlocs.pdb")
    return paths


# -- geometry edits ---------------------------------------------------------------------------
def _rotate(points: np.ndarray, origin: np.ndarray, axis: np.ndarray, angle_deg: float) -> np.ndarray:
    """Rotate ``points`` (N, 3) by ``angle_deg`` about the axis through ``origin`` (right hand)."""
    k = axis / np.linalg.norm(axis)
    a = math.radians(angle_deg)
    p = points - origin
    rotated = p * math.cos(a) + np.cross(k, p) * math.sin(a) + np.outer(p @ k, k) * (1 - math.cos(a))
    return rotated + origin


def _pos(atom: gemmi.Atom) -> np.ndarray:
    return np.array([atom.pos.x, atom.pos.y, atom.pos.z])


def _rotate_downstream(
    chain: gemmi.Chain, index: int, pivot: tuple[str, str], own_atoms: set[str], angle_deg: float
) -> None:
    """Rotate the atoms ``own_atoms`` of residue ``index`` and every later residue of ``chain``
    about the bond ``pivot`` of residue ``index``."""
    res = chain[index]
    origin, tip = _pos(res[pivot[0]][0]), _pos(res[pivot[1]][0])
    atoms = [a for a in res if a.name in own_atoms]
    atoms += [a for later in list(chain)[index + 1 :] for a in later]
    xyz = _rotate(np.array([_pos(a) for a in atoms]), origin, tip - origin, angle_deg)
    for atom, p in zip(atoms, xyz):
        atom.pos = gemmi.Position(*p)


def set_phi_psi(chain: gemmi.Chain, index: int, phi_deg: float, psi_deg: float) -> None:
    """Give residue ``index`` of ``chain`` the backbone (phi, psi) by rotating the chain after it."""
    prev, res, nxt = chain[index - 1], chain[index], chain[index + 1]
    phi = math.degrees(gemmi.calculate_dihedral(prev["C"][0].pos, res["N"][0].pos, res["CA"][0].pos, res["C"][0].pos))
    # Rotating the downstream part by +d about N→CA changes phi by +d (and likewise for psi).
    _rotate_downstream(chain, index, ("N", "CA"), {"C", "O"}, phi_deg - phi)
    psi = math.degrees(gemmi.calculate_dihedral(res["N"][0].pos, res["CA"][0].pos, res["C"][0].pos, nxt["N"][0].pos))
    _rotate_downstream(chain, index, ("CA", "C"), {"O"}, psi_deg - psi)


#: Residues (chain, index) of promod3_backbones.pdb moved to :data:`DISTORTED_PHI_PSI`.
DISTORTED = [("A", 20), ("A", 45), ("D", 30), ("D", 100)]
#: (phi, psi) in degrees given to the distorted residues: an outlier in all six categories.
DISTORTED_PHI_PSI = (-30.0, -150.0)


def make_distorted(source: Path, out: Path) -> Path:
    """The backbone fixture with :data:`DISTORTED` residues set to :data:`DISTORTED_PHI_PSI`."""
    st = gemmi.read_structure(str(source))
    for chain_name, index in DISTORTED:
        set_phi_psi(st[0][chain_name], index, *DISTORTED_PHI_PSI)
    st.write_pdb(str(out))
    return out


#: Residue index in chain A of promod3_backbones.pdb given two alternate conformations.
ALTLOC_INDEX = 50


def make_altlocs(source: Path, out: Path) -> Path:
    """The backbone fixture with residue :data:`ALTLOC_INDEX` of chain A split into altlocs A
    and B; in B its C and O are rotated 40° and its CB 15° about N→CA (a new phi, and a Cβ
    that no longer fits the backbone: a Cβ outlier in conformer B only)."""
    st = gemmi.read_structure(str(source))
    res = st[0]["A"][ALTLOC_INDEX]
    originals = [a.clone() for a in res]
    origin, tip = _pos(res["N"][0]), _pos(res["CA"][0])
    while len(res):
        del res[0]
    for altloc, occ in (("A", 0.6), ("B", 0.4)):
        for atom in originals:
            copy = atom.clone()
            copy.altloc = altloc
            copy.occ = occ
            if altloc == "B" and atom.name in ("C", "O", "CB"):
                angle = 15.0 if atom.name == "CB" else 40.0
                copy.pos = gemmi.Position(*_rotate(_pos(atom)[None], origin, tip - origin, angle)[0])
            res.add_atom(copy)
    st.write_pdb(str(out))
    return out


#: D-amino-acid names used by :func:`make_mirrored` (L name → D name).
D_NAMES = {
    "ALA": "DAL",
    "VAL": "DVA",
    "THR": "DTH",
    "ILE": "DIL",
    "PRO": "DPR",
    "LEU": "DLE",
    "SER": "DSN",
    "LYS": "DLY",
}


def make_mirrored(source: Path, out: Path) -> Path:
    """Mirror image (x → -x) of ``source``: chain A renamed to D-amino acids (where the table
    has a D name), chain B renamed to the non-standard ``XAA``, chain D keeping L names."""
    st = gemmi.read_structure(str(source))
    for chain in st[0]:
        for res in chain:
            for atom in res:
                atom.pos = gemmi.Position(-atom.pos.x, atom.pos.y, atom.pos.z)
            if chain.name == "A" and res.name in D_NAMES:
                res.name = D_NAMES[res.name]
            elif chain.name == "B" and res.name != "GLY":
                res.name = "XAA"
    st.write_pdb(str(out))
    return out


def strip_ter(source: Path, out: Path) -> Path:
    """Copy of a PDB file without its TER records."""
    lines = [ln for ln in source.read_text().splitlines() if not ln.startswith("TER")]
    out.write_text("\n".join(lines) + "\n")
    return out


def ter_flanks(path: Path) -> set[tuple[str, int, str]]:
    """(chain, number, icode) of the residues just before and just after each TER record that
    sits inside a chain (the next atom has the same chain ID)."""
    flanks: set[tuple[str, int, str]] = set()
    last = None
    pending_ter = False
    for line in path.read_text().splitlines():
        if line.startswith("TER"):
            pending_ter = last is not None
        elif line.startswith(("ATOM", "HETATM")):
            here = (line[21], int(line[22:26]), line[26].strip())
            if pending_ter and last is not None and here[0] == last[0]:
                flanks.update({last, here})
            pending_ter = False
            last = here
    return flanks
