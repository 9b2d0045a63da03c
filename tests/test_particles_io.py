"""Particle sets: real RELION STAR and cryoSPARC .cs files, round trips, STAR ⇄ .cs, images, bad input."""

from __future__ import annotations

import os
import shutil
import tracemalloc
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from cryosparc.dataset import Dataset
from scipy.spatial.transform import Rotation

from cryostack.errors import InputError
from cryostack.io.cs import (
    cs_pose_to_relion_euler,
    matrix_to_relion_euler,
    relion_euler_to_cs_pose,
    relion_euler_to_matrix,
)
from cryostack.io.particles import ParticleSet, read_particles, write_cs, write_mrcs, write_star
from cryostack.io.star import read_star_blocks, write_star_blocks

# ---------------------------------------------------------------------------------------------
# Real data (../shared/data/particles, read-only)
# ---------------------------------------------------------------------------------------------
R31 = "particles/cryodrgn_relion31_5ptcl/relion31.star"
R31_V2 = "particles/cryodrgn_relion31_5ptcl/relion31.v2.star"  # data_particles before data_optics
R31_6OG = "particles/cryodrgn_relion31_5ptcl/relion31.6opticsgroups.star"
R31_STACK = "particles/cryodrgn_relion31_5ptcl/relion31.mrcs"
R5 = "particles/cryodrgn_cryosparc_metadata/relion5.star"
PFCRT = "particles/cryodrgn_cryosparc_metadata/FinalRefinement-OriginalParticles-PfCRT.star"  # RELION 3.0.6
CS_J24 = "particles/cryodrgn_cryosparc_metadata/cryosparc_P12_J24_001_particles.cs"  # 3D alignments
CS_J2 = "particles/cryodrgn_cryosparc_metadata/cryosparc_J2_particles_exported.cs"  # 2D alignments
E10076_STAR = "particles/cryodrgn_empiar10076_7ptcl/empiar_10076_7.star"  # RELION 3.0, no optics
E10076_CS = "particles/cryodrgn_empiar10076_7ptcl/empiar_10076_7.cs"
E10076_STACK = "particles/cryodrgn_empiar10076_7ptcl/empiar_10076_7.mrc"
ASPIRE = "particles/aspire_sample_17ptcl/sample_particles_relion31.star"
ASPIRE_STACK = "particles/aspire_sample_17ptcl/sample.mrcs"

# file: (particles, pixel size Å, box px, optics groups or None for RELION 3.0)
EXPECTED = {
    R31: (5, 2.806, 256, 1),
    R31_V2: (5, 2.806, 256, 1),
    R31_6OG: (139, None, 196, 6),
    R5: (17, 0.89, 448, 1),
    PFCRT: (5, 1.035, None, None),
    CS_J24: (2019, 2.95, 180, 1),
    CS_J2: (22, 1.345, 300, 1),
    E10076_STAR: (7, 5 * 1e4 / 38168, 320, None),
    E10076_CS: (7, 5 * 1e4 / 38168, 320, 1),
    ASPIRE: (17, 1.4, 200, 2),
}
STARS = [R31, R31_V2, R31_6OG, R5, PFCRT, E10076_STAR, ASPIRE]
CSS = [CS_J24, CS_J2, E10076_CS]
WITH_IMAGES = {
    R31: R31_STACK,
    R31_V2: R31_STACK,
    E10076_STAR: E10076_STACK,
    E10076_CS: E10076_STACK,
    ASPIRE: ASPIRE_STACK,
}


def _ids(paths):
    return [Path(p).name for p in paths]


