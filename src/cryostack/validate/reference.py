"""Model-versus-reference scores: TM-score, RMSD, lDDT, Cα lDDT, displacement, coverage, DockQ.

:func:`compare_to_reference` maps model chains onto reference chains, pairs residues by sequence
alignment (never by residue numbering alone, so renumbered models work) and scores the model.

**Chain mapping.** Every model chain is aligned to every reference chain (gemmi's global
alignment of residue names, BLOSUM62); a pair is a candidate when at least
:data:`MIN_CHAIN_IDENTITY` of its aligned residues are identical. Among candidates the mapping
is chosen structurally, which is what decides between copies of a homo-oligomer: for each
superposition hypothesis (the given frame, and the superposition of the largest model chain
onto each of its candidate reference chains) every candidate pair gets the sum over its aligned
Cα pairs of ``1 / (1 + (d / 4 Å)²)``, and an optimal one-to-one assignment (Hungarian) maximises
the total; the best hypothesis wins. Unmapped reference chains count as missing in every
reference-normalised score (TM-score, lDDT, coverage); unmapped model chains are ignored except
by coverage (OpenStructure's oligo-lDDT would also add the expected contacts of *extra copies*
of a reference entity to its denominator; we do not). One model chain maps to at most one
reference chain: a reference chain built as two model chains is scored through the better one.

**Representative atom.** Cα for amino acids, C3′ for nucleotides ("Cα" below means this atom).

**Scores.**

- ``tm_score`` -- TM-align (tmtools) with the alignment fixed to the sequence correspondence
  (TM-align ``-I``), normalised by the number of reference residues with a Cα: a
  sequence-dependent TM-score.
- ``rmsd`` -- Cα RMSD (Å) of the aligned residues after one optimal (Kabsch) superposition of all
  of them (all mapped chains together).
- ``lddt`` -- all-atom lDDT (Mariani et al. 2013), heavy atoms, on the reference's distances:
  every pair of atoms of *different* residues within 15 Å in the reference, each scored
  at 0.5, 1, 2 and 4 Å (preserved when ``|d_model - d_ref| < threshold``); a reference atom
  with no model counterpart (same atom name in the aligned residue) counts as not preserved.
  Global lDDT = preserved / (4 × pairs). Symmetric side chains (Arg NH1/NH2, Asp OD1/OD2,
  Glu OE1/OE2, Leu CD1/CD2, Val CG1/CG2, Phe and Tyr CD1/CD2 + CE1/CE2) are renamed in the
  model residue by residue when that scores better against the rest of the structure, as
  OpenStructure does. No stereochemistry filtering (OpenStructure ``compare-structures``
  without ``--structural-checks``). Complexes are scored as one structure, inter-chain
  distances included (OpenStructure's oligo-lDDT).
- ``ca_lddt`` -- the same on Cα atoms only.
- ``ca_displacement`` -- mean distance (Å) between aligned Cα pairs in the frames as given,
  **no superposition**: how far the model sits from the reference in the map frame.
- ``coverage_3a`` -- fraction of reference residues (with a Cα) that have a model Cα, of any
  chain, within 3 Å in the frames as given (no alignment, no superposition).
- ``sequence_match`` -- among covered reference residues, the fraction whose nearest model
  residue has the same residue type (one-letter code); ``None`` when nothing is covered.
- ``dockq`` -- for references with two or more chains: the DockQ package (v2, Mirabello &
  Wallner) run with this chain mapping on every reference interface, averaged (DockQ's
  "GlobalDockQ"); per-interface details in ``dockq_interfaces``. ``None`` for single chains.

``tests/test_reference.py`` checks these against OpenStructure 2.3 ``compare-structures``
(lDDT, Cα lDDT), the ``TMalign`` binary and tmtools' structural alignment, and DockQ's command
line, on real structures and perturbed copies of them.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import gemmi
import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from cryostack.errors import InputError
from cryostack.io.models import Structure

#: lDDT parameters (the standard ones).
LDDT_RADIUS_A = 15.0
LDDT_THRESHOLDS_A = (0.5, 1.0, 2.0, 4.0)
#: A model residue "covers" a reference residue when their Cα atoms are this close (Å).
COVERAGE_RADIUS_A = 3.0
#: Chains are mapping candidates when this fraction of aligned residues is identical.
MIN_CHAIN_IDENTITY = 0.3
#: Distance scale of the structural chain-mapping score (Å).
MAPPING_D0_A = 4.0
#: Above this many aligned Cα pairs the TM-score search is :func:`tm_score_fixed` (numpy), not
#: tmtools, whose exhaustive seeding grows quadratically (about 14 s at 5,000 residues).
TMTOOLS_MAX_PAIRS = 1500

#: Symmetric side-chain atoms: names swapped together when a residue is flipped.
SYMMETRIC_ATOMS = {
    "ARG": (("NH1", "NH2"),),
    "ASP": (("OD1", "OD2"),),
    "GLU": (("OE1", "OE2"),),
    "LEU": (("CD1", "CD2"),),
    "VAL": (("CG1", "CG2"),),
    "PHE": (("CD1", "CD2"), ("CE1", "CE2")),
    "TYR": (("CD1", "CD2"), ("CE1", "CE2")),
}

_SCORING = gemmi.AlignmentScoring("b")  # BLOSUM62, gap open -10, extend -1
_CIGAR = re.compile(r"(\d+)([MID])")
_PAIR_CHUNK = 4096  # query atoms per block in the lDDT neighbour search (bounds memory)


# ---------------------------------------------------------------------------------------------
# result
# ---------------------------------------------------------------------------------------------
@dataclass
class ReferenceResult:
    """Scores of a model against a reference structure (see the module docstring)."""

    tm_score: float
    rmsd: float  # Å, Cα after superposition
    lddt: float
    ca_lddt: float
    ca_displacement: float  # Å, Cα, no superposition
    coverage_3a: float
    sequence_match: float | None
    dockq: float | None
    chain_mapping: dict[str, str]  # model chain → reference chain
    dockq_interfaces: list[dict] = field(default_factory=list)
    n_reference_residues: int = 0
    n_model_residues: int = 0
    n_aligned_residues: int = 0
    aligned_sequence_identity: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "tm_score": self.tm_score,
            "rmsd": self.rmsd,
            "lddt": self.lddt,
            "ca_lddt": self.ca_lddt,
            "ca_displacement": self.ca_displacement,
            "coverage_3a": self.coverage_3a,
            "sequence_match": self.sequence_match,
            "dockq": self.dockq,
            "dockq_interfaces": [dict(d) for d in self.dockq_interfaces],
            "chain_mapping": dict(self.chain_mapping),
            "n_reference_residues": self.n_reference_residues,
            "n_model_residues": self.n_model_residues,
            "n_aligned_residues": self.n_aligned_residues,
            "aligned_sequence_identity": self.aligned_sequence_identity,
            "notes": list(self.notes),
        }


# ---------------------------------------------------------------------------------------------
# polymer chains as arrays
# ---------------------------------------------------------------------------------------------
@dataclass
class _Chain:
    name: str
    resnames: list[str]
    codes: str  # one-letter code per residue ("X" unknown)
    rep: np.ndarray  # (R, 3) representative atom (NaN where missing)
    atom_xyz: np.ndarray  # (A, 3) heavy atoms
    atom_res: np.ndarray  # (A,) residue index in this chain
    atom_names: list[str]

    @property
    def n_res(self) -> int:
        return len(self.resnames)


def _polymer_kind(residue: gemmi.Residue) -> str | None:
    info = gemmi.find_tabulated_residue(residue.name)
    if info is not None:
        if info.is_amino_acid():
            return "aa"
        if info.is_nucleic_acid():
            return "na"
        return None
    # unknown component: count it as an amino acid when it has a CA and sits in an ATOM record
    if residue.het_flag == "A" and residue.find_atom("CA", "*") is not None:
        return "aa"
    return None


def _one_letter(name: str) -> str:
    info = gemmi.find_tabulated_residue(name)
    if info is not None and info.one_letter_code.strip() and info.one_letter_code != "?":
        return info.one_letter_code.upper()
    return "X"


def _chains(structure: Structure) -> list[_Chain]:
    """Protein and nucleic-acid chains of the first model: heavy atoms, first conformer."""
    st = structure.gemmi.clone()
    while len(st) > 1:
        del st[len(st) - 1]
    st.remove_hydrogens()
    st.remove_alternative_conformations()
    out = []
    for chain in st[0]:
        resnames: list[str] = []
        codes, rep, xyz, ares, anames = [], [], [], [], []
        for residue in chain:
            kind = _polymer_kind(residue)
            if kind is None or len(residue) == 0:
                continue
            ri = len(resnames)
            resnames.append(residue.name)
            codes.append(_one_letter(residue.name))
            rep_name = "CA" if kind == "aa" else "C3'"
            p = None
            for atom in residue:
                pos = atom.pos
                xyz.append((pos.x, pos.y, pos.z))
                ares.append(ri)
                anames.append(atom.name)
                if atom.name == rep_name and p is None:
                    p = (pos.x, pos.y, pos.z)
            rep.append(p if p is not None else (np.nan, np.nan, np.nan))
        if not resnames:
            continue
        out.append(
            _Chain(
                name=chain.name,
                resnames=resnames,
                codes="".join(codes),
                rep=np.asarray(rep, dtype=np.float64).reshape(-1, 3),
                atom_xyz=np.asarray(xyz, dtype=np.float64).reshape(-1, 3),
                atom_res=np.asarray(ares, dtype=np.int64),
                atom_names=anames,
            )
        )
    # the same chain name twice (split chains) would make the mapping ambiguous: keep unique names
    seen: dict[str, int] = {}
    for c in out:
        if c.name in seen:
            seen[c.name] += 1
            c.name = f"{c.name}_{seen[c.name]}"
        else:
            seen[c.name] = 0
    return out


# ---------------------------------------------------------------------------------------------
# alignment and chain mapping
# ---------------------------------------------------------------------------------------------
@dataclass
class _PairAlignment:
    pairs: np.ndarray  # (K, 2) residue indices (model, reference), aligned columns
    n_identical: int

    @property
    def identity(self) -> float:
        return self.n_identical / len(self.pairs) if len(self.pairs) else 0.0


def _same_type(m: _Chain, mi: np.ndarray, r: _Chain, ri: np.ndarray) -> np.ndarray:
    """Residue ``mi`` of ``m`` has the type of residue ``ri`` of ``r`` (name, or known one-letter code)."""
    m_names = np.asarray(m.resnames, dtype=object)[mi]
    r_names = np.asarray(r.resnames, dtype=object)[ri]
    m_codes = np.frombuffer(m.codes.encode(), dtype="S1")[mi]
    r_codes = np.frombuffer(r.codes.encode(), dtype="S1")[ri]
    return (m_names == r_names) | ((m_codes == r_codes) & (r_codes != b"X"))


def _align(model: _Chain, ref: _Chain) -> _PairAlignment:
    """Global alignment of the residue names (gemmi, BLOSUM62); aligned columns as index pairs."""
    result = gemmi.align_string_sequences(model.resnames, ref.resnames, [], _SCORING)
    i = j = 0
    blocks = []
    for n, op in _CIGAR.findall(result.cigar_str()):
        n = int(n)
        if op == "M":
            blocks.append(np.stack([np.arange(i, i + n), np.arange(j, j + n)], axis=1))
            i += n
            j += n
        elif op == "I":  # model residues without a reference partner
            i += n
        else:  # "D": reference residues without a model partner
            j += n
    pairs = np.concatenate(blocks) if blocks else np.zeros((0, 2), dtype=np.int64)
    n_identical = int(_same_type(model, pairs[:, 0], ref, pairs[:, 1]).sum()) if len(pairs) else 0
    return _PairAlignment(pairs=pairs, n_identical=n_identical)


def _kabsch(mobile: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation ``R`` and translation ``t`` minimising ``|mobile @ R.T + t - target|``."""
    mc, tc = mobile.mean(axis=0), target.mean(axis=0)
    h = (mobile - mc).T @ (target - tc)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    dm = np.diag([1.0, 1.0, d])
    r = vt.T @ dm @ u.T
    return r, tc - mc @ r.T


