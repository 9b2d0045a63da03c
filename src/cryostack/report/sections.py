"""Report sections built from the records the tools write (JSON dicts) and their files.

Every builder takes what a finished step left on disk, so a report can be rebuilt for a resumed
run without redoing work: a validation is ``ValidationResult.to_dict()``, a refinement the
record of :func:`cryostack.pipeline.refine_job.refine_files`, the particles the wizard's
``final/log.json`` and its folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cryostack.io.maps import DensityMap
from cryostack.report.before_after import b_factor_rows, report_rows
from cryostack.report.html import Section, esc, figure_img, fmt, key_values, note, png_file_img, table


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- inputs ---------------------------------------------------------------------------------------
def inputs_section(
    inputs: Mapping[str, object], parameters: Mapping[str, object], config_text: str | None = None
) -> Section:
    """Input files (with their hashes where known) and every parameter, printed back."""
    s = Section("Inputs and parameters", "inputs")
    rows = []
    for name, value in inputs.items():
        if isinstance(value, Mapping):
            rows.append((name, value.get("path", ""), str(value.get("sha256", ""))[:16]))
        else:
            rows.append((name, value, ""))
    s.add("<h3>Inputs</h3>", table(["input", "path", "sha256 (first 16)"], rows, sortable=False))
    flat = [(k, _short(v)) for k, v in _flatten(parameters)]
    s.add("<h3>Parameters</h3>", table(["parameter", "value"], flat, filterable=len(flat) > 15, scroll=True))
    if config_text:
        s.add("<h3>Configuration file</h3>", f"<pre>{esc(config_text)}</pre>")
    return s


def _flatten(d: Mapping[str, object], prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for k, v in d.items():
        if isinstance(v, Mapping):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _short(v: object) -> str:
    text = str(v)
    return text if len(text) <= 120 else text[:117] + "..."


# -- map ------------------------------------------------------------------------------------------
def map_section(
    density: DensityMap,
    *,
    title: str = "Map",
    anchor: str = "map",
    fsc: Mapping | None = None,
    cfar: Mapping | None = None,
    extra_images: Sequence[tuple[Path, str]] = (),
    compare: DensityMap | None = None,
    compare_label: str = "after",
) -> Section:
    """Grid facts, central slices and a projection, the half-map FSC (0.143 and 0.5 marked) and
    the cFAR. ``fsc``: ``{"freq_per_A": [...], "fsc": [...], "resolution_A": R}``. ``compare``:
    a second map on the same grid shown below the first (before/after)."""
    s = Section(title, anchor)
    d = density.data
    vx = density.voxel_size
    s.add(
        key_values(
            [
                ("File", str(density.source or "—")),
                ("Box (x, y, z) voxels", " × ".join(str(n) for n in d.shape[::-1])),
                ("Voxel size (Å)", ", ".join(f"{v:.4f}" for v in vx)),
                ("Origin (Å)", ", ".join(f"{o:.2f}" for o in density.origin)),
                ("Mean / RMS / min / max", f"{d.mean():.4g} / {d.std():.4g} / {d.min():.4g} / {d.max():.4g}"),
            ]
        )
    )
    s.add(figure_img(_slices_figure([(density, "")] + ([(compare, compare_label)] if compare is not None else [])),
                     "central slices (z, y, x) and the projection along z; grey scale from the 1st to the 99.9th percentile"))  # fmt: skip
    if fsc is not None and fsc.get("fsc"):
        label = f"half maps ({fmt(fsc.get('resolution_A'), '{:.2f}')} Å at 0.143)"
        fig = fsc_figure([(label, fsc["freq_per_A"], fsc["fsc"])])
        s.add(figure_img(fig, "half-map FSC; 0.143 (dotted) and 0.5 (dashed) marked"))
    if cfar is not None:
        value = cfar.get("cfar")
        s.add(
            key_values(
                [
                    ("cFAR (conical FSC area ratio; 1 = isotropic)", fmt(value, "{:.2f}")),
                    *([("cFAR note", str(cfar["note"]))] if cfar.get("note") else []),
                ]
            )
        )
    for path, caption in extra_images:
        s.add(png_file_img(path, caption))
    return s


def _slices_figure(maps: Sequence[tuple[DensityMap, str]]):
    plt = _plt()
    fig, axes = plt.subplots(len(maps), 4, figsize=(12, 3.1 * len(maps)), squeeze=False)
    for row, (m, label) in zip(axes, maps):
        d = m.data
        lo, hi = np.percentile(d, [1, 99.9])
        cz, cy, cx = (n // 2 for n in d.shape)
        views = [(d[cz], "z slice (x→, y↑)"), (d[:, cy, :], "y slice (x→, z↑)"), (d[:, :, cx], "x slice (y→, z↑)")]
        for ax, (img, name) in zip(row[:3], views):
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="lower")
            ax.set_title(f"{label} {name}".strip(), fontsize=9)
        proj = d.sum(axis=0)
        row[3].imshow(proj, cmap="gray", origin="lower")
        row[3].set_title(f"{label} projection along z".strip(), fontsize=9)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return fig


def fsc_figure(curves: Sequence[tuple[str, Sequence[float], Sequence[float]]]):
    """FSC curves ``(label, frequencies 1/Å, FSC)`` with the 0.143 (dotted) and 0.5 (dashed) lines."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, freq, fsc in curves:
        ax.plot(freq, fsc, label=label)
    ax.axhline(0.143, ls=":", c="grey", lw=0.9)
    ax.axhline(0.5, ls="--", c="grey", lw=0.9)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.legend(fontsize=8)
    return fig


