"""Side chains onto a built backbone with ProMod3's ``ReconstructSidechains`` (SCWRL4 energy, FRM
rotamers), run in the system Python beside the corpus export's worker.

The built model keeps its chain names, numbering and per-residue B-factors (the confidence):
ProMod3 only adds the side-chain atoms, which take their residue's B-factor. UNK residues stay
backbone only.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import gemmi

from cryostack.data.corpus import SYSTEM_PYTHON, WORKER, promod3_available
from cryostack.io.models import Structure


def sidechains_available() -> bool:
    return promod3_available()


def add_sidechains(structure: Structure) -> Structure:
    """``structure`` with side chains rebuilt by ProMod3 (raises RuntimeError if the worker fails)."""
    with tempfile.TemporaryDirectory(prefix="cryostack_sc_") as tmp:
        src, dst = Path(tmp) / "in.pdb", Path(tmp) / "out.pdb"
        st = structure.gemmi.clone()
        src.write_text(st.make_pdb_string(gemmi.PdbWriteOptions(minimal=True)))
        task = json.dumps({"op": "sidechains_file", "in": str(src), "out": str(dst)})
        proc = subprocess.run([SYSTEM_PYTHON, str(WORKER)], input=task + "\n", capture_output=True, text=True)
        errors = [ln for ln in proc.stdout.splitlines() if ln.startswith("error ")]
        if proc.returncode != 0 or errors or not dst.is_file():
            raise RuntimeError(f"ProMod3 side chains failed: {(errors or [proc.stderr.strip()[-300:]])[0]}")
        built = gemmi.read_structure(str(dst))
    b_of = {(ch.name, res.seqid.num): res[0].b_iso for ch in st[0] for res in ch}
    for ch in built[0]:
        for res in ch:
            b = b_of.get((ch.name, res.seqid.num))
            for atom in res:
                if b is not None:
                    atom.b_iso = b
                atom.occ = 1.0
    built.name = st.name
    built.setup_entities()
    return Structure(built)
