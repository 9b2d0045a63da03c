"""Discrete side-chain rotamer fitting (the step of Coot's auto-fit rotamer / phenix's real-space
rotamer fit) for the refinement optimisers.

Gradient descent on the smooth rotamer prior cannot carry a side chain over the barrier between two
rotamer wells, so a side chain that starts in a wrong well stays an outlier. :func:`fit_rotamers`
tries, for every side chain that is not a favoured rotamer (Top8000 percentile below
:data:`~cryostack.chem.rotamers.FAVORED_MIN`), each named Top8000 rotamer of its residue type
plus its current conformation, and keeps the best-scoring one. Favoured side chains are left alone:
they already sit in a well, and re-deciding them on noisy density would trade validated rotamers for
density noise; allowed ones (0.3–2 %) are tried too because they are usually the edge of a wrong
well, and their current conformation stays a candidate so they change only when a named rotamer
scores better. An outlier's current conformation is not a candidate (``keep_outliers=False``): it
has been refined into the density while the named rotamers are ideal, so it nearly always wins
the density comparison, and on 6vrc (3.1 Å) 11 of 12 outliers stayed as they were though the polish
that follows brings the named rotamers back into the density (the fitted, polished model is kept
or rejected as a whole by :func:`cryostack.refine.stages.fit_rotamers_and_polish`).

Candidates are built by rotating, about each chi bond ``b–c``, the atoms on ``c``'s side of that
bond in the residue's bond graph (the objective's bond restraints, hydrogens included), so no
per-residue atom table is needed. A side chain is skipped when a chi bond lies in a ring (proline)
or its moving atoms are bonded to another residue (disulfide cysteines, glycosylated Asn/Ser/Thr,
other links): turning it would tear that bond.

Score (lower is better), per candidate::

    − mean z-scored map value at its moved heavy atoms (trilinear)       [density, z units]
    + CLASH_WEIGHT × Σ (overlap / 0.1 Å)² with the rest of the model     [the objective's clash form]
    + PRIOR_WEIGHT × rotamer prior energy −log(p̃ + ε)                    [the objective's rotamer prior]

The map is the objective's experimental sub-box z-scored with the mean and spread of its mask (the
objective's ``target``), so the density scale is the one the objective fits. The prior weight makes
leaving an outlier (energy ≥ 5.5) for a common rotamer (≈ 1) worth about 1 z unit of density, i.e.
the density has to clearly prefer the outlier for it to stay. All candidates of all tried residues
are built and scored in one batch.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree

from cryostack.chem.rotamers import CENTRES_OF, CHI_ATOMS, FAVORED_MIN, GRID_OF, OUTLIER_BELOW, load_centres, load_grid
from cryostack.geometry.clash import CLASH_SIGMA_A, HBOND_CONTACT_A
from cryostack.geometry.restraints import dihedrals
from cryostack.geometry.rotamer_prior import _interpolate, chi_quads, energy_grid

#: Weight of the rotamer prior energy (per unit of −log percentile) against the density (z units).
PRIOR_WEIGHT = 0.2
#: Weight of the clash penalty (per (overlap / 0.1 Å)² of one pair).
CLASH_WEIGHT = 0.1
#: Side chains scoring below this Top8000 percentile are tried (MolProbity's favoured cut-off).
TRY_BELOW = FAVORED_MIN
#: A named rotamer replaces the current conformation only if it scores better by this much.
MIN_GAIN = 0.05
#: Environment atoms within this distance (Å) of a residue's CA can touch its side chain (Arg reaches ~7.5 Å).
ENV_RADIUS_A = 12.0
#: Candidate-atom × environment-atom distances computed per batch (bounds memory).
BATCH_PAIRS = 1 << 22
_BACKBONE = frozenset({"N", "CA", "C", "O"})


def _side(adj: dict[int, set[int]], start: int, blocked: int, residue_atoms: set[int]) -> set[int] | None:
    """Atoms reached from ``start`` without crossing ``blocked`` (``start`` included), or ``None`` if
    that side leaves the residue (a disulfide, a glycan or another covalent link would be torn)."""
    seen, stack = {start}, [start]
    while stack:
        i = stack.pop()
        for j in adj.get(i, ()):
            if j == blocked or j in seen:
                continue
            if j not in residue_atoms:
                return None
            seen.add(j)
            stack.append(j)
    return seen


class _Sidechains:
    """Per-residue chi quadruples and moving atoms of every refinable side chain of an objective."""

    def __init__(self, objective) -> None:
        arr = objective.atoms
        lookup = arr.atom_lookup()
        movable = objective.movable.cpu().numpy()
        bonds = objective.restraints.bond_index.cpu().numpy()
        adj: dict[int, set[int]] = defaultdict(set)
        for i, j in bonds.tolist():
            adj[i].add(j)
            adj[j].add(i)
        altlocs = objective.clash.altlocs
        atoms_of = defaultdict(list)
        for i, r in enumerate(arr.residue_index.tolist()):
            atoms_of[r].append(i)
        self.residues: list[int] = []
        self.quads: list[np.ndarray] = []  # (n_chi, 4) atom indices
        self.moving: list[list[np.ndarray]] = []  # per chi, atoms turned about that chi's bond
        for r, name in enumerate(arr.residue_names):
            quads = CHI_ATOMS.get(name)
            if quads is None or not load_centres().get(CENTRES_OF.get(name, name)):
                continue
            members = atoms_of[r]
            if not all(movable[i] for i in members) or any(altlocs[i] for i in members):
                continue  # fixed residues and alternate conformers are left as they are
            rows = chi_quads(lookup, r, name)
            if rows is not None:
                member_set = set(members)
                backbone = {i for i in members if arr.atom_names[i] in _BACKBONE}
                moving = []
                for _, b, c, _ in rows:
                    side = _side(adj, c, b, member_set)
                    if side is None or side & backbone or len(side) < 2:
                        break  # linked to another residue, chi bond in a ring (Pro), or no topology
                    moving.append(np.array(sorted(side - {c}), dtype=np.int64))
                else:
                    self.residues.append(r)
                    self.quads.append(np.asarray(rows, dtype=np.int64))
                    self.moving.append(moving)
        self.names = [arr.residue_names[r] for r in self.residues]


def _chis_deg(x: torch.Tensor, quads: np.ndarray) -> np.ndarray:
    return torch.rad2deg(dihedrals(x, torch.as_tensor(quads, device=x.device))).cpu().numpy().astype(np.float64)


def _prior_energy(grid_name: str, chis_deg: np.ndarray) -> np.ndarray:
    """The objective's rotamer prior energy at ``(P, n)`` chi angles (degrees)."""
    table, lower, width, bins = energy_grid(grid_name)
    chis = torch.as_tensor(chis_deg, dtype=torch.float32)
    return _interpolate(table, lower, width, bins, chis).numpy().astype(np.float64)


