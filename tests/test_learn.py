"""The shared training infrastructure: loop, schedule, seeding, resume, checkpoints, registry, DDP, nn blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cryostack.errors import InputError
from cryostack.learn.checkpoint import load_checkpoint, save_checkpoint
from cryostack.learn.loop import TrainConfig, lr_factor, step_generators, train
from cryostack.learn.registry import packaged_checkpoint, registry
from cryostack.nn.attention import CrossAttentionBlock, SelfAttentionBlock
from cryostack.nn.graph import knn_edges
from cryostack.nn.layers import RadialBasis

REPO = Path(__file__).resolve().parents[1]


class LineTask:
    """Fit y = 3x - 1 with a 1-unit linear model from noisy samples (a task small enough to check exactly)."""

    model_name = "test.Line"

    def build_model(self, config):
        return nn.Linear(1, 1)

    def model_config(self, model):
        return {}

    def sample(self, rng, step):
        x = rng.uniform(-1, 1, size=(16, 1)).astype(np.float32)
        return torch.as_tensor(x)

    def loss(self, model, batch, gen, device):
        y = 3 * batch - 1 + 0.01 * torch.randn(batch.shape, generator=gen)
        return ((model(batch.to(device)) - y.to(device)) ** 2).mean()


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(steps=1000, warmup_steps=100, final_lr_fraction=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.01, rel=1e-3)
    assert lr_factor(99, cfg) == pytest.approx(1.0, abs=0.03)
    assert lr_factor(500, cfg) == pytest.approx(0.55, abs=0.01)
    assert lr_factor(1000, cfg) == pytest.approx(0.1)


def test_step_generators_depend_only_on_seed_step_and_rank():
    a = step_generators(3, 7)[0].random(4)
    b = step_generators(3, 7)[0].random(4)
    c = step_generators(3, 8)[0].random(4)
    d = step_generators(3, 7, rank=1)[0].random(4)
    assert np.array_equal(a, b) and not np.array_equal(a, c) and not np.array_equal(a, d)


def test_training_learns_resumes_exactly_and_records_provenance(tmp_path):
    cfg = TrainConfig(steps=60, lr=0.3, warmup_steps=5, checkpoint_every=20, seed=1)
    splits = tmp_path / "splits.json"
    splits.write_text('{"train": [1, 2]}')
    train(LineTask(), cfg, out_dir=tmp_path / "run", progress=False, stop_at_step=30, data_files={"splits": splits})
    resumed = train(LineTask(), cfg, out_dir=tmp_path / "run", progress=False, data_files={"splits": splits})
    straight = train(LineTask(), cfg, out_dir=None, progress=False)
    assert resumed.step == 60
    w, b = resumed.model.weight.item(), resumed.model.bias.item()
    assert w == pytest.approx(3.0, abs=0.3) and b == pytest.approx(-1.0, abs=0.3)
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p, q)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt", weights_only=False)
    assert ckpt["format"] == "cryostack-checkpoint" and ckpt["model"] == "test.Line" and ckpt["step"] == 60
    prov = ckpt["provenance"]
    assert prov["git_commit"] and prov["machine"]["cpu_count"] >= 1
    assert len(prov["data_sha256"]["splits"]) == 64
    assert [h["step"] for h in ckpt["history"] if "loss" in h][:3] == [1, 10, 20]


def test_wall_time_budget_stops_cleanly(tmp_path):
    cfg = TrainConfig(steps=10_000, lr=0.01, max_hours=1e-9)
    state = train(LineTask(), cfg, out_dir=tmp_path / "run", progress=False)
    assert state.step < 10_000 and (tmp_path / "run" / "last.pt").is_file()


def test_checkpoint_loader_rejects_bad_files_with_one_line(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    with pytest.raises(InputError, match="bad.pt: not a cryostack checkpoint"):
        load_checkpoint(bad)
    good = save_checkpoint(tmp_path / "m.pt", model_name="a.B", config={"x": 1}, state_dict={})
    assert load_checkpoint(good)["config"] == {"x": 1}
    with pytest.raises(InputError, match="holds a 'a.B' model"):
        load_checkpoint(good, model_name="c.D")


def test_registry_checks_the_packaged_checkpoint_hash(monkeypatch, tmp_path):
    entry = registry()["denoiser_v2"]
    assert entry.card.is_file() and entry.file.is_file()
    assert packaged_checkpoint("denoiser_v2") == entry.file
    with pytest.raises(InputError, match="no packaged model"):
        packaged_checkpoint("nonexistent")
    from cryostack.learn import registry as reg

    fake = tmp_path / "denoiser_v2.pt"
    fake.write_bytes(b"swapped")
    monkeypatch.setitem(reg.registry(), "swapped", reg.PackagedModel("swapped", "x", fake, entry.sha256, entry.card))
    with pytest.raises(InputError, match="does not match its registry sha256"):
        packaged_checkpoint("swapped")


def test_ddp_under_torchrun_matches_and_syncs_ranks(tmp_path, torchrun):
    """Two Gloo ranks on the CPU: training runs, ranks end with identical weights, rank 0 writes,
    and the process group ends with ``destroy_process_group`` (no Gloo thread left to abort at exit)."""
    torchrun(
        f"""
        import torch
        from test_learn import LineTask
        from cryostack.learn.loop import TrainConfig, train
        torch.set_num_threads(1)
        state = train(LineTask(), TrainConfig(steps=20, lr=0.05, warmup_steps=2, checkpoint_every=10),
                      out_dir={str(tmp_path / "run")!r}, progress=False)
        import torch.distributed as dist
        w = torch.cat([p.detach().flatten() for p in state.model.parameters()])
        gathered = [torch.zeros_like(w) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, w)
        assert torch.equal(gathered[0], gathered[1]), gathered
        # one file per rank: the ranks' stdout interleaves character by character
        rank = dist.get_rank()
        dist.destroy_process_group()
        # the group must be gone with its Gloo threads: left alive, they abort the process at exit
        import gc, os
        gc.collect()
        threads = [open(f"/proc/self/task/{{t}}/comm").read().strip() for t in os.listdir("/proc/self/task")]
        assert not [t for t in threads if "gloo" in t], threads
        open({str(tmp_path)!r} + f"/rank{{rank}}.ok", "w").write(str(state.step))
        """,
        timeout=240,
    )
    assert [(tmp_path / f"rank{r}.ok").read_text() for r in (0, 1)] == ["20", "20"]
    assert (tmp_path / "run" / "last.pt").is_file()


def test_knn_edges_respect_groups():
    x = torch.tensor([[0.0, 0, 0], [1, 0, 0], [10, 0, 0], [11, 0, 0]])
    e = knn_edges(x, 1, group=torch.tensor([0, 0, 1, 1]))
    assert sorted(map(tuple, e.T.tolist())) == [(0, 1), (1, 0), (2, 3), (3, 2)]


def test_radial_basis_is_in_angstrom():
    rbf = RadialBasis(16, 12.0)
    f = rbf(torch.tensor([0.0, 12.0]))
    assert f.shape == (2, 16) and f[0, 0] == pytest.approx(1.0) and f[1, -1] == pytest.approx(1.0)


def test_attention_blocks_shapes_and_padding():
    torch.manual_seed(0)
    block = SelfAttentionBlock(32, 4).eval()
    x = torch.randn(2, 5, 32)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    y = block(x, pad)
    assert y.shape == x.shape
    # padded keys are ignored: changing them does not change the real tokens' output
    x2 = x.clone()
    x2[1, 3:] = 100.0
    torch.testing.assert_close(block(x2, pad)[1, :3], y[1, :3])
    cross = CrossAttentionBlock(32, 4, context_dim=16).eval()
    assert cross(x, torch.randn(2, 7, 16)).shape == x.shape


def test_model_card_draft_carries_provenance(tmp_path):
    from cryostack.learn.card import write_model_card
    from cryostack.learn.provenance import provenance

    splits = tmp_path / "splits.json"
    splits.write_text("{}")
    prov = provenance({"corpus_splits": splits})
    card = write_model_card(
        tmp_path / "card.md", name="test model", summary="A test.", provenance=prov, sections={"Held-out": {"rmsd": 1}}
    ).read_text()
    assert prov["git_commit"] in card and prov["data_sha256"]["corpus_splits"] in card
    assert "## Held-out" in card and '"rmsd": 1' in card


def test_train_denoiser_command_writes_checkpoint_report_and_card(tmp_path):
    from cryostack.cli.main import main
    from cryostack.refine.diffusion import load_denoiser

    sample = Path(__file__).parent / "data" / "corpus_sample"
    out = tmp_path / "run"
    args = ["train", "denoiser", "--corpus", str(sample), "--out", str(out), "--steps", "2", "--val-chains", "1",
            "--crop-atoms", "64", "--batch-chains", "1", "--no-progress", "--threads", "1"]  # fmt: skip
    main(args)
    assert load_denoiser(out / "denoiser.pt").n_parameters() > 0
    assert (out / "report.json").is_file() and "## Provenance" in (out / "model_card.md").read_text()
    main(args)  # a rerun resumes: nothing left to train
    assert load_checkpoint(out / "last.pt", weights_only=False)["step"] == 2
