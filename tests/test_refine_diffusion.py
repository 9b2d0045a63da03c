"""One-step diffusion refinement: EDM preconditioning, denoiser, pretraining, packaged checkpoint, test time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cryostack.io.models import read_structure
from cryostack.nn.edm import c_in, c_noise, c_out, c_skip, edm_loss_weight
from cryostack.refine.diffusion import featurize, featurize_backbone, load_denoiser
from cryostack.refine.diffusion.config import DenoiserConfig, PretrainConfig
from cryostack.refine.diffusion.model import AtomDenoiser
from cryostack.refine.diffusion.train import (
    Example,
    denoising_loss,
    evaluate,
    example_from_chain,
    example_from_structure,
    spatial_crop,
    train,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "src" / "cryostack" / "examples" / "spike_ntd"
CORPUS_SAMPLE = Path(__file__).resolve().parent / "data" / "corpus_sample"
WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "cryostack" / "weights" / "denoiser_v2.pt"
SMALL = DenoiserConfig(hidden=32, edge_hidden=32, layers=2, k_neighbours=8)


@pytest.fixture(scope="module")
def ntd():
    return read_structure(EXAMPLE / "6vyb_Ndom.pdb")


@pytest.fixture(scope="module")
def ntd_piece(ntd):
    """The first 40 residues of the spike NTD example: a small real protein fragment."""
    st = ntd.gemmi.clone()
    chain = st[0][0]
    for i in range(len(chain) - 1, 39, -1):
        del chain[i]
    from cryostack.io.models import Structure

    return Structure(st)


def _randomise(model: AtomDenoiser, seed: int = 0, std: float = 0.05) -> AtomDenoiser:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=gen))
    return model


def test_edm_preconditioning_identities():
    sd = 16.0
    sigma = torch.tensor([0.01, 0.1, 0.5, 1.0, 4.0, 16.0, 80.0], dtype=torch.float64)
    torch.testing.assert_close(c_skip(sigma, sd), sd**2 * c_in(sigma, sd) ** 2)
    torch.testing.assert_close(c_out(sigma, sd), sigma * sd * c_in(sigma, sd))
    # skip path plus the network's identity term reproduce the input exactly
    torch.testing.assert_close(
        c_skip(sigma, sd) + (sigma / sd) * c_out(sigma, sd) * c_in(sigma, sd), torch.ones_like(sigma)
    )
    # EDM: unit-variance input and training target for data of standard deviation sigma_data
    torch.testing.assert_close(c_in(sigma, sd) ** 2 * (sd**2 + sigma**2), torch.ones_like(sigma))
    target_var = (c_skip(sigma, sd) ** 2 * sigma**2 + (1 - c_skip(sigma, sd)) ** 2 * sd**2) / c_out(sigma, sd) ** 2
    torch.testing.assert_close(target_var, torch.ones_like(sigma))
    torch.testing.assert_close(edm_loss_weight(sigma, sd), 1 / c_out(sigma, sd) ** 2)
    assert float(c_noise(torch.tensor(sd), sd)) == 0.0


def test_features_of_a_real_model(ntd):
    arr = ntd.atoms()
    f = featurize(arr)
    assert f.n_atoms == arr.n_atoms
    poly = torch.as_tensor(arr.is_polymer)
    assert (f.element > 0).all() and (f.residue_type[poly] > 0).all()
    assert (f.atom_name[poly] > 0).all()  # every standard protein atom name is in the vocabulary
    assert (f.residue_type[~poly] == 0).all()  # ligands: the "other" residue token
    e = f.topology_edges
    pairs = set(map(tuple, e.T.tolist()))
    assert all((b, a) in pairs for a, b in pairs)  # symmetric
    names = np.array(arr.atom_names)
    # peptide links: C(i) and N(i+1) are topology neighbours
    c0 = int(np.flatnonzero((names == "C") & (arr.residue_index == 0))[0])
    n1 = int(np.flatnonzero((names == "N") & (arr.residue_index == 1))[0])
    assert (c0, n1) in pairs
    assert int(f.main_chain.sum()) == int((np.isin(names, ["N", "CA", "C", "O", "OXT"]) & arr.is_polymer).sum())


def test_backbone_features_drop_glycine_cb():
    rng = np.random.default_rng(0)
    bb = rng.normal(size=(3, 5, 3)).astype(np.float32)
    bb[2, 4] = np.nan  # a missing atom is skipped
    feats, coords = featurize_backbone("AGS", bb)
    assert coords.shape == (5 + 4 + 4, 3) and feats.n_atoms == 13
    assert feats.residue_index.tolist() == [0] * 5 + [1] * 4 + [2] * 4


def test_denoiser_shapes_determinism_and_equivariance(ntd_piece):
    arr = ntd_piece.atoms()
    f = featurize(arr)
    x = torch.as_tensor(arr.coords)
    torch.manual_seed(0)
    model = _randomise(AtomDenoiser(SMALL))
    y1 = model(x, 0.7, f)
    y2 = model(x, 0.7, f)
    assert y1.shape == x.shape and y1.dtype == x.dtype
    assert torch.equal(y1, y2)
    assert not torch.allclose(y1, x)  # a non-zero network moves atoms
    torch.testing.assert_close(model(x, torch.full((x.shape[0],), 0.7), f), y1)
    # E(3): rotating and translating the input rotates and translates the output (float64, so
    # the check is not limited by float32 rounding at ~200 Å coordinates)
    m64, x64 = model.double(), x.double()
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    shift = torch.tensor([10.0, -4.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(m64(x64 @ q.T + shift, 0.7, f), m64(x64, 0.7, f) @ q.T + shift, atol=1e-8, rtol=0)
    # untrained (zero-initialised output heads): exactly the identity
    torch.testing.assert_close(AtomDenoiser(SMALL)(x, 0.7, f), x, atol=1e-4, rtol=0)


def _tiny_examples(ntd) -> list[Example]:
    if (CORPUS_SAMPLE / "corpus.json").is_file():
        try:
            from cryostack.data.corpus import Corpus

            corpus = Corpus(CORPUS_SAMPLE)
            idx = corpus.split_indices("train")[:4]
            return [example_from_chain(corpus.chain(int(i))) for i in idx]
        except ImportError:
            pass
    return [example_from_structure(ntd)]


def test_pretraining_reduces_denoising_loss_and_resumes(ntd, tmp_path):
    torch.set_num_threads(1)
    examples = _tiny_examples(ntd)
    rng = np.random.default_rng(3)
    fixed = [spatial_crop(e, 200, rng) for e in examples[:2]]
    cfg = PretrainConfig(steps=30, batch_chains=2, crop_atoms=200, lr=1e-2, checkpoint_every=15, seed=5)

    def fixed_loss(model):
        with torch.no_grad():
            return float(denoising_loss(model, fixed, [0.5, 1.0], torch.Generator().manual_seed(9)))

    torch.manual_seed(cfg.seed)
    before = fixed_loss(AtomDenoiser(SMALL))
    train(examples, cfg, mcfg=SMALL, out_dir=tmp_path / "run", progress=False, stop_at_step=15)  # interrupted
    resumed = train(examples, cfg, mcfg=SMALL, out_dir=tmp_path / "run", progress=False)
    assert resumed.step == 30
    after = fixed_loss(resumed.model)
    assert after < 0.9 * before, (before, after)
    # a resumed run equals an uninterrupted one (sampling is a function of seed and step)
    straight = train(examples, cfg, mcfg=SMALL, out_dir=None, progress=False)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="packaged denoiser weights not built")
def test_packaged_checkpoint_denoises_held_out_chains():
    model = load_denoiser()
    assert model.n_parameters() > 0
    Corpus = pytest.importorskip("cryostack.data.corpus").Corpus
    if not (CORPUS_SAMPLE / "corpus.json").is_file():
        pytest.skip("corpus sample not available")
    corpus = Corpus(CORPUS_SAMPLE)
    rng = np.random.default_rng(0)
    val = [spatial_crop(example_from_chain(corpus.chain(int(i))), 600, rng) for i in corpus.split_indices("val")[:3]]
    res = evaluate(model, val, [1.0])["1"]
    assert res["rmsd_denoised_A"] < 0.9 * res["rmsd_noisy_A"], res


def test_load_denoiser_rejects_bad_files(tmp_path):
    from cryostack.errors import InputError

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="bad.pt"):
        load_denoiser(bad)
    with pytest.raises(InputError, match="not found"):
        load_denoiser(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"format": "cryostack-checkpoint", "model": "particles.Encoder", "config": {}, "state_dict": {}}, other)
    with pytest.raises(InputError, match="particles.Encoder"):
        load_denoiser(other)


def test_testtime_changes_only_denoiser_weights_and_lowers_the_objective(ntd_piece):
    objective_mod = pytest.importorskip("cryostack.refine.objective")
    from cryostack.io.maps import read_map
    from cryostack.refine import RefineConfig
    from cryostack.refine.diffusion import refine_diffusion

    torch.set_num_threads(1)
    arr = ntd_piece.atoms()
    rng = np.random.default_rng(0)
    start = ntd_piece.with_coordinates(arr.coords + rng.normal(0, 0.3, arr.coords.shape) + [0.8, 0.0, 0.0])
    obj = objective_mod.RefinementObjective(start, read_map(EXAMPLE / "emd_21457_seg.mrc"), 3.2)
    init = obj.init_coords.clone()
    model = _randomise(AtomDenoiser(SMALL), std=0.01)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = refine_diffusion(
        obj,
        RefineConfig(method="diffusion", max_recycles=3, steps_per_recycle=4, patience=3),
        model=model,
        lr=1e-3,
        sigma_A=0.5,
    )
    assert res.method == "diffusion" and res.coords.shape == arr.coords.shape
    # the caller's model and the objective are untouched; only the (copied) denoiser was optimised
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(obj.init_coords, init)
    adapted = res.denoiser
    assert any(not torch.equal(before[k], v) for k, v in adapted.state_dict().items())
    # fixed atoms stay where they were; the objective is lower than at the start
    fixed = ~obj.movable.numpy()
    np.testing.assert_array_equal(res.coords[fixed], init.numpy()[fixed])
    with torch.no_grad():
        l0 = float(obj(init)[0])
        l1 = float(obj(torch.as_tensor(res.coords))[0])
    assert l1 < l0
    assert res.history[0].recycle == 0 and len(res.history) >= 2


def test_testtime_shares_placement_and_rotamer_fitting_with_direct(spike_piece, simulated_map):
    """The diffusion optimiser runs the same placement (coarse + rigid) and rotamer-fitting
    stages as the direct one: a 3 Å rigid shift is taken out, and a side chain put in an
    outlier rotamer is fitted and polished by a fresh test-time recycle."""
    from cryostack.refine import RefineConfig, RefinementObjective
    from cryostack.refine.diffusion import refine_diffusion
    from cryostack.refine.rotamer_fit import set_chis

    torch.set_num_threads(1)
    s = spike_piece(30)
    dmap = simulated_map(s, 3.2)
    truth = torch.as_tensor(s.atoms().coords, dtype=torch.float32)
    obj = RefinementObjective(s, dmap, 3.2)
    bad = set_chis(obj, obj.init_coords, 14, (60.0, 60.0, 60.0, 60.0)) + torch.tensor([3.0, 0.0, 0.0])
    start = s.with_coordinates(bad.numpy())
    obj = RefinementObjective(start, dmap, 3.2)
    model = _randomise(AtomDenoiser(SMALL), std=0.01)
    config = RefineConfig(
        method="diffusion", max_recycles=2, steps_per_recycle=4, patience=2, rigid_steps=20, coarse_recycles=1
    )
    res = refine_diffusion(obj, config, model=model, lr=1e-3)
    rmsd = lambda x: float(((torch.as_tensor(x) - truth) ** 2).sum(1).mean().sqrt())  # noqa: E731
    assert rmsd(bad) > 2.9 and rmsd(res.coords) < 1.0
    stages = [r.stage for r in res.history]
    assert stages[0] == "start" and stages[-2:] == ["rotamer_fit", "polish"]
    assert res.rotamer_fit["changed"] >= 1
    # switched off, the diffusion optimiser is the bare test-time scheme on the input
    plain = refine_diffusion(
        obj,
        RefineConfig(
            method="diffusion",
            max_recycles=2,
            steps_per_recycle=4,
            rigid_steps=0,
            coarse_recycles=0,
            fit_rotamers=False,
        ),
        model=model,
        lr=1e-3,
    )
    assert plain.rotamer_fit is None and rmsd(plain.coords) > 2.0


def _small_model_on(structure):
    """A randomised small denoiser (eval mode, one thread), ``structure``'s features, coordinates ``(N, 3)`` Å and graph."""
    torch.set_num_threads(1)
    model = _randomise(AtomDenoiser(SMALL), std=0.05).eval()
    feats = featurize(structure.atoms())
    x = torch.as_tensor(structure.atoms().coords, dtype=torch.float32)
    return model, feats, x, model.graph(x, feats)


