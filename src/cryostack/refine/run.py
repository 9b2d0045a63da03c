"""``refine()``: checks, whole-model or cropped refinement, and the refined :class:`Structure`.

Large models are refined in spatially overlapping crops: polymer residues are clustered in
space (k-means on residue centres, seeded), each cluster is a crop's *core*, and the crop adds
every residue within ``crop_margin_A`` of the core as a movable shell plus nearby ligands and
waters as fixed context. Crops run one after another on the current coordinates, so each sees
its neighbours already refined and holds their atoms fixed, so each seam is built onto the
coordinates that are kept; each atom is taken from the crop whose core holds it (the crop
where it is most interior). A short whole-model pass then relaxes the seams between crops.
"""

from __future__ import annotations

import time

import gemmi
import numpy as np
from scipy.cluster.vq import kmeans2
from scipy.spatial import cKDTree

from cryostack.chem.residues import trace_residues
from cryostack.density.checks import check_map_values, check_model_atoms, check_resolution
from cryostack.errors import InputError
from cryostack.io.maps import DensityMap
from cryostack.io.models import DNA, PROTEIN, RNA, Structure
from cryostack.refine.api import RecycleRecord, RefineConfig, RefineResult, RoundRecord, get_optimizer
from cryostack.refine.objective import LossWeights, RefinementObjective

#: Refinement is refused when more than this fraction of the model's atoms lies outside the map.
MAX_OUTSIDE_FRACTION = 0.5
#: Polymer residues per crop aimed for when cropping.
RESIDUES_PER_CROP = 600


def check_inputs(structure: Structure, density_map: DensityMap, resolution_A: float | None) -> None:
    """Raise :class:`InputError` for a missing or absurd resolution, a model outside the map, or
    residues with no monomer-library entry."""
    where_map = density_map.source or "map"
    where_model = structure.source or "model"
    check_resolution(resolution_A, where=where_map, needed_for="refinement")
    check_map_values(density_map)
    arr = structure.atoms()
    check_model_atoms(arr, where_model)
    n_trace, n_protein = trace_residues(arr)
    if n_protein and n_trace > n_protein // 2:
        raise InputError(
            where_model,
            f"{n_trace} of {n_protein} protein residues have only a Cα: refinement needs full residues "
            "(a Cα trace has no restraints to keep its geometry)",
        )
    idx = density_map.angstrom_to_voxel(arr.coords)
    outside = float(np.any((idx < 0) | (idx > np.array(density_map.shape) - 1), axis=1).mean())
    if outside > MAX_OUTSIDE_FRACTION:
        raise InputError(
            where_model,
            f"{100 * outside:.0f}% of the model's atoms lie outside the map box "
            f"({where_map}); is this the right map, and are origin and axis order right?",
        )
    if not np.any(np.isin(arr.residue_class, (PROTEIN, DNA, RNA))):
        raise InputError(where_model, "no protein, DNA or RNA residues to refine")
    from cryostack.chem.monlib import monomer_library

    names = tuple(sorted(set(arr.residue_names)))
    monlib = monomer_library(names)
    unknown = [
        n
        for n in names
        if n not in monlib.monomers
        and not (gemmi.find_tabulated_residue(n) and gemmi.find_tabulated_residue(n).is_water())
    ]
    if unknown:
        raise InputError(
            where_model,
            f"no monomer-library dictionary for residue(s) {', '.join(unknown)}; "
            "add their restraints to the library ($CRYOSTACK_MONLIB) or remove them",
        )


