"""fastmine.zoo.stylegan1: genforce's StyleGAN (v1) checkpoints against genforce's code.

The fixture (tests/fixtures/official/stylegan1_genforce.safetensors, made by
scripts/reference_stylegan1.py) holds a small 128 px genforce StyleGANGenerator (its fused upsampling
from 128 px included) as float16-valued tensors under genforce's names, with the float32 images
genforce's code computed: z[0] untruncated, z[1] at psi 0.7 on the first 8 of its 12 layers; and
its discriminator (D.*) with the scores genforce's code gives 4 images built from those two.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import fastmine as fm
from fastmine.files import has_critic, load_critic, load_sampler
from fastmine.zoo import StyleGANCritic, StyleGANSource, stylegan1

FIXTURES = Path(__file__).parent / "fixtures" / "official"
TOL = 1e-4  # the bar for fp32 images against the official code


def fixture():
    with safe_open(str(FIXTURES / "stylegan1_genforce.safetensors"), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    state = {k: v.float() for k, v in tensors.items() if "." in k and not k.startswith("D.")}
    refs = {k: v for k, v in tensors.items() if "." not in k}
    refs["D"] = {k[2:]: v.float() for k, v in tensors.items() if k.startswith("D.")}
    return state, refs, {k: json.loads(v) if v[:1] in "{[" else v for k, v in meta.items()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The checkpoint as genforce's converter writes it: generator, discriminator, generator_smooth."""
    state, refs, meta = fixture()
    raw = {k: v + 0.5 if k.endswith("style.bias") else v for k, v in state.items()}  # another network as "generator"
    path = tmp_path_factory.mktemp("stylegan1") / "stylegan_ffhq1024.pth"
    torch.save({"generator": raw, "discriminator": refs["D"], "generator_smooth": state}, path)
    return path, refs, meta


def test_checkpoint_gives_the_official_images_with_and_without_truncation(checkpoint):
    path, refs, meta = checkpoint
    adapter = fm.load_generator(path)
    assert isinstance(adapter.module, StyleGANSource) and adapter.module.family == "stylegan1"
    truncated = fm.load_generator(path, truncation_psi=float(meta["psi"]), truncation_cutoff=int(meta["cutoff"]))
    with torch.no_grad():
        img1 = adapter({"z": refs["z"][:1]})
        img07 = truncated({"z": refs["z"][1:]})
        untruncated = adapter({"z": refs["z"][1:]})
    assert (img1 - refs["img_psi1"]).abs().max() <= TOL
    assert (img07 - refs["img_psi07_cutoff8"]).abs().max() <= TOL
    assert (untruncated - refs["img_psi07_cutoff8"]).abs().max() > 0.1  # the truncation did change the image


def test_the_kwargs_come_from_the_tensors_and_key_picks_the_raw_generator(checkpoint):
    path, refs, meta = checkpoint
    weights = fm.files.read_weights(path)
    kwargs = meta["init_kwargs"]
    assert weights.where == "generator_smooth"
    assert weights.kwargs == dict(kwargs, image_channels=3)
    assert "mapping.w_avg" in weights.state and "truncation.w_avg" not in weights.state
    raw = fm.load_generator(path, key="generator").module.net.state_dict()
    assert torch.equal(raw["synthesis.layer3.style.bias"], weights.state["synthesis.layer3.style.bias"] + 0.5)
    # the fused path is where the released models take it: from 128 px
    net = stylegan1.Generator(**kwargs)
    assert [net.synthesis.layer10.fused_scale, net.synthesis.layer8.fused_scale] == [True, False]


