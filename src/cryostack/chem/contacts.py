"""Van der Waals radii and the contact rules shared by the clash score and the clash restraint."""

from __future__ import annotations

#: Probe-like van der Waals radii (Å) for heavy atoms; polar pairs that can hydrogen-bond are
#: allowed to approach closer (see :data:`HBOND_MIN_DISTANCE_A`).
VDW_RADII_A = {"C": 1.70, "N": 1.55, "O": 1.40, "S": 1.80, "P": 1.80, "SE": 1.90, "H": 1.10}
#: Elements that can hydrogen-bond (donor or acceptor) in a heavy-atom contact.
HBOND_ELEMENTS = {"N", "O"}
#: Closest approach (Å) of an N/O pair that can hydrogen-bond before it counts as a clash.
HBOND_MIN_DISTANCE_A = 2.5
#: Overlap (Å) beyond van der Waals contact that makes a serious clash (MolProbity: 0.4).
CLASH_OVERLAP_A = 0.4