def refine(
    structure: Structure,
    density_map: DensityMap,
    resolution_A: float,
    config: RefineConfig | None = None,
    weights: LossWeights | None = None,
    progress=None,
) -> tuple[Structure, RefineResult]:
    """Refine ``structure`` into ``density_map`` at ``resolution_A`` Å, in rounds until it stops moving.

    Each round is a whole pass of the optimiser from the previous round's model: the density
    mask and sub-box are rebuilt around that model (atoms that moved are judged where they now
    are) and the optimiser starts afresh (Adam's state and its large first steps). One pass is
    not converged when domains start several Å away: on simulated 3 Å cases the mean Cα error
    fell 3.66 → 2.11 → 1.62 → 1.32 → 1.09 Å over four rounds (``benchmarks/refine_rounds.py``).
    Rounds stop after the first round whose Cα RMS shift is below the tolerance
    (``config.round_tolerance_A``, by default 5 % of the resolution: 0.15 Å at 3 Å), or after
    ``config.max_rounds``; the per-atom B-factor fit runs once, on the last round's model.

    Returns the refined structure (same chains, numbering, atoms and metadata; ligands and
    waters unmoved) and the :class:`RefineResult` (every round's history, ``rounds``,
    ``converged``). ``progress`` (optional) is called per recycle as ``progress(recycle, loss,
    terms, cc, stage=..., refine_round=(r, max_rounds))`` (``stage`` only for the rotamer-fit and polish
    records); in crop mode it gets an extra keyword ``crop=(i, n)``.
    """
    config = config or RefineConfig()
    weights = weights or LossWeights()
    if config.max_rounds < 1:
        raise ValueError(f"max_rounds must be at least 1, got {config.max_rounds}")
    check_inputs(structure, density_map, resolution_A)
    optimizer = get_optimizer(config.method)
    t0 = time.perf_counter()
    arr = structure.atoms()
    polymer = np.isin(arr.residue_class[arr.residue_index], (PROTEIN, DNA, RNA))
    names = np.asarray(arr.atom_names)
    ca = polymer & (names == "CA")
    if not ca.any():  # nucleic acids only: their backbone phosphorus stands in for Cα
        ca = polymer & (names == "P")
    current = structure
    history: list[RecycleRecord] = []
    rounds: list[RoundRecord] = []
    fits = []
    converged = False
    tolerance_A = config.round_tolerance(resolution_A)
    for r in range(1, config.max_rounds + 1):
        t_round = time.perf_counter()
        cb = None
        if progress is not None:

            def cb(*args, _r=r, **kw):
                progress(*args, refine_round=(_r, config.max_rounds), **kw)

        result, objective = _one_pass(current, density_map, resolution_A, config, weights, optimizer, cb)
        before = current.atoms().coords
        shift = np.linalg.norm(result.coords.astype(np.float64) - before, axis=1)
        for rec in result.history:
            rec.round = r
        best = result.history[result.best_recycle] if result.history else None
        rounds.append(
            RoundRecord(
                round=r,
                ca_shift_rms_A=float(np.sqrt(np.mean(shift[ca] ** 2))) if ca.any() else 0.0,
                ca_shift_max_A=float(shift[ca].max()) if ca.any() else 0.0,
                atom_shift_rms_A=float(np.sqrt(np.mean(shift[polymer] ** 2))),
                loss=best.loss if best else float("nan"),
                cc=best.cc if best else float("nan"),
                recycles=result.n_recycles,
                wall_s=time.perf_counter() - t_round,
            )
        )
        offset = len(history)
        history.extend(result.history)
        fits.append(result.rotamer_fit)
        current = current.with_coordinates(result.coords)
        if rounds[-1].ca_shift_rms_A < tolerance_A:
            converged = True
            break
    result.history = history
    result.best_recycle += offset
    result.rounds = rounds
    result.converged = converged
    result.round_tolerance_A = tolerance_A
    if len(fits) > 1:
        result.rotamer_fit = _sum_fits(fits)
    b_factors = None
    if config.refine_b_factors:
        import torch

        from cryostack.refine.adp import refine_b_factors

        t_adp = time.perf_counter()
        adp = refine_b_factors(objective, torch.as_tensor(result.coords), steps=config.b_factor_steps)
        b_factors = adp.b_factors
        result.adp = {**adp.to_dict(), "wall_s": time.perf_counter() - t_adp}
    result.wall_s = time.perf_counter() - t0
    return structure.with_coordinates(result.coords, b_factors=b_factors), result


def _one_pass(structure, density_map, resolution_A, config, weights, optimizer, progress):
    """One pass of the optimiser over the whole model, or crop by crop for large models."""
    n_polymer = int(np.isin(structure.atoms().residue_class, (PROTEIN, DNA, RNA)).sum())
    if n_polymer <= config.crop_above_residues:
        objective = RefinementObjective(structure, density_map, resolution_A, weights, device=config.device)
        return optimizer(objective, config, progress), objective
    return _refine_crops(structure, density_map, resolution_A, config, weights, optimizer, progress)


