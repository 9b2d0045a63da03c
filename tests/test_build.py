"""Model building: residue frames, the losses, featurisation, the SE(3) frame layer, a tiny
training run that resumes, building in the map's own frame (overlapping crops, chains named after
their FASTA records), side chains, the tracing scores, and ``cryostack build`` on a real map."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gemmi
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryostack.build.api import BuildConfig, ChainSpec, build_model, chains_from_fasta, frames_to_structure
from cryostack.build.featurize import CHAIN_GAP, UNK, collate, example_from_item, sequence_types
from cryostack.build.losses import dense_targets, structure_losses
from cryostack.build.model import BuilderConfig, FrameLayer, ModelBuilder, load_builder
from cryostack.build.train import BuildTrainConfig, train_builder
from cryostack.errors import InputError
from cryostack.geometry.frames import (
    backbone_from_frames,
    compose,
    frames_from_backbone,
    place_carbonyl_oxygen,
    quaternion_update,
)
from cryostack.io.maps import DensityMap
from cryostack.io.sequences import FastaEntry
from cryostack.validate.tracing import tracing_scores

CORPUS = Path(__file__).parent / "data" / "corpus_sample"
TINY = {"dim": 32, "heads": 2, "stem_channels": (4, 8, 16), "dense_dim": 16, "map_layers": 1, "seq_layers": 1,
        "cross_layers": 1, "gnn_layers": 2, "knn": 8}  # fmt: skip


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cryostack.cli.main", *args], capture_output=True, text=True, timeout=600
    )


def _helix_backbone(n: int = 20) -> np.ndarray:
    """An ideal-ish α-helix backbone ``(n, 3, 3)`` (N, CA, C) from frames placed along a helix."""
    t = np.arange(n) * np.radians(100.0)
    ca = np.stack([2.3 * np.cos(t), 2.3 * np.sin(t), 1.5 * np.arange(n)], axis=1)
    rot = Rotation.from_euler("z", t[:, None]).as_matrix() @ Rotation.from_euler("x", 60, degrees=True).as_matrix()
    return backbone_from_frames(torch.as_tensor(rot), torch.as_tensor(ca)).numpy()


# --- frames and losses ------------------------------------------------------------------------------
def test_frames_round_trip_and_ideal_geometry():
    bb = torch.as_tensor(_helix_backbone())
    rot, trans = frames_from_backbone(bb[:, 0], bb[:, 1], bb[:, 2])
    np.testing.assert_allclose(backbone_from_frames(rot, trans), bb, atol=1e-6)
    assert torch.allclose(rot.transpose(-1, -2) @ rot, torch.eye(3, dtype=rot.dtype).expand_as(rot), atol=1e-6)
    n_ca = (bb[:, 0] - bb[:, 1]).norm(dim=-1)
    ca_c = (bb[:, 2] - bb[:, 1]).norm(dim=-1)
    assert torch.allclose(n_ca, torch.tensor(1.458, dtype=n_ca.dtype), atol=1e-3)
    assert torch.allclose(ca_c, torch.tensor(1.525, dtype=ca_c.dtype), atol=1e-3)
    assert torch.allclose(quaternion_update(torch.zeros(4, 3)), torch.eye(3).expand(4, 3, 3))
    # an update in local axes: a local +x step of 1 Å moves Cα along the frame's first axis
    r2, t2 = compose(
        rot,
        trans,
        torch.eye(3, dtype=rot.dtype).expand_as(rot),
        torch.tensor([1.0, 0, 0], dtype=rot.dtype).expand_as(trans),
    )
    np.testing.assert_allclose(t2 - trans, rot[..., 0], atol=1e-6)
    o = place_carbonyl_oxygen(bb[:-1, 1], bb[:-1, 2], bb[1:, 0])
    np.testing.assert_allclose((o - bb[:-1, 2]).norm(dim=-1), 1.231, atol=1e-5)


def _real_backbone(n: int = 40) -> np.ndarray:
    """N, CA, C ``(n, 3, 3)`` of the first consecutive residues of a sample-corpus chain."""
    from cryostack.data.corpus import Corpus
    from cryostack.validate.tracing import backbone_table

    bb = backbone_table(Corpus(CORPUS).structure(0))[0]
    return bb[np.isfinite(bb).all(axis=(1, 2))][:n]


def test_losses_vanish_at_the_truth_and_grow_with_error():
    bb = torch.as_tensor(_real_backbone(), dtype=torch.float32)[None]
    rot, trans = frames_from_backbone(bb[..., 0, :], bb[..., 1, :], bb[..., 2, :])
    mask = torch.ones(1, bb.shape[1], dtype=torch.bool)
    pos = torch.arange(bb.shape[1])[None]
    at_truth = structure_losses(rot, trans, bb, mask, pos)
    for k in ("global", "fragment", "pair", "neighbour"):  # ideal N–Cα–C placed on a real chain: ~0.03 Å off
        assert float(at_truth[k]) < 0.01, k
    assert float(at_truth["distance"]) < 0.05  # real peptide bonds are 1.33 ± 0.02 Å
    moved = structure_losses(rot, trans + torch.tensor([3.0, 0.0, 0.0]), bb, mask, pos)
    assert float(moved["global"]) == pytest.approx(0.3, abs=0.01)  # 3 Å of a 10 Å clamp
    assert float(moved["pair"]) < 0.01 and float(moved["fragment"]) < 0.01  # a shift keeps internal geometry


def test_dense_targets_mark_each_calpha_voxel():
    bb = torch.as_tensor(_helix_backbone(8), dtype=torch.float32)[None] + 10.0
    mask = torch.ones(1, 8, dtype=torch.bool)
    presence, offset, rtype = dense_targets(bb, mask, torch.arange(8)[None], (12, 12, 12), torch.zeros(1, 3), 3.0)
    assert int(presence.sum()) == 8 and (rtype >= 0).sum() == 8
    assert float(offset[presence > 0].abs().max()) <= 1.5 + 1e-5  # within half a 3 Å voxel


# --- featurisation ------------------------------------------------------------------------------------
def test_example_from_item_orders_residues_and_marks_breaks():
    from cryostack.data.corpus import Corpus
    from cryostack.data.synthetic import SimulationConfig, simulate_item

    corpus = Corpus(CORPUS)
    rows = corpus.table()
    i = next(int(i) for i in corpus.split_indices("train") if int(rows[int(i)]["has_sidechains"]))
    item = simulate_item(
        corpus.structure(i).atoms(), SimulationConfig(resolution_A=(4, 4), voxel_size_A=1.5, crop_voxels=24), 3
    )
    ex = example_from_item(item.to_arrays(), max_residues=40)
    assert ex is not None and 0 < len(ex.residue_type) <= 40
    steps = np.diff(ex.position.numpy())
    assert set(np.unique(steps)) <= {1, CHAIN_GAP}
    assert ex.density.shape == (24, 24, 24) and float(ex.density.max()) <= 3.0
    origin = ex.origin_A.numpy()
    ca = ex.backbone_A[:, 1].numpy()
    assert (ca >= origin).all() and (ca <= origin + 23 * 1.5).all()
    b = collate([ex, ex])
    assert b["density"].shape == (2, 1, 24, 24, 24) and b["residue_mask"].all()


def test_sequence_types_and_fasta_chains():
    assert sequence_types("ACX").tolist() == [0, 4, UNK]
    entries = [
        FastaEntry("7K3G_1", "MKV", "7K3G_1|Chains A, B|spike", ["A", "B"]),
        FastaEntry("lig", "GGSX", "lig"),
    ]
    chains, notes = chains_from_fasta(entries, where="x.fa")
    assert [(c.chain_id, c.record) for c in chains] == [("A", "7K3G_1"), ("B", "7K3G_1"), ("C", "lig")]
    assert any("UNK" in n for n in notes)
    with pytest.raises(InputError, match="DNA/RNA"):
        chains_from_fasta([FastaEntry("dna", "ACGTACGT")], where="x.fa")


# --- network ---------------------------------------------------------------------------------------------
def test_frame_layer_is_se3_equivariant():
    torch.manual_seed(0)
    cfg = BuilderConfig(**TINY)
    layer = FrameLayer(cfg)
    for p in layer.to_frame.parameters():  # zero-initialised: give the update something to say
        torch.nn.init.normal_(p, std=0.1)
    bb = torch.as_tensor(_helix_backbone(12), dtype=torch.float32)[None]
    rot, trans = frames_from_backbone(bb[..., 0, :], bb[..., 1, :], bb[..., 2, :])
    h = torch.randn(1, 12, cfg.dim)
    pos, mask = torch.arange(12)[None], torch.ones(1, 12, dtype=torch.bool)
    dense = torch.zeros(1, cfg.dense_dim, 8, 8, 8)  # no map: the layer sees geometry only
    g = torch.as_tensor(Rotation.from_euler("xyz", [30, -50, 80], degrees=True).as_matrix(), dtype=torch.float32)
    shift = torch.tensor([5.0, -2.0, 7.0])
    with torch.no_grad():
        _, r1, t1 = layer(h, rot, trans, pos, mask, dense, torch.zeros(1, 3), 3.0)
        _, r2, t2 = layer(h, g @ rot, trans @ g.T + shift, pos, mask, dense, torch.zeros(1, 3), 3.0)
    assert float((t1 - trans).norm(dim=-1).mean()) > 0.1  # the layer moved the frames
    np.testing.assert_allclose(r2, g @ r1, atol=1e-4)
    np.testing.assert_allclose(t2, t1 @ g.T + shift, atol=1e-4)


def test_builder_forward_shapes_and_every_parameter_trains():
    torch.manual_seed(0)
    model = ModelBuilder(BuilderConfig(**TINY))
    out = model(torch.randn(2, 1, 16, 16, 16), torch.zeros(2, 3), torch.randint(0, 21, (2, 9)),
                torch.arange(9).expand(2, 9), torch.ones(2, 9, dtype=torch.bool))  # fmt: skip
    assert len(out["frames"]) == 1 + 2
    assert out["frames"][-1][0].shape == (2, 9, 3, 3) and out["dense"].shape == (2, 25, 8, 8, 8)
    assert out["confidence_logit"].shape == (2, 9)
    assert len(model(torch.randn(1, 1, 16, 16, 16), torch.zeros(1, 3), torch.zeros(1, 4, dtype=torch.long),
                     torch.arange(4)[None], torch.ones(1, 4, dtype=torch.bool), gnn_layers=0)["frames"]) == 1  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny builder trained 4 steps on the sample corpus, interrupted after 2 and resumed."""
    out = tmp_path_factory.mktemp("build")
    cfg = BuildTrainConfig(steps=4, batch=2, crop_voxels=24, max_residues=24, val_items=2, checkpoint_every=2,
                           eval_every=100, warmup_steps=1, model=dict(TINY))  # fmt: skip
    part = train_builder(CORPUS, out, cfg, progress=False, stop_at_step=2)
    report = train_builder(CORPUS, out, cfg, progress=False)
    return out, part, report


