"""Differentiable stereochemistry (PyTorch): restraints, priors and clash terms over atom coordinates.

Everything here takes ``(N, 3)`` coordinates in Å in :meth:`cryostack.io.models.Structure.atoms`
order and returns scalar tensors, so refinement, validation and learned tools share one set of
definitions.
"""