def test_residual_output_starts_as_the_identity(ntd_piece):
    """With ``residual`` (the default) an unadapted denoiser returns its input exactly, however
    far its own one-step output is from it; the raw output (``residual=False``) moves atoms."""
    from cryostack.refine.diffusion.config import TestTimeConfig
    from cryostack.refine.diffusion.testtime import _base_offset

    model, feats, x, graph = _small_model_on(ntd_piece)
    with torch.no_grad():
        raw = model(x, 0.5, feats, graph=graph)
        base = _base_offset(model, x, feats, graph, TestTimeConfig(sigma_A=0.5))
    assert float((raw - x).norm(dim=1).mean()) > 1e-3
    torch.testing.assert_close(raw - base, x, atol=1e-4, rtol=0)
    assert _base_offset(model, x, feats, graph, TestTimeConfig(residual=False)) == 0.0


def test_trunk_and_head_compose_to_the_forward_pass(ntd_piece):
    """Splitting the network after any block gives the same output as one forward pass."""
    model, feats, x, graph = _small_model_on(ntd_piece)
    with torch.no_grad():
        whole = model(x, 0.5, feats, graph=graph)
        for n in range(len(model.blocks) + 1):
            torch.testing.assert_close(
                model.forward_head(model.forward_trunk(x, 0.5, feats, graph=graph, n_blocks=n)), whole
            )


