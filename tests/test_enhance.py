"""Map enhancement: tiling and rotations, resampling in the map's own frame, the U-Net and its
bypass mode, structure embeddings, the Guinier baseline, a tiny training run that resumes, and
``cryostack enhance`` on the real maps (frame kept, confidence written, bad input refused)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from cryostack.density.ops import resample_like
from cryostack.density.sharpen import auto_sharpen, guinier_bfactor
from cryostack.enhance.api import EnhanceConfig, enhance_map, load_model
from cryostack.enhance.embed import ProteinMPNNEmbedder, backbone_chains, fixed_size_embedding
from cryostack.enhance.featurize import Tiling, rotate_cube, to_network_grid, unrotate_cube
from cryostack.enhance.model import EnhanceUNet, UNetConfig
from cryostack.enhance.train import EnhanceTrainConfig, full_atom_indices, train_enhancer
from cryostack.errors import InputError
from cryostack.io.maps import DensityMap

CORPUS = Path(__file__).parent / "data" / "corpus_sample"
TINY_UNET = {"channels": (8, 16), "attention_levels": (True, False), "heads": 2, "dropout": 0.0}

#: (map, write a confidence map too): the 174³ Å F-actin box once, without the 4 extra passes.
REAL_MAPS = [
    ("maps/emd_5168_factin/emd_5168.map", False),  # NSTART −50, 1.742 Å
    ("maps/emd_21457_spike_ntd_segment/emd_21457_seg.mrc", True),  # ORIGIN set, 1.05 Å
    ("maps/cryonet_refine_boxed/4uft.mrc", True),  # axis order (3, 2, 1), NSTART set, cell ≠ box
]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cryostack.cli.main", *args], capture_output=True, text=True, timeout=600
    )


def _blob_map(shape=(30, 34, 38), voxel=1.3, seed=0) -> DensityMap:
    """Smooth random density (a few Gaussian blobs of 3 Å SD) on an odd, offset grid."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n) * voxel for n in shape), indexing="ij")
    data = np.zeros(shape)
    for _ in range(12):
        c = rng.uniform(6, np.array(shape) * voxel - 6)
        data += np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / (2 * 3.0**2))
    return DensityMap(data, (voxel,) * 3, origin=(12.5, -3.0, 40.25), nstart=(5, -7, 2), axis_order=(3, 2, 1))


# --- featurisation -------------------------------------------------------------------------------


def test_tiling_cores_cover_every_voxel_exactly_once():
    shape = (37, 50, 71)
    data = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    tiling = Tiling(shape, tile=16, core=10)
    padded = tiling.padded(data)
    out = np.full(shape, np.nan, np.float32)
    hits = np.zeros(shape, np.int32)
    for s in tiling.starts():
        tile = tiling.cut(padded, s)
        assert tile.shape == (16, 16, 16)
        tiling.paste(out, s, tile)
        ones = np.zeros(shape, np.int32)
        tiling.paste(ones, s, np.ones((16, 16, 16), np.int32))
        hits += ones
    assert (hits == 1).all()
    np.testing.assert_array_equal(out, data)  # cutting then pasting cores gives the map back
    with pytest.raises(ValueError):
        Tiling(shape, tile=16, core=9)  # odd rim


def test_cube_rotations_are_24_distinct_proper_rotations():
    a = np.random.default_rng(1).normal(size=(5, 5, 5))
    views = [rotate_cube(a, i) for i in range(24)]
    assert len({v.tobytes() for v in views}) == 24
    for i, v in enumerate(views):
        np.testing.assert_array_equal(unrotate_cube(v, i), a)
    # proper: the handedness of three labelled voxels along the axes is kept
    b = np.zeros((3, 3, 3))
    b[2, 1, 1], b[1, 2, 1], b[1, 1, 2], b[1, 1, 1] = 1, 2, 3, 4
    for i in range(24):
        r = rotate_cube(b, i)
        centre = np.argwhere(r == 4)[0]
        axes = [np.argwhere(r == k)[0] - centre for k in (1, 2, 3)]
        assert np.linalg.det(np.stack(axes)) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        rotate_cube(a, 24)


