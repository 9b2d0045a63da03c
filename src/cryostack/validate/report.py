"""The validation table (text) and plots (PNG) from a :class:`ValidationResult`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryostack.io.atomic import atomic_output

#: Chains listed one by one in the text table; the JSON has all of them.
MAX_CHAIN_ROWS = 12
#: Up to this many chains get a per-residue plot panel each; more share one panel.
MAX_CHAIN_PANELS = 6


def _f(v, fmt: str = "{:.3f}") -> str:
    return "—" if v is None else fmt.format(v)


def text_table(result) -> str:
    """A paper-style validation table."""
    d = result.to_dict()
    rows = table_rows(d)
    width = max(len(k) for k, _ in rows) + 2
    lines = [f"{k:<{width}}{v}" for k, v in rows]
    for note in d["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"


def table_rows(d: dict) -> list[tuple[str, str]]:
    """The table's ``(label, value)`` rows from ``ValidationResult.to_dict()``; a value of ``""``
    marks a heading (the text table and the HTML report show the same rows)."""
    rows: list[tuple[str, str]] = [("Model", str(d["model"]))]
    mm = d["map_model"]
    if mm:
        rows += [
            ("Map–model fit", ""),
            ("  Resolution used (Å)", _f(mm["resolution"], "{:.2f}")),
            ("  CC_mask / CC_box", f"{_f(mm['cc_mask'])} / {_f(mm['cc_box'])}"),
            ("  CC_volume / CC_peaks", f"{_f(mm['cc_volume'])} / {_f(mm['cc_peaks'])}"),
            ("  CC main chain / side chain", f"{_f(mm['cc_mc'])} / {_f(mm['cc_sc'])}"),
            ("  Map–model FSC = 0.5 (Å)", _f(mm["fsc05_resolution"], "{:.2f}")),
            ("  Q-score (mean)", _f(mm["q_score"])),
        ]
        if "half_map_fsc0143_resolution" in mm:
            rows.append(("  Half-map FSC = 0.143 (Å)", _f(mm["half_map_fsc0143_resolution"], "{:.2f}")))
        hv = mm.get("model_vs_half_maps")
        if hv:
            rows.append(
                (
                    f"  Model vs half 1 / half 2: FSC avg to {hv['average_up_to_A']:.2f} Å",
                    f"{_f(hv['half1_average'])} / {_f(hv['half2_average'])}",
                )
            )
        if len(mm["per_chain"]) > 1:
            shown = mm["per_chain"][:MAX_CHAIN_ROWS]
            rows += [(f"  Chain {c['chain']}: CC / Q-score", f"{_f(c['cc'])} / {_f(c['q_score'])}") for c in shown]
            if len(mm["per_chain"]) > len(shown):
                rows.append((f"  ... {len(mm['per_chain']) - len(shown)} more chains", "(in the JSON)"))
    g = d["geometry"]
    rows += [
        ("Geometry", ""),
        ("  Bond RMSD (Å) / outliers > 4σ", f"{_f(g.get('bond_rmsd'))} / {len(g.get('bond_outliers', []))}"),
        (
            "  Angle RMSD (°) / outliers > 4σ",
            f"{_f(g.get('angle_rmsd'), '{:.2f}')} / {len(g.get('angle_outliers', []))}",
        ),
        ("  Chirality errors", str(len(g.get("chirality_errors", [])))),
        ("  Cis / twisted peptides", f"{len(g.get('cis_peptides', []))} / {len(g.get('twisted_peptides', []))}"),
        (f"  Clashscore ({g.get('clashscore_method', '')})", _f(g.get("clashscore"), "{:.2f}")),
    ]
    if g.get("clashscore_heavy_atom") is not None and not g.get("clashscore_method", "").startswith("heavy-atom"):
        rows.append(("  Clashscore (heavy atoms only)", _f(g["clashscore_heavy_atom"], "{:.2f}")))
    if "ramachandran" in g:
        r = g["ramachandran"]
        rows.append(
            (
                "  Ramachandran favoured / allowed / outliers (%)",
                f"{_f(r['favored_pct'], '{:.2f}')} / {_f(r['allowed_pct'], '{:.2f}')} / {_f(r['outlier_pct'], '{:.2f}')}",
            )
        )
    if "rotamer" in g:
        r = g["rotamer"]
        rows.append(
            (
                "  Rotamer favoured / allowed / outliers (%)",
                f"{_f(r['favored_pct'], '{:.2f}')} / {_f(r['allowed_pct'], '{:.2f}')} / {_f(r['outlier_pct'], '{:.2f}')}",
            )
        )
    if "cbeta_deviations" in g:
        rows.append(("  Cβ deviations > 0.25 Å", str(g["cbeta_deviations"])))
    ref = d["reference"]
    if ref:
        rows += [
            ("Versus reference", ""),
            ("  TM-score (reference length)", _f(ref.get("tm_score"))),
            ("  RMSD (Å) after superposition", _f(ref.get("rmsd"), "{:.2f}")),
            ("  lDDT / Cα lDDT", f"{_f(ref.get('lddt'))} / {_f(ref.get('ca_lddt'))}"),
            ("  Mean Cα displacement (Å)", _f(ref.get("ca_displacement"), "{:.2f}")),
            (
                "  Coverage within 3 Å / sequence match",
                f"{_f(ref.get('coverage_3a'))} / {_f(ref.get('sequence_match'))}",
            ),
            ("  DockQ", _f(ref.get("dockq"))),
        ]
    return rows


def write_plots(result, folder: str | Path) -> list[Path]:
    """FSC curves, Ramachandran plot, per-residue CC and Q-score along each chain (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    mm = result.map_model
    if mm is not None:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(mm.fsc_freq, mm.fsc, label="map vs model")
        ax.axhline(0.5, ls="--", c="grey", lw=0.8)
        if mm.half_map_fsc is not None:
            ax.plot(mm.half_map_fsc_freq, mm.half_map_fsc, label="half map 1 vs 2")
        if mm.model_vs_half_maps is not None:
            for half in ("half1", "half2"):
                c = mm.model_vs_half_maps[f"{half}_curve"]
                ax.plot(
                    c["spatial_frequency_per_A"],
                    c["fsc"],
                    lw=0.9,
                    label=f"model vs {half.replace('half', 'half map ')}",
                )
            ax.axhline(0.143, ls=":", c="grey", lw=0.8)
        ax.set_xlabel("spatial frequency (1/Å)")
        ax.set_ylabel("FSC")
        ax.set_ylim(-0.1, 1.05)
        ax.legend()
        written.append(_save(fig, folder / "fsc.png"))
        written.append(_save(per_residue_figure(mm.per_residue), folder / "per_residue.png"))
    if result.ramachandran is not None:
        from cryostack.validate.ramachandran import plot_ramachandran

        path = folder / "ramachandran.png"
        plot_ramachandran(result.ramachandran, path)
        written.append(path)
    return written


def per_residue_figure(per_residue: list[dict]):
    """Per-residue CC and Q-score: one panel per chain, or for many chains one panel with the
    chains in model order (a figure of dozens of panels is unreadable and slow to draw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chains = list(dict.fromkeys(r["chain"] for r in per_residue))
    value = lambda r, k: r[k] if r[k] is not None else float("nan")  # noqa: E731
    if len(chains) <= MAX_CHAIN_PANELS:
        fig, axes = plt.subplots(len(chains), 1, figsize=(9, 2.4 * len(chains)), squeeze=False)
        for ax, ch in zip(axes[:, 0], chains):
            rs = [r for r in per_residue if r["chain"] == ch]
            numbers = [r["number"] for r in rs]
            ax.plot(numbers, [value(r, "cc") for r in rs], lw=0.8, label="CC")
            ax.plot(numbers, [value(r, "q_score") for r in rs], lw=0.8, label="Q-score")
            ax.set_title(f"chain {ch}", fontsize=9)
            ax.set_ylim(-0.2, 1.0)
            ax.legend(fontsize=7, loc="lower right")
        axes[-1, 0].set_xlabel("residue number")
        return fig
    fig, ax = plt.subplots(figsize=(12, 3.5))
    x = np.arange(len(per_residue))
    ax.plot(x, [value(r, "cc") for r in per_residue], lw=0.5, label="CC")
    ax.plot(x, [value(r, "q_score") for r in per_residue], lw=0.5, label="Q-score")
    starts = [i for i, r in enumerate(per_residue) if i == 0 or r["chain"] != per_residue[i - 1]["chain"]]
    for i in starts[1:]:
        ax.axvline(i - 0.5, c="grey", lw=0.4)
    step = max(1, len(starts) // 40)  # keep chain labels legible
    ax.set_xticks(
        [starts[k] for k in range(0, len(starts), step)],
        [per_residue[starts[k]]["chain"] for k in range(0, len(starts), step)],
        fontsize=7,
    )
    ax.set_xlabel(f"chains in model order ({len(chains)} chains, {len(per_residue)} residues)")
    ax.set_ylim(-0.2, 1.0)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_output(path) as tmp:
        fig.tight_layout()
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
