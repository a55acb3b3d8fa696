"""A user's own generator, miner and critic on vector data: no fastmine subclass needed."""

import pytest
import torch
import toy_models
from budgets import QUICK_INVERSION

import fastmine as fm
from fastmine.config import ModelConfig
from fastmine.data import subset_indices

TARGET_MEAN = torch.tensor([2.0, -1.0])

pytestmark = pytest.mark.usefixtures("one_thread")


def shift_generator():
    return fm.load_generator("toy_models:make_generator", latent_spec={"z": ((2,), "normal")})


def test_user_modules_mine_a_2d_gaussian(tmp_path):
    torch.manual_seed(0)
    target = TARGET_MEAN + 0.3 * torch.randn(512, 2)
    G = shift_generator()
    source_mean = fm.Sampler(G).sample(2000).mean(0)
    assert (source_mean - TARGET_MEAN).norm() > 1.5
    # one-sided penalty (WGAN-LP): with the two-sided one the sampler stalled 0.36 away
    # from the target mean here (docs/toolkit.md, "Gradient penalty options": the trap on low-dimensional data)
    result = fm.mine(G, target, miner=toy_models.make_miner(), miner_cfg={"seed_dim": 3},
                     critic=toy_models.make_critic(), steps=300, batch_size=128, lr=2e-3, critic_lr=2e-3,
                     gp_one_sided=True, progress=False, run_dir=tmp_path / "run")
    samples = result.sampler.sample(2000, seed=3)
    assert samples.shape == (2000, 2)
    assert (samples.mean(0) - TARGET_MEAN).norm() < 0.3, samples.mean(0)
    assert (tmp_path / "run" / "samples").is_dir() and list((tmp_path / "run" / "samples").glob("*.png"))
    # the user's generator stays exactly as it was
    assert torch.equal(result.sampler.generator.module.lin.weight, toy_models.ShiftGenerator().lin.weight)

    # one file; the factory-built generator rebuilds itself, the user's miner is passed back in
    path = tmp_path / "mined.safetensors"
    fm.save_sampler(path, result.sampler)
    again = fm.load_sampler(path, miner=toy_models.make_miner())
    torch.testing.assert_close(again.sample(64, seed=5), result.sampler.sample(64, seed=5))


def test_a_function_target_is_drawn_from_the_trainers_stream_and_mined():
    """An unbounded target given as ``f(n, generator)``: every real batch is a fresh draw."""
    streams = []

    def gaussian(n, generator):
        streams.append(generator)
        return TARGET_MEAN + 0.3 * torch.randn(n, 2, generator=generator)

    G = shift_generator()
    source_gap = (fm.Sampler(G).sample(2000).mean(0) - TARGET_MEAN).norm()
    result = fm.mine(G, gaussian, miner=toy_models.make_miner(), seed_dim=3, critic=toy_models.make_critic(),
                     steps=100, batch_size=128, lr=2e-3, critic_lr=2e-3, gp_one_sided=True, progress=False)
    mined_gap = (result.sampler.sample(2000, seed=3).mean(0) - TARGET_MEAN).norm()
    assert source_gap > 1.5 and mined_gap < 0.3, (source_gap, mined_gap)
    # one example draw to size the critic, then n_critic real batches per update, each from the
    # trainer's own random stream (so a resumed run replays the same batches)
    assert len(streams) == 1 + 100 * 5
    trainer_streams = {id(g) for g in streams[1:]}
    assert len(trainer_streams) == 1 and id(streams[0]) not in trainer_streams


def test_a_one_argument_target_function_runs():
    sizes = []

    def gaussian(n):
        sizes.append(n)
        return TARGET_MEAN + 0.3 * torch.randn(n, 2)

    result = fm.mine(shift_generator(), gaussian, critic=toy_models.make_critic(), steps=3, batch_size=16,
                     n_critic=2, progress=False, invert_cfg=QUICK_INVERSION)
    assert sizes[1:] == [16] * 6  # after the example draw: the real batches, batch_size each
    assert result.sampler.sample(10).shape == (10, 2)
    assert all(torch.isfinite(torch.tensor(v)) for v in result.metrics.values() if isinstance(v, float))