# -- model ----------------------------------------------------------------------------------------
def validation_section(
    d: Mapping, *, title: str = "Model validation", anchor: str = "model", ramachandran=None
) -> Section:
    """The paper-style table, FSC curves, per-residue CC and Q-score, the Ramachandran plot (when
    ``ramachandran``, a :class:`~cryostack.validate.ramachandran.RamachandranResult`, is given),
    every outlier with chain and residue (sortable, filterable) and the reference scores."""
    from cryostack.validate.report import per_residue_figure, table_rows

    s = Section(title, anchor)
    s.add(key_values(table_rows(dict(d))))
    for n in d.get("notes", []):
        s.add(note(n))
    mm = d.get("map_model")
    if mm:
        c = mm["fsc_curve"]
        curves = [(f"map vs model ({fmt(mm.get('fsc05_resolution'), '{:.2f}')} Å at 0.5)", c["spatial_frequency_per_A"], c["fsc"])]  # fmt: skip
        if mm.get("half_map_fsc_curve"):
            h = mm["half_map_fsc_curve"]
            res = fmt(mm.get("half_map_fsc0143_resolution"), "{:.2f}")
            curves.append((f"half map 1 vs 2 ({res} Å at 0.143)", h["spatial_frequency_per_A"], h["fsc"]))
        for half in ("half1", "half2") if mm.get("model_vs_half_maps") else ():
            c = mm["model_vs_half_maps"][f"{half}_curve"]
            curves.append((f"model vs {half.replace('half', 'half map ')}", c["spatial_frequency_per_A"], c["fsc"]))
        fig = fsc_figure(curves)
        s.add(figure_img(fig, "map–model FSC (0.5 dashed) and half-map FSC (0.143 dotted)"))
        if mm.get("per_residue"):
            s.add(figure_img(per_residue_figure(mm["per_residue"]), "per-residue CC and Q-score along each chain"))
    if ramachandran is not None:
        from cryostack.validate.ramachandran import ramachandran_figure

        s.add(figure_img(ramachandran_figure(ramachandran), "Ramachandran plot (outliers red and labelled)", dpi=70))
    s.add("<h3>Outliers</h3>", table(
        ["kind", "chain", "residue", "where", "value", "detail"], outlier_rows(d), filterable=True, scroll=True,
        empty="no outliers",
    ))  # fmt: skip
    if mm and mm.get("per_residue"):
        rows = [
            (r["chain"], f"{r['name']}{r['number']}{r.get('icode', '')}", r["number"], r["cc"], r["q_score"])
            for r in mm["per_residue"]
        ]
        s.add("<h3>Per-residue fit</h3>", table(["chain", "residue", "number", "CC", "Q-score"], rows, filterable=True, scroll=True))  # fmt: skip
    return s


