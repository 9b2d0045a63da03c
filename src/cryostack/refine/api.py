"""Refinement API: configuration, result, the optimiser registry and :func:`refine`.

An optimiser is a function ``(objective, config, progress) → RefineResult``; ``progress`` is
called once per recycle with ``(recycle, total_loss, terms, cc)`` (terms as floats) and may be
``None``. ``"direct"`` is registered here; ``"diffusion"`` is registered by
:mod:`cryostack.refine.diffusion` when that module is installed (imported lazily on first use).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from cryostack.refine.objective import RefinementObjective

#: Default convergence tolerance as a fraction of the resolution: a round that moves the Cα atoms
#: by less than 5 % of the resolution (RMS) has moved them by less than the map can tell apart.
ROUND_TOLERANCE_PER_RESOLUTION = 0.05


@dataclass
class RefineConfig:
    """How to optimise. ``lr`` is Adam's step in Å for ``"direct"``; the diffusion optimiser keeps
    its own learning rate for the denoiser's weights (``TestTimeConfig.lr``) unless ``lr`` is set
    away from this default."""

    method: str = "direct"
    max_recycles: int = 8
    #: Optimiser steps per recycle: Adam steps, or L-BFGS iterations (see ``per_atom``).
    steps_per_recycle: int = 40
    #: How the direct optimiser moves atoms: ``"adam"`` (first-order steps of ``lr`` Å, shrinking
    #: per recycle; the default) or ``"lbfgs"`` (quasi-Newton with a strong-Wolfe line search:
    #: faster and a higher CC, but looser geometry at the default weights, see docs/refine.md).
    per_atom: str = "adam"
    lr: float = 0.05
    patience: int = 2
    #: Adam steps of the rigid-body stage before per-atom refinement ("direct"); 0 skips it.
    rigid_steps: int = 40
    #: After the coordinates, fit per-residue isotropic B-factors to the map (:mod:`cryostack.refine.adp`).
    refine_b_factors: bool = True
    #: Adam steps of the B-factor fit.
    b_factor_steps: int = 100
    #: Recycles against the density blurred to max(8 Å, 1.5 × resolution) (after a rigid-body
    #: fit at that resolution) before the full-resolution stages ("direct"); 0 skips them.
    coarse_recycles: int = 2
    seed: int = 0
    device: str = "cpu"
    #: Models with more residues than this are refined in spatially overlapping crops.
    crop_above_residues: int = 1500
    #: Crop radius (Å) around each crop centre; atoms are kept from the crop where they are most interior.
    crop_radius_A: float = 30.0
    #: Extra shell (Å) around each crop whose atoms take part but are taken from another crop.
    crop_margin_A: float = 8.0
    #: Minimum relative improvement of the best total loss that resets the patience counter.
    min_improvement: float = 1e-3
    #: After the recycles, turn peptide planes to clear Ramachandran outliers where the map allows
    #: (:mod:`cryostack.refine.peptide_fit`) and polish with one short Adam recycle ("direct").
    fit_peptides: bool = True
    #: After the recycles, put non-favoured side chains into their best Top8000 rotamer
    #: (:mod:`cryostack.refine.rotamer_fit`) and polish with one short Adam recycle ("direct").
    fit_rotamers: bool = True
    #: Most rounds of refinement. Each round is a whole pass of the optimiser (placement, recycles,
    #: rotamer fit) from the previous round's model, with the density mask rebuilt around that
    #: model and the optimiser's state and step size started afresh; 1 is a single pass.
    max_rounds: int = 4
    #: Rounds stop once a round moves the Cα atoms by less than this RMS (Å): the model has
    #: stopped moving (see :func:`cryostack.refine.run.refine`). ``None``:
    #: :data:`ROUND_TOLERANCE_PER_RESOLUTION` × the resolution (0.15 Å at 3 Å).
    round_tolerance_A: float | None = None

    def round_tolerance(self, resolution_A: float) -> float:
        """The convergence tolerance (Å Cα RMS shift per round) at ``resolution_A``."""
        if self.round_tolerance_A is not None:
            return float(self.round_tolerance_A)
        return ROUND_TOLERANCE_PER_RESOLUTION * float(resolution_A)


@dataclass
class RecycleRecord:
    recycle: int
    loss: float
    terms: dict[str, float]
    cc: float
    #: What produced these coordinates: ``"start"``, ``"adam"`` (a recycle), ``"peptide_fit"``, ``"rotamer_fit"`` or ``"polish"``.
    stage: str = "adam"
    #: The round (1-based) this record belongs to.
    round: int = 1


@dataclass
class RoundRecord:
    """One round of refinement: how far it moved the model and where it ended."""

    round: int
    #: RMS and largest Cα displacement (Å) from the round's start to its end.
    ca_shift_rms_A: float
    ca_shift_max_A: float
    #: RMS displacement of all movable atoms (Å), side chains included.
    atom_shift_rms_A: float
    #: Total loss and density CC of the round's returned model (on that round's mask).
    loss: float
    cc: float
    recycles: int
    wall_s: float


@dataclass
class RefineResult:
    """``coords`` ``(N, 3)`` Å: the returned model, ``history[best_recycle]`` (the best by total loss
    in the last round, except that the direct optimiser prefers its rotamer-fitted model within a
    small tolerance, see :mod:`cryostack.refine.direct`); ``history``: one record per recycle or
    stage, every round's; ``rotamer_fit``: the rotamer-fitting stats (``None`` when the stage did
    not run); ``rounds``: one record per round, and ``converged``: whether the last round moved
    the model less than the tolerance (``False`` when the rounds ran out first)."""

    coords: np.ndarray
    history: list[RecycleRecord] = field(default_factory=list)
    method: str = "direct"
    best_recycle: int = 0
    crops: int = 1
    wall_s: float = 0.0
    rotamer_fit: dict | None = None
    #: The peptide-turn stats of the last round (:mod:`cryostack.refine.peptide_fit`), ``None`` if it did not run.
    peptide_fit: dict | None = None
    rounds: list[RoundRecord] = field(default_factory=list)
    converged: bool | None = None
    #: The convergence criterion: Cα RMS shift of a round (Å) below which rounds stop.
    round_tolerance_A: float | None = None

    @property
    def n_recycles(self) -> int:
        """Optimiser recycles run (``"adam"`` records), not counting the start, rotamer fit and polish."""
        return sum(1 for r in self.history if r.stage == "adam")

    #: The B-factor fit (:class:`cryostack.refine.adp.AdpResult` as a dict), ``None`` if it did not run.
    adp: dict | None = None

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "best_recycle": self.best_recycle,
            "crops": self.crops,
            "wall_s": self.wall_s,
            "rotamer_fit": self.rotamer_fit,
            "peptide_fit": self.peptide_fit,
            "adp": self.adp,
            "rounds": [r.__dict__ for r in self.rounds],
            "converged": self.converged,
            "round_tolerance_A": self.round_tolerance_A,
            "history": [r.__dict__ for r in self.history],
        }


class Progress(Protocol):
    def __call__(self, recycle: int, loss: float, terms: dict[str, float], cc: float) -> None: ...


Optimizer = Callable[[RefinementObjective, RefineConfig, "Progress | None"], RefineResult]
#: Optimisers by name. Modules register themselves: ``OPTIMIZERS["name"] = fn``.
OPTIMIZERS: dict[str, Optimizer] = {}
#: Modules imported on first look-up of a name not yet registered.
_LAZY = {"diffusion": "cryostack.refine.diffusion"}


def get_optimizer(name: str) -> Optimizer:
    """The registered optimiser ``name`` (importing its module if it registers lazily)."""
    if name not in OPTIMIZERS and name in _LAZY:
        try:
            importlib.import_module(_LAZY[name])
        except ModuleNotFoundError as exc:
            if exc.name and _LAZY[name].startswith(exc.name):
                raise KeyError(f"optimiser {name!r} is not installed") from None
            raise
    if name not in OPTIMIZERS:
        raise KeyError(f"unknown optimiser {name!r} (available: {', '.join(available_methods())})")
    return OPTIMIZERS[name]


def available_methods() -> list[str]:
    """Registered optimisers plus the lazily registered ones whose module exists."""
    names = set(OPTIMIZERS)
    for name, mod in _LAZY.items():
        if importlib.util.find_spec(mod.rsplit(".", 1)[0]) is not None:
            try:
                if importlib.util.find_spec(mod) is not None:
                    names.add(name)
            except ModuleNotFoundError:
                pass
    return sorted(names)


def terms_as_floats(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in terms.items()}


def recycle_cc(objective, coords: torch.Tensor, terms: dict) -> float:
    """The density CC at ``coords`` for progress and history, from the objective's terms when
    its density term (1 − CC) was computed, which saves a second map simulation."""
    w = getattr(objective, "weights", None)
    if "density" in terms and (w is None or bool(getattr(w, "density", 1.0))):
        return 1.0 - float(terms["density"])
    return float(objective.cc(coords))