def _map_chains(model: list[_Chain], ref: list[_Chain]) -> tuple[dict[int, int], dict[tuple[int, int], _PairAlignment]]:
    """Model chain index → reference chain index, and the alignments of the candidate pairs."""
    cache: dict[tuple[str, str], _PairAlignment] = {}
    candidates: dict[tuple[int, int], _PairAlignment] = {}
    for mi, mc in enumerate(model):
        for ri, rc in enumerate(ref):
            key = ("\x00".join(mc.resnames), "\x00".join(rc.resnames))
            aln = cache.get(key)
            if aln is None:
                aln = cache[key] = _align(mc, rc)
            if aln.n_identical >= 1 and aln.identity >= MIN_CHAIN_IDENTITY:
                candidates[(mi, ri)] = aln
    if not candidates:
        return {}, {}

    # flat arrays of every candidate's aligned Cα pairs, for vectorised scoring per hypothesis
    m_off = np.cumsum([0] + [c.n_res for c in model])
    r_off = np.cumsum([0] + [c.n_res for c in ref])
    m_rep = np.concatenate([c.rep for c in model])
    r_rep = np.concatenate([c.rep for c in ref])
    keys = list(candidates)
    gi, gj, pid = [], [], []
    for k, (mi, ri) in enumerate(keys):
        p = candidates[(mi, ri)].pairs
        gi.append(p[:, 0] + m_off[mi])
        gj.append(p[:, 1] + r_off[ri])
        pid.append(np.full(len(p), k))
    gi, gj, pid = np.concatenate(gi), np.concatenate(gj), np.concatenate(pid)
    ok = np.isfinite(m_rep[gi, 0]) & np.isfinite(r_rep[gj, 0])
    gi, gj, pid = gi[ok], gj[ok], pid[ok]
    n_ident = np.array([candidates[k].n_identical for k in keys], dtype=np.float64)

    hypotheses = [(np.eye(3), np.zeros(3))]  # the frames as given
    anchor = max({mi for mi, _ in keys}, key=lambda mi: max(len(candidates[k].pairs) for k in keys if k[0] == mi))
    for k, (mi, _ri) in enumerate(keys):
        if mi != anchor:
            continue
        sel = pid == k
        if sel.sum() >= 3:
            hypotheses.append(_kabsch(m_rep[gi[sel]], r_rep[gj[sel]]))

    best_total, best_map = -np.inf, {}
    forbidden = -1e9
    for rot, tr in hypotheses:
        moved = m_rep[gi] @ rot.T + tr
        d = np.linalg.norm(moved - r_rep[gj], axis=1)
        s = np.bincount(pid, weights=1.0 / (1.0 + (d / MAPPING_D0_A) ** 2), minlength=len(keys))
        # structure decides; identical residues break exact ties (e.g. chains without Cα)
        w = np.full((len(model), len(ref)), forbidden)
        for k, (mi, ri) in enumerate(keys):
            w[mi, ri] = s[k] + 1e-3 * n_ident[k]
        rows, cols = linear_sum_assignment(-w)
        chosen = [(r, c) for r, c in zip(rows, cols) if w[r, c] > forbidden / 2]
        total = sum(w[r, c] for r, c in chosen)
        if total > best_total:
            best_total, best_map = total, {int(r): int(c) for r, c in chosen}
    return best_map, candidates