def outlier_rows(d: Mapping) -> list[tuple]:
    """Every outlier of a validation as ``(kind, chain, residue, where, value, detail)``."""
    g = d.get("geometry") or {}
    rows: list[tuple] = []

    def res(o: Mapping) -> str:
        return f"{o.get('name', '')}{o.get('number', '')}{o.get('icode', '') or ''}"

    for o in g.get("bond_outliers", []):
        rows.append(("bond", o.get("chain"), res(o), o.get("atoms"), o.get("sigmas"),
                     f"{o.get('model_A')} Å (ideal {o.get('ideal_A')})"))  # fmt: skip
    for o in g.get("angle_outliers", []):
        rows.append(("angle", o.get("chain"), res(o), o.get("atoms"), o.get("sigmas"),
                     f"{o.get('model_deg')}° (ideal {o.get('ideal_deg')})"))  # fmt: skip
    for o in g.get("chirality_errors", []):
        rows.append(("chirality", o.get("chain"), res(o), o.get("centre"), o.get("volume_A3"), "chiral volume Å³"))
    for kind in ("cis_peptides", "twisted_peptides"):
        for o in g.get(kind, []):
            rows.append((kind.replace("_", " ")[:-1], o.get("chain"), res(o), "ω", o.get("omega_deg"), ""))
    for o in g.get("clashes", []):
        chain, _, rest = str(o.get("atom1", "")).partition("/")
        rows.append(("clash", chain, rest.rpartition("/")[0], f"{o.get('atom1')} – {o.get('atom2')}",
                     o.get("overlap_A"), f"distance {o.get('distance_A')} Å"))  # fmt: skip
    for o in (g.get("ramachandran") or {}).get("outliers", []):
        detail = f"φ {fmt(o.get('phi'), '{:.0f}')}°, ψ {fmt(o.get('psi'), '{:.0f}')}°"
        rows.append(("Ramachandran", o.get("chain"), res(o), o.get("category"), o.get("score"), detail))
    for o in (g.get("rotamer") or {}).get("outliers", []):
        chis = ", ".join(f"{c:.0f}°" for c in o.get("chis") or [])
        rows.append(("rotamer", o.get("chain"), res(o), o.get("rotamer") or "", o.get("score"), f"χ {chis}"))
    for o in (g.get("cbeta") or {}).get("outliers", []):
        rows.append(("Cβ deviation", o.get("chain"), res(o), "CB", o.get("deviation_A"), "Å from ideal"))
    return rows


# -- refinement -----------------------------------------------------------------------------------
def refinement_section(record: Mapping, *, anchor: str = "refinement") -> Section:
    """Before/after table, loss terms and CC per recycle, B-factor summary."""
    s = Section("Refinement", anchor)
    ref = record.get("refinement", {})
    s.add(
        key_values(
            [
                ("Method", str(record.get("method", ref.get("method", "")))),
                ("Records (start, recycles, rotamer fit, polish)", str(len(ref.get("history", [])))),
                ("Best record", str(ref.get("best_recycle", "—"))),
                ("Rounds", rounds_summary(ref)),
                ("Wall time (s)", fmt(ref.get("wall_s"), "{:.1f}")),
                ("Loss weights", ", ".join(f"{k}={v:g}" for k, v in (record.get("weights") or {}).items()) or "—"),
            ]
        )
    )
    if record.get("before") and record.get("after"):
        rows = report_rows(record["before"], record["after"], b_factor_rows(ref.get("adp")))
        s.add("<h3>Before and after</h3>", table(["", "before", "after"], rows, sortable=False))
    cross = record.get("cross_validation")
    if cross:
        s.add("<h3>Half-map cross-validation</h3>", *_cross_validation_parts(cross))
    if ref.get("rounds"):
        trace = [
            (r["round"], fmt(r["ca_shift_rms_A"], "{:.3f}"), fmt(r["ca_shift_max_A"], "{:.2f}"),
             fmt(r["atom_shift_rms_A"], "{:.3f}"), fmt(r["cc"], "{:.4f}"), r["recycles"], fmt(r["wall_s"], "{:.1f}"))
            for r in ref["rounds"]
        ]  # fmt: skip
        s.add(
            "<h3>Convergence</h3>",
            table(["round", "Cα RMS shift (Å)", "Cα max shift (Å)", "all-atom RMS shift (Å)", "CC (mask)",
                   "recycles", "wall (s)"], trace, sortable=False),
        )  # fmt: skip
    hist = ref.get("history") or []
    if hist:
        s.add(figure_img(_history_figure(hist), "total loss, loss terms (log scale) and CC per record"))
    adp = ref.get("adp")
    if adp:
        s.add(
            "<h3>B-factors</h3>",
            key_values([(k.replace("_A2", " (Å²)").replace("_", " "), fmt(v, "{:.3f}")) for k, v in adp.items()
                        if isinstance(v, int | float)]),
        )  # fmt: skip
    return s


