"""Particles II: featurisation in physical units, the ViT / MoCo / ranker models, training that
resumes and runs under torchrun, and ``particles rank`` / ``embed`` on the real fixtures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import starfile
import torch

from cryostack.errors import InputError
from cryostack.particles.api import finetune_ranker, pretrain_encoder
from cryostack.particles.featurize import (
    CtfParams,
    FeatureSpec,
    covers_particle,
    featurize,
    fourier_resample,
    phase_flip,
    realised_pixel_size_A,
)
from cryostack.particles.model import (
    MoCo,
    MoCoConfig,
    ParticleViT,
    Ranker,
    RankerConfig,
    ViTConfig,
    load_encoder,
    load_ranker,
)
from cryostack.particles.rank import embed_particles, rank_particles, ranks_from_scores
from cryostack.particles.train import PoolConfig, ranking_loss

CORPUS = Path(__file__).parent / "data" / "corpus_sample"
#: A ViT small enough to train a few steps in seconds.
TINY_VIT = ViTConfig(image_px=64, patch_px=16, dim=32, depth=1, heads=2)
TINY_POOL = PoolConfig(pools=2, structures_per_pool=2, refresh_steps=100, particles_per_micrograph=4)


def _ctf(n: int, defocus_A: float = 15000.0) -> CtfParams:
    return CtfParams(
        defocus_u_A=np.full(n, defocus_A),
        defocus_v_A=np.full(n, defocus_A),
        angle_deg=np.zeros(n),
        voltage_kV=np.full(n, 300.0),
        cs_mm=np.full(n, 2.7),
        amplitude_contrast=np.full(n, 0.1),
        phase_shift_deg=np.zeros(n),
    )


def _disc(n: int, px: float, radius_A: float = 40.0, offset_A: float = 15.0) -> np.ndarray:
    """A soft off-centre disc (an asymmetric 'particle') on an ``n`` box at ``px`` Å/pixel."""
    c = (np.arange(n) - n // 2) * px
    y, x = np.meshgrid(c, c, indexing="ij")
    r = np.hypot(x - offset_A, y)
    return (1 / (1 + np.exp((r - radius_A) / 3.0))).astype(np.float32)


# --- featurisation ---------------------------------------------------------------------------


def test_featurize_brings_images_to_one_physical_sampling():
    """The same object at 1.1 Å/px in a 240 px box and at 2.4 Å/px in a 100 px box gives nearly the
    same encoder input: sampling is in Å, not pixels."""
    spec = FeatureSpec(pixel_size_A=3.0, box_px=64)
    a = featurize(_disc(240, 1.1)[None], 1.1, None, spec)
    b = featurize(_disc(100, 2.4)[None], 2.4, None, spec)
    assert a.shape == b.shape == (1, 64, 64)
    corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
    assert corr > 0.97
    # per-image normalisation inside the field of view
    assert float(a.mean()) == pytest.approx(0.0, abs=1e-4) and float(a.std()) == pytest.approx(1.0, abs=1e-2)
    # the realised sampling is reported honestly when the box does not divide evenly
    assert realised_pixel_size_A(240, 1.1, 3.0) == pytest.approx(240 * 1.1 / 88)
    assert covers_particle(150.0, spec) and not covers_particle(190.0, spec)


def test_small_box_is_zero_padded_not_stretched():
    spec = FeatureSpec(pixel_size_A=3.0, box_px=64)
    x = featurize(_disc(40, 3.0)[None], 3.0, None, spec)  # 120 Å box inside a 192 Å field
    assert x.shape == (1, 64, 64)
    assert torch.all(x[0, :10] == 0) and torch.all(x[0, :, -10:] == 0)


def test_fourier_resample_keeps_a_band_limited_signal():
    n = 64
    t = torch.arange(n, dtype=torch.float64)
    img = torch.cos(2 * torch.pi * 3 * t / n)[None, :].expand(n, n)[None]
    up = fourier_resample(img, 128)
    t2 = torch.arange(128, dtype=torch.float64)
    torch.testing.assert_close(up[0, 0], torch.cos(2 * torch.pi * 3 * t2 / 128), atol=1e-6, rtol=0)


def test_fused_flip_and_downsample_equals_flip_then_resample():
    """The one-pass path (CTF on the cropped grid) matches flipping at full size then resampling,
    below Nyquist (the two treat the Nyquist row differently)."""
    from cryostack.particles.featurize import flip_and_downsample

    x = torch.randn(3, 256, 256, generator=torch.Generator().manual_seed(0))
    ctf = _ctf(3, 20000.0)
    fused = flip_and_downsample(x, ctf, 1.0, 86)
    slow = fourier_resample(phase_flip(x, ctf, 1.0), 86)
    torch.testing.assert_close(fourier_resample(fused, 80), fourier_resample(slow, 80), atol=1e-5, rtol=0)


def test_phase_flip_restores_positive_contrast():
    """An image through a strong CTF correlates poorly (or negatively) with the object; after the
    phase flip it correlates positively and better."""
    from cryostack.density.ctf import ctf_2d

    n, px = 128, 1.5
    # a textured object with detail past the CTF's first zeros (~20 Å at 2 µm defocus)
    g = torch.Generator().manual_seed(0)
    f = torch.fft.fft2(torch.randn(n, n, generator=g))
    k = torch.fft.fftfreq(n, d=px)
    s2 = k[:, None] ** 2 + k[None, :] ** 2
    obj = torch.fft.ifft2(f * torch.exp(-s2 * (6.0**2))).real
    ctf = _ctf(1, 20000.0)
    c = ctf_2d(20000.0, 20000.0, 0.0, 300.0, 2.7, 0.1, px, (n, n), rfft=False)
    blurred = torch.fft.ifft2(torch.fft.fft2(obj) * c.to(torch.complex64)).real
    flipped = phase_flip(blurred[None], ctf, px)[0]

    def corr(a, b):
        return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])

    assert corr(flipped, obj) > 0.5
    assert abs(corr(blurred, obj)) < 0.3


# --- models ----------------------------------------------------------------------------------


def test_vit_moco_and_ranker_shapes_and_loss():
    torch.manual_seed(0)
    vit = ParticleViT(TINY_VIT)
    x = torch.randn(6, 64, 64)
    assert vit(x).shape == (6, 32) and vit.tokens(x).shape == (6, 1 + 16, 32)
    moco = MoCo(MoCoConfig(vit=TINY_VIT, hidden=64, out_dim=16))
    loss = moco(x, x + 0.1 * torch.randn_like(x), momentum=0.9)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert moco.encoder.patch.weight.grad is not None
    # the momentum encoder gets no gradient; it follows the query encoder
    assert all(p.grad is None for p in moco.momentum_encoder.parameters())
    ranker = Ranker(RankerConfig(vit=TINY_VIT, hidden=16))
    feats, scores = ranker.features_and_scores(x)
    assert feats.shape == (6, 32) and scores.shape == (6,) and torch.all((scores >= 0) & (scores <= 1))
    with pytest.raises(ValueError):
        ViTConfig(image_px=64, patch_px=10).validate()


def test_size_presets_from_tiny_to_vit_b():
    from cryostack.particles.model import VIT_PRESETS

    counts = {k: sum(p.numel() for p in ParticleViT(v).parameters()) for k, v in VIT_PRESETS.items()}
    assert counts["tiny"] < 1e6 < 2e7 < counts["small"] < 2.5e7 < 8e7 < counts["base"] < 9e7  # ViT-B: ~85 M
    assert VIT_PRESETS["base"].dim == 768 and VIT_PRESETS["base"].depth == 12 and VIT_PRESETS["base"].heads == 12


def test_denoising_auxiliary_head_and_shared_augmentation():
    torch.manual_seed(0)
    moco = MoCo(MoCoConfig(vit=TINY_VIT, hidden=64, out_dim=16, denoise_weight=1.0))
    x = torch.randn(4, 64, 64)
    decoded = moco.decode(moco.encoder.tokens(x))
    assert decoded.shape == x.shape
    # patches land where they came from: token j (row-major) fills patch j of the image
    with torch.no_grad():
        moco.decoder.weight.zero_()
        moco.decoder.bias.zero_()
        moco.decoder.weight[:, 0] = 1.0
    tokens = torch.zeros(1, 17, 32)
    tokens[0, 1:, 0] = torch.arange(16.0)
    img = moco.decode(tokens)[0]
    rows, cols = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    torch.testing.assert_close(img, ((rows // 16) * 4 + cols // 16).float())
    loss = moco(x, x, momentum=0.9, clean1=x)
    assert loss.ndim == 0 and torch.isfinite(loss)
    # one transform for every channel: the clean target moves with its noisy view
    from cryostack.particles.train import in_plane_augment

    pair = torch.stack([x, 2 * x], dim=1)
    out = in_plane_augment(pair, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out[:, 1], 2 * out[:, 0])


def test_ranking_loss_prefers_the_right_order():
    q = torch.tensor([0.9, 0.7, 0.2, 0.0])
    right = torch.tensor([[0.0, 3.0], [0.0, 2.0], [2.0, 0.0], [3.0, 0.0]])
    wrong = right.flip(0)
    assert ranking_loss(right, q) < 0.2 < ranking_loss(wrong, q)
    assert list(ranks_from_scores(np.array([0.2, 0.9, 0.5]))) == [3, 1, 2]


# --- training --------------------------------------------------------------------------------


def _pretrain(out: Path, steps: int, stop: int | None = None) -> dict:
    return pretrain_encoder(
        CORPUS,
        out,
        steps=steps,
        batch=8,
        lr=1e-3,
        seed=5,
        progress=False,
        pool=TINY_POOL,
        vit=TINY_VIT,
        stop_at_step=stop,
    )


def _weights(path: Path) -> torch.Tensor:
    enc, _ = load_encoder(path)
    return torch.cat([p.detach().flatten() for p in enc.parameters()])


def test_pretraining_resumes_exactly(tmp_path):
    """Stopped after 2 steps and resumed to 4 equals 4 uninterrupted steps."""
    full = _pretrain(tmp_path / "full", 4)
    _pretrain(tmp_path / "split", 4, stop=2)
    resumed = _pretrain(tmp_path / "split", 4)
    assert full["step"] == resumed["step"] == 4
    torch.testing.assert_close(_weights(full["encoder"]), _weights(resumed["encoder"]), atol=1e-6, rtol=0)
    assert (tmp_path / "full" / "card.md").is_file()
    prov = torch.load(full["encoder"], weights_only=False)["provenance"]
    assert len(prov["data_sha256"]["corpus_splits"]) == 64  # the split the run drew from
    assert all(np.isfinite(h["loss"]) for h in full["history"])


def test_pretraining_under_torchrun_two_gloo_ranks(tmp_path, torchrun):
    torchrun(
        f"""
        import torch
        import torch.distributed as dist
        from test_particles_rank import CORPUS, TINY_POOL, TINY_VIT
        from cryostack.particles.api import pretrain_encoder
        torch.set_num_threads(1)
        r = pretrain_encoder(CORPUS, {str(tmp_path / "run")!r}, steps=3, batch=8, seed=1, progress=False,
                             pool=TINY_POOL, vit=TINY_VIT)
        open({str(tmp_path)!r} + f"/rank{{dist.get_rank()}}.ok", "w").write(str(r["step"]))
        dist.destroy_process_group()
        """
    )
    assert [(tmp_path / f"rank{r}.ok").read_text() for r in (0, 1)] == ["3", "3"]
    assert (tmp_path / "run" / "encoder.pt").is_file()


@pytest.fixture(scope="module")
def tiny_ranker(tmp_path_factory) -> Path:
    """A ranker fine-tuned for a few steps from a few-step encoder (not a good ranker: a working one)."""
    root = tmp_path_factory.mktemp("ranker")
    enc = _pretrain(root / "enc", 2)["encoder"]
    result = finetune_ranker(
        CORPUS, root / "rank", encoder=enc, steps=2, batch=8, seed=2, progress=False, pool=TINY_POOL
    )
    assert (root / "rank" / "card.md").is_file()
    return result["ranker"]


# --- rank and embed --------------------------------------------------------------------------


def test_rank_star_keeps_columns_and_optics(tmp_path, tiny_ranker, shared_file):
    src = shared_file("particles/cryodrgn_relion31_5ptcl/relion31.star")
    out = tmp_path / "ranked.star"
    result = rank_particles(src, out, checkpoint=tiny_ranker, progress=False)
    before, after = starfile.read(src), starfile.read(out)
    assert set(before) == set(after)
    for key in before:
        if key != "particles":
            assert before[key].equals(after[key])
    p0, p1 = before["particles"], after["particles"]
    assert list(p1.columns) == list(p0.columns) + ["rlnCryostackScore", "rlnCryostackRank"]
    same = [c for c in p0.columns if c != "rlnImageName"]
    assert p1[same].equals(p0[same])
    # image paths are rewritten relative to the output, so they still point at the same stacks
    for a, b in zip(p0.rlnImageName, p1.rlnImageName):
        (ia, fa), (ib, fb) = a.split("@"), b.split("@")
        assert int(ia) == int(ib) and (src.parent / fa).resolve() == (out.parent / fb).resolve()
    assert sorted(p1.rlnCryostackRank) == list(range(1, len(p0) + 1))
    assert p1.rlnCryostackScore.between(0, 1).all()
    top = p1.sort_values("rlnCryostackRank").rlnCryostackScore.to_numpy()
    assert np.all(np.diff(top) <= 0)
    assert result.histogram is not None and result.histogram.stat().st_size > 1000
    assert not out.with_name(out.name + ".partial.npz").exists()


def test_rank_cs_keeps_uids_and_embed_writes_index(tmp_path, tiny_ranker, shared_file):
    from cryosparc.dataset import Dataset

    src = shared_file("particles/cryodrgn_empiar10076_7ptcl/empiar_10076_7.cs")
    out = tmp_path / "ranked.cs"
    rank_particles(src, out, checkpoint=tiny_ranker, progress=False, histogram=False)
    a, b = Dataset.load(src), Dataset.load(out)
    assert np.array_equal(a["uid"], b["uid"])
    assert set(a.fields()) < set(b.fields()) and {"cryostack/score", "cryostack/rank"} <= set(b.fields())
    assert sorted(b["cryostack/rank"]) == list(range(1, len(a) + 1))
    feats, index, _ = embed_particles(src, tmp_path / "f.npy", checkpoint=tiny_ranker, progress=False)
    x = np.load(feats)
    assert x.shape == (len(a), 32) and np.isfinite(x).all()
    import pandas as pd

    table = pd.read_csv(index)
    assert list(table.row) == list(range(len(a))) and np.array_equal(table.uid.to_numpy(np.uint64), a["uid"])


def test_rank_resumes_from_partial_results(tmp_path, tiny_ranker, shared_file):
    """A run that stopped after the first batch carries on from there and gives the same scores."""
    src = shared_file("particles/aspire_sample_17ptcl/sample_particles_relion31.star")
    full = rank_particles(src, tmp_path / "a.star", checkpoint=tiny_ranker, batch=4, progress=False, histogram=False)
    out = tmp_path / "b.star"
    import cryostack.particles.rank as rank_mod

    real = rank_mod.write_star

    def crash(*a, **k):
        raise KeyboardInterrupt

    rank_mod.write_star = crash
    try:
        with pytest.raises(KeyboardInterrupt):
            rank_particles(src, out, checkpoint=tiny_ranker, batch=4, progress=False, checkpoint_every=4)
    finally:
        rank_mod.write_star = real
    assert out.with_name(out.name + ".partial.npz").is_file() and not out.exists()
    again = rank_particles(src, out, checkpoint=tiny_ranker, batch=4, progress=False, histogram=False)
    assert again.resumed_from == 16  # the last multiple of checkpoint_every; the 17th is redone
    np.testing.assert_allclose(again.scores, full.scores, atol=1e-6)


def test_rank_refuses_bad_inputs(tmp_path, tiny_ranker, shared_file):
    src = shared_file("particles/cryodrgn_relion31_5ptcl/relion31.star")
    # an encoder checkpoint is not a ranker
    enc = tiny_ranker.parent.parent / "enc" / "encoder.pt"
    with pytest.raises(InputError, match="ranker"):
        rank_particles(src, tmp_path / "x.star", checkpoint=enc, progress=False)
    # the output may not be the input
    with pytest.raises(InputError, match="overwrite"):
        rank_particles(src, src, checkpoint=tiny_ranker, progress=False)
    # a box smaller than the stated particle diameter warns
    with pytest.warns(UserWarning, match="diameter"):
        rank_particles(src, tmp_path / "w.star", checkpoint=tiny_ranker, progress=False, diameter_A=900.0)
    # no image column
    table = starfile.read(src)
    table["particles"] = table["particles"].drop(columns=["rlnImageName"])
    bad = tmp_path / "noimage.star"
    starfile.write(table, bad)
    with pytest.raises(InputError, match="rlnImageName"):
        rank_particles(bad, tmp_path / "y.star", checkpoint=tiny_ranker, progress=False)
    assert not (tmp_path / "x.star").exists() and not (tmp_path / "y.star").exists()


@pytest.mark.filterwarnings("ignore:Data array contains NaN values")
def test_rank_refuses_nan_images(tmp_path, tiny_ranker):
    import mrcfile

    stack = np.random.default_rng(0).normal(size=(3, 32, 32)).astype(np.float32)
    stack[1, 5, 5] = np.nan
    mrcs = tmp_path / "p.mrcs"
    with mrcfile.new(mrcs) as m:
        m.set_data(stack)
        m.voxel_size = 3.0
    import pandas as pd

    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnImagePixelSize": [3.0],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
            "rlnImageSize": [32],
        }
    )
    parts = pd.DataFrame(
        {
            "rlnImageName": [f"{i}@p.mrcs" for i in (1, 2, 3)],
            "rlnOpticsGroup": [1] * 3,
            "rlnDefocusU": [15000.0] * 3,
            "rlnDefocusV": [15000.0] * 3,
            "rlnDefocusAngle": [0.0] * 3,
        }
    )
    star = tmp_path / "p.star"
    starfile.write({"optics": optics, "particles": parts}, star)
    with pytest.raises(InputError, match="NaN"):
        rank_particles(star, tmp_path / "out.star", checkpoint=tiny_ranker, progress=False)
    assert not (tmp_path / "out.star").exists()


def test_rank_and_embed_cli(tmp_path, tiny_ranker, shared_file):
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cryostack.cli.main", *args], capture_output=True, text=True, timeout=300
        )

    src = str(shared_file("particles/aspire_sample_17ptcl/sample_particles_relion31.star"))
    r = cli(
        "particles", "rank", "--particles", src, "--out", str(tmp_path / "r.star"), "--checkpoint", str(tiny_ranker)
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "r.star.scores.png").is_file()
    r = cli(
        "particles", "embed", "--particles", src, "--out", str(tmp_path / "e.npy"), "--checkpoint", str(tiny_ranker)
    )
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "e.npy").shape == (17, 32)
    # a file that is not a checkpoint: one line, exit 2, no output
    r = cli("particles", "rank", "--particles", src, "--out", str(tmp_path / "r2.star"), "--checkpoint", src)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "r2.star").exists()


def test_relion_selects_on_the_score_through_a_known_label(tmp_path, tiny_ranker, shared_file):
    """RELION keeps rlnCryostack* columns but cannot select on labels it does not know;
    ``relion_label`` copies the score into one it does, and relion_star_handler selects on it."""
    import shutil

    src = shared_file("particles/aspire_sample_17ptcl/sample_particles_relion31.star")
    out = tmp_path / "ranked.star"
    r = rank_particles(src, out, checkpoint=tiny_ranker, progress=False, histogram=False,
                       relion_label="rlnParticleFigureOfMerit")  # fmt: skip
    table = starfile.read(out)["particles"]
    assert np.allclose(table.rlnParticleFigureOfMerit, table.rlnCryostackScore)
    with pytest.raises(InputError, match="STAR output"):
        rank_particles(src, tmp_path / "x.cs", checkpoint=tiny_ranker, relion_label="rlnParticleFigureOfMerit")
    with pytest.raises(InputError, match="already has"):
        rank_particles(out, tmp_path / "y.star", checkpoint=tiny_ranker, relion_label="rlnParticleFigureOfMerit")
    if shutil.which("relion_star_handler") is None:
        pytest.skip("RELION not installed")
    cut = float(np.median(r.scores))
    run = subprocess.run(
        ["relion_star_handler", "--i", out.name, "--o", "best.star", "--select", "rlnParticleFigureOfMerit",
         "--minval", str(cut)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    best = starfile.read(tmp_path / "best.star")["particles"]
    assert len(best) == int((r.scores >= cut).sum()) and "rlnCryostackRank" in best.columns


def test_shipped_ranker_and_encoder_load_and_score_real_particles(tmp_path, shared_file):
    """The packaged checkpoints pass their registry sha256, load without pickle, and run by default."""
    from cryostack.learn.registry import packaged_checkpoint, registry

    for name in ("particle_encoder_v1", "particle_ranker_v1"):
        path = packaged_checkpoint(name)
        torch.load(path, weights_only=True)
        assert registry()[name].card.is_file()
    assert load_ranker(packaged_checkpoint("particle_ranker_v1")).config.features == FeatureSpec(3.0, 64)
    src = shared_file("particles/cryodrgn_relion31_5ptcl/relion31.star")
    r = rank_particles(src, tmp_path / "r.star", progress=False, histogram=False)
    assert len(r.scores) == 5 and np.all((r.scores >= 0) & (r.scores <= 1))
    feats, _, _ = embed_particles(src, tmp_path / "f.npy", progress=False)
    assert np.load(feats).shape == (5, 128)
