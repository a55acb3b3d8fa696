"""fastmine.zoo.pggan: Progressive GAN checkpoints of pytorch_GAN_zoo and genforce, against their code.

The fixtures (made by scripts/reference_pggan.py) are the official save formats of two small
networks (16 px, widths 16 -> 8): pggan_ganzoo_tiny.pth (ProgressiveGAN.save: its config pickled as
pytorch_GAN_zoo's BaseConfig, netG, netD, avgG) and pggan_genforce_tiny.pth (genforce's converter's
{generator, discriminator, generator_smooth}), plus the images and critic scores the official code
computed from them (pggan_*.safetensors).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import fastmine as fm
from fastmine.cli import main as cli
from fastmine.files import has_critic, load_critic, load_sampler
from fastmine.inversion import Inversion, fit_miner
from fastmine.zoo import StyleGANCritic, ZSource, pggan

FIXTURES = Path(__file__).parent / "fixtures" / "official"
TOL = 1e-4  # the bar for fp32 images against the official code
STORES = {"ganzoo": ("pggan_ganzoo", "avgG", "netD"), "genforce": ("pggan_genforce", "generator_smooth",
                                                                    "discriminator")}


def refs(store):
    return load_file(str(FIXTURES / f"pggan_{store}.safetensors"))


@pytest.mark.parametrize("store", STORES)
def test_checkpoint_gives_the_official_images_and_critic_scores(store):
    family, g_key, d_key = STORES[store]
    path, ref = FIXTURES / f"pggan_{store}_tiny.pth", refs(store)
    adapter = fm.load_generator(path)
    assert isinstance(adapter.module, ZSource) and adapter.module.family == family
    assert dict(adapter.latent_spec.items())["z"].shape == (16,)
    with torch.no_grad():
        img = adapter({"z": ref["z"]})
    assert img.shape == (3, 3, 16, 16)
    assert (img - ref["img"]).abs().max() <= TOL
    assert has_critic(path)
    critic = load_critic(path)
    assert isinstance(critic, StyleGANCritic) and critic.family == family
    with torch.no_grad():
        scores = critic(ref["images"].float())
    assert (scores - ref["d_scores"][:, 0]).abs().max() <= TOL


def test_ganzoo_config_sets_the_architecture_and_key_picks_the_raw_generator():
    path, ref = FIXTURES / "pggan_ganzoo_tiny.pth", refs("ganzoo")
    weights = fm.files.read_weights(path)
    assert weights.where == "avgG"
    assert weights.kwargs == dict(dimLatent=16, depthScale0=16, depthOtherScales=[16, 8], leakyReluLeak=0.2,
                                  equalizedlR=True, normalization=True, generationActivation=None, dimOutput=3)
    assert fm.files.read_weights(path, "critic").kwargs["miniBatchNormalization"] is True
    with torch.no_grad():
        raw = fm.load_generator(path, key="netG")({"z": ref["z"]})
    assert (raw - ref["img_raw"]).abs().max() <= TOL
    assert (raw - ref["img"]).abs().max() > 0.1  # netG and avgG differ: the key did pick another network


def test_genforce_widths_and_resolution_come_from_the_tensors():
    path = FIXTURES / "pggan_genforce_tiny.pth"
    assert fm.files.read_weights(path).kwargs == dict(resolution=16, z_space_dim=16, image_channels=3,
                                                      fmaps_base=128, fmaps_max=16)
    assert fm.files.read_weights(path, "critic").kwargs == dict(resolution=16, image_channels=3,
                                                                minibatch_std_group_size=16, fmaps_base=128,
                                                                fmaps_max=16)
    # the official full-size widths (512 up to 32 px, then halving) give the official fmaps
    widths = {4 * 2 ** b: min(16384 // (4 * 2 ** b), 512) for b in range(9)}
    assert pggan.fmaps_for(widths, path) == dict(fmaps_base=16384, fmaps_max=512)


def test_files_saved_mid_growth_or_conditional_are_refused(tmp_path):
    obj = fm.checkpoints.load_checkpoint(FIXTURES / "pggan_ganzoo_tiny.pth")
    obj["config"].alpha = 0.5
    torch.save(obj, tmp_path / "mid.pth")
    with pytest.raises(ValueError, match=r"blending in a new scale \(alpha=0.5\); fastmine builds a PGAN at its "
                                         "final scale"):
        fm.load_generator(tmp_path / "mid.pth")
    genforce = torch.load(FIXTURES / "pggan_genforce_tiny.pth")
    genforce["generator_smooth"]["lod"] = torch.tensor(1.0)
    torch.save(genforce, tmp_path / "lod.pth")
    with pytest.raises(ValueError, match=r"generator_smooth is at lod=1.0 .*final resolution \(lod 0\)"):
        fm.load_generator(tmp_path / "lod.pth")
    with pytest.raises(ValueError, match=r"without 'G_avg' \(it has generator, discriminator, generator_smooth\)"):
        fm.load_generator(FIXTURES / "pggan_genforce_tiny.pth", key="G_avg")


def test_a_ganzoo_checkpoint_of_another_architecture_is_refused_with_its_keys(tmp_path):
    # pytorch_GAN_zoo's StyleGAN (the FFHQ hub model): not built by fastmine
    netG = {"scaleLayers.0.module.weight": torch.zeros(2, 2, 3, 3), "mapping.FC.0.module.weight": torch.ones(2, 2)}
    torch.save({"config": {"depthScale0": 2}, "netG": netG, "netD": {}, "avgG": netG}, tmp_path / "sg.pth")
    with pytest.raises(ValueError) as e:
        fm.load_generator(tmp_path / "sg.pth")
    assert str(e.value) == (
        f"{str(tmp_path / 'sg.pth')!r} is a pytorch_GAN_zoo checkpoint of an architecture fastmine does not build "
        "(netG keys: scaleLayers.0.module.weight, mapping.FC.0.module.weight); fastmine builds its PGAN "
        "(formatLayer.module.weight, groupScale0, scaleLayers, toRGBLayers) and DCGAN (formatLayer.weight, main.*)")


def test_ganzoo_dcgan_gives_the_official_images_with_its_batch_statistics():
    path, ref = FIXTURES / "dcgan_ganzoo_tiny.pth", load_file(str(FIXTURES / "dcgan_ganzoo.safetensors"))
    adapter = fm.load_generator(path)
    assert isinstance(adapter.module, ZSource) and adapter.module.family == "dcgan_ganzoo"
    assert adapter.module.kwargs == dict(dimLatentVector=16, dimOutput=3, dimModelG=8, depthModel=2,
                                         generationActivation="tanh")
    with torch.no_grad():
        img = adapter({"z": ref["z"]})
    assert img.shape == (3, 3, 32, 32) and (img - ref["img"]).abs().max() <= TOL
    with pytest.raises(ValueError, match="DCGAN checkpoint: fastmine builds its generator, not its discriminator"):
        load_critic(path)


def test_stylegan_settings_are_refused_for_a_z_only_generator():
    with pytest.raises(ValueError, match="a pggan_genforce generator is mined in z only: leave latent unset"):
        fm.load_generator(FIXTURES / "pggan_genforce_tiny.pth", latent="w")
    with pytest.raises(ValueError, match="mined in z only: leave truncation_psi unset"):
        fm.load_generator(FIXTURES / "pggan_genforce_tiny.pth", truncation_psi=0.7)


@pytest.mark.parametrize("module", ["tfutil", "dnnlib.tflib.network"])
def test_a_tensorflow_progan_pickle_is_refused_naming_the_converter(tmp_path, module):
    path = tmp_path / "karras2018iclr-celebahq-1024x1024.pkl"
    # the head of NVIDIA's TF release: (G, D, Gs), Network objects whose state names their build function
    path.write_bytes(b"\x80\x02(c" + module.encode() + b"\nNetwork\nq\x00)\x81q\x01}q\x02X\x0f\x00\x00\x00"
                     b"build_func_nameq\x03X\x10\x00\x00\x00networks.G_paperq\x04sb.")
    with pytest.raises(ValueError) as e:
        fm.load_generator(path)
    assert str(e.value) == (
        f"{path} is a TensorFlow-era Progressive GAN pickle ({module}.Network); fastmine reads its PyTorch "
        "checkpoints: convert it with genforce's converter (github.com/genforce/genforce, TensorFlow 1.x), python "
        f"convert_model.py pggan --source_model_path={path} --target_model_path=converted.pth")


def test_converted_file_reloads_with_the_same_images_and_critic(tmp_path, capsys):
    out = tmp_path / "pggan.safetensors"
    assert cli(["convert", str(FIXTURES / "pggan_ganzoo_tiny.pth"), str(out)]) == 0
    sampler = load_sampler(out)
    ref = refs("ganzoo")
    with torch.no_grad():
        img = sampler.generator({"z": ref["z"]})
    assert (img - ref["img"]).abs().max() <= TOL
    assert isinstance(load_critic(out), StyleGANCritic)


@pytest.mark.slow  # about a minute on a shared CPU: the default inversion start, then 60 updates
def test_mining_a_pggan_moves_its_samples_to_the_target():
    path = FIXTURES / "pggan_genforce_tiny.pth"
    src = fm.load_generator(path)
    gen = torch.Generator().manual_seed(1)
    centre = torch.randn(16, generator=gen)
    with torch.no_grad():
        target = src({"z": centre + 0.3 * torch.randn(64, 16, generator=gen)})
        before = nearest(src({"z": torch.randn(64, 16, generator=gen)}), target)
    result = fm.mine(path, target, steps=60, batch_size=16, seed=0, log_every=1000, progress=False)
    after = nearest(result.sampler.sample(64, seed=3), target)
    assert after < 0.8 * before, (before, after)


def nearest(x, target):
    return torch.cdist(x.flatten(1), target.flatten(1)).min(1).values.mean().item()


def test_the_ganzoo_config_is_read_as_data_not_run(tmp_path):
    # the pickled config names pytorch_GAN_zoo's class; no module of that name exists here, nothing is imported
    data = (FIXTURES / "pggan_ganzoo_tiny.pth").read_bytes()
    assert b"models.utils.config" in data
    assert pickle.whichmodule is not None and "models" not in __import__("sys").modules
    assert fm.checkpoints.load_checkpoint(FIXTURES / "pggan_ganzoo_tiny.pth")["config"].depthScale0 == 16


def test_the_inversion_start_fits_a_progan_on_its_sphere():
    # ProGAN pixel-normalises z, so the inversion's prior penalty shrinks the inverted latents'
    # free length (measured: to ~1/3 of sqrt(d) on a 32-d genforce network). Fitted as they are,
    # the miner's start left every sample outside the target region (issue #26).
    src = fm.load_generator(FIXTURES / "pggan_genforce_tiny.pth")
    assert src.latent_spec["z"].sphere and fm.LatentSpec.from_dict(src.latent_spec.to_dict()) == src.latent_spec
    gen = torch.Generator().manual_seed(1)
    centre = torch.randn(16, generator=gen)
    centre = centre / centre.norm() * 16 ** 0.5
    z = centre + 0.3 * torch.randn(100, 16, generator=gen)
    with torch.no_grad():
        target = src({"z": z})
    own = torch.cdist(target.flatten(1), target.flatten(1)).fill_diagonal_(float("inf")).min(1).values
    inverted = Inversion({"z": z / 3}, target, torch.zeros(100), None, torch.ones(100))
    flat = inverted.flat(src.latent_spec)
    torch.testing.assert_close(flat.norm(dim=1), torch.full((100,), 4.0))
    torch.manual_seed(0)
    sampler = fm.Sampler(src, fm.Miner(src.latent_spec, init="residual"))
    fit_miner(sampler.miner, sampler, flat, seed=0)  # the defaults of invert.fit_steps / fit_lr
    with torch.no_grad():
        samples = sampler.sample(200, seed=3)
    share = (torch.cdist(samples.flatten(1), target.flatten(1)).min(1).values < own.quantile(0.95)).float().mean()
    assert share > 0.1, share  # 0.20; fitted at the short length: 0.005