def test_network_grid_and_back_keeps_the_frame():
    m = _blob_map()
    net = to_network_grid(m)
    assert net.voxel_size == (1.0, 1.0, 1.0)
    back = resample_like(net, m)
    assert back.shape == m.shape and back.voxel_size == m.voxel_size
    assert back.origin == m.origin and back.nstart == m.nstart and back.axis_order == m.axis_order
    assert np.corrcoef(back.data.ravel(), m.data.ravel())[0, 1] > 0.99
    # the blobs stay where they were: the centre of mass moves by well under a voxel
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in m.shape), indexing="ij"), -1)
    com = lambda d: (grid * d[..., None]).sum((0, 1, 2)) / d.sum()  # noqa: E731
    assert np.abs(com(back.data) - com(m.data)).max() < 0.1


# --- network and embeddings ----------------------------------------------------------------------


def test_unet_keeps_shape_and_gate_zero_is_the_bypass():
    torch.manual_seed(0)
    model = EnhanceUNet(UNetConfig(**TINY_UNET)).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    ctx = torch.randn(2, 7, 128)
    with torch.no_grad():
        y_bypass = model(x, None)
        y_gate0 = model(x, ctx, context_gate=torch.zeros(2))
        y_ctx = model(x, ctx)
    assert y_bypass.shape == x.shape
    torch.testing.assert_close(y_gate0, y_bypass)
    assert not torch.allclose(y_ctx, y_bypass)  # the embeddings do reach the bottleneck
    with pytest.raises(ValueError):
        UNetConfig(channels=(8, 12), attention_levels=(True, False))  # 12 not divisible by 8 groups


def test_fixed_size_embedding_keeps_top_residues_or_repeats():
    rng = np.random.default_rng(2)
    chains = [rng.normal(size=(30, 8)), rng.normal(size=(50, 8))]
    big = fixed_size_embedding(chains, length=20)
    assert big.shape == (20, 8)
    small = fixed_size_embedding(chains, length=120)  # 50 pooled residues, sorted and repeated
    assert small.shape == (120, 8)
    np.testing.assert_allclose(small[:50], small[50:100])
    pooled_rows = {r.tobytes() for r in small[:50]}
    assert all(r.tobytes() in pooled_rows for r in big.astype(np.float32))  # top-L is a subset
    with pytest.raises(ValueError):
        fixed_size_embedding([], 10)


def test_proteinmpnn_embeddings_are_per_residue_and_structure_specific():
    from cryostack.data.corpus import Corpus

    corpus = Corpus(CORPUS)
    idx = full_atom_indices(corpus, "train")[:2]
    emb = ProteinMPNNEmbedder()
    out = [emb.embed(backbone_chains(corpus.structure(int(i)))) for i in idx]
    for i, e in zip(idx, out):
        n = sum(len(c) for c in backbone_chains(corpus.structure(int(i))))
        assert sum(len(c) for c in e) == n and e[0].shape[1] == 128
        assert np.isfinite(np.concatenate(e)).all()
    a, b = (fixed_size_embedding(e, 64) for e in out)
    assert not np.allclose(a, b)
    np.testing.assert_allclose(out[0][0], emb.embed(backbone_chains(corpus.structure(int(idx[0]))))[0], atol=1e-5)


# --- Guinier baseline --------------------------------------------------------------------------


def test_guinier_fit_recovers_a_known_blur():
    """White noise blurred by B = 150 Å²: the fit finds it and the sharpening undoes it."""
    n, voxel, b_true = 64, 1.2, 150.0
    rng = np.random.default_rng(3)
    white = rng.normal(size=(n, n, n))
    f = np.fft.rfftn(white)
    fz, fy = np.fft.fftfreq(n, voxel), np.fft.fftfreq(n, voxel)
    fx = np.fft.rfftfreq(n, voxel)
    s2 = fz[:, None, None] ** 2 + fy[None, :, None] ** 2 + fx[None, None, :] ** 2
    blurred = np.fft.irfftn(f * np.exp(-b_true * s2 / 4), s=(n, n, n))
    m = DensityMap(blurred, (voxel,) * 3)
    fit = guinier_bfactor(m, resolution_A=4.0)
    assert fit.b_factor_A2 == pytest.approx(b_true, rel=0.1)
    sharp, _ = auto_sharpen(m, resolution_A=4.0)
    assert abs(guinier_bfactor(sharp, resolution_A=4.5).b_factor_A2) < 20
    assert sharp.shape == m.shape and sharp.voxel_size == m.voxel_size
    # strong sharpening with a low-pass stays exact (one transform, no float32 blow-up in the corners)
    from cryostack.density.fourier import apply_bfactor, low_pass

    there_and_back = apply_bfactor(apply_bfactor(m, -400.0, resolution_A=5.0), 400.0)
    assert np.corrcoef(there_and_back.data.ravel(), low_pass(m, 5.0).data.ravel())[0, 1] > 0.999


