#!/usr/bin/env python3
"""Build cryostack's packaged rotamer grids from the MolProbity Top8000 reference data.

Source: the Richardson lab's Top8000 reference data (Duke University, CC-BY 4.0), by default
``../shared/data/top8000`` next to the repository:

* ``rotamer/rota8000-*.data``: percentile grids as released (every residue type but Arg and
  Lys). Each is converted losslessly: its values are exact multiples of ``1/N`` (``N`` the
  number of reference residues, ``1/N`` the smallest value), so the integer ranks ``value * N``
  are stored with ``N``.
* ``rotamer_srcdata/``: the filtered Top8000 residues of Arg (``rota8000-arg-1{m,p,t}.csv``,
  together the whole set) and Lys (``rota8000-lys.csv``). Their 4-chi grids are built here with
  :func:`cryostack.chem.rotamers.percentile_ranks` and MolProbity's recorded Silk settings:
  10° cells over 0–360° in chi1..chi4 (36^4 cells, wrapping), cosine kernel of half-width 5°,
  second (adaptive) pass with half-width 7° and lambda 0.5, converted to percentiles.
* ``rotamer_central_values/*.csv``: named rotamers and their chi means → ``rotamer_centres.json``.

Output (``src/cryostack/chem/data/rotamer/``): ``rota8000-<grid>.npz`` (``ranks``,
``n_samples``, ``lower_deg``, ``upper_deg``, ``n_bins``, ``source``, ``credit``),
``rotamer_centres.json``, ``LICENSE`` (copied) and ``README.md``. The output is byte-for-byte
deterministic (fixed zip timestamps, no randomness).

The build also rebuilds the Met grid from ``rota8000-met.csv`` with the same method, prints its
agreement with the released Met grid and records it in the README (the method check).

The Silk settings are those of the upstream Makefile (``Top8000/Top8000_filtered_residues_rotarama``
in github.com/rlabduke/reference_data); the estimator itself is cryostack's own code.

Usage::

    python scripts/build_rotamer_grids.py [--source DIR] [--output DIR]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import shutil
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cryostack.chem.rotamers import (  # noqa: E402
    COSINE_HALFWIDTH_DEG,
    FAVORED_MIN,
    GRIDSIZE_3CHI_DEG,
    GRIDSIZE_4CHI_DEG,
    OUTLIER_BELOW,
    TWOPASS_HALFWIDTH_DEG,
    TWOPASS_LAMBDA,
    GridSpec,
    interpolate,
    percentile_ranks,
)

DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "top8000"
DEFAULT_OUTPUT = REPO / "src" / "cryostack" / "chem" / "data" / "rotamer"
CREDIT = "Richardson lab, Duke University — Top8000 reference data (CC-BY 4.0)"

#: Grids converted from the release: grid name → file in ``rotamer/``.
RELEASED: dict[str, str] = {
    name: f"rota8000-{name}.data"
    for name in (
        "asn",
        "asp",
        "cys",
        "gln",
        "glu",
        "his",
        "ile",
        "leu",
        "met",
        "phetyr",
        "pro",
        "ser",
        "thr",
        "trp",
        "val",
    )
}
#: Grids built here: grid name → point files in ``rotamer_srcdata/``.
BUILT: dict[str, tuple[str, ...]] = {
    "arg": ("rota8000-arg-1m.csv", "rota8000-arg-1p.csv", "rota8000-arg-1t.csv"),
    "lys": ("rota8000-lys.csv",),
}
CENTRE_FILES = (
    "ARG",
    "ASN",
    "ASP",
    "CYS",
    "GLN",
    "GLU",
    "HIS",
    "ILE",
    "LEU",
    "LYS",
    "MET",
    "PHE",
    "PRO",
    "SER",
    "THR",
    "TRP",
    "TYR",
    "VAL",
)


# -- reading ---------------------------------------------------------------------------------------
def read_data_grid(path: Path) -> tuple[GridSpec, np.ndarray]:
    """A released ``.data`` grid: its spec (from the header) and values (unlisted cells are 0)."""
    lines = path.read_text().splitlines()
    axes = [ln.split(":", 1)[1].split() for ln in lines if ln.startswith("#   x")]
    if not axes:
        raise ValueError(f"{path}: no axis lines in header")
    for ax in axes:
        if ax[3] != "true":
            raise ValueError(f"{path}: non-wrapping axis {ax}")
    spec = GridSpec(tuple(float(a[0]) for a in axes), tuple(float(a[1]) for a in axes), tuple(int(a[2]) for a in axes))
    rows = np.loadtxt([ln for ln in lines if ln.strip() and not ln.startswith("#")], ndmin=2)
    if rows.shape[1] != spec.ndim + 1:
        raise ValueError(f"{path}: expected {spec.ndim + 1} columns, found {rows.shape[1]}")
    centre_index = (rows[:, : spec.ndim] - spec.lower) / spec.width_deg - 0.5
    index = np.rint(centre_index).astype(np.int64)
    if np.abs(centre_index - index).max() > 1e-6 or (index < 0).any() or (index >= np.array(spec.n_bins)).any():
        raise ValueError(f"{path}: coordinates are not cell centres of the header's grid")
    values = np.zeros(spec.n_bins)
    values[tuple(index.T)] = rows[:, -1]
    return spec, values


def read_chi_points(paths: list[Path], n_chi: int) -> np.ndarray:
    """chi1..chi<n> (degrees) of every row of the Top8000 point files (columns: label, phi, psi,
    chi1, chi2, chi3, chi4, CA-CB-CG angle, Cβ deviation)."""
    points = []
    for path in paths:
        with path.open(newline="") as fh:
            for row in csv.reader(fh):
                if not row:
                    continue
                chis = row[3 : 3 + n_chi]
                if len(chis) != n_chi or "NULL" in chis:
                    raise ValueError(f"{path}: row without {n_chi} chi values: {row[0]!r}")
                points.append([float(x) for x in chis])
    return np.array(points, dtype=np.float64)


def ranks_of_released(values: np.ndarray, path: Path) -> tuple[np.ndarray, int]:
    """Integer ranks and sample count of a released grid (values are multiples of 1/N)."""
    n_samples = int(round(1.0 / values[values > 0].min()))
    ranks = values * n_samples
    if np.abs(ranks - np.rint(ranks)).max() > 1e-6:
        raise ValueError(f"{path}: values are not multiples of 1/{n_samples}")
    return np.rint(ranks).astype(np.int64), n_samples


def read_centres(directory: Path) -> dict[str, list[dict]]:
    """Residue → named rotamers with chi means (degrees), from the central-values CSVs."""
    out: dict[str, list[dict]] = {}
    for res in CENTRE_FILES:
        with (directory / f"{res}.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        entries = []
        for row in rows:
            chis = [float(row[f"chi{k}_mean"]) for k in range(1, 5) if row.get(f"chi{k}_mean") not in (None, "")]
            entries.append(
                {"name": row["rotamer"], "chi_deg": chis, "n": int(row["n"]), "frequency_pct": float(row["frequency%"])}
            )
        entries.sort(key=lambda e: -e["n"])
        out[res] = entries
    return out


# -- writing ---------------------------------------------------------------------------------------
def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Deterministic compressed ``.npz`` (fixed timestamps, fixed member order)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for key, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue(), compresslevel=9)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def write_grid(path: Path, spec: GridSpec, ranks: np.ndarray, n_samples: int, source: str) -> None:
    dtype = np.uint16 if n_samples <= np.iinfo(np.uint16).max else np.uint32
    save_npz(
        path,
        {
            "ranks": ranks.astype(dtype),
            "n_samples": np.array(n_samples, dtype=np.int64),
            "lower_deg": np.array(spec.lower_deg),
            "upper_deg": np.array(spec.upper_deg),
            "n_bins": np.array(spec.n_bins, dtype=np.int64),
            "source": np.array(source),
            "credit": np.array(CREDIT),
        },
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- Met check -------------------------------------------------------------------------------------
def classes(values: np.ndarray) -> np.ndarray:
    """0 outlier, 1 allowed, 2 favoured."""
    return np.where(values < OUTLIER_BELOW, 0, np.where(values < FAVORED_MIN, 1, 2))


def met_agreement(source: Path) -> dict[str, float]:
    """Rebuild the Met grid from its points and compare it with the released grid."""
    spec, released = read_data_grid(source / "rotamer" / RELEASED["met"])
    points = read_chi_points([source / "rotamer_srcdata" / "rota8000-met.csv"], 3)
    built_spec = GridSpec.from_gridsize([0.0] * 3, [360.0] * 3, GRIDSIZE_3CHI_DEG)
    assert built_spec == spec, (built_spec, spec)
    rebuilt = percentile_ranks(points, spec) / len(points)
    a, b = classes(released), classes(rebuilt)
    data_cells = (released > 0) | (rebuilt > 0)
    pa, pb = classes(interpolate(released, spec, points)), classes(interpolate(rebuilt, spec, points))
    return {
        "n_points_csv": float(len(points)),
        "n_points_released": float(round(1.0 / released[released > 0].min())),
        "cells_class_agreement": float((a == b).mean()),
        "cells_outlier_agreement": float(((a == 0) == (b == 0)).mean()),
        "data_cells_class_agreement": float((a[data_cells] == b[data_cells]).mean()),
        "data_cells_outlier_agreement": float(((a[data_cells] == 0) == (b[data_cells] == 0)).mean()),
        "points_class_agreement": float((pa == pb).mean()),
        "max_abs_value_difference": float(np.abs(released - rebuilt).max()),
    }


# -- main ------------------------------------------------------------------------------------------
def build(source: Path, output: Path) -> list[dict]:
    output.mkdir(parents=True, exist_ok=True)
    table = []
    for name, filename in RELEASED.items():
        path = source / "rotamer" / filename
        spec, values = read_data_grid(path)
        ranks, n_samples = ranks_of_released(values, path)
        write_grid(output / f"rota8000-{name}.npz", spec, ranks, n_samples, f"top8000/rotamer/{filename}")
        table.append(
            {"grid": name, "how": "converted", "source": filename, "n": n_samples, "spec": spec, "sha256": sha256(path)}
        )
        print(f"{name:7s} converted  {spec.n_bins}  N={n_samples}", flush=True)
    for name, files in BUILT.items():
        paths = [source / "rotamer_srcdata" / f for f in files]
        points = read_chi_points(paths, 4)
        spec = GridSpec.from_gridsize([0.0] * 4, [360.0] * 4, GRIDSIZE_4CHI_DEG)
        t0 = time.perf_counter()
        ranks = percentile_ranks(points, spec)
        write_grid(
            output / f"rota8000-{name}.npz", spec, ranks, len(points), "top8000/rotamer_srcdata/" + " + ".join(files)
        )
        table.append(
            {
                "grid": name,
                "how": "built",
                "source": " + ".join(files),
                "n": len(points),
                "spec": spec,
                "sha256": ", ".join(sha256(p)[:16] for p in paths),
            }
        )
        print(f"{name:7s} built      {spec.n_bins}  N={len(points)}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    centres = read_centres(source / "rotamer_central_values")
    (output / "rotamer_centres.json").write_text(
        json.dumps(
            {
                "credit": CREDIT,
                "source": "top8000/rotamer_central_values/*.csv (rotamer, n, frequency%, chiN_mean)",
                "rotamers": centres,
            },
            indent=1,
            ensure_ascii=False,
        )
        + "\n"
    )
    shutil.copyfile(source / "rotamer" / "LICENSE", output / "LICENSE")
    return table


def write_readme(output: Path, table: list[dict], met: dict[str, float]) -> None:
    rows = "\n".join(
        f"| `rota8000-{t['grid']}.npz` | {t['how']} from `{t['source']}` | {t['n']} | "
        f"{' × '.join(str(b) for b in t['spec'].n_bins)} | "
        f"{', '.join(f'{lo:g}–{hi:g}' for lo, hi in zip(t['spec'].lower_deg, t['spec'].upper_deg))} |"
        for t in table
    )
    met_text = (
        "\nMethod check: the Met grid rebuilt the same way from `rota8000-met.csv`\n"
        f"({met['n_points_csv']:.0f} residues; the released grid used {met['n_points_released']:.0f}) gives the\n"
        f"released grid's outlier/allowed/favoured call in {100 * met['cells_class_agreement']:.2f} % of all cells\n"
        f"({100 * met['cells_outlier_agreement']:.2f} % the same outlier call; "
        f"{100 * met['data_cells_class_agreement']:.2f} % of the cells non-zero in either grid),\n"
        f"classifies {100 * met['points_class_agreement']:.2f} % of the Top8000 Met residues the same and differs\n"
        f"by at most {met['max_abs_value_difference']:.4f} in value.\n"
    )
    text = f"""# Rotamer percentile grids

