"""Validation: map–model fit, geometry and model-vs-reference scores."""
