"""The before/after table of a refinement, from two ``ValidationResult.to_dict()`` results."""

from __future__ import annotations

#: Numbers of the before/after table: (label, path into ValidationResult.to_dict(), format).
REPORT_ROWS = (
    ("CC_mask", ("map_model", "cc_mask"), "{:.3f}"),
    ("CC_box", ("map_model", "cc_box"), "{:.3f}"),
    ("CC_mc", ("map_model", "cc_mc"), "{:.3f}"),
    ("CC_sc", ("map_model", "cc_sc"), "{:.3f}"),
    ("CC_peaks", ("map_model", "cc_peaks"), "{:.3f}"),
    ("CC_volume", ("map_model", "cc_volume"), "{:.3f}"),
    # With half maps: the model map against half 1 (the work half under cross-validation) and
    # half 2 (the free half), averaged over shells up to the resolution, and their gap.
    ("FSC_work avg (model vs half 1)", ("map_model", "model_vs_half_maps", "half1_average"), "{:.3f}"),
    ("FSC_free avg (model vs half 2)", ("map_model", "model_vs_half_maps", "half2_average"), "{:.3f}"),
    ("FSC gap (work − free)", ("map_model", "model_vs_half_maps", "half1_minus_half2"), "{:+.3f}"),
    ("bond RMSD (Å)", ("geometry", "bond_rmsd"), "{:.4f}"),
    ("angle RMSD (°)", ("geometry", "angle_rmsd"), "{:.2f}"),
    ("Ramachandran favoured (%)", ("geometry", "ramachandran", "favored_pct"), "{:.2f}"),
    ("Ramachandran outliers (%)", ("geometry", "ramachandran", "outlier_pct"), "{:.2f}"),
    ("rotamer outliers (%)", ("geometry", "rotamer", "outlier_pct"), "{:.2f}"),
    ("Cβ deviations", ("geometry", "cbeta_deviations"), "{:d}"),
    ("clashscore", ("geometry", "clashscore"), "{:.2f}"),
)


def lookup(d: dict | None, path: tuple[str, ...]):
    """``d[path[0]][path[1]]...``, or ``None`` where a key is missing."""
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def report_rows(before: dict, after: dict, extra: dict[str, tuple] | None = None) -> list[tuple[str, str, str]]:
    """``(label, before, after)`` strings; ``extra`` adds ``label: (before, after, format)`` rows."""
    rows = []
    for label, path, fmt in REPORT_ROWS:
        b, a = lookup(before, path), lookup(after, path)
        if b is None and a is None:
            continue
        rows.append((label, "–" if b is None else fmt.format(b), "–" if a is None else fmt.format(a)))
    for label, (b, a, fmt) in (extra or {}).items():
        rows.append((label, fmt.format(b), fmt.format(a)))
    return rows


def b_factor_rows(adp: dict | None) -> dict[str, tuple]:
    """Extra before/after rows (for :func:`report_rows`) from the refinement's B-factor record
    (``RefineResult.adp``): median and range (min–max) of the fitted atoms' B, all and split into
    main chain / side chain. Empty when the B fit did not run or has no distribution."""
    dist = (adp or {}).get("b_distribution_A2") or {}
    before, after = dist.get("before") or {}, dist.get("after") or {}
    rows: dict[str, tuple] = {}
    for group, label in (("all", "B"), ("main_chain", "B main chain"), ("side_chain", "B side chain")):
        b, a = before.get(group), after.get(group)
        if not b or not a:
            continue
        rows[f"{label} median (Å²)"] = (b["p50"], a["p50"], "{:.1f}")
        rows[f"{label} range (Å²)"] = (f"{b['min']:.1f}–{b['max']:.1f}", f"{a['min']:.1f}–{a['max']:.1f}", "{}")
    return rows


def text_report(rows: list[tuple[str, str, str]], title: str) -> str:
    """The table as aligned plain text under ``title``."""
    w = max(len(r[0]) for r in rows)
    lines = [title, f"{'':{w}}  {'before':>10}  {'after':>10}"]
    lines += [f"{label:{w}}  {b:>10}  {a:>10}" for label, b, a in rows]
    return "\n".join(lines) + "\n"