# --- training ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny U-Net trained 4 steps on the sample corpus, interrupted after 2 and resumed."""
    out = tmp_path_factory.mktemp("enh")
    cfg = EnhanceTrainConfig(
        steps=4, batch=2, crop_voxels=16, val_items=2, checkpoint_every=2, eval_every=100, warmup_steps=1,
        embedding_length=32, model=dict(TINY_UNET),
    )  # fmt: skip
    part = train_enhancer(CORPUS, out, cfg, progress=False, stop_at_step=2)
    report = train_enhancer(CORPUS, out, cfg, progress=False)
    return out, part, report


def test_tiny_training_resumes_and_writes_weights(tiny_run):
    out, part, report = tiny_run
    assert part["steps"] == 2 and not part["finished"]
    assert report["steps"] == 4 and report["finished"]
    losses = [h for h in report["history"] if "loss" in h]
    assert losses and all(np.isfinite(h["loss"]) for h in losses)
    assert (out / "enhancer.pt").is_file() and (out / "enhancer.md").is_file()
    assert len(list((out / "embeddings").glob("*.npy"))) >= 1  # embeddings cached per structure
    model = load_model(out / "enhancer.pt")
    assert model.cfg.channels == (8, 16)
    assert set(report["val"]) >= {"cc_input", "cc_enhanced", "cc_gain"}


def test_finetune_starts_from_weights_and_cuts_cubes_from_a_larger_box(tiny_run, tmp_path):
    init = tiny_run[0] / "enhancer.pt"
    cfg = EnhanceTrainConfig(
        steps=1, batch=2, crop_voxels=16, sim_box_voxels=24, val_items=1, eval_every=100, warmup_steps=1,
        bypass_prob=1.0, init_checkpoint=str(init),
    )  # fmt: skip
    report = train_enhancer(CORPUS, tmp_path / "ft", cfg, progress=False)
    assert report["finished"] and tuple(report["model_config"]["channels"]) == (
        8,
        16,
    )  # the init's network, not the default
    # the cube is cut after normalising the whole box, so it keeps the box's scale
    from cryostack.enhance.train import _pair

    rng = np.random.default_rng(0)
    arrays = {"input_map": rng.normal(size=(24, 24, 24)).astype(np.float32) + 1, "target_map": rng.random((24, 24, 24))}
    x, _ = _pair(arrays, 0, (8, 8, 8), 16)
    whole, _ = _pair(arrays, 0)
    np.testing.assert_allclose(x, whole[8:24, 8:24, 8:24])


def test_enhance_map_output_in_input_frame_with_confidence(tiny_run):
    out, _, _ = tiny_run
    model = load_model(out / "enhancer.pt")
    m = _blob_map()
    ticks = []
    res = enhance_map(
        m, model, EnhanceConfig(tile=24, core=16, batch=8), resolution_A=12.0, confidence=True,
        progress=lambda d, t: ticks.append((d, t)),
    )  # fmt: skip
    e = res.enhanced
    assert e.shape == m.shape and e.voxel_size == m.voxel_size and e.origin == m.origin
    assert e.nstart == m.nstart and e.axis_order == m.axis_order
    assert res.confidence is not None and res.confidence.shape == m.shape and (res.confidence.data >= 0).all()
    assert ticks[-1][0] == ticks[-1][1] == res.info["tiles"] * res.info["views"]
    assert any("outside the trained range" in w for w in res.warnings)