def test_tiny_training_resumes_and_writes_weights(tiny_run):
    out, part, report = tiny_run
    assert part["steps"] == 2 and not part["finished"]
    assert report["steps"] == 4 and report["finished"]
    assert all(np.isfinite(h["loss"]) for h in report["history"] if "loss" in h)
    assert (out / "builder.pt").is_file() and (out / "builder.md").is_file()
    assert load_builder(out / "builder.pt").cfg.dim == 32
    assert set(report["val"]) >= {"ca_error_A", "ca_error_pointer_A", "ca_within_3A"}


def test_training_under_torchrun_two_gloo_ranks(tmp_path, torchrun):
    torchrun(
        f"""
        import torch
        import torch.distributed as dist
        from test_build import CORPUS, TINY
        from cryostack.build.train import BuildTrainConfig, train_builder
        torch.set_num_threads(1)
        cfg = BuildTrainConfig(steps=2, batch=1, crop_voxels=24, max_residues=24, val_items=2, eval_every=100,
                               warmup_steps=1, model=dict(TINY))
        r = train_builder(CORPUS, {str(tmp_path / "run")!r}, cfg, progress=False)
        open({str(tmp_path)!r} + f"/rank{{dist.get_rank()}}.ok", "w").write(str(r["steps"]))
        dist.destroy_process_group()
        """
    )
    assert [(tmp_path / f"rank{r}.ok").read_text() for r in (0, 1)] == ["2", "2"]
    assert (tmp_path / "run" / "builder.pt").is_file()


