"""Density: simulation from atoms, Fourier-space filters and grid operations."""
