"""Model building: a map and the sequences of its chains → a backbone model in the map's frame.

:func:`build_model` is the library call (a :class:`~cryostack.io.maps.DensityMap` and
:class:`ChainSpec` s in, a :class:`BuildResult` out); :func:`chains_from_fasta` turns FASTA
records into chains. The map is resampled to 1.5 Å/voxel (never resized to a fixed cube); a map
larger than one crop is covered by overlapping crops, every residue is predicted in each, and each
residue keeps the prediction of the crop in which it is most confident, preferring crops that hold
its Cα in their core (away from the overlap). Coordinates come out in Å in the input map's frame.
Side chains are added by :mod:`cryostack.build.sidechains` (ProMod3) when asked.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gemmi
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from cryostack.build.featurize import (
    BUILD_VOXEL_A,
    CHAIN_GAP,
    UNK,
    is_standard,
    normalize_map,
    residue_name,
    sequence_types,
)
from cryostack.build.model import ModelBuilder, load_builder, voxel_centres
from cryostack.chem.cbeta import ideal_cbeta, ideal_geometry
from cryostack.density.ops import resample
from cryostack.errors import InputError
from cryostack.geometry.frames import backbone_from_frames, place_carbonyl_oxygen
from cryostack.io.maps import DensityMap
from cryostack.io.models import Structure
from cryostack.io.sequences import FastaEntry

PACKAGED_MODEL = "model_builder_v1"
#: The coarsest map the builder accepts (Å): below this resolution there is no backbone to trace.
MAX_RESOLUTION_A = 8.0
#: How far inside the map's box every Cα is kept (Å): backbone atoms and Cβ lie within 2.5 Å of it.
BOX_MARGIN_A = 2.6
#: Protein volume per residue at 1.21 Å³/Da and 110 Da per residue (Å³).
RESIDUE_VOLUME_A3 = 133.0
_CHAIN_IDS = [chr(c) for c in range(ord("A"), ord("Z") + 1)] + [chr(c) for c in range(ord("a"), ord("z") + 1)]


@dataclass
class ChainSpec:
    """One chain to build: its ID, the FASTA record it comes from, its one-letter sequence."""

    chain_id: str
    record: str
    sequence: str


@dataclass
class BuildConfig:
    resolution_A: float
    checkpoint: str | Path | None = None  # None: the packaged model
    device: str = "cpu"
    use_sequence: bool = True  # False: every residue UNK (the --no-sequence mode)
    use_gnn: bool = True  # False: the pointer's frames only (ablation)
    crop_voxels: int = 64  # at 1.5 Å/voxel; larger maps are covered by overlapping crops
    overlap_voxels: int = 16
    # "sites": each residue starts the GNN on its own predicted Cα site (one residue per site,
    # chosen by the pointer's scores, one network pass); "soft": on the pointer's
    # attention-weighted mean position
    decode: str = "sites"


@dataclass
class BuildResult:
    structure: Structure
    chains: list[ChainSpec]
    confidence: np.ndarray  # (R,) probability that the residue's Cα is within 3 Å of the truth
    crops: int
    wall_time_s: float
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "chains": [{"chain": c.chain_id, "record": c.record, "residues": len(c.sequence)} for c in self.chains],
            "residues": int(len(self.confidence)),
            "mean_confidence": round(float(self.confidence.mean()), 3) if len(self.confidence) else None,
            "crops": self.crops,
            "wall_time_s": round(self.wall_time_s, 2),
            "notes": self.notes,
        }


def chains_from_fasta(entries: list[FastaEntry], where: str | Path | None = None) -> tuple[list[ChainSpec], list[str]]:
    """FASTA records → chains (one per chain ID a record names, else one per record) and notes.

    Nucleic-acid records are refused (protein only for now). Letters other than the 20 amino
    acids become UNK, and a note says how many.
    """
    notes: list[str] = []
    chains: list[ChainSpec] = []
    free = iter(c for c in _CHAIN_IDS if all(c not in e.chains for e in entries))
    for e in entries:
        if e.molecule == "nucleic":
            raise InputError(where, f"record {e.name} looks like DNA/RNA; only protein chains can be built for now")
        unknown = sum(not is_standard(ch) for ch in e.sequence)
        if unknown:
            notes.append(f"record {e.name}: {unknown} letter(s) outside the 20 amino acids built as UNK")
        ids: list[str | None] = list(e.chains) or [next(free, None)]
        for cid in ids:
            if cid is None:
                raise InputError(where, f"more than {len(_CHAIN_IDS)} chains; name them in RCSB-style headers")
            chains.append(ChainSpec(chain_id=cid, record=e.name, sequence=e.sequence))
    return chains, notes


def check_build_resolution(resolution_A: float, *, where: str | Path | None = None) -> None:
    """Refuse maps coarser than :data:`MAX_RESOLUTION_A` (one line naming ``where``)."""
    if resolution_A > MAX_RESOLUTION_A:
        raise InputError(
            where,
            f"resolution {resolution_A} Å is coarser than {MAX_RESOLUTION_A:g} Å; the builder traces 2.5–6 Å maps",
        )


def poly_unk_chains(n_residues: int) -> list[ChainSpec]:
    """One chain of ``n_residues`` UNK residues (no sequence known)."""
    return [ChainSpec(chain_id="A", record="unknown", sequence="X" * int(n_residues))]


def load_packaged_builder(device: str = "cpu") -> ModelBuilder:
    from cryostack.learn.registry import packaged_checkpoint

    return load_builder(packaged_checkpoint(PACKAGED_MODEL), map_location=device).to(device)


def prepare_map(density: DensityMap) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The map at 1.5 Å/voxel, normalised and padded to multiples of 4: ``(data [z,y,x], origin (x,y,z) Å, notes)``."""
    notes = []
    vox = np.asarray(density.voxel_size, dtype=np.float64)
    if not np.allclose(vox, BUILD_VOXEL_A):
        notes.append(f"map resampled from {tuple(round(float(v), 3) for v in vox)} to {BUILD_VOXEL_A} Å/voxel")
    grid = resample(density, BUILD_VOXEL_A)
    data = normalize_map(grid.data)
    pad = [(0, (-n) % 4) for n in data.shape]
    return np.pad(data, pad), np.asarray(grid.origin, np.float64), notes


