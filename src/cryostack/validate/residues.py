"""Per-residue result records shared by the backbone and side-chain validators (Ramachandran,
rotamers, Cβ deviation)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

import gemmi


@dataclass(frozen=True)
class ResidueRef:
    """Identifies one residue (optionally one alternate conformation) of a model.

    ``number`` is the author residue number, ``icode`` the insertion code (``""`` if none) and
    ``altloc`` the alternate-conformation letter (``""`` when the residue has none).
    """

    chain: str
    number: int | None  # gemmi's SeqId.num: None only for a residue without a number
    icode: str
    name: str
    altloc: str = ""

    def label(self) -> str:
        """Short human label, e.g. ``A/57 PRO`` or ``B/100A LYS (altloc B)``."""
        text = f"{self.chain}/{self.number}{self.icode} {self.name}"
        return f"{text} (altloc {self.altloc})" if self.altloc else text

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ResidueRecord:
    """Base of per-residue result records (Ramachandran, rotamer, Cβ) that carry ``chain``,
    ``number``, ``icode``, ``name`` and ``altloc`` fields."""

    # Declared for type checkers only; the subclasses (frozen dataclasses) define the fields.
    chain: str
    number: int | None
    icode: str
    name: str
    altloc: str

    @property
    def ref(self) -> ResidueRef:
        return ResidueRef(self.chain, self.number, self.icode, self.name, self.altloc)

    @property
    def label(self) -> str:
        """Short plot label, e.g. ``A/57 GLU`` or ``A/57 B GLU`` for altloc B."""
        alt = f" {self.altloc}" if self.altloc else ""
        return f"{self.chain}/{self.number}{self.icode}{alt} {self.name}"


class _ClassifiedRecord(Protocol):
    @property
    def classification(self) -> str: ...

    def outlier_dict(self) -> dict[str, Any]: ...


@dataclass
class ClassifiedCounts:
    """Favoured / allowed / outlier counts over ``n_residues`` residues (Ramachandran, rotamers).

    Subclasses add ``residues``: records with a ``classification`` and an ``outlier_dict()``.
    """

    n_residues: int
    n_favored: int
    n_allowed: int
    n_outliers: int

    if TYPE_CHECKING:  # a field of every subclass; not one here (it would change the field order)

        @property
        def residues(self) -> Sequence[_ClassifiedRecord]: ...

    def _pct(self, n: int) -> float:
        return 100.0 * n / self.n_residues if self.n_residues else 0.0

    @property
    def favored_pct(self) -> float:
        return self._pct(self.n_favored)

    @property
    def allowed_pct(self) -> float:
        return self._pct(self.n_allowed)

    @property
    def outlier_pct(self) -> float:
        return self._pct(self.n_outliers)

    @property
    def outliers(self) -> list[dict[str, Any]]:
        """Outlier records (every conformation) as dicts."""
        return [r.outlier_dict() for r in self.residues if r.classification == "outlier"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary; percentages are ``None`` when no residue could be scored."""
        scored = self.n_residues > 0
        return {
            "favored_pct": round(self.favored_pct, 3) if scored else None,
            "allowed_pct": round(self.allowed_pct, 3) if scored else None,
            "outlier_pct": round(self.outlier_pct, 3) if scored else None,
            "n_residues": self.n_residues,
            "outliers": self.outliers,
        }


def ref_of(chain: gemmi.Chain, residue: gemmi.Residue, altloc: str = "") -> ResidueRef:
    """The :class:`ResidueRef` of ``residue`` in ``chain``."""
    return ResidueRef(chain.name, residue.seqid.num, residue.seqid.icode.strip(), residue.name, altloc)
