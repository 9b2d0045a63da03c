"""cryoSPARC ``.cs``/``.csg`` files and their conversion to and from RELION columns.

Conventions (checked as far as the bundled real files allow; see ``docs/particles_io.md``):

* Rotations. RELION's ``rlnAngleRot/Tilt/Psi`` (ZYZ, degrees) give the matrix ``A`` of RELION's
  ``Euler_angles2matrix``, ``A = Rz(psi) Ry(tilt) Rz(rot)`` with each factor a rotation of the
  axes (``[[c, s, 0], [-s, c, 0], [0, 0, 1]]`` for ``Rz``). cryoSPARC's ``alignments3D/pose`` is a
  rotation vector ``r`` (axis × angle, radians) whose standard Rodrigues matrix ``R(r)`` is the
  transpose of RELION's: ``A = R(r)ᵀ``. This is the relation pyem's ``csparc2star`` uses
  (written with cryoSPARC's author, asarnow/pyem#5; its ``expmap`` builds ``R(r)ᵀ`` directly) and
  cryoDRGN's ``parse_pose_csparc`` (which transposes). Equivalently ``R(r)`` is the intrinsic
  ZYZ rotation ``Rz(rot) Ry(tilt) Rz(psi)`` (scipy ``from_euler("ZYZ", ...)``).
* Shifts. ``alignments3D/shift`` is in pixels of ``alignments3D/psize_A`` (which differs from
  ``blob/psize_A`` when the refinement downsampled, asarnow/pyem#125) and has the same sign as
  RELION's origin: ``rlnOriginXAngst = shift_x × alignments3D/psize_A``.
* Indices. ``blob/idx`` is 0-based, RELION's ``N@stack`` 1-based. ``ctf/exp_group_id`` is
  0-based, ``rlnOpticsGroup`` 1-based; likewise ``class``/``rlnClassNumber`` and
  ``split``/``rlnRandomSubset``.
* CTF. ``ctf/df1_A``, ``ctf/df2_A`` are ``rlnDefocusU``, ``rlnDefocusV`` (Å); angles are radians
  in cryoSPARC and degrees in RELION (``df_angle_rad``, ``phase_shift_rad``).
* Paths. ``blob/path`` is relative to the cryoSPARC project folder, or, with a leading ``>``,
  to the folder of the exported ``.cs``/``.csg``; the ``>`` is dropped in ``rlnImageName``.

The poses and shifts above are the published conversions: the bundled EMPIAR-10076 pair has the
same particles, CTF and pixel size in both formats but carries no poses, so it cannot check them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from cryosparc.dataset import Dataset

from cryostack.errors import InputError

#: Optics-level RELION columns (one value per optics group) built from per-particle cs fields.
OPTICS_COLUMNS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize")


# --------------------------------------------------------------------------------------------
# Rotations
# --------------------------------------------------------------------------------------------
def relion_euler_to_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """RELION's ``Euler_angles2matrix``: ``(n, 3)`` rot, tilt, psi in degrees → ``(n, 3, 3)`` ``A``."""
    a = np.deg2rad(np.asarray(angles_deg, dtype=np.float64).reshape(-1, 3))
    ca, cb, cg = np.cos(a).T
    sa, sb, sg = np.sin(a).T
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    m = np.empty((a.shape[0], 3, 3))
    m[:, 0, 0] = cg * cc - sg * sa
    m[:, 0, 1] = cg * cs + sg * ca
    m[:, 0, 2] = -cg * sb
    m[:, 1, 0] = -sg * cc - cg * sa
    m[:, 1, 1] = -sg * cs + cg * ca
    m[:, 1, 2] = sg * sb
    m[:, 2, 0] = sc
    m[:, 2, 1] = ss
    m[:, 2, 2] = cb
    return m