@pytest.mark.parametrize(("rel", "with_confidence"), REAL_MAPS)
def test_cli_enhance_real_map_keeps_header_frame(tiny_run, shared_file, tmp_path, rel, with_confidence):
    src = shared_file(rel)
    out, conf = tmp_path / "enh.mrc", tmp_path / "conf.mrc"
    ckpt = tiny_run[0] / "enhancer.pt"
    extra = ["--confidence", str(conf)] if with_confidence else []
    r = run("enhance", "--map", str(src), "--out", str(out), *extra, "--checkpoint", str(ckpt),
            "--resolution", "6", "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert conf.is_file() == with_confidence
    written = [out, conf] if with_confidence else [out]
    with mrcfile.open(src, permissive=True) as a:
        for path in written:
            m = mrcfile.open(path)
            assert m.data.shape == a.data.shape
            for f in ("nx", "ny", "nz", "mapc", "mapr", "maps", "nxstart", "nystart", "nzstart", "cella"):
                assert m.header[f] == a.header[f], f
            np.testing.assert_allclose(m.voxel_size.tolist(), a.voxel_size.tolist(), rtol=1e-5)
            np.testing.assert_allclose(m.header.origin.tolist(), a.header.origin.tolist(), atol=1e-3)
            assert np.isfinite(m.data).all()
            m.close()


def test_cli_enhance_refuses_bad_input(tiny_run, tmp_path):
    ckpt = str(tiny_run[0] / "enhancer.pt")
    good = _blob_map()
    from cryostack.io.maps import write_map

    a, b = tmp_path / "a.mrc", tmp_path / "b.mrc"
    write_map(good, a)
    write_map(_blob_map(seed=1), b)
    const = tmp_path / "const.mrc"
    write_map(good.with_data(np.ones(good.shape, np.float32)), const)
    other = tmp_path / "other.mrc"
    write_map(_blob_map(shape=(30, 34, 40)), other)
    out = tmp_path / "out.mrc"
    cases = [
        (["--map", str(const)], "constant"),
        (["--half-maps", str(a), str(other)], "other.mrc"),
        (["--half-maps", str(a), str(a)], "identical"),
        (["--map", str(tmp_path / "missing.mrc")], "missing.mrc"),
    ]
    for args, word in cases:
        r = run("enhance", *args, "--out", str(out), "--checkpoint", ckpt, "--no-progress")
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and word in r.stderr, r.stderr
        assert not out.exists()
    # too large for whole-map work: refused from the header, before the data are read
    import cryostack.enhance.api as enhance_api

    big = tmp_path / "big.mrc"
    write_map(good.with_data(np.zeros((8, 8, 8), np.float32), voxel_size=(200.0,) * 3), big)
    with pytest.raises(InputError, match="box it"):
        enhance_api.enhance_files(big, out, checkpoint=ckpt)
    assert enhance_api.peek_map_size(big) == ((8, 8, 8), (200.0, 200.0, 200.0))
    assert not out.exists()
    before = a.read_bytes()
    r = run("enhance", "--map", str(a), "--out", str(a), "--checkpoint", ckpt, "--no-progress")
    assert r.returncode == 2 and "overwrite" in r.stderr and a.read_bytes() == before
    # two proper halves: their average is enhanced
    r = run("enhance", "--half-maps", str(a), str(b), "--out", str(out), "--checkpoint", ckpt, "--no-progress",
            "--json", str(tmp_path / "enh.json"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert out.is_file() and '"half-map average"' in (tmp_path / "enh.json").read_text()


def test_shipped_model_cleans_a_noisy_real_map(shared_file):
    """The packaged network on the EMD-21457 NTD cut-out low-passed to 6 Å with noise at the
    FSC-0.143 level added (the benchmark's degraded real row): the output fits the deposited model
    better than the noisy input does (measured CC_box 0.12 → 0.47), on the input's own grid."""
    from cryostack.data.degradations import add_resolution_noise
    from cryostack.density.fourier import low_pass
    from cryostack.io.maps import read_map
    from cryostack.io.models import read_structure
    from cryostack.validate.mapfit import map_model_fit

    ntd = read_map(shared_file("maps/emd_21457_spike_ntd_segment/emd_21457_seg.mrc"))
    model = read_structure(shared_file("maps/emd_21457_spike_ntd_segment/6vyb_Ndom.pdb"))
    low = low_pass(ntd, 6.0)
    noisy = ntd.with_data(add_resolution_noise(low.data, low.voxel_size, 6.0, np.random.default_rng(7))[0])
    result = enhance_map(noisy, load_model(), resolution_A=6.0)
    assert result.enhanced.shape == ntd.shape and result.enhanced.origin == ntd.origin
    before = map_model_fit(model, noisy, 6.0, compute_q=False).cc_box
    after = map_model_fit(model, result.enhanced, 6.0, compute_q=False).cc_box
    assert after > before + 0.15, (before, after)
