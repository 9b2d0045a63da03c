"""Half-map cross-validation of a refinement, and the density weight chosen by it (``density=auto``).

A model refined against half map 1 (the *work* half) has seen only that half's noise; half map 2
(the *free* half) holds the same signal with independent noise. The model map's FSC against
each half, averaged over the shells up to the resolution (:func:`cryostack.validate.mapfit.
model_vs_half_maps`), gives FSC_work and FSC_free; a growing gap (work − free) means the model is
fitting half 1's noise. With ``density=auto`` a short refinement against half 1 is run at each of
:data:`AUTO_DENSITY_WEIGHTS` and the weight with the best FSC_free average is kept.

This is workflow (refinement judged by validation numbers), so it sits in ``pipeline/`` beside
:mod:`cryostack.pipeline.refine_job`: the refinement tool cannot import the judge.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from cryostack.density.checks import check_half_maps, check_map_values
from cryostack.errors import InputError
from cryostack.io.maps import DensityMap
from cryostack.io.models import Structure
from cryostack.refine import LossWeights, RefineConfig, refine
from cryostack.validate.mapfit import model_vs_half_maps

#: Density weights tried by ``density=auto``: the default (150) and factors of ~3 either side,
#: from tight geometry (50) to the map-leaning end where the benchmark's geometry loosens (1000;
#: docs/refine.md: density 1500 gave 25–40 % rotamer outliers).
AUTO_DENSITY_WEIGHTS: tuple[float, ...] = (50.0, 150.0, 400.0, 1000.0)
#: Optimiser recycles per scanned weight. The coarse and rigid-body placement and the B-factor
#: fit run as in a full refinement (FSC_free judges the model map with its B-factors), the
#: rotamer fit and polish do not: a trial costs well under half of a default refinement.
SCAN_MAX_RECYCLES = 2
#: FSC_free averages within this of the best are taken as equal, and the lowest such weight
#: (the tightest geometry) wins: the free FSC of a few-recycle trial is not more precise than that.
SCAN_TIE = 0.002


def check_half_maps_for_refinement(
    density: DensityMap, halves: tuple[DensityMap, DensityMap], paths: tuple[Path, Path] | None = None
) -> None:
    """Refuse half maps that cannot cross-validate: on another grid or voxel size than ``density``
    (:func:`~cryostack.density.checks.check_half_maps`), flat or non-finite, or the same map twice."""
    check_half_maps(density, halves)
    for h in halves:
        check_map_values(h)
    h1, h2 = halves
    if np.array_equal(h1.data, h2.data):
        where = paths[1] if paths is not None else h2.source
        raise InputError(
            where,
            "the two half maps are identical: no cross-validation possible "
            "(the free half must hold noise independent of the work half)",
        )


def fsc_summary(validation: dict) -> dict | None:
    """``fsc_work_average``, ``fsc_free_average`` and ``fsc_gap`` (work − free) from a validation
    dict made with half maps (half 1 = work, half 2 = free); ``None`` without them."""
    hv = (validation.get("map_model") or {}).get("model_vs_half_maps")
    if not hv:
        return None
    return {
        "fsc_work_average": hv["half1_average"],
        "fsc_free_average": hv["half2_average"],
        "fsc_gap": hv["half1_minus_half2"],
    }


def scan_density_weight(
    structure: Structure,
    halves: tuple[DensityMap, DensityMap],
    resolution_A: float,
    config: RefineConfig,
    weights: LossWeights,
    *,
    candidates: tuple[float, ...] = AUTO_DENSITY_WEIGHTS,
    status: Callable[[str], None] | None = None,
) -> dict:
    """Refine ``structure`` against half map 1 for :data:`SCAN_MAX_RECYCLES` recycles at each
    density weight in ``candidates`` (other weights as given) and judge each model by its FSC
    against half map 2.

    Returns the scan record: ``chosen`` (the weight with the best FSC_free average; within
    :data:`SCAN_TIE` of it, the lowest), ``trials`` (per weight: FSC_work, FSC_free, gap, last
    CC against half 1, wall seconds), ``recycles_per_trial``, ``tie_tolerance`` and ``wall_s``.
    """
    say = status or (lambda _text: None)
    trial_config = replace(
        config, max_recycles=min(config.max_recycles, SCAN_MAX_RECYCLES), fit_rotamers=False, max_rounds=1
    )
    trials = []
    for i, w in enumerate(candidates, start=1):
        say(f"density=auto: weight {w:g} ({i}/{len(candidates)})")
        t0 = time.perf_counter()
        refined, result = refine(structure, halves[0], resolution_A, trial_config, replace(weights, density=float(w)))
        fsc = model_vs_half_maps(refined.atoms(), halves, resolution_A)
        trials.append(
            {
                "density": float(w),
                "fsc_work_average": fsc["half1_average"],
                "fsc_free_average": fsc["half2_average"],
                "fsc_gap": fsc["half1_minus_half2"],
                "cc_work_half": result.history[-1].cc if result.history else None,
                "wall_s": time.perf_counter() - t0,
            }
        )
    free = [t["fsc_free_average"] if t["fsc_free_average"] is not None else -np.inf for t in trials]
    best = max(free)
    chosen = min(t["density"] for t, f in zip(trials, free) if f >= best - SCAN_TIE)
    return {
        "chosen": chosen,
        # A choice at either end of the scan may not be the best weight, only the best tried.
        "chosen_at_edge": chosen in (min(candidates), max(candidates)),
        "candidates": [float(w) for w in candidates],
        "recycles_per_trial": trial_config.max_recycles,
        "tie_tolerance": SCAN_TIE,
        "refined_against": "half_map_1",
        "judged_against": "half_map_2",
        "trials": trials,
        "wall_s": float(sum(t["wall_s"] for t in trials)),
    }


def scan_text(scan: dict) -> str:
    """One line for the text report: FSC_free average per weight and the choice."""
    tried = ", ".join(
        f"{t['density']:g} → {t['fsc_free_average']:.3f}"
        if t["fsc_free_average"] is not None
        else f"{t['density']:g} → –"
        for t in scan["trials"]
    )
    return (
        f"density=auto: FSC_free avg by density weight ({scan['recycles_per_trial']} recycles each against "
        f"half map 1): {tried}; chose {scan['chosen']:g}"
        + (" (the end of the scanned range: a weight beyond it might do better)" if scan.get("chosen_at_edge") else "")
    )