# --- building in the map's frame ------------------------------------------------------------------------------
def _blob_map(shape=(30, 34, 38), voxel=1.3, origin=(12.5, -3.0, 40.25)) -> DensityMap:
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*(np.arange(n) * voxel for n in shape), indexing="ij")
    data = np.zeros(shape)
    for _ in range(12):
        c = rng.uniform(6, np.array(shape) * voxel - 6)
        data += np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / (2 * 3.0**2))
    return DensityMap(data, (voxel,) * 3, origin=origin, nstart=(5, -7, 2), axis_order=(3, 2, 1))


def test_build_follows_the_map_origin_and_merges_crops(tiny_run):
    model = load_builder(tiny_run[0] / "builder.pt")
    chains = [ChainSpec("H", "heavy", "MKVLAAGIRS"), ChainSpec("L", "light", "DIQMTQ")]
    m = _blob_map()
    a = build_model(m, chains, BuildConfig(resolution_A=4.0), model=model)
    moved = DensityMap(m.data, m.voxel_size, origin=(22.5, -3.0, 40.25 - 6.5), nstart=m.nstart, axis_order=m.axis_order)
    b = build_model(moved, chains, BuildConfig(resolution_A=4.0), model=model)
    xa = np.array([a_.pos.tolist() for r in a.structure.model["H"] for a_ in r])
    xb = np.array([a_.pos.tolist() for r in b.structure.model["H"] for a_ in r])
    np.testing.assert_allclose(xb - xa, np.broadcast_to([10.0, 0.0, -6.5], xa.shape), atol=1e-3)
    assert [c.name for c in a.structure.model] == ["H", "L"]
    assert [r.seqid.num for r in a.structure.model["L"]] == list(range(1, 7))
    assert a.structure.model["H"][0].name == "MET" and a.crops == 1
    conf = [r[0].b_iso for r in a.structure.model["H"]]
    np.testing.assert_allclose(conf, 100 * a.confidence[:10], atol=1e-3)
    tiled = build_model(m, chains, BuildConfig(resolution_A=4.0, crop_voxels=16, overlap_voxels=8), model=model)
    assert tiled.crops > 1 and len(tiled.confidence) == 16
    assert any("overlapping crops" in n for n in tiled.notes)