def matrix_to_relion_euler(matrices: np.ndarray) -> np.ndarray:
    """RELION's ``Euler_matrix2angles``: ``(n, 3, 3)`` ``A`` → ``(n, 3)`` rot, tilt, psi in degrees.

    tilt is in [0, 180]; at tilt 0 or 180 (gimbal lock) rot is 0 and psi carries the rotation, as
    in RELION.
    """
    m = np.asarray(matrices, dtype=np.float64).reshape(-1, 3, 3)
    eps = np.finfo(np.float32).eps  # RELION compares against FLT_EPSILON
    abs_sb = np.hypot(m[:, 0, 2], m[:, 1, 2])
    regular = abs_sb > 16 * eps
    gamma = np.arctan2(m[:, 1, 2], -m[:, 0, 2])
    alpha = np.arctan2(m[:, 2, 1], m[:, 2, 0])
    sin_g = np.sin(gamma)
    with np.errstate(divide="ignore", invalid="ignore"):
        sign_sb = np.where(
            np.abs(sin_g) < eps,
            np.sign(-m[:, 0, 2] / np.cos(gamma)),
            np.where(sin_g > 0, np.sign(m[:, 1, 2]), -np.sign(m[:, 1, 2])),
        )
    beta = np.arctan2(sign_sb * abs_sb, m[:, 2, 2])
    # Gimbal lock: only rot + psi (tilt 0) or psi - rot (tilt 180) is defined.
    up = m[:, 2, 2] > 0
    alpha = np.where(regular, alpha, 0.0)
    beta = np.where(regular, beta, np.where(up, 0.0, np.pi))
    gamma = np.where(
        regular, gamma, np.where(up, np.arctan2(-m[:, 1, 0], m[:, 0, 0]), np.arctan2(m[:, 1, 0], -m[:, 0, 0]))
    )
    return np.rad2deg(np.stack([alpha, beta, gamma], axis=1))


def rotvec_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """Standard Rodrigues matrix ``(n, 3, 3)`` of rotation vectors ``(n, 3)`` (radians).

    Written out element by element rather than through scipy's ``Rotation``, whose result was
    seen to differ in the last bits between two calls on the same poses: a .cs round trip must
    give the same Euler angles every time, or unchanged poses look edited and are rewritten.
    """
    r = np.asarray(rotvec, dtype=np.float64).reshape(-1, 3)
    theta2 = (r * r).sum(axis=1)
    theta = np.sqrt(theta2)
    small = theta < 1e-6
    safe = np.where(small, 1.0, theta)
    a = np.where(small, 1.0 - theta2 / 6.0, np.sin(safe) / safe)  # sin θ / θ
    b = np.where(small, 0.5 - theta2 / 24.0, (1.0 - np.cos(safe)) / (safe * safe))  # (1 − cos θ) / θ²
    x, y, z = r.T
    m = np.empty((r.shape[0], 3, 3))
    m[:, 0, 0] = 1.0 - b * (y * y + z * z)
    m[:, 0, 1] = b * x * y - a * z
    m[:, 0, 2] = b * x * z + a * y
    m[:, 1, 0] = b * x * y + a * z
    m[:, 1, 1] = 1.0 - b * (x * x + z * z)
    m[:, 1, 2] = b * y * z - a * x
    m[:, 2, 0] = b * x * z - a * y
    m[:, 2, 1] = b * y * z + a * x
    m[:, 2, 2] = 1.0 - b * (x * x + y * y)
    return m