def rounds_summary(refinement: Mapping) -> str:
    """ "3 (converged: round 3 moved Cα 0.08 Å RMS < 0.15 Å)" from a refinement record's ``rounds``."""
    rounds = refinement.get("rounds") or []
    if not rounds:
        return "—"
    last, tol = rounds[-1], refinement.get("round_tolerance_A")
    moved = f"round {last['round']} moved Cα {last['ca_shift_rms_A']:.2f} Å RMS"
    if refinement.get("converged"):
        return f"{len(rounds)} (converged: {moved} < {tol:g} Å)"
    return f"{len(rounds)} (not converged: {moved}, tolerance {tol:g} Å; raise --max-rounds)"


def _cross_validation_parts(cross: Mapping) -> list[str]:
    """What the model was refined against, FSC_work / FSC_free / gap before and after, the
    ``density=auto`` scan (when it ran) and, when half 2 took part in the fit, why FSC_free is not free."""
    after, before = cross.get("after") or {}, cross.get("before") or {}
    against = "half map 1 (half map 2 free)" if cross.get("refined_against") == "half_map_1" else "the full map"
    parts = [
        key_values(
            [
                ("Refined against", against),
                ("Work half / free half", f"{cross.get('work_half_map')} / {cross.get('free_half_map')}"),
                (f"FSC averaged over shells to {fmt(cross.get('average_up_to_A'), '{:.2f}')} Å", ""),
                ("FSC_work before → after", f"{fmt(before.get('fsc_work_average'))} → {fmt(after.get('fsc_work_average'))}"),
                ("FSC_free before → after", f"{fmt(before.get('fsc_free_average'))} → {fmt(after.get('fsc_free_average'))}"),
                ("Gap (work − free) before → after", f"{fmt(before.get('fsc_gap'))} → {fmt(after.get('fsc_gap'))}"),
            ]
        )
    ]  # fmt: skip
    if not cross.get("free_is_independent"):
        parts.append(note("Refined against the full map, which holds both halves: FSC_free is not independent."))
    scan = cross.get("density_weight_scan")
    if scan:
        rows = [
            (t["density"], t["fsc_work_average"], t["fsc_free_average"], t["fsc_gap"], t["wall_s"])
            for t in scan.get("trials", [])
        ]
        parts.append(
            f"<h3>density=auto: chose {esc(fmt(scan.get('chosen'), '{:g}'))} "
            f"({esc(str(scan.get('recycles_per_trial')))} recycles per weight against half map 1)</h3>"
        )
        parts.append(table(["density weight", "FSC_work", "FSC_free", "gap", "wall (s)"], rows, sortable=False))
    return parts


def _history_figure(hist: Sequence[Mapping]):
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.6))
    x = np.arange(len(hist))
    labels = [f"{h.get('stage', '')[:4]}{h.get('recycle', i)}" for i, h in enumerate(hist)]
    a1.plot(x, [h["loss"] for h in hist], "k-o", ms=3, label="total")
    terms = sorted({k for h in hist for k in (h.get("terms") or {})})
    for t in terms:
        vals = [abs((h.get("terms") or {}).get(t, np.nan)) for h in hist]
        if np.nanmax(np.asarray(vals, dtype=float), initial=0) > 0:
            a1.plot(x, vals, lw=0.9, label=t)
    a1.set_yscale("symlog", linthresh=1e-3)
    a1.set_xticks(x, labels, rotation=60, fontsize=7)
    a1.set_ylabel("loss")
    a1.legend(fontsize=6, ncol=2)
    a2.plot(x, [h["cc"] for h in hist], "b-o", ms=3)
    a2.set_xticks(x, labels, rotation=60, fontsize=7)
    a2.set_ylabel("CC (model map vs map)")
    fig.tight_layout()
    return fig


