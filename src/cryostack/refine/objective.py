"""The refinement objective: density fit plus stereochemistry, one differentiable function of coordinates.

``RefinementObjective(coords) → (total, terms)`` is the contract every optimiser works against
(direct coordinate optimisation here, the diffusion module in :mod:`cryostack.refine.diffusion`).

Density term: ``1 − CC`` between the model map (:func:`cryostack.density.simulate.simulate_density`,
Gaussian width from the resolution, hydrogens left out) and the experimental map, both on a
sub-box of the map around the model, over a mask of the voxels within ``mask_radius_A`` of the
starting model. The experimental map is z-score normalised over that mask. Geometry terms are
means of squared z-scores (:mod:`cryostack.geometry`), so weights are comparable across models
of any size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from cryostack.chem.hydrogens import riding_hydrogens
from cryostack.density.ops import box_around
from cryostack.density.scattering import PROFILE_TOLERANCE
from cryostack.density.simulate import simulate_density
from cryostack.errors import InputError
from cryostack.geometry.cbeta import build_cbeta, cbeta_deviations, cbeta_loss
from cryostack.geometry.clash import ClashTerm
from cryostack.geometry.ramachandran_prior import build_rama, rama_loss
from cryostack.geometry.restraints import (
    RestraintSet,
    angle_loss,
    angle_rmsd_deg,
    bond_loss,
    bond_rmsd,
    build_restraints,
    chirality_loss,
    omega_loss,
    plane_loss,
)
from cryostack.geometry.rotamer_prior import build_rotamers, rotamer_loss
from cryostack.io.maps import DensityMap
from cryostack.io.models import DNA, PROTEIN, RNA, Structure

#: Relative cutoff of each simulated atom: 10⁻³ of its peak is ample for a correlation and halves
#: the stencil volume against the simulator's default.
DENSITY_CUTOFF = 1e-3


@dataclass
class LossWeights:
    """Weights of the objective's terms (dimensionless; geometry terms are mean squared z-scores)."""

    density: float = 150.0
    bond: float = 2.0
    angle: float = 4.0
    plane: float = 2.0
    chirality: float = 2.0
    omega: float = 1.0
    rama: float = 2.0
    rotamer: float = 1.0
    cbeta: float = 1.0
    clash: float = 10.0
    #: Clashes of riding hydrogens (pairs with at least one H; see :mod:`cryostack.chem.hydrogens`).
    clash_h: float = 10.0

    @classmethod
    def parse(cls, text: str | None) -> LossWeights:
        """Weights from ``"density=40,rama=1"`` (unnamed terms keep their defaults)."""
        w = cls()
        if not text:
            return w
        names = {f.name for f in fields(cls)}
        for item in text.split(","):
            if not item.strip():
                continue
            key, _, value = item.partition("=")
            key = key.strip()
            if key not in names:
                raise ValueError(f"unknown loss term {key!r} (known: {', '.join(sorted(names))})")
            setattr(w, key, float(value))
        return w

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def default_mask_radius_A(resolution_A: float) -> float:
    """Mask radius around the starting model (Å): wide enough for atoms to move into their density."""
    return max(3.0, float(resolution_A)) + 1.5


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two same-size tensors (differentiable; 0-d tensor)."""
    a = a - a.mean()
    b = b - b.mean()
    return (a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()).clamp(min=1e-12)


class RefinementObjective:
    """Density fit plus restraints over all ``N`` atoms of a model (first model, file order).

    Attributes:
        movable: ``(N,)`` bool, atoms being refined (polymer atoms with a dictionary entry);
            ligands, waters and the rest stay fixed and contribute density and contacts.
        init_coords: ``(N, 3)`` starting coordinates, Å.
    """

    def __init__(
        self,
        structure: Structure,
        density_map: DensityMap,
        resolution_A: float,
        weights: LossWeights | None = None,
        device: str = "cpu",
        *,
        mask_radius_A: float | None = None,
        movable: np.ndarray | None = None,
        box_margin_A: float | None = None,
    ):
        self.structure = structure
        self.resolution_A = float(resolution_A)
        self.weights = weights or LossWeights()
        self.device = torch.device(device)
        self.atoms = arr = structure.atoms()
        n = arr.n_atoms
        self.restraints: RestraintSet = build_restraints(structure).to(self.device)
        all_bonds = self.restraints.bond_index.cpu().numpy()
        self.missing = list(self.restraints.residues_without_dictionary)

        polymer = np.isin(arr.residue_class[arr.residue_index], (PROTEIN, DNA, RNA))
        if movable is None:
            no_dict = {m for m in self.missing if "/" not in m}
            movable = polymer & ~np.isin(np.asarray(arr.residue_names, dtype=object)[arr.residue_index], list(no_dict))
        self.movable = torch.as_tensor(np.asarray(movable, dtype=bool), device=self.device)
        # Restraints among fixed atoms only are constant: leave them out of the terms.
        self.restraints = self.restraints.involving(self.movable)
        self.init_coords = torch.as_tensor(arr.coords, dtype=torch.float32, device=self.device)

        self.rama = build_rama(arr).to(self.device)
        self.rotamers = build_rotamers(arr).to(self.device)
        self.cbeta = build_cbeta(arr).to(self.device)
        altlocs: list[str] = []
        for chain in structure.model:
            for res in chain:
                altlocs.extend(a.altloc for a in res)
        self.clash = ClashTerm(arr.elements, self.restraints.excluded_pairs, altlocs=altlocs)
        self.riding, self.clash_h = self._riding_hydrogen_clashes(structure, all_bonds, altlocs)

        # Density: a sub-box of the map around the model, the experimental values z-scored in the mask.
        self.mask_radius_A = mask_radius_A or default_mask_radius_A(resolution_A)
        heavy = ~arr.is_hydrogen
        self._heavy = torch.as_tensor(heavy, device=self.device)
        margin = box_margin_A if box_margin_A is not None else self.mask_radius_A + 2.0
        self.box = box_around(density_map, arr.coords[heavy], margin_A=margin)
        from cryostack.density.masks import sphere_mask

        mask = sphere_mask(arr.coords[heavy], self.mask_radius_A, self.box)
        vals = self.box.data[mask].astype(np.float64)
        if vals.size < 10 or vals.std() == 0:
            raise ValueError("the map is empty or flat around the model")
        target = (self.box.data[mask] - vals.mean()) / vals.std()
        self.mask = torch.as_tensor(mask, device=self.device)
        self.target = torch.as_tensor(target.astype(np.float32), device=self.device)
        self._z = torch.as_tensor(arr.atomic_numbers, device=self.device)
        self.n_atoms = n

    def _riding_hydrogen_clashes(self, structure: Structure, bonds: np.ndarray, altlocs: list[str]):
        """Riding hydrogens and their clash term, or ``(None, None)``: the weight is 0, the model
        carries its own hydrogens (those are atoms of the model, restrained like any other), or
        gemmi cannot place them."""
        arr = self.atoms
        if not self.weights.clash_h or any(e.upper() in ("H", "D") for e in arr.elements):
            return None, None
        try:
            rh = riding_hydrogens(structure)
        except InputError:
            return None, None
        if len(rh) == 0:
            return None, None
        n, m = arr.n_atoms, len(rh)
        parent = rh.parent
        term = ClashTerm(
            list(arr.elements) + ["H"] * m,
            rh.excluded_pairs(bonds, n),
            altlocs=list(altlocs) + [altlocs[p] for p in parent],
            hydrogens=True,
            radii_A=np.concatenate([self.clash.radii, rh.radii_A]),
            polar_h=np.concatenate([np.zeros(n, dtype=bool), rh.polar]),
            pairs_with=np.concatenate([np.zeros(n, dtype=bool), np.ones(m, dtype=bool)]),
        )
        return rh.to(self.device), term

    def with_hydrogens(self, coords: torch.Tensor) -> torch.Tensor:
        """``(N + H, 3)``: ``coords`` followed by the riding hydrogens (``coords`` when there are none)."""
        if self.riding is None:
            return coords
        return torch.cat([coords, self.riding.positions(coords)])

    # -- terms ------------------------------------------------------------------------------------
    def model_map(self, coords: torch.Tensor) -> torch.Tensor:
        """Model map ``(nz, ny, nx)`` on the sub-box (differentiable in ``coords``)."""
        h = self._heavy
        return simulate_density(
            coords[h],
            self._z[h],
            self.box.grid,
            resolution_A=self.resolution_A,
            cutoff=DENSITY_CUTOFF,
            profile_tolerance=PROFILE_TOLERANCE,
        )

    def _mask_index(self) -> torch.Tensor:
        """Flat indices of the mask's voxels (a boolean index costs a nonzero() every call)."""
        if getattr(self, "_mask_of_index", None) is not self.mask:
            self._mask_of_index = self.mask
            self._mask_flat = torch.nonzero(self.mask.reshape(-1)).squeeze(1)
        return self._mask_flat

    def correlation(self, coords: torch.Tensor) -> torch.Tensor:
        """Pearson CC (tensor) between model and experimental map over the mask."""
        return pearson(self.model_map(coords).reshape(-1).index_select(0, self._mask_index()), self.target)

    def cc(self, coords: torch.Tensor) -> float:
        """The density correlation (for progress displays)."""
        with torch.no_grad():
            return float(self.correlation(coords.to(self.device)))

    def __call__(self, coords: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total weighted loss and the unweighted terms for ``(N, 3)`` coordinates (Å)."""
        x = coords
        rs = self.restraints
        w = self.weights
        terms: dict[str, torch.Tensor] = {}
        zero = x.new_zeros(())
        terms["density"] = 1.0 - self.correlation(x) if w.density else zero
        terms["bond"] = bond_loss(x, rs)
        terms["angle"] = angle_loss(x, rs)
        terms["plane"] = plane_loss(x, rs)
        terms["chirality"] = chirality_loss(x, rs)
        terms["omega"] = omega_loss(x, rs)
        terms["rama"] = rama_loss(x, self.rama) if w.rama else zero
        terms["rotamer"] = rotamer_loss(x, self.rotamers) if w.rotamer else zero
        terms["cbeta"] = cbeta_loss(x, self.cbeta) if w.cbeta else zero
        terms["clash"] = self.clash(x) if w.clash else zero
        terms["clash_h"] = self.clash_h(self.with_hydrogens(x)) if self.clash_h is not None else zero
        total = sum(getattr(w, k) * v for k, v in terms.items())
        return total, terms

    def geometry_summary(self, coords: torch.Tensor) -> dict[str, float]:
        """Bond RMSD (Å), angle RMSD (°), max Cβ deviation (Å) at ``coords``."""
        with torch.no_grad():
            cb = cbeta_deviations(coords, self.cbeta)
            return {
                "bond_rmsd_A": bond_rmsd(coords, self.restraints),
                "angle_rmsd_deg": angle_rmsd_deg(coords, self.restraints),
                "cbeta_max_A": float(cb.max()) if cb.numel() else 0.0,
            }
