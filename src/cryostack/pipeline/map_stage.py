"""The pipeline's map stage: grid facts, the half-map FSC and the cFAR of a map, as one JSON record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cryostack.density.checks import check_half_maps, check_map_values
from cryostack.errors import InputError
from cryostack.io.atomic import atomic_output, jsonable
from cryostack.io.maps import read_map
from cryostack.particles.engine import judge_half_maps, soft_sphere_mask

#: Without a mask of its own, the half-map FSC is taken in a soft sphere of this fraction of the
#: smallest box edge: a loose mask, so the resolution is conservative rather than inflated.
SPHERE_FRACTION = 0.9


def map_summary(files: dict[str, Path], out: Path, fsc_threshold: float = 0.143) -> dict:
    """``files``: ``map`` and optionally ``half_map_1``, ``half_map_2``, ``mask``. Writes and
    returns ``{"map": facts, "fsc": {freq_per_A, fsc, resolution_A}, "cfar": {...}, "resolution_A"}``."""
    density = read_map(files["map"])
    check_map_values(density)
    summary: dict = {
        "map": {
            "path": str(files["map"]),
            "box_xyz": list(density.shape[::-1]),
            "voxel_size_A": list(density.voxel_size),
            "origin_A": list(density.origin),
        },
        "resolution_A": None,
        "cfar": None,
    }
    if "half_map_1" in files:
        h1, h2 = read_map(files["half_map_1"]), read_map(files["half_map_2"])
        check_half_maps(density, (h1, h2))
        if np.array_equal(h1.data, h2.data):
            raise InputError(h2.source, "is identical to the other half map: no FSC can be measured")
        if "mask" in files:
            mask = read_map(files["mask"]).data
            mask_note = f"mask {Path(files['mask']).name}"
        else:
            d_A = SPHERE_FRACTION * min(n * v for n, v in zip(density.shape, density.voxel_size[::-1]))
            mask = soft_sphere_mask(density.shape, density.voxel_size[0], d_A)
            mask_note = f"soft sphere of {d_A:.0f} Å diameter"
        freq, curve, res, cf, cf_note = judge_half_maps(h1, h2, mask, fsc_threshold)
        summary["fsc"] = {"freq_per_A": freq, "fsc": curve, "resolution_A": res, "mask": mask_note}
        summary["resolution_A"] = res
        summary["cfar"] = {"cfar": None if cf is None else float(cf.cfar), "note": cf_note}
        if cf is not None:
            from cryostack.density.cfar import plot_fsc_sphere

            summary["fsc_sphere_png"] = str(plot_fsc_sphere(cf, out.with_name("fsc_sphere.png")))
    with atomic_output(out) as tmp:
        tmp.write_text(json.dumps(jsonable(summary), indent=1))
    return summary