def matrix_to_rotvec(matrices: np.ndarray) -> np.ndarray:
    """Rotation vectors ``(n, 3)`` (radians, angle in [0, π]) of rotation matrices ``(n, 3, 3)``."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(np.asarray(matrices, dtype=np.float64).reshape(-1, 3, 3)).as_rotvec()


def cs_pose_to_relion_euler(pose: np.ndarray) -> np.ndarray:
    """cryoSPARC ``alignments3D/pose`` ``(n, 3)`` → RELION rot, tilt, psi ``(n, 3)`` in degrees."""
    return matrix_to_relion_euler(rotvec_to_matrix(pose).transpose(0, 2, 1))


def relion_euler_to_cs_pose(angles_deg: np.ndarray) -> np.ndarray:
    """RELION rot, tilt, psi ``(n, 3)`` in degrees → cryoSPARC ``alignments3D/pose`` ``(n, 3)``."""
    return matrix_to_rotvec(relion_euler_to_matrix(angles_deg).transpose(0, 2, 1))


# --------------------------------------------------------------------------------------------
# Image names
# --------------------------------------------------------------------------------------------
def split_image_names(names: pd.Series | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``N@path`` strings → ``(paths (object array), 0-based indices (int64))``.

    A name without ``@`` is a single-image file (index 0). Raises ``ValueError`` naming the
    first malformed entry.
    """
    s = pd.Series(np.asarray(names, dtype=object), dtype=object)
    parts = s.str.partition("@")
    has_at = (parts[1] == "@").to_numpy()
    paths = np.where(has_at, parts[2].to_numpy(dtype=object), parts[0].to_numpy(dtype=object))
    idx = pd.to_numeric(parts[0].where(has_at, "1"), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(idx) | (idx < 1) | (idx != np.floor(idx))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"particle {i + 1}: image name {s.iloc[i]!r} is not N@stack with N >= 1")
    return paths, idx.astype(np.int64) - 1


def join_image_names(paths: np.ndarray, index0: np.ndarray) -> np.ndarray:
    """``(paths, 0-based indices)`` → RELION ``000001@path`` strings (object array)."""
    numbers = pd.Series(np.asarray(index0, dtype=np.int64) + 1).astype(str).str.zfill(6)
    return (numbers + "@" + pd.Series(np.asarray(paths, dtype=object), dtype=object)).to_numpy(dtype=object)


# --------------------------------------------------------------------------------------------
# Field mapping: each group converts a set of cs fields to RELION columns and back
# --------------------------------------------------------------------------------------------
Getter = Callable[[str], np.ndarray]


@dataclass(frozen=True)
class FieldGroup:
    """cs fields ↔ RELION columns, converted together (e.g. ``pose`` ↔ three Euler angles)."""

    cs_fields: tuple[str, ...]
    star_columns: tuple[str, ...]
    to_star: Callable[[Dataset], dict[str, np.ndarray]]
    to_cs: Callable[[Getter], dict[str, np.ndarray]]
    #: cs fields (name, dtype, shape) the group writes.
    cs_dtypes: tuple[tuple, ...]
    #: Written for a new .cs only when its RELION columns exist (otherwise always written).
    optional: bool = True
    #: Written to a .cs that lacks it. ``location/micrograph_path`` is not: cryoSPARC's
    #: ``location/`` fields go together (micrograph uid, shape, fractional centre).
    adds_to_cs: bool = True


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _scalar(
    cs_field: str, column: str, *, scale: float = 1.0, offset: float = 0.0, dtype: str = "<f4", optional: bool = True
) -> FieldGroup:
    """One cs field ↔ one RELION column, ``column = cs × scale + offset``."""
    integer = dtype.lstrip("<|").startswith("u")

    def to_star(ds: Dataset) -> dict[str, np.ndarray]:
        values = np.asarray(ds[cs_field])
        if integer:
            return {column: values.astype(np.int64) + int(offset)}
        return {column: _f64(values) * scale + offset}

    def to_cs(get: Getter) -> dict[str, np.ndarray]:
        values = get(column)
        if integer:
            return {cs_field: (np.asarray(values).astype(np.int64) - int(offset)).astype(dtype)}
        return {cs_field: ((_f64(values) - offset) / scale).astype(dtype)}

    return FieldGroup((cs_field,), (column,), to_star, to_cs, ((cs_field, dtype),), optional)


