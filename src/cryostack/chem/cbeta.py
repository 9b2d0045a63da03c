"""Ideal Cβ geometry (MolProbity's cbetadev construction; Lovell et al. 2003, Proteins 50:437).

An ideal Cβ is built from the backbone twice — once from the N–C–CA–CB dihedral and C–CA–CB angle,
once from the C–N–CA–CB dihedral and N–CA–CB angle — the two positions are averaged and the average
is put back at the ideal CA–CB distance. The validator (:mod:`cryostack.validate.cbeta`) and the
refinement restraint (:mod:`cryostack.geometry.cbeta`) both build on this.

Ideal geometry (distance Å, angles and dihedrals in degrees) depends on the residue:

==================  ======  =========  =========  =========  =========
residues            CA–CB   C–CA–CB    N–C–CA–CB  N–CA–CB    C–N–CA–CB
==================  ======  =========  =========  =========  =========
Ala                 1.536   110.1      122.9      110.6      -122.6
Pro                 1.530   112.2      115.1      103.0      -120.7
Val, Thr, Ile       1.540   109.1      123.4      111.5      -122.0
all others          1.530   110.1      122.8      110.5      -122.6
==================  ======  =========  =========  =========  =========

D-amino acids (by name, or for non-standard residues by the handedness of CA) use the
mirrored dihedrals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryostack.chem.residues import COMMON_AMINO_ACIDS, D_AMINO_ACIDS


@dataclass(frozen=True)
class IdealCbeta:
    """Ideal Cβ geometry: CA–CB distance (Å), C–CA–CB and N–CA–CB angles, N–C–CA–CB and
    C–N–CA–CB dihedrals (degrees, L-amino acid signs)."""

    ca_cb_A: float
    c_ca_cb_deg: float
    n_c_ca_cb_deg: float
    n_ca_cb_deg: float
    c_n_ca_cb_deg: float

    def mirrored(self) -> IdealCbeta:
        """The D-amino-acid geometry (dihedrals with the opposite sign)."""
        return IdealCbeta(self.ca_cb_A, self.c_ca_cb_deg, -self.n_c_ca_cb_deg, self.n_ca_cb_deg, -self.c_n_ca_cb_deg)


_ALA = IdealCbeta(1.536, 110.1, 122.9, 110.6, -122.6)
_PRO = IdealCbeta(1.530, 112.2, 115.1, 103.0, -120.7)
_BETA_BRANCHED = IdealCbeta(1.540, 109.1, 123.4, 111.5, -122.0)
_OTHER = IdealCbeta(1.530, 110.1, 122.8, 110.5, -122.6)
_IDEAL_BY_NAME: dict[str, IdealCbeta] = {
    "ALA": _ALA, "DAL": _ALA,
    "PRO": _PRO, "DPR": _PRO,
    "VAL": _BETA_BRANCHED, "THR": _BETA_BRANCHED, "ILE": _BETA_BRANCHED,
    "DVA": _BETA_BRANCHED, "DTH": _BETA_BRANCHED, "DIL": _BETA_BRANCHED,
}  # fmt: skip


def ideal_geometry(name: str, chiral_volume_A3: float | None = None) -> IdealCbeta:
    """Ideal Cβ geometry of residue ``name``.

    Common amino acids are L; D-amino-acid names are mirrored whatever their hand (a misnamed
    residue then shows up as an outlier); any other residue is mirrored when its chiral volume
    (N–CA)·((CB–CA)×(C–CA)) is positive (D-like; L gives about −2.5 Å³). Without a chiral
    volume the L geometry is returned.
    """
    ideal = _IDEAL_BY_NAME.get(name, _OTHER)
    if name in COMMON_AMINO_ACIDS or chiral_volume_A3 is None:
        return ideal
    if name in D_AMINO_ACIDS or chiral_volume_A3 > 0:
        return ideal.mirrored()
    return ideal


def cross3(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Cross product of two 3-vectors: the same arithmetic as ``np.cross`` without its
    per-call axis handling, which dominated the time of this module."""
    u0, u1, u2 = u
    v0, v1, v2 = v
    return np.array([u1 * v2 - u2 * v1, u2 * v0 - u0 * v2, u0 * v1 - u1 * v0])


def place_atom(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, bond_A: float, angle_deg: float, dihedral_deg: float
) -> np.ndarray:
    """Position of D with |CD| = ``bond_A``, angle B–C–D = ``angle_deg`` and dihedral
    A–B–C–D = ``dihedral_deg`` (natural extension reference frame); NaNs when A, B, C are
    collinear or coincide."""
    bc = c - b
    normal = cross3(b - a, bc)
    bc_len, normal_len = np.linalg.norm(bc), np.linalg.norm(normal)
    if bc_len < 1e-6 or normal_len < 1e-6:
        return np.full(3, np.nan)
    bc /= bc_len
    normal /= normal_len
    theta, chi = np.radians(angle_deg), np.radians(dihedral_deg)
    local = bond_A * np.array([-np.cos(theta), np.sin(theta) * np.cos(chi), np.sin(theta) * np.sin(chi)])
    frame = np.column_stack([bc, cross3(normal, bc), normal])
    return c + frame @ local


def ideal_cbeta(n: np.ndarray, ca: np.ndarray, c: np.ndarray, ideal: IdealCbeta) -> np.ndarray:
    """Ideal Cβ position (Å) from backbone N, CA, C: mean of the two constructions, rescaled to
    the ideal CA–CB distance."""
    from_n_c = place_atom(n, c, ca, ideal.ca_cb_A, ideal.c_ca_cb_deg, ideal.n_c_ca_cb_deg)
    from_c_n = place_atom(c, n, ca, ideal.ca_cb_A, ideal.n_ca_cb_deg, ideal.c_n_ca_cb_deg)
    mean = (from_n_c + from_c_n) / 2.0
    length = np.linalg.norm(mean - ca)
    return ca + (mean - ca) * (ideal.ca_cb_A / length) if length > 0 else mean