def _crop_starts(n: int, crop: int, overlap: int) -> list[int]:
    if n <= crop:
        return [0]
    step = max(4, (crop - overlap) // 4 * 4)
    starts = list(range(0, n - crop, step)) + [(n - crop) // 4 * 4]
    return sorted(set(starts))


@torch.no_grad()
def build_model(
    density: DensityMap,
    chains: list[ChainSpec],
    cfg: BuildConfig,
    *,
    model: ModelBuilder | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BuildResult:
    """Place every residue of ``chains`` in ``density``; coordinates in the map's frame (Å).

    Residue ``i`` of a chain is numbered ``i + 1`` (along its FASTA record). The B-factor column
    holds the per-residue confidence × 100.
    """
    t0 = time.perf_counter()
    check_build_resolution(cfg.resolution_A, where=density.source)
    n_res = sum(len(c.sequence) for c in chains)
    if not n_res:
        raise InputError(None, "no residues to build")
    data, origin, notes = prepare_map(density)
    box_volume = float(np.prod(np.asarray(density.shape) * np.asarray(density.voxel_size)[::-1]))
    if n_res * RESIDUE_VOLUME_A3 > box_volume:
        notes.append(
            f"the sequences ({n_res} residues, ~{n_res * RESIDUE_VOLUME_A3:.0f} Å³ of protein) cannot fit the map box "
            f"({box_volume:.0f} Å³); residues beyond what the map holds get low confidence"
        )
    net = model or (load_builder(cfg.checkpoint) if cfg.checkpoint else load_packaged_builder(cfg.device))
    net = net.to(cfg.device).eval()
    types = np.concatenate([sequence_types(c.sequence) for c in chains])
    if not cfg.use_sequence:
        types = np.full_like(types, UNK)
    positions = np.concatenate([np.arange(len(c.sequence)) + k * CHAIN_GAP for k, c in enumerate(chains)])
    rt = torch.as_tensor(types)[None].to(cfg.device)
    pos = torch.as_tensor(positions)[None].to(cfg.device)
    mask = torch.ones_like(rt, dtype=torch.bool)

    crop = max(16, cfg.crop_voxels // 4 * 4)
    starts = [_crop_starts(n, crop, cfg.overlap_voxels) for n in data.shape]
    boxes = [(z, y, x) for z in starts[0] for y in starts[1] for x in starts[2]]
    best_score = np.full(n_res, -np.inf)
    best_rot, best_trans = np.zeros((n_res, 3, 3)), np.zeros((n_res, 3))
    best_conf = np.zeros(n_res)
    margin = cfg.overlap_voxels / 2 * BUILD_VOXEL_A
    for k, (z0, y0, x0) in enumerate(boxes):
        sub = data[z0 : z0 + crop, y0 : y0 + crop, x0 : x0 + crop]
        sub_origin = origin + np.array([x0, y0, z0]) * BUILD_VOXEL_A
        inputs = (
            torch.from_numpy(np.ascontiguousarray(sub))[None, None].to(cfg.device),
            torch.as_tensor(sub_origin, dtype=torch.float32)[None].to(cfg.device),
            rt, pos, mask,
        )  # fmt: skip
        out = net(
            *inputs, gnn_layers=None if cfg.use_gnn else 0, gnn_start=start_on_sites if cfg.decode == "sites" else None
        )
        rot, trans = (t[0].double().cpu().numpy() for t in out["frames"][-1])
        conf = torch.sigmoid(out["confidence_logit"][0]).double().cpu().numpy()
        # prefer the crop whose core (away from overlaps with neighbours) holds the Cα
        extent = np.array(sub.shape[::-1]) * BUILD_VOXEL_A
        lo = sub_origin + np.where(np.array([x0, y0, z0]) > 0, margin, 0)
        hi = (
            sub_origin
            + extent
            - np.where(np.array([x0, y0, z0]) + np.array(sub.shape[::-1]) < data.shape[::-1], margin, 0)
        )
        in_core = np.all((trans >= lo) & (trans <= hi), axis=1)
        score = conf + in_core
        take = score > best_score
        best_score[take], best_rot[take], best_trans[take], best_conf[take] = (
            score[take],
            rot[take],
            trans[take],
            conf[take],
        )
        if progress:
            progress(k + 1, len(boxes))
    # The map is all the evidence there is: a residue the network pushed past the box edge is put
    # back inside it, far enough that its backbone atoms stay in the box too.
    lo = np.asarray(density.origin, dtype=np.float64) + BOX_MARGIN_A
    hi = lo - 2 * BOX_MARGIN_A + (np.asarray(density.shape[::-1]) - 1) * np.asarray(density.voxel_size)
    best_trans = np.clip(best_trans, lo, np.maximum(hi, lo))
    structure = frames_to_structure(best_rot, best_trans, best_conf, chains, use_sequence=cfg.use_sequence)
    if len(boxes) > 1:
        notes.append(f"map covered by {len(boxes)} overlapping crops of {crop * BUILD_VOXEL_A:.0f} Å")
    return BuildResult(structure, chains, best_conf, len(boxes), time.perf_counter() - t0, notes)


def start_on_sites(pointer_stage: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """GNN start frames (batch of one): the pointer's rotations, and each residue moved onto its own
    predicted Cα site (:func:`calpha_sites`, :func:`assign_residues_to_sites`); residues left
    without a site keep the pointer's position."""
    rot, trans = pointer_stage["frames"][0]
    trans = trans.clone()
    sites, site_voxel = calpha_sites(
        pointer_stage["dense"][0], pointer_stage["grid_origin_A"][0], pointer_stage["grid_spacing_A"]
    )
    r_idx, s_idx = assign_residues_to_sites(pointer_stage["pointer_logits"][0], site_voxel)
    trans[0, torch.as_tensor(r_idx, dtype=torch.long)] = sites[torch.as_tensor(s_idx, dtype=torch.long)].to(trans)
    return rot, trans


def calpha_sites(
    dense: torch.Tensor, origin_A: torch.Tensor, spacing_A: float, *, min_probability: float = 0.3,
    min_separation_A: float = 2.8,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Predicted Cα sites from the dense heads ``(25, Z, Y, X)``: voxels whose Cα probability is at
    least ``min_probability``, moved by their predicted offset, strongest first, none closer than
    ``min_separation_A`` to a stronger one (two Cα are 3.8 Å apart). Returns positions ``(S, 3)``
    Å and the flat index of each site's voxel ``(S,)``."""
    prob = torch.sigmoid(dense[0]).flatten()
    z, y, x = dense.shape[1:]
    cand = torch.nonzero(prob >= min_probability).flatten()
    cand = cand[torch.argsort(prob[cand], descending=True)]
    centres = voxel_centres((z, y, x), spacing_A, dense.device)
    pts = (origin_A + centres[cand] + dense[1:4].reshape(3, -1).T[cand]).cpu().numpy()
    keep: list[int] = []
    tree = cKDTree(pts) if len(pts) else None
    taken = np.zeros(len(pts), dtype=bool)
    for i in range(len(pts)):  # greedy non-maximum suppression, strongest first
        if taken[i]:
            continue
        keep.append(i)
        assert tree is not None
        taken[tree.query_ball_point(pts[i], min_separation_A)] = True
    k = torch.as_tensor(keep, dtype=torch.long)
    return torch.as_tensor(pts[keep]).reshape(-1, 3), cand[k] if len(keep) else cand[:0]


def assign_residues_to_sites(pointer_logits: torch.Tensor, site_voxel: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """One residue per site maximising the summed pointer logits ``(R, V)`` (Hungarian). Returns
    ``(residue rows, site rows)``; with fewer sites than residues the rest stay unassigned."""
    if len(site_voxel) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    score = pointer_logits[:, site_voxel].double().cpu().numpy()
    r, c = linear_sum_assignment(-score)
    return r, c


def frames_to_structure(
    rot: np.ndarray, trans: np.ndarray, confidence: np.ndarray, chains: list[ChainSpec], *, use_sequence: bool = True
) -> Structure:
    """Backbone model (N, CA, C, O and ideal CB) from frames ``(R, 3, 3)``, ``(R, 3)`` Å; chains
    named and numbered as given; B-factor = confidence × 100."""
    bb = backbone_from_frames(torch.as_tensor(rot), torch.as_tensor(trans)).numpy()  # (R, 3, 3)
    st = gemmi.Structure()
    st.name = "cryostack_build"
    st.add_model(gemmi.Model(1))
    model = st[0]
    start = 0
    for spec in chains:
        n = len(spec.sequence)
        types = sequence_types(spec.sequence) if use_sequence else np.full(n, UNK)
        ch = model.add_chain(gemmi.Chain(spec.chain_id))
        seg = bb[start : start + n]
        # each O from the next residue's N; for the last residue a stand-in N one N–Cα step from
        # its C (the O then lies on the bisector away from Cα and N, as before)
        n_next = np.concatenate([seg[1:, 0], seg[-1:, 2] + seg[-1:, 0] - seg[-1:, 1]])
        o = place_carbonyl_oxygen(
            torch.as_tensor(seg[:, 1]), torch.as_tensor(seg[:, 2]), torch.as_tensor(n_next)
        ).numpy()
        for i in range(n):
            name = residue_name(int(types[i]))
            res = gemmi.Residue()
            res.name = name
            res.seqid = gemmi.SeqId(i + 1, " ")
            res.entity_type = gemmi.EntityType.Polymer
            atoms = [("N", "N", seg[i, 0]), ("CA", "C", seg[i, 1]), ("C", "C", seg[i, 2]), ("O", "O", o[i])]
            if name not in ("GLY", "UNK"):
                cb = ideal_cbeta(seg[i, 0], seg[i, 1], seg[i, 2], ideal_geometry(name))
                atoms.append(("CB", "C", cb))
            for aname, el, xyz in atoms:
                a = gemmi.Atom()
                a.name, a.element = aname, gemmi.Element(el)
                a.pos = gemmi.Position(*map(float, xyz))
                a.occ, a.b_iso = 1.0, float(100.0 * confidence[start + i])
                res.add_atom(a)
            ch.add_residue(res)
        start += n
    st.setup_entities()
    return Structure(st)
