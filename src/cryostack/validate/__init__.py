"""Validation: map–model fit, MolProbity-grade geometry and model-vs-reference scores.

``validate()`` runs everything that its inputs allow and returns one :class:`ValidationResult`.
"""

from cryostack.validate.api import ValidationResult, validate

__all__ = ["ValidationResult", "validate"]