def _read_stack(path: Path) -> np.ndarray:
    """The whole stack, read by mrcfile (the cryodrgn stacks have no MAP ID or machine stamp)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.open(path, permissive=True) as mrc:
            return np.array(mrc.data, dtype=np.float32)


def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def _cs_arrays(path: Path) -> dict[str, np.ndarray]:
    ds = Dataset.load(path)
    return {f: np.asarray(ds[f]) for f in ds.fields()}


def _assert_same_cs(a: dict[str, np.ndarray], b: dict[str, np.ndarray], skip=()):
    assert list(a) == list(b)
    for f in a:
        if f in skip:
            continue
        assert a[f].dtype == b[f].dtype, f
        assert np.array_equal(a[f], b[f]), f


@pytest.mark.parametrize("rel", list(EXPECTED), ids=_ids(EXPECTED))
def test_read_every_real_file(rel, shared_file):
    n, psize, box, groups = EXPECTED[rel]
    pset = read_particles(shared_file(rel))
    assert len(pset) == n
    assert pset.root == shared_file(rel).parent
    if psize is not None:
        np.testing.assert_allclose(pset.pixel_size_A, psize, rtol=1e-6)
    if box is not None:
        assert pset.box_px == box
    assert (pset.optics is None) == (groups is None)
    if groups is not None:
        assert len(pset.optics) == groups
    if rel.endswith(".cs"):
        assert len(pset.cs_dataset) == n


def test_six_optics_groups_give_each_particle_its_pixel_size(shared_file):
    pset = read_particles(shared_file(R31_6OG))
    raw = starfile.read(shared_file(R31_6OG))
    by_group = dict(zip(raw["optics"]["rlnOpticsGroup"], raw["optics"]["rlnImagePixelSize"]))
    expected = raw["particles"]["rlnOpticsGroup"].map(by_group).to_numpy()
    np.testing.assert_array_equal(pset.pixel_size_A, expected)
    assert set(np.unique(pset.pixel_size_A)) == {1.24, 1.25}
    np.testing.assert_array_equal(pset.column("rlnSphericalAberration")[:1], [2.7])


def test_relion30_pixel_size_and_pixel_origins(shared_file):
    pset = read_particles(shared_file(PFCRT))
    raw = starfile.read(shared_file(PFCRT))
    np.testing.assert_allclose(pset.pixel_size_A, raw["rlnDetectorPixelSize"] * 1e4 / raw["rlnMagnification"])
    np.testing.assert_allclose(pset.shifts_A()[:, 0], raw["rlnOriginX"] * 1.035)
    np.testing.assert_array_equal(pset.euler_angles_deg()[:, 2], raw["rlnAnglePsi"])


# ---------------------------------------------------------------------------------------------
# STAR parsing: the fast path gives starfile's DataFrames
# ---------------------------------------------------------------------------------------------
def _assert_same_blocks(a: dict, b: dict):
    assert list(a) == list(b)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True)


@pytest.mark.parametrize("rel", STARS, ids=_ids(STARS))
def test_fast_star_parser_equals_starfile(rel, shared_file):
    path = shared_file(rel)
    _assert_same_blocks(read_star_blocks(path, fast=True), starfile.read(path, always_dict=True))


def test_fast_star_parser_on_awkward_synthetic_file(tmp_path):
    text = """
# version 30001

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnImagePixelSize #3
1 opticsGroup1 1.06
   2   "optics group 2"  1.1

# version 30001
data_particles
# a comment before loop_
loop_
_rlnImageName #1
_rlnDefocusU #2
_rlnClassNumber #3
_rlnNote #4
_rlnEmpty #5


000001@stacks/a.mrcs   12000.5  1 x nan
  000002@stacks/a.mrcs 1.2e+04  2 y nan
# a comment in the rows
000003@stacks/b.mrcs   <NA>     3 "z w" nan

data_empty
loop_
_rlnA #1
_rlnB #2

