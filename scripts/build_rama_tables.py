#!/usr/bin/env python3
"""Convert the MolProbity Top8000 Ramachandran contours into cryostack's packaged table.

Input: the six ``rama8000-*.data`` files of the Richardson lab's Top8000 reference data
(Duke University, CC-BY 4.0), e.g. ``../shared/data/top8000/rama/``. Each file is a 2-D
table over (phi, psi) in degrees, bounds -180..180, 180 bins per axis (2 degrees), wrapping;
every data line is ``phi_centre psi_centre value`` with bin centres at odd degrees
(-179, -177, ..., 179). Cells that a file does not list are zero.

Output: ``src/cryostack/chem/data/rama/top8000_rama.npz`` holding one ``(180, 180)``
float64 array per category (``[phi_bin, psi_bin]``, bin ``k`` centred at ``-179 + 2 k``
degrees) plus the LICENSE copied beside it. Values are kept at full precision.

Usage::

    python scripts/build_rama_tables.py [SOURCE_DIR] [OUTPUT_DIR]
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import numpy as np

#: Category key → source file (MolProbity's six Ramachandran categories).
SOURCES: dict[str, str] = {
    "general": "rama8000-general-noGPIVpreP.data",
    "gly": "rama8000-gly-sym.data",
    "cispro": "rama8000-cispro.data",
    "transpro": "rama8000-transpro.data",
    "prepro": "rama8000-prepro-noGP.data",
    "ileval": "rama8000-ileval-nopreP.data",
}

N_BINS = 180
BIN_DEG = 2.0
FIRST_CENTRE_DEG = -179.0

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "top8000" / "rama"
DEFAULT_OUTPUT = REPO / "src" / "cryostack" / "chem" / "data" / "rama"


def check_header(lines: list[str], path: Path) -> None:
    """Require the 2-D, 180-bin, -180..180, wrapping layout that the lookup assumes."""
    axes = [ln for ln in lines if ln.startswith("#   x")]
    if len(axes) != 2:
        raise ValueError(f"{path}: expected two axis lines in the header, found {len(axes)}")
    for ln in axes:
        fields = ln.split(":", 1)[1].split()
        if [float(fields[0]), float(fields[1]), int(fields[2]), fields[3]] != [-180.0, 180.0, N_BINS, "true"]:
            raise ValueError(f"{path}: unexpected axis definition {ln.strip()!r}")


def read_table(path: Path) -> np.ndarray:
    """Read one ``.data`` file into a ``(180, 180)`` array indexed ``[phi_bin, psi_bin]``."""
    lines = path.read_text().splitlines()
    check_header([ln for ln in lines if ln.startswith("#")], path)
    table = np.zeros((N_BINS, N_BINS), dtype=np.float64)
    seen = np.zeros((N_BINS, N_BINS), dtype=bool)
    for ln in lines:
        if not ln.strip() or ln.startswith("#"):
            continue
        phi_s, psi_s, value_s = ln.split()
        idx = []
        for centre in (float(phi_s), float(psi_s)):
            k = (centre - FIRST_CENTRE_DEG) / BIN_DEG
            if k != round(k) or not 0 <= k < N_BINS:
                raise ValueError(f"{path}: {centre} is not a bin centre")
            idx.append(int(round(k)))
        if seen[idx[0], idx[1]]:
            raise ValueError(f"{path}: duplicate cell {phi_s} {psi_s}")
        seen[idx[0], idx[1]] = True
        table[idx[0], idx[1]] = float(value_s)
    return table


def build(source: Path, output: Path) -> Path:
    """Write ``top8000_rama.npz`` and copy the LICENSE; return the npz path."""
    output.mkdir(parents=True, exist_ok=True)
    tables = {key: read_table(source / name) for key, name in SOURCES.items()}
    digests = {key: hashlib.sha256((source / name).read_bytes()).hexdigest() for key, name in SOURCES.items()}
    npz = output / "top8000_rama.npz"
    tmp = output / ".top8000_rama.tmp.npz"
    np.savez_compressed(
        tmp,
        **tables,
        source_files=np.array([SOURCES[k] for k in tables]),
        source_sha256=np.array([digests[k] for k in tables]),
        credit=np.array("Richardson lab, Duke University — Top8000 reference data (CC-BY 4.0)"),
    )
    tmp.replace(npz)
    shutil.copyfile(source / "LICENSE", output / "LICENSE")
    return npz


def main(argv: list[str]) -> int:
    source = Path(argv[1]) if len(argv) > 1 else DEFAULT_SOURCE
    output = Path(argv[2]) if len(argv) > 2 else DEFAULT_OUTPUT
    npz = build(source, output)
    print(f"wrote {npz} ({npz.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