# ---------------------------------------------------------------------------------------------
# lDDT
# ---------------------------------------------------------------------------------------------
def _neighbour_pairs(xyz: np.ndarray, radius: float, query: np.ndarray | None = None, tree: cKDTree | None = None):
    """Yield blocks ``(i, j, d)``: pairs with ``i`` in ``query`` (default all), ``|xyz_i - xyz_j| <= radius``."""
    tree = tree if tree is not None else cKDTree(xyz)
    query = np.arange(len(xyz)) if query is None else query
    for start in range(0, len(query), _PAIR_CHUNK):
        q = query[start : start + _PAIR_CHUNK]
        sub = cKDTree(xyz[q])
        m = sub.sparse_distance_matrix(tree, radius, output_type="ndarray")
        yield q[m["i"]], m["j"], m["v"]


def _preserved(d_ref: np.ndarray, d_mdl: np.ndarray) -> np.ndarray:
    """Number of thresholds (0–4) at which each distance is preserved; NaN model → 0."""
    diff = np.abs(d_mdl - d_ref)
    out = np.zeros(len(diff), dtype=np.int64)
    for t in LDDT_THRESHOLDS_A:
        out += diff < t  # NaN compares False
    return out


def lddt(
    ref_xyz: np.ndarray,
    model_xyz: np.ndarray,
    residue_index: np.ndarray,
    *,
    radius: float = LDDT_RADIUS_A,
) -> tuple[float, int]:
    """Global lDDT of ``model_xyz`` against ``ref_xyz`` (rows are the same atoms; NaN = missing).

    Pairs of atoms of different residues (``residue_index``) within ``radius`` Å in the
    reference are scored at :data:`LDDT_THRESHOLDS_A`. Returns ``(score, number of pairs)``;
    the score is NaN when the reference has no such pair.
    """
    ref_xyz = np.asarray(ref_xyz, dtype=np.float64)
    model_xyz = np.asarray(model_xyz, dtype=np.float64)
    total = 0
    kept = 0
    tree = cKDTree(ref_xyz)
    for i, j, d in _neighbour_pairs(ref_xyz, radius, tree=tree):
        sel = (j > i) & (residue_index[i] != residue_index[j])
        i, j, d = i[sel], j[sel], d[sel]
        dm = np.linalg.norm(model_xyz[i] - model_xyz[j], axis=1)
        kept += int(_preserved(d, dm).sum())
        total += len(i)
    if total == 0:
        return float("nan"), 0
    return kept / (len(LDDT_THRESHOLDS_A) * total), total


