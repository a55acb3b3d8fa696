"""GAN inversion: a generator's own images are recovered, a miner is fitted to inverted
latents, and mining can start from them (miner.init=inversion)."""
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import fastmine as fm
from fastmine.cli import main
from fastmine.inversion import covariance_distance, fit_miner

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def own_images(digits_source):
    G = fm.load_generator(str(digits_source))
    with torch.no_grad():
        z = torch.randn(16, 32, generator=torch.Generator().manual_seed(1))
        return G, z, G(z)


@pytest.mark.parametrize("init, steps, bound", [("prior", 200, 0.1), ("encoder", 100, 0.05), ("encoder", 0, 0.3)])
def test_a_generators_own_images_are_recovered(own_images, init, steps, bound):
    G, z, images = own_images
    inv = fm.invert(G, images, init=init, steps=steps, encoder_steps=300, progress=False)
    # mean pixel MSE against what random latents give for the same images: optimisation
    # (init=prior) and the hybrid (encoder, then optimisation) far below it, the encoder alone below
    ratio = (inv.pixel_error.mean() / inv.baseline_error.mean()).item()
    assert ratio < bound, (init, steps, ratio)
    with torch.no_grad():
        torch.testing.assert_close(G(inv.latents), inv.images)
    assert inv.latents["z"].shape == z.shape


def test_unknown_inversion_settings_name_the_section(own_images):
    G, _, images = own_images
    with pytest.raises(fm.ConfigError, match="unknown config key 'invert.stepz'; valid keys in 'invert'"):
        fm.invert(G, images, stepz=3)


def test_the_fitted_miner_matches_the_latents_mean_and_covariance():
    torch.manual_seed(0)
    spec = fm.LatentSpec({"z": ((4,), "normal")})
    mix = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.3, 0.0], [0.0, 0.2, 0.0, 0.8]])
    target = torch.randn(2000, 4) @ mix + torch.tensor([2.0, -1.0, 0.5, 0.0])
    adapter = fm.GeneratorAdapter(torch.nn.Identity(), spec)
    sampler = fm.Sampler(adapter, fm.Miner(spec, init="residual"))
    losses = fit_miner(sampler.miner, sampler, target, steps=600, lr=1e-2, batch_size=2048)
    with torch.no_grad():
        out = sampler.latents(sampler.draw_seeds(20000, torch.Generator().manual_seed(3)))["z"]
    assert losses[-1] < 0.02 * losses[0]
    torch.testing.assert_close(out.mean(0), target.mean(0), atol=0.05, rtol=0)
    # from the residual start (identity covariance) the gaps were up to 0.91
    torch.testing.assert_close(torch.cov(out.T), torch.cov(target.T), atol=0.1, rtol=0)


def test_mining_starts_from_the_inverted_latents(digits_source, tmp_path):
    target = fm.load_digits(labels=[9], limit=48, size=8)
    run = fm.prepare(str(digits_source), target, init="inversion", steps=2, batch_size=16, progress=False,
                     run_dir=tmp_path / "inv", invert_cfg={"steps": 50, "encoder_steps": 200, "fit_steps": 300})
    inverted = load_file(str(tmp_path / "inv" / "inverted_latents.safetensors"))["latent.z"]
    sampler = run.trainer.sampler
    with torch.no_grad():
        mined = sampler.latents(sampler.draw_seeds(4000, torch.Generator().manual_seed(0)))["z"]
    prior_gap = inverted.mean(0).norm()  # how far the inverted latents sit from the prior's mean
    assert (mined.mean(0) - inverted.mean(0)).norm() < 0.25 * prior_gap
    run.fit()
    assert (tmp_path / "inv" / "model.safetensors").is_file()


def test_cli_invert_writes_latents_and_a_grid(digits_source, tmp_path, capsys):
    out = tmp_path / "inv"
    assert main(["invert", str(digits_source), "data.size=8", "data.limit=20", "invert.steps=20",
                 "invert.encoder_steps=50", "log.progress=false", "--out", str(out)]) == 0
    summary = json.loads((out / "inversion.json").read_text())
    assert summary["n"] == 20 and summary["pixel_mse"] < summary["random_latent_pixel_mse"]
    assert load_file(str(out / "latents.safetensors"))["latent.z"].shape == (20, 32)
    with Image.open(out / "reconstruction.png") as im:
        assert im.size[0] > im.size[1] > 0  # 16 per row: targets above their reconstructions
    assert "inverted 20 images: pixel MSE" in capsys.readouterr().out
    assert main(["invert", str(digits_source), "--out", str(out)]) == 2  # never overwrites


@pytest.mark.parametrize("d", [23, 61])  # 61 > 37 + 11 samples: the Gram form; 23: the d×d one
def test_covariance_distance_equals_the_frobenius_norm_of_the_covariance_difference(d):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, d, generator=g, dtype=torch.float64) * 2 + 1
    y = torch.randn(11, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    x, y = x - x.mean(0), y - y.mean(0)
    direct = (torch.cov(x.T) - torch.cov(y.T)).pow(2).sum()
    torch.testing.assert_close(covariance_distance(x, y), direct, rtol=1e-12, atol=0)
    xg = x.clone().requires_grad_(True)
    (gram,) = torch.autograd.grad(covariance_distance(xg, y), xg)
    xd = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad((torch.cov(xd.T) - torch.cov(y.T)).pow(2).sum(), xd)
    torch.testing.assert_close(gram, ref, rtol=1e-10, atol=1e-12)