def test_w_and_w_plus_are_standardised_as_for_stylegan2(checkpoint):
    path, refs, _ = checkpoint
    w = fm.load_generator(path, latent="w").module
    wplus = fm.load_generator(path, latent="w+").module
    assert w.latent_spec["w"].shape == (16,) and wplus.latent_spec["w"].shape == (12, 16)
    g = w.net
    with torch.no_grad():
        ws = g.mapping(refs["z"][:1])
        x = (ws[:, 0] - g.mapping.w_avg) / w.w_std
        assert (w(w=x) - refs["img_psi1"]).abs().max() <= TOL
        assert (wplus(w=x.unsqueeze(1).expand(-1, 12, -1)) - refs["img_psi1"]).abs().max() <= TOL
        samples = g.mapping(torch.randn(2000, 16, generator=torch.Generator().manual_seed(0)))[:, 0]
    assert torch.allclose(((samples - g.mapping.w_avg) / w.w_std).std(0), torch.ones(16), atol=0.1)


def test_the_discriminator_gives_the_official_scores_as_the_first_critic(checkpoint):
    path, refs, meta = checkpoint
    assert has_critic(path)
    critic = load_critic(path)
    assert isinstance(critic, StyleGANCritic) and critic.family == "stylegan1"
    assert critic.kwargs == dict(resolution=128, image_channels=3, minibatch_std_group_size=4, fmaps_base=256,
                                 fmaps_max=16)
    assert critic.net.fused == [True, False, False, False, False]  # stride-2 at 128 px, as the released models
    x = torch.cat([refs["img_psi1"], refs["img_psi07_cutoff8"]]) * 0.5
    with torch.no_grad():
        scores = critic(torch.cat([x, x.flip(3)]))
    assert (scores - refs["d_scores"][:, 0]).abs().max() <= TOL


def test_noise_modes(checkpoint):
    path, refs, _ = checkpoint
    with torch.no_grad():
        none = fm.load_generator(path, noise_mode="none")({"z": refs["z"][:1]})
        rand = fm.load_generator(path, noise_mode="random")({"z": refs["z"][:1]})
    assert (none - refs["img_psi1"]).abs().max() > 1e-3 and (rand - none).abs().max() > 1e-3


def test_converted_file_reloads_with_the_same_images(checkpoint, tmp_path):
    path, refs, meta = checkpoint
    out = tmp_path / "sg1.safetensors"
    fm.files.convert(path, out, latent="z", truncation_psi=float(meta["psi"]), truncation_cutoff=int(meta["cutoff"]))
    sampler = load_sampler(out)
    with torch.no_grad():
        img = sampler.generator({"z": refs["z"][1:]})
    assert (img - refs["img_psi07_cutoff8"]).abs().max() <= TOL
    assert isinstance(load_critic(out), StyleGANCritic)


def test_mid_growth_and_per_layer_w_files_are_refused(tmp_path):
    state, _, _ = fixture()
    bad = dict(state, **{"synthesis.lod": torch.tensor(2.0)})
    torch.save({"generator_smooth": bad}, tmp_path / "lod.pth")
    with pytest.raises(ValueError, match=r"generator_smooth is at lod=2.0 \(mid progressive growing\)"):
        fm.load_generator(tmp_path / "lod.pth")
    bad = dict(state, **{"truncation.w_avg": torch.zeros(12 * 16)})
    torch.save({"generator_smooth": bad}, tmp_path / "wp.pth")
    with pytest.raises(ValueError, match=r"a w per layer \(repeat_w=False\), which fastmine does not build"):
        fm.load_generator(tmp_path / "wp.pth")


def test_a_tensorflow_stylegan_pickle_is_refused_naming_the_converter(tmp_path):
    path = tmp_path / "karras2019stylegan-ffhq-1024x1024.pkl"
    path.write_bytes(b"\x80\x02(cdnnlib.tflib.network\nNetwork\nq\x00)\x81q\x01}q\x02X\x0f\x00\x00\x00"
                     b"build_func_nameq\x03X\x07\x00\x00\x00G_styleq\x04sb.")
    with pytest.raises(ValueError) as e:
        fm.load_generator(path)
    assert str(e.value) == (
        f"{path} is a TensorFlow-era StyleGAN (v1) pickle (dnnlib.tflib.network.Network); fastmine reads its PyTorch "
        "checkpoints: convert it with genforce's converter (github.com/genforce/genforce, TensorFlow 1.x), python "
        f"convert_model.py stylegan --source_model_path={path} --target_model_path=converted.pth")


