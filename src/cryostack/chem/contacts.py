"""Van der Waals radii and the contact rules shared by the clash score and the clash restraint."""

from __future__ import annotations

import numpy as np
from scipy import sparse

#: Probe-like van der Waals radii (Å) for heavy atoms; polar pairs that can hydrogen-bond are
#: allowed to approach closer (see :data:`HBOND_MIN_DISTANCE_A`).
VDW_RADII_A = {"C": 1.70, "N": 1.55, "O": 1.40, "S": 1.80, "P": 1.80, "SE": 1.90, "H": 1.10}
#: Elements that can hydrogen-bond (donor or acceptor) in a heavy-atom contact.
HBOND_ELEMENTS = {"N", "O"}
#: Closest approach (Å) of an N/O pair that can hydrogen-bond before it counts as a clash.
HBOND_MIN_DISTANCE_A = 2.5
#: Overlap (Å) beyond van der Waals contact that makes a serious clash (MolProbity: 0.4).
CLASH_OVERLAP_A = 0.4

# All-atom contacts (explicit hydrogens), as Probe scores them for MolProbity's clashscore. These
# radii go with hydrogens at electron-cloud X–H distances (MolProbity's default since 2017); the
# heavy-atom radii above are unchanged so the heavy-atom clashscore stays comparable with before.
#: Hydrogen on N, O or S (Probe's polar-H radius).
H_POLAR_RADIUS_A = 1.05
#: Hydrogen on carbon.
H_NONPOLAR_RADIUS_A = 1.10
#: sp2 carbon bonded to oxygen (carbonyl, carboxyl): smaller than 1.70 Å, else every C=O···N
#: contact of a good model would count as a clash.
CARBONYL_C_RADIUS_A = 1.65
#: Aromatic ring carbon.
AROMATIC_C_RADIUS_A = 1.75
#: Overlap (Å) that a polar hydrogen and an acceptor may have as a hydrogen bond before it is a clash.
HBOND_OVERLAP_A = 0.6
#: The same when both partners are charged (salt bridge: Lys/Arg/N-terminus to carboxylate/phosphate).
HBOND_CHARGED_OVERLAP_A = 0.8


def bond_reach(adjacency: sparse.spmatrix, depth: int) -> sparse.csr_matrix:
    """Pairs joined by a path of at most ``depth`` bonds, the diagonal included, as a 0/1 matrix
    (sorted indices). ``adjacency``: the symmetric ``(N, N)`` bond graph. Atoms within a few bonds
    never clash, and a bond restraint's 1-2, 1-3 and 1-4 pairs are these for ``depth = 3``."""
    n = adjacency.shape[0]
    step = ((adjacency + sparse.identity(n, format="csr")) != 0).astype(np.int32)
    reach = step.copy()
    for _ in range(depth - 1):
        reach = ((reach @ step) > 0).astype(np.int32)
    reach = sparse.csr_matrix(reach)
    reach.sort_indices()
    return reach