def _resolve_symmetry(
    ref_xyz: np.ndarray,
    model_xyz: np.ndarray,
    residue_index: np.ndarray,
    swaps: list[tuple[int, np.ndarray, np.ndarray]],
) -> np.ndarray:
    """Model coordinates with symmetric side chains renamed where that raises their lDDT.

    ``swaps``: per candidate residue ``(residue, atoms_a, atoms_b)`` (atom rows swapped
    together). A residue is flipped when its symmetric atoms, scored against every atom of the
    other residues, preserve more reference distances flipped than as named.
    """
    if not swaps:
        return model_xyz
    a = np.concatenate([s[1] for s in swaps])
    b = np.concatenate([s[2] for s in swaps])
    owner = np.concatenate([np.full(len(s[1]), k) for k, s in enumerate(swaps)])
    partner = np.arange(len(model_xyz))
    partner[a], partner[b] = b, a
    sym = np.concatenate([a, b])
    sym_owner = np.concatenate([owner, owner])
    owner_of_row = np.full(len(model_xyz), -1)
    owner_of_row[sym] = sym_owner
    tree = cKDTree(ref_xyz)
    score_as_is = np.zeros(len(swaps))
    score_flip = np.zeros(len(swaps))
    for i, j, d in _neighbour_pairs(ref_xyz, LDDT_RADIUS_A, query=sym, tree=tree):
        sel = residue_index[i] != residue_index[j]
        i, j, d = i[sel], j[sel], d[sel]
        k = owner_of_row[i]
        as_is = _preserved(d, np.linalg.norm(model_xyz[i] - model_xyz[j], axis=1))
        flip = _preserved(d, np.linalg.norm(model_xyz[partner[i]] - model_xyz[j], axis=1))
        score_as_is += np.bincount(k, weights=as_is, minlength=len(swaps))
        score_flip += np.bincount(k, weights=flip, minlength=len(swaps))
    flip_res = np.flatnonzero(score_flip > score_as_is)
    if len(flip_res) == 0:
        return model_xyz
    out = model_xyz.copy()
    rows = np.isin(owner_of_row, flip_res)
    out[rows] = model_xyz[partner[rows]]
    return out