def test_sites_are_suppressed_peaks_and_each_takes_one_residue():
    from cryostack.build.api import assign_residues_to_sites, calpha_sites

    dense = torch.full((25, 6, 6, 6), -10.0)
    dense[0, 1, 1, 1] = dense[0, 1, 1, 2] = 5.0  # two voxels 3 Å apart, offsets bring them 1 Å apart
    dense[1, 1, 1, 1], dense[1, 1, 1, 2] = 1.0, -1.0
    dense[0, 4, 4, 4] = 3.0
    sites, voxel = calpha_sites(dense, torch.tensor([10.0, 0.0, 0.0]), 3.0)
    assert len(sites) == 2  # the weaker of two peaks 1 Å apart is suppressed
    flat = lambda z, y, x: (z * 6 + y) * 6 + x  # noqa: E731
    assert set(voxel.tolist()) <= {flat(1, 1, 1), flat(1, 1, 2), flat(4, 4, 4)} and flat(4, 4, 4) in voxel.tolist()
    logits = torch.zeros(3, 216)
    logits[:, flat(4, 4, 4)] = torch.tensor([5.0, 4.0, 0.0])  # residues 0 and 1 both want the far site
    logits[1, voxel[0]] = 3.0
    r, c = assign_residues_to_sites(logits, voxel)
    got = dict(zip(r.tolist(), voxel[c].tolist()))
    assert got[0] == flat(4, 4, 4) and got[1] == int(voxel[0]) and 2 not in got  # one residue per site