# --------------------------------------------------------------------------- rosinality/style-based-gan-pytorch
def rosinality_fixture():
    with safe_open(str(FIXTURES / "stylegan1_rosinality.safetensors"), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    state = {k: v.float() for k, v in tensors.items() if "." in k and not k.startswith("D.")}
    refs = {k: v.float() for k, v in tensors.items() if "." not in k}
    refs["D"] = {k[2:]: v.float() for k, v in tensors.items() if k.startswith("D.")}
    return state, refs, {k: json.loads(v) if v[:1] in "{[" else v for k, v in meta.items()}


@pytest.fixture(scope="module")
def rosinality_checkpoint(tmp_path_factory):
    """rosinality's train.py checkpoint: generator, discriminator, optimisers, g_running."""
    state, refs, meta = rosinality_fixture()
    path = tmp_path_factory.mktemp("sbgan") / "train_step-5.model"
    torch.save({"generator": state, "discriminator": refs["D"],
                "g_optimizer": {"state": {}, "param_groups": []}, "g_running": state}, path)
    return path, refs, meta


def test_rosinality_checkpoint_gives_rosinality_images(rosinality_checkpoint):
    path, refs, meta = rosinality_checkpoint
    adapter = fm.load_generator(path, truncation_psi=float(meta["psi"]))
    g = adapter.module.net
    assert adapter.module.family == "stylegan1_rosinality" and g.img_resolution == 128
    g.mapping.w_avg.copy_(refs["mean_style"][0])  # rosinality's truncation latent for these images
    noise = [refs[f"noise{b}"] for b in range(int(meta["step"]) + 1)]
    with torch.no_grad():
        img1 = g.synthesis(g.mapping(refs["z"][:1]), noise=noise)
        img07 = g.synthesis(adapter.module.ws(z=refs["z"][1:]), noise=noise)
    assert (img1 - refs["img_psi1"]).abs().max() <= TOL
    assert (img07 - refs["img_psi07"]).abs().max() <= TOL


def test_rosinality_resolution_and_widths_come_from_the_trained_blocks(rosinality_checkpoint):
    path, _, meta = rosinality_checkpoint
    weights = fm.files.read_weights(path)
    # the seventh (256 px) block is as initialised: not part of the network built
    assert weights.where == "g_running"
    assert weights.kwargs == dict(size=128, code_dim=16, n_mlp=4, channels=meta["widths"][:6], fused=True)
    assert not any(k.startswith("generator.progression.6.") for k in weights.state)
    # w_avg, which rosinality's checkpoints lack, is estimated from its mapping
    state, refs, _ = rosinality_fixture()
    assert (weights.state["style.w_avg"] - refs["mean_style"][0]).abs().max() < 0.25 * refs["mean_style"].abs().max()
    # a bare g_running state dict (train.py's per-phase NNNNNN.model) loads too
    torch.save(state, path.with_name("010000.model"))
    assert fm.files.read_weights(path.with_name("010000.model")).where == "(state dict)"
    with torch.no_grad():
        a = fm.load_generator(path)({"z": refs["z"]})
        b = fm.load_generator(path)({"z": refs["z"]})
    assert torch.equal(a, b)  # noise_mode="const": fixed noise maps, deterministic images


def test_rosinality_discriminator_gives_its_scores_as_the_first_critic(rosinality_checkpoint):
    path, refs, _ = rosinality_checkpoint
    assert has_critic(path)
    critic = load_critic(path)
    assert critic.family == "stylegan1_rosinality" and critic.kwargs["size"] == 128
    # blocks 0-2 (1024-256 px inputs) are as initialised: the trained resolution is 128 px
    assert sorted(critic.net.progression) == ["3", "4", "5", "6", "7", "8"] and critic.net.fused[3]
    x = torch.cat([refs["img_psi1"], refs["img_psi07"]]) * 0.5
    with torch.no_grad():
        scores = critic(torch.cat([x, x.flip(3)]))
    assert (scores - refs["d_scores"][:, 0]).abs().max() <= TOL
