"""Model cards: the facts a user needs to trust a checkpoint, written from the run itself.

A training run writes a draft card beside its checkpoint with what the code knows for certain
(provenance, data, settings, measured held-out numbers); the author adds the baselines and the
known limits before the checkpoint ships in ``cryostack/weights/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryostack.io.atomic import atomic_output


def provenance_markdown(provenance: dict[str, Any]) -> str:
    """The provenance block of a card: commit, date, machine, data hashes."""
    machine = provenance.get("machine", {})
    lines = [
        "## Provenance",
        f"- Code: cryostack commit `{provenance.get('git_commit', 'unknown')}`",
        f"- Date (UTC): {provenance.get('date_utc', 'unknown')}",
        f"- Machine: {machine.get('platform', '?')}, {machine.get('cpu_count', '?')} CPUs, "
        f"torch {machine.get('torch', '?')} on {machine.get('torch_threads', '?')} threads"
        + (f", GPU {machine['cuda_device']}" if machine.get("cuda_device") else ", no GPU"),
    ]
    for name, digest in sorted(provenance.get("data_sha256", {}).items()):
        lines.append(f"- Data `{name}` sha256 `{digest}`")
    return "\n".join(lines) + "\n"


def write_model_card(
    path: str | Path,
    *,
    name: str,
    summary: str,
    provenance: dict[str, Any],
    sections: dict[str, Any] | None = None,
) -> Path:
    """Write a draft card: title, summary, provenance, then each section (text, or a dict shown as JSON)."""
    parts = [f"# {name}\n", summary.strip() + "\n", provenance_markdown(provenance)]
    for title, body in (sections or {}).items():
        text = body if isinstance(body, str) else "```json\n" + json.dumps(body, indent=1) + "\n```"
        parts.append(f"## {title}\n{text.strip()}\n")
    parts.append(
        "## To complete before shipping\n- Baselines measured side by side, known limits, and what the CPU bought.\n"
    )
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(parts))
    return Path(path)


def write_run_report(
    out_dir: str | Path,
    *,
    card_file: str,
    card_name: str,
    card_summary: str,
    provenance: dict[str, Any],
    data: dict[str, Any],
    steps_done: int,
    steps_planned: int,
    wall_time_s: float,
    model: Any,
    train_config: dict[str, Any],
    val: dict[str, Any],
    history: list,
) -> dict[str, Any]:
    """A finished (or paused) run's ``report.json`` and draft card ``card_file`` in ``out_dir``.

    ``data`` says what the run trained on (corpus, chain counts, ...); ``model`` has ``cfg`` (with
    ``to_dict``) and ``n_parameters()``. Returns the report.
    """
    out = Path(out_dir)
    report = {
        "date": provenance["date_utc"],
        "git_commit": provenance["git_commit"],
        "machine": provenance["machine"],
        **data,
        "steps": steps_done,
        "finished": steps_done >= steps_planned,
        "wall_time_s": round(wall_time_s, 1),
        "parameters": model.n_parameters(),
        "train_config": train_config,
        "model_config": model.cfg.to_dict(),
        "val": val,
        "history": history,
    }
    with atomic_output(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    write_model_card(
        out / card_file, name=card_name, summary=card_summary, provenance=provenance,
        sections={"Run": {k: report[k] for k in ("steps", "wall_time_s", "parameters", "val", "train_config")}},
    )  # fmt: skip
    return report