"""
    path = tmp_path / "awkward.star"
    path.write_text(text)
    fast = read_star_blocks(path, fast=True)
    _assert_same_blocks(fast, starfile.read(path, always_dict=True))
    assert fast["particles"]["rlnNote"].tolist() == ["x", "y", "z w"]
    assert fast["optics"]["rlnOpticsGroupName"].tolist() == ["opticsGroup1", "optics group 2"]


def test_written_star_reads_back_identically_both_ways(shared_file, tmp_path):
    blocks = starfile.read(shared_file(R31_6OG), always_dict=True)
    blocks["particles"]["rlnNote"] = ["has space"] + ["plain"] * (len(blocks["particles"]) - 1)
    blocks["particles"]["rlnTiny"] = 1e-20
    path = tmp_path / "out.star"
    write_star_blocks(blocks, path)
    _assert_same_blocks(starfile.read(path, always_dict=True), blocks)
    _assert_same_blocks(read_star_blocks(path, fast=True), blocks)


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------
RELION31 = [R31, R31_V2, R31_6OG, R5, ASPIRE]


@pytest.mark.parametrize("rel", RELION31, ids=_ids(RELION31))
def test_star_round_trip_keeps_every_column_and_the_optics_table(rel, shared_file, tmp_path):
    pset = read_particles(shared_file(rel))
    out = write_star(pset, tmp_path / "out.star", image_paths="keep")
    back = read_particles(out)
    raw = starfile.read(shared_file(rel), always_dict=True)
    pd.testing.assert_frame_equal(back.particles, raw["particles"], check_exact=True)
    pd.testing.assert_frame_equal(back.optics, raw["optics"], check_exact=True)


def test_star_round_trip_rebases_image_paths_for_another_folder(shared_file, tmp_path, monkeypatch):
    pset = read_particles(shared_file(R31))
    out = write_star(pset, tmp_path / "sub" / "out.star")
    monkeypatch.chdir(shared_file(R31).parents[2])  # somewhere else entirely
    back = read_particles(out)
    assert back.particles["rlnImageName"][0].startswith("000001@../")
    np.testing.assert_array_equal(back.images(), pset.images())
    columns = [c for c in pset.particles.columns if c != "rlnImageName"]
    pd.testing.assert_frame_equal(back.particles[columns], pset.particles[columns], check_exact=True)


def test_relion30_star_is_written_in_the_relion31_layout(shared_file, tmp_path):
    pset = read_particles(shared_file(PFCRT))
    back = read_particles(write_star(pset, tmp_path / "out.star"))
    assert back.optics is not None and len(back.optics) == 1
    assert {"rlnVoltage", "rlnImagePixelSize", "rlnSphericalAberration"} <= set(back.optics.columns)
    assert not {"rlnOriginX", "rlnMagnification", "rlnDetectorPixelSize", "rlnVoltage"} & set(back.particles.columns)
    np.testing.assert_allclose(back.pixel_size_A, pset.pixel_size_A)
    np.testing.assert_allclose(back.shifts_A(), pset.shifts_A())
    np.testing.assert_array_equal(back.euler_angles_deg(), pset.euler_angles_deg())
    for column in ("rlnImageName", "rlnDefocusU", "rlnImageOriginalName", "rlnRandomSubset"):
        np.testing.assert_array_equal(back.particles[column], pset.particles[column])


@pytest.mark.parametrize("rel", CSS, ids=_ids(CSS))
def test_cs_round_trip_keeps_uid_and_every_field(rel, shared_file, tmp_path):
    pset = read_particles(shared_file(rel))
    out = write_cs(pset, tmp_path / "out.cs", image_paths="keep")
    _assert_same_cs(_cs_arrays(out), _cs_arrays(shared_file(rel)))
    back = read_particles(out)
    pd.testing.assert_frame_equal(back.particles, pset.particles, check_exact=True)
    pd.testing.assert_frame_equal(back.optics, pset.optics, check_exact=True)


def test_cs_round_trip_to_another_folder_rewrites_only_the_image_path(shared_file, tmp_path):
    pset = read_particles(shared_file(E10076_CS))
    out = write_cs(pset, tmp_path / "out.cs")
    written, original = _cs_arrays(out), _cs_arrays(shared_file(E10076_CS))
    _assert_same_cs(written, original, skip=("blob/path",))
    assert written["blob/path"][0] != original["blob/path"][0]
    np.testing.assert_array_equal(read_particles(out).images(), pset.images())


def test_cs_edits_rewrite_only_the_edited_fields(shared_file, tmp_path):
    pset = read_particles(shared_file(CS_J24))
    pset.particles["rlnDefocusU"] += 100.0
    pset.particles["rlnAngleTilt"] = 90.0
    out = write_cs(pset, tmp_path / "edited.cs")
    written, original = _cs_arrays(out), _cs_arrays(shared_file(CS_J24))
    changed = {"ctf/df1_A", "alignments3D/pose"}
    _assert_same_cs(written, original, skip=changed)
    np.testing.assert_allclose(written["ctf/df1_A"], original["ctf/df1_A"] + 100.0, rtol=1e-6)
    back = read_particles(out)
    np.testing.assert_allclose(back.euler_angles_deg()[:, 1], 90.0, atol=1e-4)
    np.testing.assert_allclose(back.euler_angles_deg()[:, [0, 2]], pset.euler_angles_deg()[:, [0, 2]], atol=1e-3)


def test_subset_keeps_the_selected_cs_rows(shared_file, tmp_path):
    pset = read_particles(shared_file(CS_J24)).subset(np.array([5, 0, 2018]))
    written = _cs_arrays(write_cs(pset, tmp_path / "subset.cs"))
    original = _cs_arrays(shared_file(CS_J24))
    for f in original:
        np.testing.assert_array_equal(written[f], original[f][[5, 0, 2018]])


# ---------------------------------------------------------------------------------------------
# STAR ⇄ .cs on the real EMPIAR-10076 pair (same 7 particles; CTF, no poses)
# ---------------------------------------------------------------------------------------------
def test_empiar10076_pair_gives_the_same_particles(shared_file):
    star, cs = read_particles(shared_file(E10076_STAR)), read_particles(shared_file(E10076_CS))
    np.testing.assert_array_equal(
        star.particles["rlnImageName"].str.partition("@")[2], cs.particles["rlnImageName"].str.partition("@")[2]
    )
    np.testing.assert_array_equal(
        star.particles["rlnImageName"].str.partition("@")[0].astype(int),
        cs.particles["rlnImageName"].str.partition("@")[0].astype(int),
    )
    for column in (
        "rlnDefocusU",
        "rlnDefocusV",
        "rlnDefocusAngle",
        "rlnVoltage",
        "rlnSphericalAberration",
        "rlnAmplitudeContrast",
    ):
        np.testing.assert_allclose(cs.column(column), star.column(column), rtol=1e-6, atol=1e-5, err_msg=column)
    np.testing.assert_allclose(cs.pixel_size_A, star.pixel_size_A, rtol=1e-6)
    np.testing.assert_allclose(cs.shifts_A(), star.shifts_A())  # both zero: neither file has origins
    assert cs.box_px == star.box_px == 320
    np.testing.assert_array_equal(cs.images(), star.images())


def test_empiar10076_star_converts_to_the_real_cs(shared_file, tmp_path):
    out = write_cs(read_particles(shared_file(E10076_STAR)), tmp_path / "from_star.cs", image_paths="keep")
    ours, real = _cs_arrays(out), _cs_arrays(shared_file(E10076_CS))
    # cryoSPARC's import also wrote an import signature; uid and exposure-group id are arbitrary.
    assert set(real) - set(ours) == {"blob/import_sig"} and set(ours) <= set(real)
    for f in set(ours) - {"uid", "ctf/exp_group_id"}:
        assert ours[f].dtype == real[f].dtype, f
        np.testing.assert_array_equal(ours[f], real[f], err_msg=f)  # float32 bit for bit


def test_empiar10076_cs_converts_to_the_real_star(shared_file, tmp_path):
    back = read_particles(write_star(read_particles(shared_file(E10076_CS)), tmp_path / "from_cs.star"))
    real = read_particles(shared_file(E10076_STAR))
    for column in (
        "rlnDefocusU",
        "rlnDefocusV",
        "rlnDefocusAngle",
        "rlnVoltage",
        "rlnSphericalAberration",
        "rlnAmplitudeContrast",
    ):
        np.testing.assert_allclose(back.column(column), real.column(column), rtol=1e-6, atol=1e-5, err_msg=column)
    np.testing.assert_allclose(back.pixel_size_A, real.pixel_size_A, rtol=1e-6)
    np.testing.assert_array_equal(back.images(), real.images())


# ---------------------------------------------------------------------------------------------
# Pose conventions
# ---------------------------------------------------------------------------------------------
def _random_angles(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack(
        [rng.uniform(-180, 180, n), np.rad2deg(np.arccos(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)], axis=1
    )


def test_relion_matrix_is_the_transposed_intrinsic_zyz_rotation():
    angles = _random_angles(500)
    expected = Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix().transpose(0, 2, 1)
    np.testing.assert_allclose(relion_euler_to_matrix(angles), expected, atol=1e-12)
    # RELION's projection direction is the third row: (sin tilt cos rot, sin tilt sin rot, cos tilt).
    rot, tilt = np.deg2rad(angles[:, 0]), np.deg2rad(angles[:, 1])
    view = np.stack([np.sin(tilt) * np.cos(rot), np.sin(tilt) * np.sin(rot), np.cos(tilt)], axis=1)
    np.testing.assert_allclose(relion_euler_to_matrix(angles)[:, 2], view, atol=1e-12)


def test_relion_euler_round_trip_including_gimbal_lock():
    angles = np.concatenate([_random_angles(500), [[0, 0, 30], [40, 0, -10], [25, 180, 70], [0, 90, 0]]])
    back = matrix_to_relion_euler(relion_euler_to_matrix(angles))
    np.testing.assert_allclose(relion_euler_to_matrix(back), relion_euler_to_matrix(angles), atol=1e-12)
    assert np.all((back[:, 1] >= 0) & (back[:, 1] <= 180))
    np.testing.assert_allclose(back[-4:], [[0, 0, 30], [0, 0, 30], [0, 180, 45], [0, 90, 0]], atol=1e-9)


def test_cs_pose_is_the_rotation_vector_of_the_transposed_relion_matrix():
    angles = _random_angles(300, seed=1)
    pose = relion_euler_to_cs_pose(angles)
    rodrigues = Rotation.from_rotvec(pose).as_matrix()
    np.testing.assert_allclose(rodrigues.transpose(0, 2, 1), relion_euler_to_matrix(angles), atol=1e-12)
    np.testing.assert_allclose(
        relion_euler_to_matrix(cs_pose_to_relion_euler(pose)), relion_euler_to_matrix(angles), atol=1e-12
    )
    # Simple cases by hand: a rotation about z by θ is rot + psi = θ; about y by θ is tilt θ;
    # about x by θ is (rot, tilt, psi) = (-90, θ, 90).
    theta = np.deg2rad(30)
    np.testing.assert_allclose(cs_pose_to_relion_euler([[0, 0, theta]]), [[0, 0, 30]], atol=1e-9)
    np.testing.assert_allclose(cs_pose_to_relion_euler([[0, theta, 0]]), [[0, 30, 0]], atol=1e-9)
    np.testing.assert_allclose(cs_pose_to_relion_euler([[theta, 0, 0]]), [[-90, 30, 90]], atol=1e-9)


def test_cs_poses_and_shifts_survive_star_and_back(shared_file, tmp_path):
    cs = read_particles(shared_file(CS_J24))
    raw = cs.cs_dataset
    star = read_particles(write_star(cs, tmp_path / "j24.star"))
    # In the STAR: A = R(pose)ᵀ and origin (Å) = shift (px) × alignments3D/psize_A.
    expected = Rotation.from_rotvec(np.asarray(raw["alignments3D/pose"], dtype=np.float64)).as_matrix()
    np.testing.assert_allclose(star.rotation_matrices(), expected.transpose(0, 2, 1), atol=1e-6)
    np.testing.assert_allclose(
        star.shifts_A(), np.asarray(raw["alignments3D/shift"], dtype=np.float64) * 2.95, rtol=1e-6, atol=1e-6
    )
    np.testing.assert_array_equal(star.particles["rlnClassNumber"], np.asarray(raw["alignments3D/class"]) + 1)
    np.testing.assert_array_equal(star.particles["rlnRandomSubset"], np.asarray(raw["alignments3D/split"]) + 1)
    # And back to a new .cs (new uids): same rotations, shifts, CTF.
    again = _cs_arrays(write_cs(star, tmp_path / "j24_again.cs"))
    np.testing.assert_allclose(
        Rotation.from_rotvec(again["alignments3D/pose"].astype(np.float64)).as_matrix(), expected, atol=1e-6
    )
    np.testing.assert_allclose(again["alignments3D/shift"], raw["alignments3D/shift"], atol=1e-5)
    for f in ("ctf/df1_A", "ctf/df2_A", "ctf/df_angle_rad", "blob/psize_A", "blob/idx", "blob/shape"):
        np.testing.assert_allclose(again[f], np.asarray(raw[f]), rtol=1e-6, err_msg=f)


def test_cs_2d_alignments_give_psi_origins_and_classes(shared_file):
    pset = read_particles(shared_file(CS_J2))
    raw = pset.cs_dataset
    np.testing.assert_allclose(
        pset.euler_angles_deg()[:, 2], np.rad2deg(np.asarray(raw["alignments2D/pose"], dtype=np.float64))
    )
    np.testing.assert_allclose(
        pset.shifts_A(), np.asarray(raw["alignments2D/shift"], dtype=np.float64) * 1.345, rtol=1e-6
    )
    np.testing.assert_array_equal(pset.particles["rlnClassNumber"], np.asarray(raw["alignments2D/class"]) + 1)


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rel", list(WITH_IMAGES), ids=_ids(WITH_IMAGES))
def test_lazy_images_equal_mrcfile(rel, shared_file):
    pset = read_particles(shared_file(rel))
    full = _read_stack(shared_file(WITH_IMAGES[rel]))
    order = np.array([int(name.split("@")[0]) - 1 for name in pset.particles["rlnImageName"]])
    np.testing.assert_array_equal(pset.images(), full[order])
    pick = np.array([len(pset) - 1, 0, len(pset) - 1])
    np.testing.assert_array_equal(pset.images(pick), full[order[pick]])
    np.testing.assert_array_equal(pset.images(2), full[order[2]])
    mask = np.arange(len(pset)) % 2 == 0
    np.testing.assert_array_equal(pset.images(mask), full[order[mask]])
    batches = list(pset.iter_batches(2))
    np.testing.assert_array_equal(np.concatenate([i for i, _ in batches]), np.arange(len(pset)))
    np.testing.assert_array_equal(np.concatenate([b for _, b in batches]), full[order])
    assert all(b.dtype == np.float32 and b.shape[1:] == (pset.box_px,) * 2 for _, b in batches)
    pset.close()


def test_images_are_read_lazily_from_a_large_sparse_stack(tmp_path):
    n, box = 20_000, 64  # 328 MB on paper, a sparse file on disk
    with mrcfile.new_mmap(tmp_path / "big.mrcs", shape=(n, box, box), mrc_mode=2) as mrc:
        mrc.data[n - 1] = 7.0
    particles = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@big.mrcs" for i in range(n)], "rlnImagePixelSize": 1.0})
    write_star_blocks({"particles": particles}, tmp_path / "big.star")
    tracemalloc.start()
    pset = read_particles(tmp_path / "big.star")
    last = pset.images([n - 1, 0])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.all(last[0] == 7.0) and np.all(last[1] == 0.0)
    assert peak < 50e6, f"{peak / 1e6:.0f} MB traced: the stack was read, not mapped"


def test_relative_image_paths_resolve_from_the_star_folder_not_the_cwd(shared_file, tmp_path, monkeypatch):
    folder = tmp_path / "project" / "Refine3D" / "job001"
    (tmp_path / "project" / "Extract").mkdir(parents=True)
    folder.mkdir(parents=True)
    shutil.copy(shared_file(R31_STACK), folder / "relion31.mrcs")
    shutil.copy(shared_file(R31_STACK), tmp_path / "project" / "Extract" / "p.mrcs")
    raw = starfile.read(shared_file(R31), always_dict=True)
    raw["particles"]["rlnImageName"] = [
        f"{i + 1}@Extract/p.mrcs" if i % 2 else f"{i + 1:06d}@relion31.mrcs" for i in range(len(raw["particles"]))
    ]
    starfile.write(raw, folder / "run_data.star")
    monkeypatch.chdir(tmp_path)
    pset = read_particles(os.path.relpath(folder / "run_data.star"))
    monkeypatch.chdir(shared_file(R31).parent)  # a later change of directory does not matter either
    expected = _read_stack(shared_file(R31_STACK))
    np.testing.assert_array_equal(pset.images(), expected)  # Extract/ found two folders up, as in RELION projects


def test_csg_joins_the_passthrough_fields(shared_file, tmp_path):
    ds = Dataset.load(shared_file(E10076_CS))
    shutil.copy(shared_file(E10076_STACK), tmp_path / "empiar_10076_7.mrc")
    # Dataset.filter_fields works in place: filter copies.
    main = ds.copy().filter_fields([f for f in ds.fields() if not f.startswith("ctf/")])
    main = main.take(np.arange(len(ds))[::-1])  # another row order than the passthrough file
    passthrough = ds.copy().filter_fields([f for f in ds.fields() if not f.startswith("blob/")])
    main.save(tmp_path / "J9_particles.cs")
    passthrough.save(tmp_path / "J9_passthrough_particles.cs")
    (tmp_path / "J9_particles.csg").write_text(
        "created: 2024-01-01 00:00:00\ngroup:\n  name: particles\n  type: particle\nresults:\n"
        "  blob:\n    metafile: '>J9_particles.cs'\n    num_items: 7\n    type: particle.blob\n"
        "  ctf:\n    metafile: '>J9_passthrough_particles.cs'\n    num_items: 7\n    type: particle.ctf\n"
        "version: v4.4.1\n"
    )
    original = read_particles(shared_file(E10076_CS))
    for path in (tmp_path / "J9_particles.csg", tmp_path / "J9_particles.cs"):
        pset = read_particles(path)
        np.testing.assert_array_equal(pset.column("rlnDefocusU"), original.column("rlnDefocusU")[::-1])
        np.testing.assert_array_equal(pset.images(0), original.images(6))
    # The passthrough file alone is joined with the other file its .csg names, in its own row order.
    passthrough_set = read_particles(tmp_path / "J9_passthrough_particles.cs")
    np.testing.assert_array_equal(passthrough_set.images(0), original.images(0))
    assert set(passthrough_set.cs_dataset.fields()) == set(ds.fields())


def test_write_mrcs_round_trip(tmp_path):
    images = np.random.default_rng(0).normal(size=(5, 32, 32)).astype(np.float32)
    out = write_mrcs(tmp_path / "s.mrcs", images, 1.25, chunk=2)
    with mrcfile.open(out) as mrc:
        np.testing.assert_array_equal(mrc.data, images)
        assert mrc.is_image_stack()
        assert float(mrc.voxel_size.x) == pytest.approx(1.25)
        assert float(mrc.header.dmax) == pytest.approx(images.max())
        assert float(mrc.header.rms) == pytest.approx(images.std(), rel=1e-5)
    pset = ParticleSet(pd.DataFrame({"rlnImageName": [f"{i + 1}@s.mrcs" for i in range(5)]}), root=tmp_path)
    np.testing.assert_array_equal(pset.images(), images)
    with pytest.raises(InputError, match="overwrite an input"):
        write_mrcs(out, images, 1.0, protect=(out,))


# ---------------------------------------------------------------------------------------------
# Bad input: one-line InputError naming the file and the problem, nothing written
# ---------------------------------------------------------------------------------------------
def _r31_copy(shared_file, folder: Path, *, stack: bool = True, edit=None) -> Path:
    blocks = starfile.read(shared_file(R31), always_dict=True)
    if edit is not None:
        edit(blocks)
    path = folder / "relion31.star"
    starfile.write(blocks, path)
    if stack:
        shutil.copy(shared_file(R31_STACK), folder / "relion31.mrcs")
    return path


def test_missing_stack(shared_file, tmp_path):
    pset = read_particles(_r31_copy(shared_file, tmp_path, stack=False))
    with pytest.raises(
        InputError, match=r"relion31\.mrcs: image stack not found \(named by particle 1 of relion31\.star"
    ):
        pset.images(0)
    write_cs(pset, tmp_path / "meta_only.cs")  # metadata alone needs no stack (the box is in data_optics)
    # A RELION 3.0 file has no box size: a .cs needs blob/shape, so the stack must be there.
    shutil.copy(shared_file(E10076_STAR), tmp_path / "e.star")
    with pytest.raises(
        InputError, match=r"empiar_10076_7\.mrc: image stack not found \(named by particle 1 of e\.star"
    ):
        write_cs(read_particles(tmp_path / "e.star"), tmp_path / "out.cs")
    assert _listing(tmp_path) == {"relion31.star", "meta_only.cs", "e.star"}


def test_index_beyond_the_end_of_the_stack(shared_file, tmp_path):
    def edit(blocks):
        blocks["particles"].loc[3, "rlnImageName"] = "000009@relion31.mrcs"

    pset = read_particles(_r31_copy(shared_file, tmp_path, edit=edit))
    np.testing.assert_array_equal(pset.images([0, 1]).shape, (2, 256, 256))
    with pytest.raises(
        InputError, match=r"relion31\.mrcs: image 9 is beyond the end of the stack \(5 images; particle 4\)"
    ):
        pset.images()


def test_malformed_image_name(shared_file, tmp_path):
    def edit(blocks):
        blocks["particles"].loc[1, "rlnImageName"] = "0@relion31.mrcs"

    pset = read_particles(_r31_copy(shared_file, tmp_path, edit=edit))
    with pytest.raises(InputError, match=r"relion31\.star: particle 2: image name '0@relion31.mrcs'"):
        pset.images()


def test_particles_with_optics_groups_but_no_optics_table(shared_file, tmp_path):
    blocks = starfile.read(shared_file(R31), always_dict=True)
    starfile.write({"particles": blocks["particles"]}, tmp_path / "no_optics.star")
    with pytest.raises(InputError, match=r"no_optics\.star: particles name optics groups .* no data_optics table"):
        read_particles(tmp_path / "no_optics.star")


def test_unknown_optics_group(shared_file, tmp_path):
    def edit(blocks):
        blocks["particles"].loc[2, "rlnOpticsGroup"] = 7

    with pytest.raises(InputError, match=r"relion31\.star: unknown optics group 7 \(particle 3; data_optics has 1\)"):
        read_particles(_r31_copy(shared_file, tmp_path, edit=edit))


def test_missing_pixel_size_and_nothing_written(shared_file, tmp_path):
    raw = starfile.read(shared_file(PFCRT))
    raw = raw.drop(columns=["rlnDetectorPixelSize", "rlnMagnification"])
    starfile.write(raw, tmp_path / "nopix.star")
    pset = read_particles(tmp_path / "nopix.star")
    with pytest.raises(InputError, match=r"nopix\.star: no pixel size"):
        _ = pset.pixel_size_A
    with pytest.raises(InputError, match="no pixel size"):
        write_cs(pset, tmp_path / "out.cs")
    assert _listing(tmp_path) == {"nopix.star"}


def test_contradictory_pixel_sizes(shared_file, tmp_path):
    raw = starfile.read(shared_file(PFCRT))
    raw["rlnPixelSize"] = 1.2
    starfile.write(raw, tmp_path / "two.star")
    with pytest.raises(
        InputError,
        match=r"two\.star: contradictory pixel sizes: rlnPixelSize gives 1\.2 Å, "
        r"rlnDetectorPixelSize × 10⁴ / rlnMagnification gives 1\.035 Å",
    ):
        _ = read_particles(tmp_path / "two.star").pixel_size_A


def test_cs_without_image_fields(shared_file, tmp_path):
    ds = Dataset.load(shared_file(CS_J24)).drop_fields(["blob/path", "blob/idx"])
    ds.save(tmp_path / "noblob.cs")
    pset = read_particles(tmp_path / "noblob.cs")
    assert pset.box_px == 180  # blob/shape is still there
    with pytest.raises(InputError, match=r"noblob\.cs: no particle images: the \.cs has no blob/path"):
        pset.images(0)
    with pytest.raises(InputError, match="no particle images"):
        next(pset.iter_batches(8))


def test_mismatched_box_sizes(shared_file, tmp_path):
    def edit(blocks):
        blocks["optics"]["rlnImageSize"] = 128

    pset = read_particles(_r31_copy(shared_file, tmp_path, edit=edit))
    with pytest.raises(InputError, match=r"relion31\.mrcs: images are 256 px but rlnImageSize say 128 px .*mismatched"):
        pset.images(0)
    # Two stacks of different sizes and no rlnImageSize to arbitrate.
    write_mrcs(tmp_path / "small.mrcs", np.zeros((2, 64, 64), np.float32), 2.806)
    mixed = ParticleSet(pd.DataFrame({"rlnImageName": ["1@relion31.mrcs", "1@small.mrcs"]}), root=tmp_path)
    with pytest.raises(InputError, match=r"small\.mrcs: images are 64 px but the other selected stacks say 256 px"):
        mixed.images()


def test_truncated_stack(shared_file, tmp_path):
    path = _r31_copy(shared_file, tmp_path)
    stack = tmp_path / "relion31.mrcs"
    stack.write_bytes(stack.read_bytes()[: 1024 + 3 * 256 * 256 * 4])
    with pytest.raises(InputError, match=r"relion31\.mrcs: header says 5 images of 256x256 px .*truncated"):
        read_particles(path).images(0)


def test_writers_refuse_to_overwrite_their_input(shared_file, tmp_path):
    path = _r31_copy(shared_file, tmp_path)
    before = path.read_bytes()
    pset = read_particles(path)
    with pytest.raises(InputError, match=r"relion31\.star: output would overwrite an input file"):
        write_star(pset, path)
    pset.images(0)  # the stack is now known: protected too
    with pytest.raises(InputError, match="overwrite an input"):
        write_cs(pset, tmp_path / "relion31.mrcs")
    with pytest.raises(InputError, match="output names a folder"):
        write_star(pset, tmp_path)
    assert path.read_bytes() == before
    assert _listing(tmp_path) == {"relion31.star", "relion31.mrcs"}


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"\x00\x01garbage\xff" * 10, "no data_ block|not a readable STAR"),
        (b"# just a comment\n", "no data_ block"),
        (
            b"data_particles\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n1@a.mrcs 1 2 3\n2@a.mrcs 1\n",
            "not a readable STAR",
        ),
    ],
)
def test_unreadable_star(content, problem, tmp_path):
    path = tmp_path / "bad.star"
    path.write_bytes(content)
    with pytest.raises(InputError, match=rf"bad\.star: ({problem})"):
        read_particles(path)


def test_unreadable_cs_and_unknown_suffix(tmp_path):
    (tmp_path / "bad.cs").write_bytes(b"not numpy")
    with pytest.raises(InputError, match=r"bad\.cs: not a readable cryoSPARC \.cs file"):
        read_particles(tmp_path / "bad.cs")
    with pytest.raises(InputError, match=r"x\.txt: unknown particle file type"):
        read_particles(tmp_path / "x.txt")
    with pytest.raises(InputError, match=r"missing\.star: file not found"):
        read_particles(tmp_path / "missing.star")
