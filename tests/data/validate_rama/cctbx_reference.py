"""Reference results from cctbx/MolProbity (``mmtbx.validation.ramalyze`` and ``cbetadev``).

Run in its own process — cctbx's extensions crash when loaded after gemmi in one interpreter::

    python cctbx_reference.py OUT.json MODEL [MODEL ...]

Writes ``{model_path: {"rama": {...}, "cbeta": {...}}}`` for the first model of each file.
"""

from __future__ import annotations

import io
import json
import sys

import iotbx.pdb
from mmtbx.validation.cbetadev import cbetadev
from mmtbx.validation.ramalyze import ramalyze

CATEGORIES = ["general", "gly", "cispro", "transpro", "prepro", "ileval"]
CLASSES = ["outlier", "allowed", "favored"]


def first_model(path: str):
    hierarchy = iotbx.pdb.input(file_name=path).construct_hierarchy()
    for model in hierarchy.models()[1:]:
        hierarchy.remove_model(model)
    return hierarchy


def _identity(x) -> dict:
    return {
        "chain": x.chain_id.strip(),
        "number": int(x.resseq),
        "icode": x.icode.strip(),
        "altloc": x.altloc.strip(),
        "name": x.resname,
    }


def rama(hierarchy) -> dict:
    r = ramalyze(pdb_hierarchy=hierarchy, outliers_only=False, out=io.StringIO(), quiet=True)
    return {
        "n_total": r.n_total,
        "n_favored": r.n_favored,
        "n_allowed": r.n_allowed,
        "n_outliers": r.n_outliers,
        "residues": [
            {
                **_identity(x),
                "category": CATEGORIES[x.res_type],
                "classification": CLASSES[x.rama_type],
                "phi": x.phi,
                "psi": x.psi,
                "score": x.score / 100.0,
            }
            for x in r.results
        ],
    }


def cbeta(hierarchy) -> dict:
    r = cbetadev(pdb_hierarchy=hierarchy, outliers_only=False, out=io.StringIO(), quiet=True)
    return {
        "n_outliers": r.n_outliers,
        "residues": [
            {
                **_identity(x),
                "deviation": x.deviation,
            }
            for x in r.results
        ],
    }


def main(argv: list[str]) -> int:
    out = {}
    for path in argv[2:]:
        hierarchy = first_model(path)
        out[path] = {"rama": rama(hierarchy), "cbeta": cbeta(hierarchy)}
    with open(argv[1], "w") as fh:
        json.dump(out, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