def _rotate(points: torch.Tensor, origin: torch.Tensor, axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues rotation of ``points`` ``(B, P, 3)`` about the line ``origin + t·axis`` (``(B, 3)``,
    axis unit) by ``angle`` ``(B,)`` radians (right-handed about ``axis``)."""
    v = points - origin[:, None]
    k = axis[:, None].expand_as(v)
    c, s = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    dot = (v * k).sum(-1, keepdim=True)
    return origin[:, None] + v * c + torch.cross(k, v, dim=-1) * s + k * dot * (1 - c)


def _map_sampler(objective):
    """``f(points (M, 3) Å) → (M,)`` trilinear values of the objective's experimental sub-box,
    z-scored with the mean and spread of its mask (the scale of ``objective.target``)."""
    box = objective.box
    mask = objective.mask.cpu().numpy()
    vals = box.data[mask].astype(np.float64)
    data = torch.as_tensor(((box.data - vals.mean()) / vals.std()).astype(np.float32))
    voxel = torch.as_tensor(np.asarray(box.voxel_size, dtype=np.float32))
    origin = torch.as_tensor(np.asarray(box.origin, dtype=np.float32))
    shape = torch.as_tensor(data.shape[::-1])  # x, y, z

    def sample(p: torch.Tensor) -> torch.Tensor:
        u = (p - origin) / voxel  # voxel units along x, y, z
        u = torch.minimum(torch.clamp(u, min=0.0), (shape - 1).to(u.dtype) - 1e-4)
        i0 = torch.floor(u).long()
        f = u - i0
        out = torch.zeros(p.shape[0], dtype=torch.float32)
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    w = (
                        (f[:, 0] if dx else 1 - f[:, 0])
                        * (f[:, 1] if dy else 1 - f[:, 1])
                        * (f[:, 2] if dz else 1 - f[:, 2])
                    )
                    out += w * data[i0[:, 2] + dz, i0[:, 1] + dy, i0[:, 0] + dx]
        return out

    return sample


def fit_rotamers(
    objective,
    coords: torch.Tensor,
    *,
    try_below: float = TRY_BELOW,
    prior_weight: float = PRIOR_WEIGHT,
    clash_weight: float = CLASH_WEIGHT,
    keep_outliers: bool = False,
) -> tuple[torch.Tensor, dict]:
    """Put each non-favoured side chain into its best-scoring Top8000 rotamer (an outlier always
    leaves its conformation unless ``keep_outliers``).

    ``coords`` ``(N, 3)`` Å (the objective's atom order). Returns the new coordinates (a copy; only
    side-chain atoms of changed residues move) and stats: ``tried`` (residues tried), ``changed``,
    ``outliers_before`` / ``outliers_after`` (Top8000 outliers among the refinable side chains) and
    ``changed_residues`` (``"chain/number name: old → new"``)."""
    x = coords.detach().to("cpu", torch.float32)
    side_chain_topology(objective)
    sc = objective._rotamer_fit_sidechains
    arr = objective.atoms
    stats: dict[str, Any] = {
        "tried": 0,
        "changed": 0,
        "outliers_before": 0,
        "outliers_after": 0,
        "changed_residues": [],
    }
    if not sc.residues:
        return x.to(coords.device), stats

    # Which side chains to try: current percentile below `try_below`.
    current: list = [None] * len(sc.residues)
    scores = np.zeros(len(sc.residues))
    by_grid = defaultdict(list)
    for t, name in enumerate(sc.names):
        by_grid[GRID_OF[name]].append(t)
    for grid_name, members in by_grid.items():  # one dihedral and one grid look-up per residue type
        quads = np.stack([sc.quads[t] for t in members])
        chis = _chis_deg(x, quads.reshape(-1, 4)).reshape(len(members), -1)
        scores[members] = load_grid(grid_name).scores(chis)
        for t, c in zip(members, chis):
            current[t] = c
    stats["outliers_before"] = int((scores < OUTLIER_BELOW).sum())
    tried = np.flatnonzero(scores < try_below)
    stats["tried"] = int(len(tried))
    if len(tried) == 0:
        stats["outliers_after"] = stats["outliers_before"]
        return x.to(coords.device), stats

    # Candidate rows: (tried residue, target chis); row 0 of each residue is its current conformation.
    n_chi_max = max(len(sc.quads[t]) for t in tried)
    local = [np.unique(np.concatenate([sc.quads[t].ravel(), *sc.moving[t]])) for t in tried]
    n_local = max(len(a) for a in local)
    res_of_row, target_rows, prior_rows = [], [], []
    for k, t in enumerate(tried):
        name = sc.names[t]
        n_chi = len(sc.quads[t])
        targets = [current[t]] + [
            np.asarray(c["chi_deg"][:n_chi], dtype=np.float64) for c in load_centres()[CENTRES_OF.get(name, name)]
        ]
        targets = np.stack(targets)
        prior_rows.append(_prior_energy(GRID_OF[name], targets))
        res_of_row.extend([k] * len(targets))
        padded = np.zeros((len(targets), n_chi_max))
        padded[:, :n_chi] = targets
        target_rows.append(padded)
    row_res = np.asarray(res_of_row)
    row_target = np.concatenate(target_rows)
    row_prior = np.concatenate(prior_rows)
    n_rows = len(row_res)

    # Per tried residue: local atom table, chi quads and moving masks in local indices (padded).
    local_idx = np.zeros((len(tried), n_local), dtype=np.int64)
    local_ok = np.zeros((len(tried), n_local), dtype=bool)
    quad_local = np.zeros((len(tried), n_chi_max, 4), dtype=np.int64)
    chi_ok = np.zeros((len(tried), n_chi_max), dtype=bool)
    move = np.zeros((len(tried), n_chi_max, n_local), dtype=bool)
    for k, t in enumerate(tried):
        pos = {int(a): p for p, a in enumerate(local[k])}
        local_idx[k, : len(local[k])] = local[k]
        local_ok[k, : len(local[k])] = True
        for c, quad in enumerate(sc.quads[t]):
            quad_local[k, c] = [pos[int(a)] for a in quad]
            chi_ok[k, c] = True
            move[k, c, [pos[int(a)] for a in sc.moving[t][c]]] = True

    # Build every candidate: chi by chi, turn the atoms beyond each chi bond to the target angle.
    rr = torch.as_tensor(row_res)
    pts = x[torch.as_tensor(local_idx)][rr].clone()  # (rows, L, 3)
    ar = torch.arange(n_rows)
    for c in range(n_chi_max):
        q = torch.as_tensor(quad_local[:, c])[rr]  # (rows, 4)
        a, b, cc, d = (pts[ar, q[:, i]] for i in range(4))
        quad_pts = torch.stack([a, b, cc, d], 1).reshape(-1, 3)
        now = dihedrals(quad_pts, torch.arange(4 * n_rows).reshape(-1, 4))
        delta = torch.deg2rad(torch.as_tensor(row_target[:, c], dtype=torch.float32)) - now
        delta = torch.where(torch.as_tensor(chi_ok[:, c])[rr], delta, torch.zeros_like(delta))
        axis = cc - b
        axis = axis / axis.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        turned = _rotate(pts, b, axis, delta)
        m = torch.as_tensor(move[:, c])[rr][..., None]
        pts = torch.where(m, turned, pts)

    # Scored atoms: heavy atoms that move with chi 1.
    heavy = ~torch.as_tensor(arr.is_hydrogen)
    scored = torch.as_tensor(move[:, 0])[rr] & heavy[torch.as_tensor(local_idx)][rr]  # (rows, L)
    n_scored = scored.sum(1).clamp(min=1).float()

    sample = _map_sampler(objective)
    dens = sample(pts.reshape(-1, 3)).reshape(n_rows, n_local)
    density = (dens * scored).sum(1) / n_scored

    own = [local_idx[k][move[k, 0] & local_ok[k]] for k in range(len(tried))]
    clash = _clash_scores(objective, x, [sc.residues[t] for t in tried], own, local_idx, scored, pts, rr)
    total = -density + clash_weight * clash + prior_weight * torch.as_tensor(row_prior, dtype=torch.float32)

    # Best row per residue; the current conformation (first row) wins unless beaten by MIN_GAIN
    # (outliers: the best named rotamer, whatever the current conformation scores).
    out = x.clone()
    total = total.numpy()
    starts = np.flatnonzero(np.r_[True, row_res[1:] != row_res[:-1]])
    ends = np.r_[starts[1:], n_rows]
    final_scores = scores.copy()
    for k, (s, e) in enumerate(zip(starts, ends)):
        if scores[tried[k]] < OUTLIER_BELOW and not keep_outliers and e > s + 1:
            best = s + 1 + int(np.argmin(total[s + 1 : e]))
        else:
            best = s + int(np.argmin(total[s:e]))
            if best == s or total[best] > total[s] - MIN_GAIN:
                continue
        t = tried[k]
        moved = local_idx[k][move[k, 0] & local_ok[k]]
        where = np.flatnonzero(move[k, 0] & local_ok[k])
        out[torch.as_tensor(moved)] = pts[best, torch.as_tensor(where)]
        new_chis = _chis_deg(out, sc.quads[t])
        final_scores[t] = load_grid(GRID_OF[sc.names[t]]).score(new_chis)
        r = sc.residues[t]
        label = f"{arr.chain_ids[arr.residue_chain[r]]}/{arr.residue_numbers[r]}{arr.insertion_codes[r]} {sc.names[t]}"
        stats["changed_residues"].append(
            f"{label}: {_fmt(current[t])} ({scores[t]:.4f}) -> {_fmt(new_chis)} ({final_scores[t]:.4f})"
        )
        stats["changed"] += 1
    stats["outliers_after"] = int((final_scores < OUTLIER_BELOW).sum())
    return out.to(coords.device), stats


def _fmt(chis: np.ndarray) -> str:
    return "/".join(f"{c:.0f}" for c in chis)


def _clash_scores(objective, x, residues, own, local_idx, scored, pts, rr) -> torch.Tensor:
    """``(rows,)`` clash penalty of each candidate's moved heavy atoms against the rest of the model,
    with the objective's clash targets (vdW sums minus the allowed overlap, H-bond pairs to 2.6 Å),
    pairs within three bonds excluded."""
    term = objective.clash
    n = x.shape[0]
    active = np.asarray(term.active, dtype=bool)
    ids = np.flatnonzero(active)
    tree = cKDTree(x[ids].numpy())
    excluded = term.excluded
    arr = objective.atoms
    lookup = arr.atom_lookup()
    # Environment of each tried residue: active atoms near its CA, minus its own moving atoms.
    envs = []
    for k, r in enumerate(residues):
        ca = lookup.get((r, "CA"))
        centre = x[ca].numpy() if ca is not None else x[local_idx[k]].numpy().mean(0)
        near = ids[tree.query_ball_point(centre, ENV_RADIUS_A)]
        envs.append(np.setdiff1d(near, own[k]))
    n_env = max(1, max(len(e) for e in envs))
    env_idx = np.zeros((len(residues), n_env), dtype=np.int64)
    env_ok = np.zeros((len(residues), n_env), dtype=bool)
    for k, e in enumerate(envs):
        env_idx[k, : len(e)] = e
        env_ok[k, : len(e)] = True
    # Pair targets per tried residue (moving local atom × environment atom), excluding 1-2/1-3/1-4 pairs.
    n_local = local_idx.shape[1]
    a = local_idx[:, :, None]
    b = env_idx[:, None, :]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    keep = ~np.isin(lo * n + hi, excluded) & env_ok[:, None, :]
    radii, polar = term.radii, term.polar
    target = radii[a] + radii[b] - term.allowed_overlap_A
    target = np.where(polar[a] & polar[b], np.minimum(target, HBOND_CONTACT_A), target)
    target = torch.as_tensor(np.where(keep, target, 0.0).astype(np.float32))  # (K, L, E)
    env_pts = x[torch.as_tensor(env_idx)]  # (K, E, 3)
    out = torch.zeros(pts.shape[0])
    step = max(1, BATCH_PAIRS // (n_local * n_env))
    for s in range(0, pts.shape[0], step):
        sl = slice(s, s + step)
        k = rr[sl]
        d = torch.cdist(pts[sl], env_pts[k])  # (B, L, E)
        over = torch.relu(target[k] - d) * scored[sl][..., None]
        out[sl] = (over / CLASH_SIGMA_A).pow(2).sum((1, 2))
    return out


def side_chain_topology(objective) -> dict[int, tuple[np.ndarray, list[np.ndarray]]]:
    """Residue index → (chi quadruples ``(n_chi, 4)``, atoms turned about each chi bond) for every
    side chain :func:`fit_rotamers` can refit (cached on the objective)."""
    sc = getattr(objective, "_rotamer_fit_sidechains", None)
    if sc is None:
        sc = objective._rotamer_fit_sidechains = _Sidechains(objective)
    return {r: (q, m) for r, q, m in zip(sc.residues, sc.quads, sc.moving)}


def set_chis(objective, coords: torch.Tensor, residue: int, chis_deg) -> torch.Tensor:
    """A copy of ``coords`` with side chain ``residue`` (index into the objective's residues)
    turned to ``chis_deg`` (one angle per chi, degrees) about its chi bonds; bond lengths and angles
    are kept."""
    quads, moving = side_chain_topology(objective)[residue]
    x = coords.detach().clone()
    for quad, atoms, target in zip(quads, moving, chis_deg):
        b, c = int(quad[1]), int(quad[2])
        now = dihedrals(x, torch.as_tensor(quad[None]))
        axis = x[c] - x[b]
        axis = axis / axis.norm()
        angle = torch.deg2rad(torch.as_tensor([float(target)], dtype=x.dtype)) - now
        idx = torch.as_tensor(atoms)
        x[idx] = _rotate(x[idx][None], x[b][None], axis[None], angle)[0]
    return x