def _image_group() -> FieldGroup:
    def to_star(ds: Dataset) -> dict[str, np.ndarray]:
        paths = pd.Series(np.asarray(ds["blob/path"], dtype=object), dtype=object).str.removeprefix(">")
        return {"rlnImageName": join_image_names(paths.to_numpy(dtype=object), np.asarray(ds["blob/idx"]))}

    def to_cs(get: Getter) -> dict[str, np.ndarray]:
        paths, idx = split_image_names(get("rlnImageName"))
        return {"blob/path": paths, "blob/idx": idx.astype("<u4")}

    return FieldGroup(
        ("blob/path", "blob/idx"), ("rlnImageName",), to_star, to_cs, (("blob/path", "O"), ("blob/idx", "<u4"))
    )


def _box_group() -> FieldGroup:
    def to_star(ds: Dataset) -> dict[str, np.ndarray]:
        return {"rlnImageSize": np.asarray(ds["blob/shape"])[:, -1].astype(np.int64)}

    def to_cs(get: Getter) -> dict[str, np.ndarray]:
        box = np.asarray(get("rlnImageSize")).astype("<u4")
        return {"blob/shape": np.stack([box, box], axis=1)}

    return FieldGroup(("blob/shape",), ("rlnImageSize",), to_star, to_cs, (("blob/shape", "<u4", (2,)),), False)


def _pose_group(prefix: str) -> FieldGroup:
    field = f"{prefix}/pose"
    columns = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")

    def to_star(ds: Dataset) -> dict[str, np.ndarray]:
        angles = cs_pose_to_relion_euler(np.asarray(ds[field]))
        return dict(zip(columns, angles.T))

    def to_cs(get: Getter) -> dict[str, np.ndarray]:
        angles = np.stack([_f64(get(c)) for c in columns], axis=1)
        return {field: relion_euler_to_cs_pose(angles).astype("<f4")}

    return FieldGroup((field,), columns, to_star, to_cs, ((field, "<f4", (3,)),))


def _psi_group() -> FieldGroup:
    """2D alignments: ``alignments2D/pose`` is the in-plane angle (radians), RELION's psi (pyem's convention)."""
    field = "alignments2D/pose"

    def to_star(ds: Dataset) -> dict[str, np.ndarray]:
        return {"rlnAnglePsi": np.rad2deg(_f64(ds[field]))}

    def to_cs(get: Getter) -> dict[str, np.ndarray]:
        return {field: np.deg2rad(_f64(get("rlnAnglePsi"))).astype("<f4")}

    return FieldGroup((field,), ("rlnAnglePsi",), to_star, to_cs, ((field, "<f4"),))


def _shift_group(prefix: str) -> FieldGroup:
    shift, psize = f"{prefix}/shift", f"{prefix}/psize_A"
    columns = ("rlnOriginXAngst", "rlnOriginYAngst")

    def to_star(ds: Dataset) -> dict[str, np.ndarray]:
        # Shifts are in pixels of the alignment's own pixel size (pyem#125), same sign as RELION.
        px = _f64(ds[psize]) if psize in ds else _f64(ds["blob/psize_A"])
        s = _f64(ds[shift]) * px[:, None]
        return {columns[0]: s[:, 0], columns[1]: s[:, 1]}

    def to_cs(get: Getter) -> dict[str, np.ndarray]:
        px = _f64(get("rlnImagePixelSize"))
        s = np.stack([_f64(get(c)) for c in columns], axis=1) / px[:, None]
        return {shift: s.astype("<f4"), psize: px.astype("<f4")}

    return FieldGroup((shift,), columns, to_star, to_cs, ((shift, "<f4", (2,)), (psize, "<f4")))


def _string_group(cs_field: str, column: str) -> FieldGroup:
    def to_star(ds: Dataset) -> dict[str, np.ndarray]:
        return {column: np.asarray(ds[cs_field], dtype=object)}

    def to_cs(get: Getter) -> dict[str, np.ndarray]:
        return {cs_field: np.asarray(get(column)).astype(str).astype(object)}

    return FieldGroup((cs_field,), (column,), to_star, to_cs, ((cs_field, "O"),), adds_to_cs=False)