def test_adapting_only_the_last_block_leaves_the_rest_pretrained(ntd_piece):
    """``adapt_blocks=1``: only the last block's weights change, and the objective still falls."""
    from cryostack.io.maps import read_map
    from cryostack.refine import RefineConfig, RefinementObjective
    from cryostack.refine.diffusion import refine_diffusion

    torch.set_num_threads(1)
    arr = ntd_piece.atoms()
    rng = np.random.default_rng(0)
    start = ntd_piece.with_coordinates(arr.coords + rng.normal(0, 0.3, arr.coords.shape))
    obj = RefinementObjective(start, read_map(EXAMPLE / "emd_21457_seg.mrc"), 3.2)
    model = _randomise(AtomDenoiser(SMALL), std=0.01)
    config = RefineConfig(
        method="diffusion", max_recycles=3, steps_per_recycle=4, patience=3, rigid_steps=0, coarse_recycles=0
    )
    res = refine_diffusion(obj, config, model=model, lr=1e-3, adapt_blocks=1)
    last = f"blocks.{len(model.blocks) - 1}."
    changed = {k for k, v in res.denoiser.state_dict().items() if not torch.equal(v, model.state_dict()[k])}
    assert changed and all(k.startswith(last) for k in changed)
    with torch.no_grad():
        assert float(obj(torch.as_tensor(res.coords))[0]) < float(obj(obj.init_coords)[0])
    with pytest.raises(ValueError, match="adapt_blocks"):
        refine_diffusion(obj, config, model=model, adapt_blocks=len(model.blocks) + 1)