def test_reprogramming_uses_uniform_seeds_and_lee_defaults(tmp_path):
    torch.manual_seed(0)
    target = torch.tensor([1.0, 1.0]) + 0.2 * torch.randn(256, 2)
    result = fm.reprogram(shift_generator(), target, critic=toy_models.make_critic(), steps=5, progress=False,
                          run_dir=tmp_path / "r", invert_cfg=QUICK_INVERSION)
    cfg = fm.load_config(tmp_path / "r" / "config.yaml")
    assert (cfg.loss.gp_weight, cfg.train.n_critic, cfg.train.batch_size, cfg.train.lr) == (1.0, 10, 32, 1e-4)
    assert (cfg.miner.seed_dist, cfg.miner.init) == ("uniform", "inversion")
    assert result.sampler.seed_dist == "uniform"
    u = result.sampler.draw_seeds(1000)
    assert u.min() >= 0 and u.max() <= 1


def test_a_flat_setting_overrides_the_methods_default_in_its_section(tmp_path):
    """``seed_dist="normal"`` is miner.seed_dist: reprogramming then draws normal seeds."""
    target = torch.tensor([1.0, 1.0]) + 0.2 * torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    result = fm.reprogram(shift_generator(), target, critic=toy_models.make_critic(), seed_dist="normal", steps=2,
                          progress=False, run_dir=tmp_path / "r", invert_cfg=QUICK_INVERSION)
    assert result.sampler.seed_dist == "normal" and result.sampler.miner.seed_dist == "normal"
    assert fm.load_config(tmp_path / "r" / "config.yaml").miner.seed_dist == "normal"
    u = result.sampler.draw_seeds(1000, torch.Generator().manual_seed(1))
    assert u.min() < 0 and u.max() > 1  # not U[0, 1]
    assert abs(u.mean().item()) < 0.1 and abs(u.std().item() - 1) < 0.1


def test_a_million_sample_target_inverts_a_seeded_subset(capsys):
    """Lee et al.'s Theorem-1 toy as a user writes it: 10^6 samples of a 4-d Gaussian handed to
    fm.reprogram. The inversion start inverts invert.max_images of them (512 by default), chosen
    with the run's seed, and says so; the whole target would take more than 10 minutes."""
    gauss = torch.randn(1_000_000, 4, generator=torch.Generator().manual_seed(0)) * 0.5 + 1.0
    G = fm.new_generator(gauss[:2], ModelConfig(arch="mlp", latent_dim=4, width=8, depth=2))
    G.freeze(True)
    fast = {"steps": 5, "encoder_steps": 5, "fit_steps": 5}  # the subject is how many are inverted
    run = fm.prepare(G, gauss, method="reprogram", steps=1, progress=False, invert_cfg=fast)
    out = capsys.readouterr().out
    assert "miner.init=inversion: inverted 512 images" in out
    assert "a random 512 of the target's 1000000 (invert.max_images)" in out
    assert run.trainer.cfg.invert.max_images == 512
    fm.prepare(G, gauss[:300], method="reprogram", steps=1, progress=False, invert_cfg={**fast, "max_images": 64})
    assert "inverted 64 images" in capsys.readouterr().out
    fm.prepare(G, gauss[:50], method="reprogram", steps=1, progress=False, invert_cfg=fast)
    assert "inverted 50 images" in (out := capsys.readouterr().out) and "the whole target" in out


def test_the_inverted_subset_is_seeded():
    a, b, c = subset_indices(10_000, 512, 0), subset_indices(10_000, 512, 0), subset_indices(10_000, 512, 1)
    assert len(a) == 512 == len(set(a.tolist())) and (a == b).all() and not (a == c).all()


def test_a_users_miner_is_kept_unless_inversion_is_asked_for(capsys):
    target = TARGET_MEAN + 0.3 * torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    G = shift_generator()
    torch.manual_seed(0)
    given = toy_models.make_miner()
    before = [p.detach().clone() for p in given.parameters()]
    fast = {"steps": 5, "encoder_steps": 5, "fit_steps": 20}
    run = fm.prepare(G, target, miner=given, seed_dim=3, steps=1, progress=False, invert_cfg=fast)
    assert run.trainer.cfg.miner.init == "given" and "miner.init=inversion" not in capsys.readouterr().out
    assert all(torch.equal(a, b) for a, b in zip(before, given.parameters()))
    # asked for explicitly: the given miner is fitted to the inverted target, and the run says so
    run = fm.prepare(G, target, miner=given, seed_dim=3, steps=1, progress=False, invert_cfg=fast,
                     miner_cfg={"init": "inversion"})
    assert run.trainer.cfg.miner.init == "inversion" and "miner.init=inversion: inverted" in capsys.readouterr().out
    assert not all(torch.equal(a, b) for a, b in zip(before, given.parameters()))
    with pytest.raises(fm.ConfigError, match="miner.init=given keeps a miner you pass .*, but none was given; "
                                             "choose normal, residual or inversion"):
        fm.prepare(G, target, steps=1, progress=False, miner_cfg={"init": "given"})