#: The conversions, in order. Where two groups give the same RELION column (3D and 2D
#: alignments both give ``rlnAnglePsi``), the earlier one wins.
FIELD_GROUPS: tuple[FieldGroup, ...] = (
    _image_group(),
    _string_group("location/micrograph_path", "rlnMicrographName"),
    _scalar("ctf/exp_group_id", "rlnOpticsGroup", offset=1, dtype="<u4", optional=False),
    _scalar("ctf/df1_A", "rlnDefocusU"),
    _scalar("ctf/df2_A", "rlnDefocusV"),
    _scalar("ctf/df_angle_rad", "rlnDefocusAngle", scale=180 / np.pi),
    _scalar("ctf/phase_shift_rad", "rlnPhaseShift", scale=180 / np.pi, optional=False),
    _scalar("ctf/bfactor", "rlnCtfBfactor", optional=False),
    _scalar("ctf/scale", "rlnCtfScalefactor", optional=False),
    _scalar("ctf/accel_kv", "rlnVoltage"),
    _scalar("ctf/cs_mm", "rlnSphericalAberration"),
    _scalar("ctf/amp_contrast", "rlnAmplitudeContrast"),
    _scalar("blob/psize_A", "rlnImagePixelSize", optional=False),
    _box_group(),
    _pose_group("alignments3D"),
    _shift_group("alignments3D"),
    _scalar("alignments3D/class", "rlnClassNumber", offset=1, dtype="<u4"),
    _scalar("alignments3D/split", "rlnRandomSubset", offset=1, dtype="<u4"),
    _psi_group(),
    _shift_group("alignments2D"),
    _scalar("alignments2D/class", "rlnClassNumber", offset=1, dtype="<u4"),
)

#: Defaults for the cs fields a new ``.cs`` needs that RELION does not carry (values from the
#: EMPIAR-10076 file cryoSPARC's import wrote: dark-on-light images, ``blob/sign = -1``).
_NEW_CS_DEFAULTS: tuple[tuple[str, str, tuple, object], ...] = (
    ("blob/sign", "<f4", (), -1.0),
    ("ctf/type", "O", (), "imported"),
    ("ctf/scale_const", "<f4", (), 0.0),
    ("ctf/shift_A", "<f4", (2,), 0.0),
    ("ctf/tilt_A", "<f4", (2,), 0.0),
    ("ctf/trefoil_A", "<f4", (2,), 0.0),
    ("ctf/tetra_A", "<f4", (4,), 0.0),
    ("ctf/anisomag", "<f4", (4,), 0.0),
)


def _present_groups(ds: Dataset) -> list[FieldGroup]:
    """The groups whose cs fields ``ds`` holds, first owner of each RELION column only."""
    fields, taken, out = set(ds.fields()), set[str](), list[FieldGroup]()
    for group in FIELD_GROUPS:
        if all(f in fields for f in group.cs_fields) and not taken.intersection(group.star_columns):
            out.append(group)
            taken.update(group.star_columns)
    return out


