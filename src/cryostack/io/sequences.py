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
            raise InputError(
                path, f"line {lineno}: invalid sequence letter(s) {''.join(bad)!r} in record {current.name}"
            )
        current.sequence += seq
    if not entries:
        raise InputError(path, "no FASTA records found")
    empty = [e.name for e in entries if not e.sequence]
    if empty:
        raise InputError(path, f"record {empty[0]} has an empty sequence")
    return entries


#: Default identity floor, in percent of the model chain's residues that align to an identical
#: residue of the record. With :func:`alignment_scoring`, unrelated sequences reach at most about
#: 20 % (shuffled actin vs its 369-residue chain, records of 50 to 3,000 residues; short chains
#: of a few dozen residues can score higher by chance), while a point-mutated copy keeps its
#: identity, so 30 % separates "same or homologous protein" from "unrelated record".
MIN_IDENTITY = 30.0

#: Gap opening inside a run of bonded model residues: the record cannot hold extra residues
#: between two residues that are covalently linked in the model, so such gaps are all but
#: forbidden. Gaps where the model is broken (unmodelled loops, termini) stay free.
_BONDED_GAP_OPEN = -100


def alignment_scoring() -> gemmi.AlignmentScoring:
    """Scoring for aligning a FASTA record to a model chain.

    BLOSUM62 with gap costs (10, 1), as BLAST (gemmi's ``'b'``), except that a gap opening
    between two bonded model residues costs 100. Without that, a long unrelated record reaches
    30 to 45 % identity by splitting the chain into many short matched pieces.
    """
    scoring = gemmi.AlignmentScoring("b")
    scoring.bad_gapo = _BONDED_GAP_OPEN
    return scoring


class SequenceMismatchError(InputError):
    """No FASTA record reaches the identity floor for one or more model chains."""


@dataclass
class ChainAlignment:
    """A model chain aligned to a FASTA record.

    ``accepted`` is False when even the best record is below the identity floor (only
    returned with ``strict=False``); ``named`` is True when the record's header names the chain.
    """

    chain: str
    entry: str
    identity: float  # percent of the model chain's residues aligned to an identical residue
    score: int
    cigar: str
    named: bool = False
    accepted: bool = True


def _polymer_kind(ptype) -> gemmi.ResidueKind:
    if ptype in (gemmi.PolymerType.PeptideL, gemmi.PolymerType.PeptideD):
        return gemmi.ResidueKind.AA
    return gemmi.ResidueKind.DNA if ptype == gemmi.PolymerType.Dna else gemmi.ResidueKind.RNA


def align_chains_to_fasta(
    structure,
    entries: list[FastaEntry],
    *,
    min_identity: float = MIN_IDENTITY,
    strict: bool = True,
    fasta_path: str | Path | None = None,
) -> list[ChainAlignment]:
    """Assign each polymer chain of ``structure`` to the FASTA record it matches.

    Each record is aligned to the chain with gemmi (which lets the record span unmodelled
    gaps; see :func:`alignment_scoring`). Only records with at least ``min_identity`` percent
    identity over the chain's residues are candidates. Among them, a record whose header names
    the chain (RCSB ``Chains A, B``) is preferred; otherwise, or when several are named, the
    highest identity wins (then the highest score).

    When no record reaches the floor for a chain: with ``strict`` (default) a
    :class:`SequenceMismatchError` (an :class:`InputError` naming ``fasta_path``) lists every
    such chain with its best record and identity; with ``strict=False`` the chain is returned
    with its best-identity record and ``accepted=False``.
    """
    scoring = alignment_scoring()
    results, failures = [], []
    for chain in structure.model:
        polymer = chain.get_polymer()
        if not len(polymer):
            continue
        ptype = polymer.check_polymer_type()
        kind = _polymer_kind(ptype)
        candidates = []
        for entry in entries:
            full = gemmi.expand_one_letter_sequence(entry.sequence, kind)
            ar = gemmi.align_sequence_to_polymer(full, polymer, ptype, scoring)
            identity = float(ar.calculate_identity(2))
            candidates.append(
                ChainAlignment(
                    chain=chain.name,
                    entry=entry.name,
                    identity=identity,
                    score=int(ar.score),
                    cigar=ar.cigar_str(),
                    named=chain.name in entry.chains,
                    accepted=identity >= min_identity,
                )
            )
        if not candidates:
            continue
        passing = [c for c in candidates if c.accepted]
        pool = [c for c in passing if c.named] or passing or candidates
        best = max(pool, key=lambda c: (c.identity, c.score))
        if not best.accepted:
            failures.append(best)
        results.append(best)
    if failures and strict:
        detail = "; ".join(f"chain {c.chain}: best record {c.entry} has {c.identity:.1f} % identity" for c in failures)
        raise SequenceMismatchError(
            fasta_path, f"no FASTA record reaches {min_identity:g} % sequence identity ({detail})"
        )
    return results
