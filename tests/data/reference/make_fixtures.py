"""Rebuild the multi-chain fixtures of ``tests/test_reference.py`` (run with Debian's Python).

    DNG_ROOT=/usr /usr/bin/python3 tests/data/reference/make_fixtures.py

Needs the Debian packages ``python3-promod3`` and ``promod3-data`` and an OpenStructure compound
library (``compounds.chemlib``, built once with
``chemdict_tool create /usr/share/openstructure/components.cif.gz compounds.chemlib pdb``; pass
its path as the first argument or set ``OST_COMPOUNDS_CHEMLIB``).

Each fixture is a deposited PDB complex taken from ProMod3's StructureDB: the deposited backbone
(N, CA, C, O, CB) of every chain of the entry, moved back to the original PDB frame
(stored coordinates minus the stored shift, so the chains pack as deposited), with side chains
rebuilt by ``promod3.modelling.ReconstructSidechains``. Backbone and interfaces are the
deposited ones; side-chain atoms beyond CB are modelled.
"""

import gzip
import os
import sys
from pathlib import Path

from ost import conop, io, mol
from promod3 import loop, modelling

ENTRIES = ("1N7S", "1OZ7")  # SNARE four-helix complex (4 chains); heterodimer (2 chains)
HERE = Path(__file__).resolve().parent


def main() -> None:
    chemlib = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OST_COMPOUNDS_CHEMLIB", "compounds.chemlib")
    conop.SetDefaultLib(conop.CompoundLib.Load(chemlib))
    db = loop.StructureDB.Load("/usr/share/promod3/loop_data/structure_db.dat")
    by_entry: dict[str, list[int]] = {}
    for i in range(db.GetNumCoords()):
        by_entry.setdefault(db.GetCoordInfo(i).id, []).append(i)
    for entry in ENTRIES:
        ent = mol.CreateEntity()
        ed = ent.EditXCS()
        for i in by_entry[entry]:
            info = db.GetCoordInfo(i)
            chain = ed.InsertChain(info.chain_name)
            db.GetBackboneList(i, db.GetSequence(i)).InsertInto(chain, info.start_resnum)
            for atom in chain.atoms:
                ed.SetAtomPos(atom, atom.pos - info.shift)
        conop.RuleBasedProcessor(conop.GetDefaultLib()).Process(ent)
        modelling.ReconstructSidechains(ent, keep_sidechains=False)
        tmp = HERE / f"{entry}_promod.pdb"
        io.SavePDB(ent, str(tmp))
        with open(tmp, "rb") as src, open(HERE / f"{entry}_promod.pdb.gz", "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as dst:  # reproducible bytes
                dst.write(src.read())
        tmp.unlink()
        print(entry, [(c.name, c.residue_count) for c in ent.chains])


if __name__ == "__main__":
    main()