def cs_to_star_columns(ds: Dataset) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """RELION ``(particles, optics)`` tables for a cryoSPARC dataset (one row per cs row).

    Optics groups are the distinct combinations of ``ctf/exp_group_id`` and the optics-level
    values (voltage, Cs, amplitude contrast, pixel size, box); ``rlnOpticsGroup`` is
    ``exp_group_id + 1`` when every exposure group has one set of values, else they are
    numbered 1, 2, ... in order of first appearance. ``optics`` is ``None`` when the dataset has
    none of those fields.
    """
    columns: dict[str, np.ndarray] = {}
    for group in _present_groups(ds):
        columns.update(group.to_star(ds))
    n = len(ds)
    optics_cols = [c for c in OPTICS_COLUMNS if c in columns]
    if not optics_cols:
        columns.pop("rlnOpticsGroup", None)
        return pd.DataFrame(columns, index=pd.RangeIndex(n)), None

    exp = columns.get("rlnOpticsGroup", np.ones(n, dtype=np.int64))
    key = pd.DataFrame({"g": exp, **{c: columns.pop(c) for c in optics_cols}})
    combos = key.drop_duplicates(ignore_index=True)
    group_of = key.merge(combos.reset_index(), how="left", on=list(key.columns), sort=False)["index"].to_numpy()
    if combos["g"].is_unique:
        numbers = combos["g"].to_numpy(dtype=np.int64)
    else:
        numbers = np.arange(1, len(combos) + 1, dtype=np.int64)
    columns["rlnOpticsGroup"] = numbers[group_of]
    optics = pd.DataFrame({"rlnOpticsGroup": numbers, "rlnOpticsGroupName": [f"opticsGroup{g}" for g in numbers]})
    for c in optics_cols:
        # One value per group; float32 cs values written as their shortest decimal (2.7, not 2.70000005).
        values = combos[c].to_numpy()
        optics[c] = (
            values.astype(np.int64) if c == "rlnImageSize" else np.float32(values).astype(str).astype(np.float64)
        )
    optics["rlnImageDimensionality"] = 2
    particles = pd.DataFrame(columns, index=pd.RangeIndex(n))
    order = ["rlnImageName", "rlnMicrographName", "rlnOpticsGroup"]
    particles = particles[[c for c in order if c in particles] + [c for c in particles if c not in order]]
    return particles, optics


def star_to_cs_fields(
    get: Getter, n: int, available: set[str], *, base: Dataset | None = None, base_get: Getter | None = None
) -> Dataset:
    """A cryoSPARC dataset from per-particle RELION values.

    ``get(column)`` returns a column's ``(n,)`` values (particle table or optics group), and
    ``available`` names the columns ``get`` can give. With ``base`` (the dataset the particles were
    read from, same rows) and ``base_get`` (the same getter over ``cs_to_star_columns(base)``),
    every field of ``base`` is kept bit for bit, uid included, unless the RELION columns it
    converts to differ from ``base_get``'s (edited since reading); then it is rewritten from them.
    Without ``base`` the dataset gets new uids, every convertible column and cryoSPARC's defaults
    for import (``blob/sign = -1``, zero higher-order aberrations).
    """
    if base is not None:
        if len(base) != n or base_get is None:
            raise ValueError(f"need base_get and a cryoSPARC dataset of {n} rows, got {len(base)} rows")
        ds = base.copy()
        present = _present_groups(base)
        taken = {c for g in present for c in g.star_columns}
        for group in present:
            if not all(c in available for c in group.star_columns):
                continue  # dropped from the table: keep the original fields
            if all(_same(base_get(c), get(c)) for c in group.star_columns):
                continue
            _assign(ds, group.to_cs(get), group)
        new_groups = [g for g in FIELD_GROUPS if g not in present and not taken.intersection(g.star_columns)]
    else:
        ds = Dataset.allocate(n, [])
        new_groups, taken = list(FIELD_GROUPS), set[str]()
    # RELION columns a .cs does not hold yet (a STAR file, or poses added to an unaligned set).
    for group in new_groups:
        if taken.intersection(group.star_columns) or not group.adds_to_cs:
            continue
        # A new .cs gets every required group (defaults where RELION has no column); a .cs that
        # was read gets only what the table has gained since.
        if (group.optional or base is not None) and not all(c in available for c in group.star_columns):
            continue
        taken.update(group.star_columns)
        _assign(ds, group.to_cs(get), group)
    if base is None:
        for name, dtype, shape, value in _NEW_CS_DEFAULTS:
            ds.add_fields([(name, dtype, shape)] if shape else [(name, dtype)])
            if dtype == "O":
                ds[name] = np.full(n, value, dtype=object)
            else:
                ds[name][...] = value
    return ds


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "fiu" and b.dtype.kind in "fiu":
        # Not bit-exact: values derived again from the file (e.g. Euler angles from poses) can
        # differ in the last bits with the BLAS kernel or thread count; an edit is far larger.
        return bool(np.allclose(a.astype(np.float64), b.astype(np.float64), rtol=1e-9, atol=1e-9, equal_nan=True))
    return bool(np.array_equal(a.astype(str), b.astype(str)))