def test_frames_to_structure_writes_backbone_with_cbeta_and_poly_unk():
    bb = torch.as_tensor(_helix_backbone(5))
    rot, trans = frames_from_backbone(bb[:, 0], bb[:, 1], bb[:, 2])
    st = frames_to_structure(rot.numpy(), trans.numpy(), np.full(5, 0.5), [ChainSpec("A", "r", "AGXWK")])
    names = [[a.name for a in r] for r in st.model["A"]]
    assert names[0] == ["N", "CA", "C", "O", "CB"] and names[1] == ["N", "CA", "C", "O"]  # Gly: no CB
    assert st.model["A"][2].name == "UNK" and "CB" not in names[2]
    unk = frames_to_structure(
        rot.numpy(), trans.numpy(), np.full(5, 0.5), [ChainSpec("A", "r", "AGXWK")], use_sequence=False
    )
    assert {r.name for r in unk.model["A"]} == {"UNK"}


def test_tracing_scores_of_a_model_against_itself_and_a_shifted_copy():
    bb = torch.as_tensor(_helix_backbone(12))
    rot, trans = frames_from_backbone(bb[:, 0], bb[:, 1], bb[:, 2])
    ref = frames_to_structure(rot.numpy(), trans.numpy(), np.ones(12), [ChainSpec("A", "r", "ACDEFGHIKLMN")])
    pairs = np.stack([np.arange(12)] * 2, axis=1)
    same = tracing_scores(ref, ref, pairs)
    assert same["ca_within_3A"] == 1.0 and same["sequence_match"] == 1.0
    assert same["bond_loss_A"] < 1e-9 and same["angle_loss_rad"] < 1e-9
    far = frames_to_structure(rot.numpy(), trans.numpy() + 5.0, np.ones(12), [ChainSpec("A", "r", "ACDEFGHIKLMN")])
    assert tracing_scores(far, ref)["ca_within_3A"] == 0.0


def test_sidechains_are_added_and_keep_names_numbers_and_confidence():
    from cryostack.build.sidechains import add_sidechains, sidechains_available

    if not sidechains_available():
        pytest.skip("ProMod3 not installed")
    bb = torch.as_tensor(_helix_backbone(6))
    rot, trans = frames_from_backbone(bb[:, 0], bb[:, 1], bb[:, 2])
    st = frames_to_structure(rot.numpy(), trans.numpy(), np.linspace(0.1, 0.9, 6), [ChainSpec("Q", "r", "AWKLFE")])
    full = add_sidechains(st)
    trp = full.model["Q"][1]
    assert trp.name == "TRP" and trp.find_atom("CZ2", "*") is not None
    assert [r.seqid.num for r in full.model["Q"]] == list(range(1, 7))
    np.testing.assert_allclose([r[0].b_iso for r in full.model["Q"]], 100 * np.linspace(0.1, 0.9, 6), atol=0.01)


