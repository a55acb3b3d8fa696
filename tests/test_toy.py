"""A user's own generator, miner and critic on vector data: no fastmine subclass needed."""

import torch

import fastmine as fm
import toy_models


def test_user_modules_mine_a_2d_gaussian(tmp_path):
    torch.manual_seed(0)
    target_mean = torch.tensor([2.0, -1.0])
    target = target_mean + 0.3 * torch.randn(512, 2)
    G = fm.load_generator("toy_models:make_generator", latent_spec={"z": ((2,), "normal")})
    source_mean = fm.Sampler(G).sample(2000).mean(0)
    assert (source_mean - target_mean).norm() > 1.5
    # one-sided penalty (WGAN-LP): with the two-sided one the sampler stalled 0.36 away
    # from the target mean here (DESIGN.md §2 explains the trap on low-dimensional data)
    result = fm.mine(G, target, miner=toy_models.make_miner(), miner_cfg={"seed_dim": 3}, critic=toy_models.make_critic(),
                     steps=300, batch_size=128, lr=2e-3, critic_lr=2e-3,
                     gp_one_sided=True, progress=False, run_dir=tmp_path / "run")
    samples = result.sampler.sample(2000, seed=3)
    assert samples.shape == (2000, 2)
    assert (samples.mean(0) - target_mean).norm() < 0.3, samples.mean(0)
    assert (tmp_path / "run" / "samples").is_dir() and list((tmp_path / "run" / "samples").glob("*.png"))
    # the user's generator stays exactly as it was
    assert torch.equal(result.sampler.generator.module.lin.weight, toy_models.ShiftGenerator().lin.weight)

    # one file; the factory-built generator rebuilds itself, the user's miner is passed back in
    path = tmp_path / "mined.safetensors"
    fm.save_sampler(path, result.sampler)
    again = fm.load_sampler(path, miner=toy_models.make_miner())
    torch.testing.assert_close(again.sample(64, seed=5), result.sampler.sample(64, seed=5))


def test_reprogramming_uses_uniform_seeds_and_lee_defaults(tmp_path):
    torch.manual_seed(0)
    target = torch.tensor([1.0, 1.0]) + 0.2 * torch.randn(256, 2)
    G = fm.load_generator("toy_models:make_generator", latent_spec={"z": ((2,), "normal")})
    result = fm.reprogram(G, target, critic=toy_models.make_critic(), steps=5, progress=False, run_dir=tmp_path / "r")
    cfg = (tmp_path / "r" / "config.yaml").read_text()
    for line in ("gp_weight: 1.0", "n_critic: 10", "batch_size: 32", "lr: 0.0001", "seed_dist: uniform"):
        assert line in cfg, line
    assert result.sampler.seed_dist == "uniform"
    u = result.sampler.draw_seeds(1000)
    assert u.min() >= 0 and u.max() <= 1