Data credit: **{CREDIT}**.
Licensed under CC-BY 4.0 (see `LICENSE`, copied from the release). Every file here is derived
from that data set; the `credit` field inside each `.npz` and `rotamer_centres.json` repeats
the attribution.

Regenerate everything with `python scripts/build_rotamer_grids.py` (reads `../shared/data/top8000`).

| file | origin | reference residues N | cells | range per chi (°) |
|---|---|---|---|---|
{rows}

Each `.npz` holds `ranks` (integers), `n_samples` (N), `lower_deg`, `upper_deg`, `n_bins`,
`source` and `credit`. The percentile of cell `k` is `ranks[k] / n_samples`: the fraction of the
reference residues whose smoothed density is lower than the density in that cell. Cells span
`[lower, upper)` in equal bins, centred at `lower + (k + 0.5) × width`, and wrap. Half ranges
(0–180°) fold symmetric side chains: Phe/Tyr chi2, Asp chi2, Glu chi3.

Converted grids are the Top8000 release's `rota8000-*.data` files, losslessly (their values are
exact multiples of 1/N). Arg and Lys are missing from the release and were built from the
filtered Top8000 residues with MolProbity's recorded Silk settings (4 chi, 0–360° wrapping,
`gridsize=10`, `cosine=5`, `twopass=7`, `fraction`, as recorded in the upstream Makefile of
`Top8000_filtered_residues_rotarama`), implemented independently in
`cryostack.chem.rotamers.percentile_ranks`: cosine kernels of half-width at half-height
5° (zero beyond 10°) sampled at cell centres, normalised to points per degree^4; a second pass
with per-point half-width 7° / f_i^(0.5/4) (f_i the first-pass density at the point,
interpolated); then each cell's value is the fraction of points with lower own density.
{met_text}
MolProbity thresholds: outlier < {OUTLIER_BELOW}, allowed < {FAVORED_MIN}, favoured ≥ {FAVORED_MIN}.

`rotamer_centres.json`: the named Top8000 rotamers per residue (from
`rotamer_central_values/*.csv`: rotamer name, count, frequency and chi means), used to name
each scored residue after its nearest centre.
"""
    (output / "README.md").write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="top8000 directory")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="packaged data directory")
    args = parser.parse_args(argv)
    if not (args.source / "rotamer").is_dir():
        print(f"error: {args.source} has no rotamer/ directory", file=sys.stderr)
        return 2
    assert (COSINE_HALFWIDTH_DEG, TWOPASS_HALFWIDTH_DEG, TWOPASS_LAMBDA) == (5.0, 7.0, 0.5)
    met = met_agreement(args.source)
    print("Met rebuild vs release:", json.dumps(met, indent=1))
    table = build(args.source, args.output)
    write_readme(args.output, table, met)
    total = sum(p.stat().st_size for p in args.output.iterdir() if p.is_file())
    print(f"wrote {args.output} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
