"""ProMod3 side of the corpus export; runs in the *system* Python (``/usr/bin/python3``).

ProMod3 and OpenStructure are Debian packages bound to the system interpreter, so the
cryostack orchestrator (in the project's virtual environment) starts this script as a
subprocess. It needs numpy and promod3 only, reads one JSON task per stdin line and answers
on stdout with ``progress N`` lines (N chains finished), then ``done`` or ``error MESSAGE``.

Tasks (``op``):

* ``list``: chain table of the StructureDB → JSON file (``out``).
* ``backbone``: chains ``indices`` → backbone shard (``out``), coordinates in the original PDB
  frame (stored − shift).
* ``sidechains``: chains ``indices`` → full-atom shard rebuilt with
  ``promod3.modelling.ReconstructSidechains`` (``rotamer_model`` "frm" or "rrm").
* ``sidechains_file``: a PDB file of a backbone model (``in``; residue names set) → the same
  model with side chains rebuilt by ``ReconstructSidechains`` (``out``, PDB).
* ``dssp``: backbone shard ``in`` (user files) → DSSP string per chain, JSON (``out``), with
  OpenStructure's DSSP implementation.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _shardio import write_npz  # noqa: E402

_DB: dict[str, Any] = {}
_LIB: dict[str, Any] = {}


def _db(path):
    if path not in _DB:
        from promod3 import loop

        _DB[path] = loop.StructureDB.Load(path)
    return _DB[path]


def _say(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _bb_array(bb):
    n = len(bb)
    out = np.empty((n, 5, 3), dtype=np.float64)
    getters = (bb.GetN, bb.GetCA, bb.GetC, bb.GetO, bb.GetCB)
    for r in range(n):
        for k, get in enumerate(getters):
            v = get(r)
            out[r, k, 0] = v[0]
            out[r, k, 1] = v[1]
            out[r, k, 2] = v[2]
    return out


def op_list(task):
    db = _db(task["db"])
    rows = []
    for i in range(db.GetNumCoords()):
        ci = db.GetCoordInfo(i)
        rows.append(
            {
                "index": i,
                "pdb_id": ci.id,
                "chain_id": ci.chain_name,
                "length": ci.size,
                "start_resnum": ci.start_resnum,
                "sequence": db.GetSequence(i),
            }
        )
    with open(task["out"] + ".tmp", "w") as fh:
        json.dump(rows, fh)
    os.replace(task["out"] + ".tmp", task["out"])


def op_backbone(task):
    db = _db(task["db"])
    ids, chains, starts, shifts, offsets = [], [], [], [], [0]
    coords, seqs, dssps, resnums = [], [], [], []
    for k, i in enumerate(task["indices"]):
        ci = db.GetCoordInfo(i)
        seq = db.GetSequence(i)
        dssp = db.GetDSSPStates(i)
        shift = np.array([ci.shift[0], ci.shift[1], ci.shift[2]], dtype=np.float64)
        xyz = _bb_array(db.GetBackboneList(i)) - shift  # stored frame → original PDB frame
        # The StructureDB holds a virtual CB for glycine; the corpus marks it absent.
        gly = np.frombuffer(seq.encode(), dtype=np.uint8) == ord("G")
        xyz[gly, 4] = np.nan
        ids.append(ci.id)
        chains.append(ci.chain_name)
        starts.append(ci.start_resnum)
        shifts.append(shift)
        coords.append(xyz.astype(np.float32))
        seqs.append(seq)
        dssps.append(dssp)
        resnums.append(np.arange(ci.start_resnum, ci.start_resnum + ci.size, dtype=np.int32))
        offsets.append(offsets[-1] + ci.size)
        if (k + 1) % 100 == 0:
            _say("progress 100")
    _say(f"progress {len(task['indices']) % 100}")
    write_npz(
        task["out"],
        {
            "pdb_id": np.array(ids, dtype="U"),
            "chain_id": np.array(chains, dtype="U"),
            "start_resnum": np.array(starts, dtype=np.int32),
            "shift": np.array(shifts, dtype=np.float64).reshape(-1, 3),
            "source_index": np.array(task["indices"], dtype=np.int64),
            "residue_offset": np.array(offsets, dtype=np.int64),
            "coords": np.concatenate(coords).reshape(-1, 5, 3),
            "resnum": np.concatenate(resnums),
            "sequence": np.frombuffer("".join(seqs).encode(), dtype=np.uint8),
            "dssp": np.frombuffer("".join(dssps).encode(), dtype=np.uint8),
        },
    )


def op_sidechains(task):
    from promod3 import modelling, sidechain

    db = _db(task["db"])
    if "lib" not in _LIB:
        _LIB["lib"] = sidechain.LoadBBDepLib()
    model = task.get("rotamer_model", "rrm")
    ids, chains, offsets = [], [], [0]
    coords, names, elements, residues = [], [], [], []
    for i in task["indices"]:
        ci = db.GetCoordInfo(i)
        seq = db.GetSequence(i)
        ent = db.GetBackboneList(i, seq).ToEntity()
        modelling.ReconstructSidechains(ent, rotamer_library=_LIB["lib"], rotamer_model=model)
        shift = np.array([ci.shift[0], ci.shift[1], ci.shift[2]], dtype=np.float64)
        n = 0
        for r, res in enumerate(ent.residues):
            for atom in res.atoms:
                p = atom.pos
                coords.append((p[0] - shift[0], p[1] - shift[1], p[2] - shift[2]))
                names.append(atom.name)
                elements.append(atom.element)
                residues.append(r)
                n += 1
        ids.append(ci.id)
        chains.append(ci.chain_name)
        offsets.append(offsets[-1] + n)
        _say("progress 1")
    write_npz(
        task["out"],
        {
            "pdb_id": np.array(ids, dtype="U"),
            "chain_id": np.array(chains, dtype="U"),
            "atom_offset": np.array(offsets, dtype=np.int64),
            "coords": np.array(coords, dtype=np.float32).reshape(-1, 3),
            "atom_name": np.array(names, dtype="S4"),
            "element": np.array(elements, dtype="S2"),
            "residue": np.array(residues, dtype=np.int32),
        },
    )


def op_sidechains_file(task):
    from ost import io
    from promod3 import modelling, sidechain

    if "lib" not in _LIB:
        _LIB["lib"] = sidechain.LoadBBDepLib()
    ent = io.LoadPDB(task["in"])
    modelling.ReconstructSidechains(ent, rotamer_library=_LIB["lib"], rotamer_model=task.get("rotamer_model", "frm"))
    io.SavePDB(ent, task["out"])


def op_dssp(task):
    from ost import mol
    from promod3 import loop

    with np.load(task["in"], allow_pickle=False) as z:
        off = z["residue_offset"]
        xyz = z["coords"].astype(np.float64)
        seq = z["sequence"].tobytes().decode()
    out = []
    for c in range(len(off) - 1):
        a, b = int(off[c]), int(off[c + 1])
        block = xyz[a:b]
        ok = np.all(np.isfinite(block[:, :4]), axis=(1, 2))
        states = ["-"] * (b - a)
        keep = np.flatnonzero(ok)
        if len(keep) >= 3:
            sub = "".join(seq[a + j] if seq[a + j] in "ACDEFGHIKLMNPQRSTVWY" else "A" for j in keep)
            bb = loop.BackboneList(sub)
            for r, j in enumerate(keep):
                bb.SetN(r, _vec(block[j, 0]))
                bb.SetCA(r, _vec(block[j, 1]))
                bb.SetC(r, _vec(block[j, 2]))
                bb.SetO(r, _vec(block[j, 3]))
                bb.SetCB(r, _vec(block[j, 4] if np.all(np.isfinite(block[j, 4])) else block[j, 1]))
            ent = bb.ToEntity()
            mol.alg.AssignSecStruct(ent)
            for r, res in zip(keep, ent.residues):
                states[r] = str(res.sec_structure)
        out.append("".join(states))
        _say("progress 1")
    with open(task["out"] + ".tmp", "w") as fh:
        json.dump(out, fh)
    os.replace(task["out"] + ".tmp", task["out"])


def _vec(p):
    from ost import geom

    return geom.Vec3(float(p[0]), float(p[1]), float(p[2]))


OPS = {
    "list": op_list,
    "backbone": op_backbone,
    "sidechains": op_sidechains,
    "sidechains_file": op_sidechains_file,
    "dssp": op_dssp,
}


def main():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            task = json.loads(line)
            OPS[task["op"]](task)
        except Exception as exc:  # report and stop; the orchestrator raises
            _say("error " + " ".join(f"{type(exc).__name__}: {exc}".split()))
            return 1
        _say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
