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


def text_report(rows: list[tuple[str, str, str]], title: str) -> str:
    """The table as aligned plain text under ``title``."""
    w = max(len(r[0]) for r in rows)
    lines = [title, f"{'':{w}}  {'before':>10}  {'after':>10}"]
    lines += [f"{label:{w}}  {b:>10}  {a:>10}" for label, b, a in rows]
    return "\n".join(lines) + "\n"