def _assign(ds: Dataset, values: dict[str, np.ndarray], group: FieldGroup) -> None:
    specs = {spec[0]: spec for spec in group.cs_dtypes}
    for name, array in values.items():
        if name not in ds:
            ds.add_fields([specs[name]])
        ds[name] = array


# --------------------------------------------------------------------------------------------
# Loading: .cs, with the passthrough files a sibling .csg names
# --------------------------------------------------------------------------------------------
_CSG_METAFILE = re.compile(r"^\s*metafile:\s*['\"]?([^'\"\r\n]+?)['\"]?\s*$", re.MULTILINE)


def csg_metafiles(csg: Path) -> list[Path]:
    """The ``.cs`` files a ``.csg`` result group names (``>name`` is relative to the ``.csg`` folder)."""
    try:
        text = csg.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(csg, f"cannot read the .csg file ({exc})") from None
    out: list[Path] = []
    for name in _CSG_METAFILE.findall(text):
        path = Path(name.removeprefix(">"))
        path = path if path.is_absolute() else csg.parent / path
        if path not in out:
            out.append(path)
    if not out:
        raise InputError(csg, "no 'metafile:' entries: not a cryoSPARC result group (.csg)")
    return out


def _load_one(path: Path) -> Dataset:
    if not path.is_file():
        raise InputError(path, "file not found" if not path.exists() else "not a regular file")
    try:
        ds = Dataset.load(path)
    except Exception as exc:
        raise InputError(path, f"not a readable cryoSPARC .cs file ({type(exc).__name__}: {exc})") from None
    if "uid" not in ds.fields():
        raise InputError(path, "no uid field: not a cryoSPARC particle file")
    return ds


def load_cs(path: Path) -> tuple[Dataset, list[Path]]:
    """A ``.cs`` (or every ``.cs`` a ``.csg`` names, joined on uid) as one dataset.

    Reading a ``.cs`` also joins in the fields of the other files named by a sibling ``.csg``
    that lists it (cryoSPARC keeps e.g. ``blob/`` and ``ctf/`` in a passthrough file), those that
    exist. Rows keep the order of the first file; a field in several files is taken from the
    first. Returns the dataset and the files it came from.
    """
    path = Path(path)
    if path.suffix == ".csg":
        files = csg_metafiles(path)
    else:
        files = [path]
        for csg in sorted(path.parent.glob("*.csg")):
            try:
                named = csg_metafiles(csg)
            except InputError:
                continue
            if any(p.resolve() == path.resolve() for p in named if p.exists()):
                # Only what is there: a .cs read on its own must not fail for a missing passthrough.
                files += [p for p in named if p.exists() and p.resolve() != path.resolve()]
                break
    ds = _load_one(files[0])
    for other_path in files[1:]:
        other = _load_one(other_path)
        new = [f for f in other.fields() if f not in ds.fields()]
        if not new:
            continue
        uid, ouid = np.asarray(ds["uid"]), np.asarray(other["uid"])
        order = np.argsort(ouid, kind="stable")
        pos = np.searchsorted(ouid, uid, sorter=order).clip(0, len(ouid) - 1)
        rows = order[pos]
        missing = ouid[rows] != uid
        if missing.any():
            raise InputError(
                other_path,
                f"{int(missing.sum())} particles of {files[0].name} (uid "
                f"{int(uid[missing][0])}, ...) are missing from this file",
            )
        sub = other.take(rows)
        for f in new:
            spec = next(d for d in sub.descr() if d[0] == f)
            ds.add_fields([spec])
            ds[f] = sub[f]
    return ds, files
