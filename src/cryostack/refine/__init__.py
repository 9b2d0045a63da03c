"""Model refinement against a cryo-EM map (``cryostack refine``).

* :class:`RefinementObjective` (:mod:`.objective`): density fit + stereochemistry as one
  differentiable function of ``(N, 3)`` coordinates in Å, with :class:`LossWeights`.
* :data:`OPTIMIZERS`: name → ``(objective, RefineConfig, progress) → RefineResult``;
  ``"direct"`` (:mod:`.direct`) and, when installed, ``"diffusion"`` (:mod:`.diffusion`).
* :func:`refine`: the whole workflow on a :class:`Structure` and :class:`DensityMap`, with
  spatially overlapping crops for large models (:mod:`.crops`).
"""

from cryostack.refine import direct as _direct  # noqa: F401  registers "direct"
from cryostack.refine.api import (
    OPTIMIZERS,
    RecycleRecord,
    RefineConfig,
    RefineResult,
    RoundRecord,
    available_methods,
    get_optimizer,
)
from cryostack.refine.objective import LossWeights, RefinementObjective
from cryostack.refine.run import check_inputs, refine

__all__ = [
    "OPTIMIZERS",
    "LossWeights",
    "RecycleRecord",
    "RoundRecord",
    "RefineConfig",
    "RefineResult",
    "RefinementObjective",
    "available_methods",
    "check_inputs",
    "get_optimizer",
    "refine",
]