def crop_assignment(structure: Structure, config: RefineConfig) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Spatial crops of the polymer residues.

    Returns ``core`` ``(R,)`` (crop id of each residue's core, −1 for non-polymer residues) and,
    per crop, ``(crop id, residue indices it holds)`` (core, shell and fixed context, sorted).
    """
    arr = structure.atoms()
    n_res = len(arr.residue_names)
    centres = np.zeros((n_res, 3))
    np.add.at(centres, arr.residue_index, arr.coords.astype(np.float64))
    centres /= np.bincount(arr.residue_index, minlength=n_res).clip(min=1)[:, None]
    polymer = np.isin(arr.residue_class, (PROTEIN, DNA, RNA))
    pidx = np.nonzero(polymer)[0]
    k = max(1, int(np.ceil(len(pidx) / RESIDUES_PER_CROP)))
    rng = np.random.default_rng(config.seed)
    _, labels = kmeans2(centres[pidx], k, seed=rng, minit="++")
    core = np.full(n_res, -1, dtype=np.int64)
    core[pidx] = labels
    # Residue reach: its atoms' farthest distance from its centre, so shells are measured atom to atom.
    reach = np.zeros(n_res)
    np.maximum.at(reach, arr.residue_index, np.linalg.norm(arr.coords - centres[arr.residue_index], axis=1))
    tree = cKDTree(centres)
    crops = []
    for c in range(k):
        members = np.nonzero(core == c)[0]
        if len(members) == 0:
            continue
        near = tree.query_ball_point(centres[members], r=config.crop_margin_A + 2 * reach.max())
        cand = np.unique(np.concatenate([np.asarray(n, dtype=np.int64) for n in near]))
        d = cKDTree(centres[members]).query(centres[cand])[0] - reach[cand] - reach[members].max()
        crops.append((c, np.union1d(members, cand[d <= config.crop_margin_A])))
    return core, crops


def _sub_structure(structure: Structure, residues: np.ndarray) -> tuple[Structure, np.ndarray]:
    """The residues ``residues`` (indices in :meth:`Structure.atoms` order) as a new Structure, and
    the global atom index of each of its atoms."""
    st = structure.gemmi.clone()
    keep = set(int(r) for r in residues)
    serial, ri = 0, 0
    for chain in st[0]:
        for res in chain:
            for atom in res:
                atom.serial = serial
                serial += 1
            ri += 1
    ri = 0
    for chain in st[0]:
        drop = []
        for i, _ in enumerate(chain):
            if ri not in keep:
                drop.append(i)
            ri += 1
        for i in reversed(drop):
            del chain[i]
    st.remove_empty_chains()
    for m in range(len(st) - 1, 0, -1):
        del st[m]
    index = np.array([a.serial for ch in st[0] for res in ch for a in res], dtype=np.int64)
    return Structure(st), index


def _refine_crops(
    structure, density_map, resolution_A, config, weights, optimizer, progress
) -> tuple[RefineResult, RefinementObjective]:
    arr = structure.atoms()
    coords = arr.coords.astype(np.float32).copy()
    core, crops = crop_assignment(structure, config)
    atom_core = core[arr.residue_index]
    polymer_atoms = np.isin(arr.residue_class[arr.residue_index], (PROTEIN, DNA, RNA))
    history, fits = [], []
    # Atoms of cores already refined stay fixed in later crops: a later crop then builds its
    # side of each seam onto the coordinates that are kept. Were they movable, the later crop
    # would move both sides, keep only its own, and leave the seam bonds torn (up to 3.6 Å on
    # 11,376 residues in 19 crops, benchmarks/refine_scale.py).
    done = np.zeros(len(arr.atom_names), dtype=bool)
    for ci, (crop_id, residues) in enumerate(crops):
        current = structure.with_coordinates(coords)
        sub, index = _sub_structure(current, residues)
        movable = polymer_atoms[index] & ~done[index]
        obj = RefinementObjective(sub, density_map, resolution_A, weights, device=config.device, movable=movable)
        cb = None
        if progress is not None:

            def cb(recycle, loss, terms, cc, _ci=ci, **kw):
                progress(recycle, loss, terms, cc, crop=(_ci + 1, len(crops)), **kw)

        res = optimizer(obj, config, cb)
        mine = (atom_core[index] == crop_id) & movable
        coords[index[mine]] = res.coords[mine]
        done[index[mine]] = True
        history.extend(res.history)
        fits.append(res.rotamer_fit)
    # Relax the seams: a short pass over the whole model from the merged coordinates.
    merged = structure.with_coordinates(coords)
    # The crops placed every domain: the seams need local relaxation only, not the whole-model
    # coarse and rigid-body stages (which would cost whole-model passes at every seam).
    seam_config = RefineConfig(
        **{**config.__dict__, "max_recycles": 1, "lr": config.lr * 0.4, "coarse_recycles": 0, "rigid_steps": 0}
    )
    obj = RefinementObjective(merged, density_map, resolution_A, weights, device=config.device)
    res = optimizer(
        obj,
        seam_config,
        None
        if progress is None
        else (lambda r, l, t, c, **kw: progress(r, l, t, c, crop=(len(crops) + 1, len(crops) + 1), **kw)),
    )
    history.extend(res.history[1:])
    fits.append(res.rotamer_fit)
    return RefineResult(
        coords=res.coords,
        history=history,
        method=config.method,
        best_recycle=res.best_recycle,
        crops=len(crops),
        rotamer_fit=_sum_fits(fits),
    ), obj


def _sum_fits(fits: list) -> dict | None:
    """Rotamer-fitting stats of the crops and the seam pass, counts summed (``None`` if none ran)."""
    fits = [f for f in fits if f]
    if not fits:
        return None
    return {
        "tried": sum(f["tried"] for f in fits),
        "changed": sum(f["changed"] for f in fits),
        "kept": sum(int(f.get("kept") or 0) for f in fits),
        "stages": fits,
    }