# -- particles ------------------------------------------------------------------------------------
def particles_section(summary: Mapping, folder: Path, scores: np.ndarray | None = None) -> Section:
    """The wizard's run: particle counts, score histogram, every subset tried (resolution and cFAR
    vs size) and the subset plot (the final map's 3D FSC is in the map section)."""
    s = Section("Particles (CryoWizard on RELION)", "particles")
    final = summary.get("final") or {}
    s.add(
        key_values(
            [
                ("Input", str(summary.get("input", "—"))),
                ("RELION", str(summary.get("relion", "—"))),
                ("Particles / chosen", f"{summary.get('particles', '—')} / {summary.get('chosen', '—')}"),
                ("Final resolution (Å, FSC 0.143)", fmt(final.get("resolution_A"), "{:.2f}")),
                ("Final cFAR", fmt(final.get("cfar"), "{:.2f}")),
                ("Engine time (s)", fmt(summary.get("engine_seconds"), "{:.0f}")),
            ]
        )
    )
    for n in summary.get("notes", []):
        s.add(note(str(n)))
    if scores is not None and len(scores):
        plt = _plt()
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
        ax.hist(scores, bins=50, color="#3b6ea8")
        ax.set_xlabel("CryoRanker score (higher = better particle)")
        ax.set_ylabel("particles")
        s.add(figure_img(fig, f"score histogram of {len(scores):,} particles"))
    rows = [
        (r.get("stage"), r.get("name"), r.get("size"), r.get("resolution_A"), r.get("cfar"), r.get("seconds"),
         r.get("note", ""))
        for r in summary.get("subsets", [])
    ]  # fmt: skip
    s.add("<h3>Subsets reconstructed</h3>", table(["stage", "subset", "particles", "resolution (Å)", "cFAR", "seconds", "note"], rows))  # fmt: skip
    s.add(png_file_img(folder / "subsets.png", "resolution and cFAR against subset size"))
    views = [r for r in summary.get("subsets", []) if Path(str((r.get("result") or {}).get("map", ""))).is_file()]
    if views:
        s.add(
            figure_img(
                _subset_views_figure(views[:MAX_SUBSET_VIEWS]),
                "each reconstructed subset (initial models, searches, rescue clusters): central z slice "
                "and projection along z, in RELION's frame"
                + (f"; the first {MAX_SUBSET_VIEWS} of {len(views)}" if len(views) > MAX_SUBSET_VIEWS else ""),
            )
        )
    return s


#: Subset maps shown as views in the particles section (each a slice and a projection).
MAX_SUBSET_VIEWS = 12


def _subset_views_figure(runs: Sequence[Mapping]):
    from cryostack.io.maps import read_map

    plt = _plt()
    fig, axes = plt.subplots(2, len(runs), figsize=(1.9 * len(runs) + 0.5, 4.0), squeeze=False)
    for col, r in enumerate(runs):
        d = read_map(r["result"]["map"]).data
        lo, hi = np.percentile(d, [1, 99.9])
        axes[0, col].imshow(d[d.shape[0] // 2], cmap="gray", vmin=lo, vmax=hi, origin="lower")
        axes[1, col].imshow(d.sum(axis=0), cmap="gray", origin="lower")
        res = fmt(r.get("resolution_A"), "{:.1f}")
        axes[0, col].set_title(f"{r.get('stage')}\n{r.get('name')}: {r.get('size')}\n{res} Å", fontsize=7)
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return fig


def stages_section(records: Sequence[Mapping], failure: Mapping | None = None) -> Section:
    """What ran, what was reused from an earlier run, what failed."""
    s = Section("Stages", "stages")
    if failure:
        s.add(note(f"stage {failure.get('stage')} failed: {failure.get('error')} (log kept in {failure.get('log')})", "fail"))  # fmt: skip
    rows = [(r.get("stage"), r.get("status"), r.get("wall_s"), r.get("folder", "")) for r in records]
    s.add(table(["stage", "status", "wall time (s)", "folder"], rows, sortable=False))
    return s


__all__ = [
    "inputs_section",
    "map_section",
    "validation_section",
    "outlier_rows",
    "refinement_section",
    "particles_section",
    "stages_section",
]
