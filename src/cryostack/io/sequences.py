"""Sequences: FASTA files (multi-chain, RCSB-style headers) and chain-to-sequence alignment."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import gemmi

from cryostack.errors import InputError

#: One-letter codes accepted in a FASTA sequence: the 20 amino acids, ambiguity codes
#: (B, Z, J, X), selenocysteine/pyrrolysine (U, O) and nucleotides (A, C, G, T, U, N).
VALID_LETTERS = frozenset("ACDEFGHIKLMNPQRSTVWYBZJXUO")
_NUCLEIC = frozenset("ACGTUN")
_RCSB_CHAINS = re.compile(r"^Chains? (.+)$")


@dataclass
class FastaEntry:
    """One FASTA record. ``chains`` are author chain IDs parsed from RCSB-style headers."""

    name: str
    sequence: str
    description: str = ""
    chains: list[str] = field(default_factory=list)

    @property
    def molecule(self) -> str:
        """``'nucleic'`` if the sequence only uses nucleotide letters, else ``'protein'``."""
        return "nucleic" if set(self.sequence) <= _NUCLEIC and len(self.sequence) > 0 else "protein"


def _parse_chains(field_text: str) -> list[str]:
    """``'Chains A, B[auth C]'`` → ``['A', 'C']`` (author IDs, which models use)."""
    m = _RCSB_CHAINS.match(field_text.strip())
    if not m:
        return []
    chains = []
    for item in m.group(1).split(","):
        item = item.strip()
        auth = re.search(r"\[auth ([^\]]+)\]", item)
        chains.append(auth.group(1).strip() if auth else item.split("[")[0].strip())
    return [c for c in chains if c]


def read_fasta(path: str | Path) -> list[FastaEntry]:
    """Read a FASTA file with one or more records; letters are upper-cased, ``*`` ends a record.

    RCSB headers (``>7K3G_1|Chains A, B|Spike glycoprotein|SARS-CoV-2``) fill ``chains``.
    Raises :class:`InputError` naming the file, line and letter for invalid content.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise InputError(path, "not a text file") from None
    entries: list[FastaEntry] = []
    current: FastaEntry | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith(">"):
            header = line[1:].strip()
            parts = [p.strip() for p in header.split("|")]
            name = parts[0].split()[0] if parts[0] else f"seq{len(entries) + 1}"
            chains = next((c for p in parts[1:] if (c := _parse_chains(p))), [])
            current = FastaEntry(name=name, sequence="", description=header, chains=chains)
            entries.append(current)
            continue
        if current is None:
            raise InputError(path, f"line {lineno}: sequence before the first '>' header")
        seq = line.replace(" ", "").upper().rstrip("*")
        bad = sorted(set(seq) - VALID_LETTERS)
        if bad:
            raise InputError(path, f"line {lineno}: invalid sequence letter(s) {''.join(bad)!r} in record {current.name}")
        current.sequence += seq
    if not entries:
        raise InputError(path, "no FASTA records found")
    empty = [e.name for e in entries if not e.sequence]
    if empty:
        raise InputError(path, f"record {empty[0]} has an empty sequence")
    return entries


@dataclass
class ChainAlignment:
    """A model chain aligned to a FASTA record."""

    chain: str
    entry: str
    identity: float  # percent identity over aligned model residues
    score: int
    cigar: str


def align_chains_to_fasta(structure, entries: list[FastaEntry]) -> list[ChainAlignment]:
    """Assign each polymer chain of ``structure`` to the FASTA record it matches best.

    Uses gemmi's sequence-to-polymer alignment, which respects gaps in the residue numbering.
    Records whose header names the chain are preferred; otherwise the highest score wins.
    """
    results = []
    for chain in structure.model:
        polymer = chain.get_polymer()
        if not len(polymer):
            continue
        ptype = polymer.check_polymer_type()
        kind = gemmi.ResidueKind.AA if ptype in (gemmi.PolymerType.PeptideL, gemmi.PolymerType.PeptideD) else (
            gemmi.ResidueKind.DNA if ptype == gemmi.PolymerType.Dna else gemmi.ResidueKind.RNA
        )
        best = None
        for entry in entries:
            full = gemmi.expand_one_letter_sequence(entry.sequence, kind)
            ar = gemmi.align_sequence_to_polymer(full, polymer, ptype, gemmi.AlignmentScoring())
            named = chain.name in entry.chains
            key = (named, ar.score)
            if best is None or key > best[0]:
                best = (key, entry, ar)
        if best is not None:
            _, entry, ar = best
            results.append(
                ChainAlignment(
                    chain=chain.name,
                    entry=entry.name,
                    identity=float(ar.calculate_identity(2)),
                    score=int(ar.score),
                    cigar=ar.cigar_str(),
                )
            )
    return results
