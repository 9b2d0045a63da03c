"""One-step diffusion refinement (CryoNet.Refine): a pretrained atom denoiser optimised per case.

* :mod:`.featurize` — atom tokens and topology from a Structure or backbone arrays
* :mod:`.model` — EDM-preconditioned, E(3)-equivariant atom denoiser
* :mod:`.train` — denoising pretraining on the corpus train split (``cryostack train denoiser``)
* :mod:`.testtime` — test-time optimisation of the denoiser weights, registered as ``"diffusion"``

The packaged weights (``denoiser_v2``) and their model card are in ``cryostack/weights/``.
"""

from __future__ import annotations

from cryostack.refine.diffusion.config import DenoiserConfig, PretrainConfig, TestTimeConfig
from cryostack.refine.diffusion.featurize import AtomFeatures, featurize, featurize_backbone
from cryostack.refine.diffusion.model import AtomDenoiser, load_denoiser
from cryostack.refine.diffusion.testtime import METHOD, refine_diffusion

__all__ = [
    "AtomDenoiser",
    "AtomFeatures",
    "DenoiserConfig",
    "PretrainConfig",
    "TestTimeConfig",
    "featurize",
    "featurize_backbone",
    "load_denoiser",
    "refine_diffusion",
    "register",
]


def register() -> bool:
    """Add ``"diffusion"`` to the shared optimiser registry (``cryostack.refine.OPTIMIZERS``).

    Safe to call from ``cryostack.refine`` itself once ``OPTIMIZERS`` exists; returns whether the
    registry was found.
    """
    try:
        from cryostack.refine import OPTIMIZERS
    except ImportError:
        return False
    OPTIMIZERS.setdefault(METHOD, refine_diffusion)
    return True


register()