# ---------------------------------------------------------------------------------------------
# the comparison
# ---------------------------------------------------------------------------------------------
def compare_to_reference(model: Structure, reference: Structure) -> ReferenceResult:
    """Score ``model`` against ``reference`` (see the module docstring for every definition).

    Raises :class:`~cryostack.errors.InputError` when either has no protein/nucleic-acid
    residues or when no model chain can be matched to a reference chain by sequence.
    """
    m_chains = _chains(model)
    r_chains = _chains(reference)
    if not r_chains:
        raise InputError(reference.source, "reference has no protein or nucleic-acid residues to compare against")
    if not m_chains:
        raise InputError(model.source, "model has no protein or nucleic-acid residues to compare")
    mapping, alignments = _map_chains(m_chains, r_chains)
    if not mapping:
        raise InputError(
            model.source,
            "model and reference share no aligned residues (no model chain's sequence matches a reference chain)",
        )
    notes: list[str] = []

    # residue correspondence: reference-ordered list of (model chain, ref chain, pairs)
    ref_to_model = {ri: mi for mi, ri in mapping.items()}
    pair_blocks = []
    for ri in range(len(r_chains)):
        mi = ref_to_model.get(ri)
        if mi is not None:
            pair_blocks.append((mi, ri, alignments[(mi, ri)].pairs))
    unmapped_ref = [r_chains[ri].name for ri in range(len(r_chains)) if ri not in ref_to_model]
    unmapped_model = [m_chains[mi].name for mi in range(len(m_chains)) if mi not in mapping]
    if unmapped_ref:
        notes.append("reference chains without a model counterpart (scored as missing): " + ", ".join(unmapped_ref))
    if unmapped_model:
        notes.append("model chains matching no reference chain (ignored): " + ", ".join(unmapped_model))

    # Cα pairs
    m_ca = np.concatenate([m_chains[mi].rep[p[:, 0]] for mi, _, p in pair_blocks])
    r_ca = np.concatenate([r_chains[ri].rep[p[:, 1]] for _, ri, p in pair_blocks])
    ok = np.isfinite(m_ca[:, 0]) & np.isfinite(r_ca[:, 0])
    m_ca, r_ca = m_ca[ok], r_ca[ok]
    if len(m_ca) < 3:
        raise InputError(model.source, f"model and reference share only {len(m_ca)} aligned Cα atoms (need 3)")
    n_identical = sum(alignments[(mi, ri)].n_identical for mi, ri, _ in pair_blocks)
    n_aligned = int(sum(len(p) for _, _, p in pair_blocks))

    rot, tr = _kabsch(m_ca, r_ca)
    rmsd = float(np.sqrt(np.mean(np.sum((m_ca @ rot.T + tr - r_ca) ** 2, axis=1))))
    ca_displacement = float(np.mean(np.linalg.norm(m_ca - r_ca, axis=1)))

    tm_score = _tm_score(m_chains, r_chains, pair_blocks)
    lddt_all, ca_lddt = _lddt_scores(m_chains, r_chains, pair_blocks)
    coverage, seq_match = _coverage(m_chains, r_chains)

    dockq: float | None = None
    interfaces: list[dict] = []
    if len(r_chains) >= 2:
        dockq, interfaces, dq_note = _dockq(model, reference, m_chains, r_chains, mapping)
        if dq_note:
            notes.append(dq_note)

    return ReferenceResult(
        tm_score=tm_score,
        rmsd=rmsd,
        lddt=lddt_all,
        ca_lddt=ca_lddt,
        ca_displacement=ca_displacement,
        coverage_3a=coverage,
        sequence_match=seq_match,
        dockq=dockq,
        chain_mapping={m_chains[mi].name: r_chains[ri].name for mi, ri, _ in pair_blocks},
        dockq_interfaces=interfaces,
        n_reference_residues=int(sum(c.n_res for c in r_chains)),
        n_model_residues=int(sum(c.n_res for c in m_chains)),
        n_aligned_residues=n_aligned,
        aligned_sequence_identity=n_identical / n_aligned if n_aligned else 0.0,
        notes=notes,
    )