# --- the command ------------------------------------------------------------------------------------------
def test_cli_build_real_map_writes_model_in_map_frame_and_report(tiny_run, shared_file, tmp_path):
    src = shared_file("maps/emd_21457_spike_ntd_segment/emd_21457_seg.mrc")
    fasta = tmp_path / "ntd.fa"
    fasta.write_text(">6VYB_1|Chains B|Spike glycoprotein\nAYTNSFTRGVYYPDKVFRSSVLHSTQDLFLPFFSNVTWFHAIHXPV\n")
    out = tmp_path / "built.cif"
    r = run("build", "--map", str(src), "--sequence", str(fasta), "--resolution", "3.2", "--out", str(out),
            "--checkpoint", str(tiny_run[0] / "builder.pt"), "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "UNK" in r.stderr  # the X is said
    st = gemmi.read_structure(str(out))
    assert [c.name for c in st[0]] == ["B"] and len(st[0]["B"]) == 46
    assert st[0]["B"][0].seqid.num == 1 and st[0]["B"][43].name == "UNK"
    assert (tmp_path / "built_report.html").is_file() and (tmp_path / "built_report.json").is_file()
    from cryostack.io.maps import read_map

    m = read_map(src)
    lo = np.asarray(m.origin) - 5.0
    hi = np.asarray(m.origin) + np.asarray(m.shape[::-1]) * np.asarray(m.voxel_size) + 5.0
    ca = np.array([r["CA"][0].pos.tolist() for r in st[0]["B"]])
    assert ((ca > lo) & (ca < hi)).all()  # in the map's frame (its origin is far from 0)


def test_cli_build_refuses_bad_input(tiny_run, tmp_path, shared_file):
    src = shared_file("maps/emd_21457_spike_ntd_segment/emd_21457_seg.mrc")
    ckpt = str(tiny_run[0] / "builder.pt")
    dna, prot = tmp_path / "dna.fa", tmp_path / "p.fa"
    dna.write_text(">d\nACGTACGTAC\n")
    prot.write_text(">p\nMKVLAAGIRS\n")
    out = tmp_path / "o.cif"
    cases = [
        (["--sequence", str(dna), "--resolution", "3.2"], "DNA/RNA"),
        (["--sequence", str(prot), "--resolution", "9"], "coarser than 8"),
        (["--resolution", "3.2"], "no sequence"),
    ]
    for extra, msg in cases:
        r = run("build", "--map", str(src), "--out", str(out), "--checkpoint", ckpt, "--no-progress", *extra)
        assert r.returncode == 2 and msg in r.stderr, (extra, r.stderr)
        assert not out.exists()
    flat = tmp_path / "flat.mrc"
    from cryostack.io.maps import write_map

    write_map(DensityMap(np.zeros((20, 20, 20), np.float32), (1.5,) * 3), flat)
    r = run("build", "--map", str(flat), "--sequence", str(prot), "--resolution", "4", "--out", str(out),
            "--checkpoint", ckpt, "--no-progress")  # fmt: skip
    assert r.returncode == 2 and "flat.mrc" in r.stderr and not out.exists()
    r = run("build", "--map", str(src), "--sequence", str(prot), "--resolution", "4", "--out", str(src),
            "--checkpoint", ckpt, "--no-progress")  # fmt: skip
    assert r.returncode == 2 and "overwrite" in r.stderr


#: The real maps of the shared data (map, sequence source, resolution Å); sequences from the models.
REAL = [
    ("maps/emd_21457_spike_ntd_segment/emd_21457_seg.mrc", "maps/emd_21457_spike_ntd_segment/6vyb_Ndom.pdb", 3.2),
    ("maps/emd_5168_factin/emd_5168_monomer.mrc", "maps/emd_5168_factin/3MFP.pdb", 6.6),
    ("maps/emd_5168_factin/emd_5168.map", "maps/emd_5168_factin/3MFP.pdb", 6.6),
    ("maps/cryonet_refine_boxed/4uft.mrc", "maps/cryonet_refine_boxed/4uft_af3.cif", 3.3),
    ("maps/cryonet_refine_boxed/6vrc.mrc", "maps/cryonet_refine_boxed/6vrc_af3.cif", 3.1),
    ("maps/cryonet_refine_boxed/6ksw.mrc", "maps/cryonet_refine_boxed/6ksw_af3.cif", 3.6),
]


@pytest.mark.parametrize(("map_rel", "seq_rel", "resolution_A"), REAL, ids=[Path(m).stem for m, _, _ in REAL])
def test_packaged_builder_puts_a_model_inside_each_real_map(shared_file, map_rel, seq_rel, resolution_A):
    """The shipped network, backbone only: every chain of the sequence source is built, in the
    map's box and on its density (``placement_statistics``: the map at the atoms stands above the
    map's mean and above rigidly shifted copies of the model)."""
    from cryostack.density.metrics import placement_statistics
    from cryostack.io.maps import read_map

    density = read_map(shared_file(map_rel))
    src = gemmi.read_structure(str(shared_file(seq_rel)))
    chains = [
        ChainSpec(
            ch.name,
            ch.name,
            gemmi.one_letter_code(
                [
                    r.name
                    for r in ch
                    if gemmi.find_tabulated_residue(r.name) is not None
                    and gemmi.find_tabulated_residue(r.name).is_amino_acid()
                ]
            ).upper(),
        )
        for ch in src[0]
        if any(
            gemmi.find_tabulated_residue(r.name) is not None and gemmi.find_tabulated_residue(r.name).is_amino_acid()
            for r in ch
        )
    ]
    result = build_model(density, chains, BuildConfig(resolution_A=resolution_A))
    xyz = np.array([a.pos.tolist() for ch in result.structure.model for r in ch for a in r])
    assert len(result.confidence) == sum(len(c.sequence) for c in chains)
    p = placement_statistics(density, xyz)
    assert p.n_atoms == len(xyz)  # every atom inside the map's box
    assert p.z_map > 1.0 and p.z_displaced > 1.0, p
