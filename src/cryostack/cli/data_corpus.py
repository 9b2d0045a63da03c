"""``cryostack data corpus``: export real protein chains into a sharded corpus with splits."""

from __future__ import annotations

from pathlib import Path

import typer


def corpus(
    out: Path = typer.Option(..., "--out", help="Corpus directory (created; an unfinished export there is resumed)."),
    source: str = typer.Option(
        "promod3", "--source", help="'promod3' (ProMod3 StructureDB) or a directory of PDB/mmCIF files."
    ),
    sidechains: str = typer.Option(
        "none",
        "--sidechains",
        help="Full-atom chains: none, all, a number N (random, --seed) or a file of 'PDBID [CHAIN]' lines.",
    ),
    rotamer_model: str = typer.Option(
        "frm", "--rotamer-model", help="ProMod3 side-chain model: frm (default, accurate) or rrm (about 15x faster)."
    ),
    workers: int = typer.Option(2, "--workers", help="Parallel processes."),
    seed: int = typer.Option(0, "--seed", help="Seed for --limit, --sidechains N and the split assignment."),
    limit: int | None = typer.Option(
        None, "--limit", help="At most this many chains (whole entries; for a directory: files)."
    ),
    entries: Path | None = typer.Option(
        None, "--entries", help="File of PDB ids (or file names), one a line: export only these entries."
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Stop at the first unreadable model file (default: skip and list them)."
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """Export a training corpus (backbone N/CA/C/O/CB in Å, optional side chains) with train/val/test splits."""
    from cryostack.data.corpus import disk_size_bytes, export_corpus
    from cryostack.errors import InputError

    wanted = None
    if entries is not None:
        if not entries.is_file():
            raise InputError(entries, "file not found")
        wanted = [
            line.split()[0] for line in entries.read_text().splitlines() if line.split() and not line.startswith("#")
        ]

    result = export_corpus(
        out, source=source, sidechains=sidechains, workers=workers, seed=seed, limit=limit,
        progress=not no_progress, rotamer_model=rotamer_model, entries=wanted, strict=strict,
    )  # fmt: skip
    info = result.info
    s = info["splits"]
    typer.echo(
        f"wrote {out}: {info['n_chains']} chains from {info['n_entries']} entries, {info['n_residues']} residues, "
        f"{info['n_chains_with_sidechains']} with side chains; splits train/val/test = "
        f"{s['train']['chains']}/{s['val']['chains']}/{s['test']['chains']} chains; "
        f"{disk_size_bytes(out) / 1e6:.1f} MB; export time {info['export_wall_time_s']} s"
    )
    skipped = info.get("skipped_files", [])
    if skipped:
        typer.echo(f"skipped {len(skipped)} unreadable files (listed in {out / 'corpus.json'}):", err=True)
        for s_ in skipped[:10]:
            typer.echo(f"  {s_['file']}: {s_['problem']}", err=True)