def tm_score_fixed(model_xyz: np.ndarray, ref_xyz: np.ndarray, n_reference: int) -> float:
    """TM-score of aligned pairs (rows of ``model_xyz`` and ``ref_xyz``), normalised by ``n_reference``.

    The residue correspondence is fixed; the superposition maximising the TM-score is searched as
    the TM-score program does (Zhang & Skolnick 2004): seeds from fragments of length n, n/2,
    n/4, ... (at most six lengths, at least 4 residues; about 20 seed positions per length),
    each refined by superposing on the pairs closer than ``d0_search`` until the set is stable.
    A numpy re-implementation used above :data:`TMTOOLS_MAX_PAIRS` pairs, where TM-align's
    exhaustive seeding gets slow; the tests check it against tmtools/TM-align.
    """
    x = np.asarray(model_xyz, dtype=np.float64)
    y = np.asarray(ref_xyz, dtype=np.float64)
    n = len(x)
    if n == 0 or n_reference <= 0:
        return 0.0
    d0 = 1.24 * (n_reference - 15) ** (1.0 / 3.0) - 1.8 if n_reference > 21 else 0.5
    d0 = max(d0, 0.5)
    d0_search = min(max(d0, 4.5), 8.0)
    lengths: list[int] = []
    frag = n
    while frag >= 4 and len(lengths) < 6:
        lengths.append(frag)
        frag //= 2
    if not lengths:
        lengths = [n]
    best = 0.0
    for frag in lengths:
        step = max(1, (n - frag) // 20)
        for start in range(0, n - frag + 1, step):
            idx = np.arange(start, start + frag)
            for _ in range(20):
                if len(idx) < 3:
                    break
                rot, tr = _kabsch(x[idx], y[idx])
                d = np.linalg.norm(x @ rot.T + tr - y, axis=1)
                best = max(best, float(np.sum(1.0 / (1.0 + (d / d0) ** 2))) / n_reference)
                cut = d0_search
                sel = np.flatnonzero(d < cut)
                while len(sel) < 3 and cut < d.max():
                    cut += 0.5
                    sel = np.flatnonzero(d < cut)
                if len(sel) == len(idx) and np.array_equal(sel, idx):
                    break
                idx = sel
    return best


def _tm_score(m_chains: list[_Chain], r_chains: list[_Chain], pair_blocks) -> float:
    """TM-score with the alignment fixed to the residue correspondence, reference length.

    tmtools (TM-align ``-I``) up to :data:`TMTOOLS_MAX_PAIRS` aligned Cα pairs, else
    :func:`tm_score_fixed`.
    """
    n_ref = int(sum(np.isfinite(c.rep[:, 0]).sum() for c in r_chains))
    xs, ys = [], []
    for mi, ri, p in pair_blocks:
        a, b = m_chains[mi].rep[p[:, 0]], r_chains[ri].rep[p[:, 1]]
        ok = np.isfinite(a[:, 0]) & np.isfinite(b[:, 0])
        xs.append(a[ok])
        ys.append(b[ok])
    if sum(len(v) for v in xs) > TMTOOLS_MAX_PAIRS:
        return tm_score_fixed(np.concatenate(xs), np.concatenate(ys), n_ref)
    return _tm_score_tmtools(m_chains, r_chains, pair_blocks)


def _tm_score_tmtools(m_chains: list[_Chain], r_chains: list[_Chain], pair_blocks) -> float:
    """tmtools TM-align with the alignment fixed (``-I``); TM-score normalised by the reference."""
    from tmtools import tm_align

    # x: the aligned model Cα in reference order; y: every reference Cα. Unaligned model residues
    # would not change a fixed-alignment TM-score normalised by the reference, so they are left out.
    x, y, sx, sy, ax, ay = [], [], [], [], [], []
    mapped = {ri: (mi, p) for mi, ri, p in pair_blocks}
    for ri, rc in enumerate(r_chains):
        partner = np.full(rc.n_res, -1)
        mc = None
        if ri in mapped:
            mi, p = mapped[ri]
            mc = m_chains[mi]
            partner[p[:, 1]] = p[:, 0]
        for j in np.flatnonzero(np.isfinite(rc.rep[:, 0])):
            y.append(rc.rep[j])
            sy.append(rc.codes[j])
            ay.append(rc.codes[j])
            i = partner[j]
            if mc is not None and i >= 0 and np.isfinite(mc.rep[i, 0]):
                x.append(mc.rep[i])
                sx.append(mc.codes[i])
                ax.append(mc.codes[i])
            else:
                ax.append("-")
    res = tm_align(
        np.ascontiguousarray(x, dtype=np.float64),
        np.ascontiguousarray(y, dtype=np.float64),
        "".join(sx),
        "".join(sy),
        ["".join(ax), "".join(ay)],
    )
    return float(res.tm_norm_chain2)


def _match_atoms(mc: _Chain, rc: _Chain, partner: np.ndarray) -> np.ndarray:
    """Row of the model atom (same name, aligned residue) for each reference atom; -1 if none."""
    names, inv = np.unique(np.asarray(mc.atom_names + rc.atom_names, dtype=object), return_inverse=True)
    m_name, r_name = inv[: len(mc.atom_names)], inv[len(mc.atom_names) :]
    n_names = len(names)
    m_key = mc.atom_res * n_names + m_name
    order = np.argsort(m_key, kind="stable")  # first atom of a duplicated name wins
    sorted_keys = m_key[order]
    r_res = partner[rc.atom_res]
    r_key = np.where(r_res >= 0, r_res * n_names + r_name, -1)
    if len(sorted_keys) == 0:
        return np.full(len(r_key), -1)
    pos = np.clip(np.searchsorted(sorted_keys, r_key), 0, len(sorted_keys) - 1)
    hit = (r_res >= 0) & (sorted_keys[pos] == r_key)
    return np.where(hit, order[pos], -1)


def _lddt_scores(m_chains: list[_Chain], r_chains: list[_Chain], pair_blocks) -> tuple[float, float]:
    """All-atom and Cα lDDT over the whole reference (unmapped reference chains as missing)."""
    ref_parts, mdl_parts, res_parts, swaps = [], [], [], []
    ca_ref, ca_mdl = [], []
    mapped = {ri: (mi, p) for mi, ri, p in pair_blocks}
    row0 = 0
    res0 = 0
    for ri, rc in enumerate(r_chains):
        n = len(rc.atom_xyz)
        mdl = np.full((n, 3), np.nan)
        rca_m = np.full((rc.n_res, 3), np.nan)
        if ri in mapped:
            mi, p = mapped[ri]
            mc = m_chains[mi]
            partner = np.full(rc.n_res, -1)
            partner[p[:, 1]] = p[:, 0]
            rca_m[p[:, 1]] = mc.rep[p[:, 0]]
            rows = _match_atoms(mc, rc, partner)
            mdl[rows >= 0] = mc.atom_xyz[rows[rows >= 0]]
            # symmetric side chains: same residue type on both sides, both atoms of a pair present
            starts = np.searchsorted(rc.atom_res, np.arange(rc.n_res))
            ends = np.searchsorted(rc.atom_res, np.arange(rc.n_res), side="right")
            for j in np.flatnonzero(partner >= 0):
                name = rc.resnames[j]
                groups = SYMMETRIC_ATOMS.get(name)
                if groups is None or mc.resnames[partner[j]] != name:
                    continue
                names = rc.atom_names[starts[j] : ends[j]]
                aa, bb = [], []
                for g1, g2 in groups:
                    if g1 in names and g2 in names:
                        r1, r2 = starts[j] + names.index(g1), starts[j] + names.index(g2)
                        if np.isfinite(mdl[r1, 0]) and np.isfinite(mdl[r2, 0]):
                            aa.append(row0 + r1)
                            bb.append(row0 + r2)
                if aa:
                    swaps.append((res0 + j, np.array(aa), np.array(bb)))
        ref_parts.append(rc.atom_xyz)
        mdl_parts.append(mdl)
        res_parts.append(rc.atom_res + res0)
        ok = np.isfinite(rc.rep[:, 0])
        ca_ref.append(rc.rep[ok])
        ca_mdl.append(rca_m[ok])
        row0 += n
        res0 += rc.n_res
    ref_xyz = np.concatenate(ref_parts)
    mdl_xyz = np.concatenate(mdl_parts)
    res_idx = np.concatenate(res_parts)
    mdl_xyz = _resolve_symmetry(ref_xyz, mdl_xyz, res_idx, swaps)
    score, _ = lddt(ref_xyz, mdl_xyz, res_idx)
    ca_r = np.concatenate(ca_ref)
    ca_score, _ = lddt(ca_r, np.concatenate(ca_mdl), np.arange(len(ca_r)))
    return float(score), float(ca_score)


def _coverage(m_chains: list[_Chain], r_chains: list[_Chain]) -> tuple[float, float | None]:
    """Fraction of reference Cα with a model Cα within 3 Å; residue-type match among those."""
    m_rep = np.concatenate([c.rep for c in m_chains])
    m_codes = np.frombuffer("".join(c.codes for c in m_chains).encode(), dtype="S1")
    m_names = np.asarray([n for c in m_chains for n in c.resnames], dtype=object)
    r_rep = np.concatenate([c.rep for c in r_chains])
    r_codes = np.frombuffer("".join(c.codes for c in r_chains).encode(), dtype="S1")
    r_names = np.asarray([n for c in r_chains for n in c.resnames], dtype=object)
    m_ok = np.isfinite(m_rep[:, 0])
    r_ok = np.isfinite(r_rep[:, 0])
    if not r_ok.any():
        return float("nan"), None
    if not m_ok.any():
        return 0.0, None
    m_idx = np.flatnonzero(m_ok)
    d, k = cKDTree(m_rep[m_ok]).query(r_rep[r_ok], distance_upper_bound=COVERAGE_RADIUS_A)
    covered = np.isfinite(d) & (d <= COVERAGE_RADIUS_A)
    coverage = float(covered.mean())
    if not covered.any():
        return coverage, None
    mi = m_idx[k[covered]]
    ri = np.flatnonzero(r_ok)[covered]
    same = (m_names[mi] == r_names[ri]) | ((m_codes[mi] == r_codes[ri]) & (r_codes[ri] != b"X"))
    return coverage, float(same.mean())


# ---------------------------------------------------------------------------------------------
# DockQ
# ---------------------------------------------------------------------------------------------
def _polymer_only(structure: Structure) -> gemmi.Structure:
    """First model, heavy atoms, first conformer, only the residues that :func:`_chains` kept."""
    st = structure.gemmi.clone()
    while len(st) > 1:
        del st[len(st) - 1]
    st.remove_hydrogens()
    st.remove_alternative_conformations()
    for chain in st[0]:
        for k in range(len(chain) - 1, -1, -1):
            if _polymer_kind(chain[k]) is None or len(chain[k]) == 0:
                del chain[k]
    st.remove_empty_chains()
    return st


def _write_for_dockq(st: gemmi.Structure, folder: Path, stem: str) -> Path:
    names = [ch.name for ch in st[0]]
    pdb_ok = all(len(n) == 1 for n in names) and len(set(names)) == len(names) and st[0].count_atom_sites() < 99999
    if pdb_ok:
        path = folder / f"{stem}.pdb"
        path.write_text(st.make_pdb_string(gemmi.PdbWriteOptions(minimal=True)))
    else:
        path = folder / f"{stem}.cif"
        st.setup_entities()
        path.write_text(st.make_mmcif_document().as_string())
    return path


def _dockq(
    model: Structure, reference: Structure, m_chains, r_chains, mapping
) -> tuple[float | None, list[dict], str | None]:
    """DockQ v2 over every reference interface, with our chain mapping (reference → model)."""
    try:
        from DockQ.DockQ import load_PDB, run_on_all_native_interfaces
    except ImportError:  # pragma: no cover - DockQ is a dependency
        return None, [], "DockQ is not installed: no DockQ score"
    chain_map = {r_chains[ri].name: m_chains[mi].name for mi, ri in mapping.items()}
    if len(chain_map) < 2:
        return None, [], "fewer than two reference chains are mapped: no DockQ score"
    try:
        with tempfile.TemporaryDirectory(prefix="cryostack_dockq_") as tmp_dir:
            tmp = Path(tmp_dir)
            mdl = load_PDB(str(_write_for_dockq(_polymer_only(model), tmp, "model")))
            nat = load_PDB(str(_write_for_dockq(_polymer_only(reference), tmp, "reference")))
            # the reference file's chain order, as DockQ's command line uses (for equal-sized
            # chains its receptor/ligand choice follows the order)
            order = [c.id for c in nat if c.id in chain_map]
            chain_map = {c: chain_map[c] for c in order}
            results, total = run_on_all_native_interfaces(mdl, nat, chain_map=chain_map)
    except Exception as exc:  # DockQ is third-party: report its failure, keep the other scores
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, [], f"DockQ failed ({first}): no DockQ score"
    inverse = {v: k for k, v in chain_map.items()}
    interfaces = []
    for info in results.values():
        interfaces.append(
            {
                "reference_chains": [inverse[info["chain1"]], inverse[info["chain2"]]],
                "model_chains": [info["chain1"], info["chain2"]],
                "dockq": float(info["DockQ"]),
                "fnat": float(info["fnat"]),
                "fnonnat": float(info["fnonnat"]),
                "irmsd": float(info["iRMSD"]),
                "lrmsd": float(info["LRMSD"]),
                "f1": float(info["F1"]),
                "clashes": int(info["clashes"]),
            }
        )
    if not interfaces:
        return None, [], "no interface between the mapped reference chains: no DockQ score"
    return float(total / len(interfaces)), interfaces, None


__all__ = ["ReferenceResult", "compare_to_reference", "lddt", "SYMMETRIC_ATOMS"]
