"""Real pretrained generators in (issue #15): files in each format built from the official
implementations' fixture weights load through ``fm.load_generator`` / ``load_critic`` /
``fastmine convert`` and give the official images; a tiny StyleGAN2 is mined in z, w and w+."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import fastmine as fm
from fastmine.cli import main as cli
from fastmine.files import has_critic, load_critic, load_sampler
from fastmine.nets import build_generator
from fastmine.zoo import StyleGANCritic, StyleGANSource, stylegan2, stylegan3

sys.path.insert(0, str(Path(__file__).parent))
import checkpoint_fixtures as cf  # noqa: E402  (tests/ is not a package)

FIXTURES = Path(__file__).parent / "fixtures" / "official"
TOL = 1e-4  # the bar for fp32 images against the official code


def fixture(name):
    """(weights in official names as float32, reference tensors, metadata) of a fixture file."""
    with safe_open(str(FIXTURES / f"{name}.safetensors"), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    weights = {k: v.float() for k, v in tensors.items() if "." in k}
    refs = {k: v for k, v in tensors.items() if "." not in k}
    return weights, refs, {k: json.loads(v) if v[:1] in "{[" else v for k, v in meta.items()}


def official_module(cls, name):
    """The fixture's network built by fastmine, remembering its kwargs as NVIDIA's persistence does."""
    weights, refs, meta = fixture(name)
    module = cf.persistent(cls, **meta["init_kwargs"]).eval().requires_grad_(False)
    module.load_state_dict(weights)
    return module, refs, meta


def network_pickle(path, G, D=None):
    """A training snapshot in NVIDIA's exact pickle layout (tests/checkpoint_fixtures.py)."""
    snap = {"G": G, "D": D, "G_ema": G, "augment_pipe": None,
            "training_set_kwargs": cf.EasyDict(path="data.zip", resolution=G.img_resolution, use_labels=False)}
    return cf.dump_network_pickle(snap, path)


def small_discriminator(resolution=32, seed=0):
    torch.manual_seed(seed)
    return cf.persistent(stylegan2.Discriminator, c_dim=0, img_resolution=resolution, img_channels=3,
                         channel_base=128, channel_max=16).eval()


@pytest.mark.parametrize("name,cls,family", [("stylegan2_ada_skip", stylegan2.Generator, "stylegan2"),
                                             ("stylegan2_ada_resnet_cond", stylegan2.Generator, "stylegan2"),
                                             ("stylegan3_t", stylegan3.Generator, "stylegan3"),
                                             ("stylegan3_r", stylegan3.Generator, "stylegan3")])
def test_network_pickle_gives_the_official_images(tmp_path, name, cls, family):
    G, refs, meta = official_module(cls, name)
    path = network_pickle(tmp_path / "network-snapshot.pkl", G, small_discriminator())
    for psi, ref in ((None, refs["img_psi1"]), (0.7, refs["img_psi07"])):
        adapter = fm.load_generator(path, truncation_psi=psi)
        assert isinstance(adapter.module, StyleGANSource) and adapter.module.family == family
        latents = {"z": refs["z"]}
        if G.c_dim:
            latents["c"] = refs["c"]
        with torch.no_grad():
            img = adapter(latents)
        err = (img - ref).abs().max().item()
        assert err <= TOL, f"{name} psi={psi}: max abs {err:.2e}"


def test_network_pickle_key_picks_the_raw_generator_and_critic_is_D(tmp_path):
    G, _, _ = official_module(stylegan2.Generator, "stylegan2_ada_skip")
    G_raw = cf.persistent(stylegan2.Generator, **fixture("stylegan2_ada_skip")[2]["init_kwargs"]).eval()
    D = small_discriminator()
    snap = {"G": G_raw, "D": D, "G_ema": G, "augment_pipe": None}
    path = cf.dump_network_pickle(snap, tmp_path / "snap.pkl")
    ema = fm.load_generator(path).module.net.state_dict()
    raw = fm.load_generator(path, key="G").module.net.state_dict()
    assert all(torch.equal(ema[k], v) for k, v in G.state_dict().items())
    assert all(torch.equal(raw[k], v) for k, v in G_raw.state_dict().items())
    assert has_critic(path)
    critic = load_critic(path)
    assert isinstance(critic, StyleGANCritic)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(critic(x), D(x, None).squeeze(1))
    with pytest.raises(ValueError, match=r"has no network 'G_avg'; its networks: G \(Generator\), D \(Discriminator\), "
                                         r"G_ema \(Generator\); pass key="):
        fm.load_generator(path, key="G_avg")
    with pytest.raises(ValueError, match=r"'D' is a Discriminator, not a Generator"):
        fm.load_generator(path, key="D")


def test_a_pickle_whose_module_source_writes_a_file_loads_without_writing_it(tmp_path):
    marker = tmp_path / "pwned"
    G, refs, _ = official_module(stylegan2.Generator, "stylegan2_ada_skip")
    evil = f"open({str(marker)!r}, 'w').write('ran')\nclass Generator: pass\n"
    path = cf.dump_network_pickle({"G_ema": G, "D": None}, tmp_path / "evil.pkl",
                                  sources={stylegan2.Generator: evil})
    assert evil.encode() in path.read_bytes()
    with torch.no_grad():
        img = fm.load_generator(path)({"z": refs["z"]})
    assert not marker.exists()
    assert (img - refs["img_psi1"]).abs().max() <= TOL


def rosinality_checkpoint(path, zip_format=True):
    """A rosinality train.py checkpoint: g, d, g_ema, optimiser states and argparse args."""
    g, grefs, gmeta = fixture("rosinality_generator")
    d, _, _ = fixture("rosinality_discriminator")
    g = {k: v for k, v in g.items()}
    ckpt = {"g": g, "d": d, "g_ema": g, "latent_avg": grefs["latent_avg"],
            "g_optim": {"state": {}, "param_groups": [{"lr": 0.002, "betas": (0.0, 0.99)}]},
            "args": argparse.Namespace(size=32, latent=32, n_mlp=2, arch="stylegan2", r1=10.0, iter=800000)}
    torch.save(ckpt, path, _use_new_zipfile_serialization=zip_format)
    return grefs, gmeta


@pytest.mark.parametrize("zip_format", [True, False])
def test_rosinality_checkpoint_gives_rosinality_images(tmp_path, zip_format):
    path = tmp_path / "550000.pt"
    refs, meta = rosinality_checkpoint(path, zip_format)
    adapter = fm.load_generator(path, truncation_psi=float(meta["psi"]))
    with torch.no_grad():
        img = adapter({"z": refs["z"]})
        img1 = fm.load_generator(path)({"z": refs["z"]})
    assert (img - refs["img_psi07"]).abs().max() <= TOL
    assert (img1 - refs["img_psi1"]).abs().max() <= TOL
    assert has_critic(path)
    _, drefs, _ = fixture("rosinality_discriminator")
    with torch.no_grad():
        logits = load_critic(path)(drefs["images"].float())
    assert (logits - drefs["d_logits"].squeeze(1)).abs().max() <= TOL


def test_everyday_checkpoint_saved_on_a_gpu_under_a_key_with_module_prefixes(tmp_path):
    """The DCGAN-tutorial checkpoint of the issue: {"netG_state_dict": ...} from DataParallel on cuda:0."""
    arch = {"type": "dcgan", "latent_dim": 8, "image_size": 8, "channels": 1, "width": 8}
    torch.manual_seed(0)
    net = build_generator(arch).eval()
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    path = tmp_path / "dcgan.pth"
    torch.save({"epoch": 5, "netG_state_dict": state, "netD_state_dict": {"module.w": torch.ones(1)},
                "lossG": np.float64(0.7), "optimizerG_state_dict": {"state": {}, "param_groups": []}}, path,
               _use_new_zipfile_serialization=False)
    # as torch.save writes it on a GPU: the storages' device tag (written once, then memoised) says cuda:0
    data = path.read_bytes()
    assert data.count(b"X\x03\x00\x00\x00cpu") == 1
    path.write_bytes(data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"))
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path, weights_only=True)  # what a plain load does with it on this machine
    with pytest.raises(ValueError, match="plain state dict .found under netG_state_dict .removed 'module.'"):
        fm.load_generator(path)
    adapter = fm.load_generator(path, arch=arch, latent_spec={"z": ((8,), "normal")})
    z = torch.randn(3, 8)
    with torch.no_grad():
        assert torch.equal(adapter(z), net(z))


def test_official_names_without_constructor_arguments_say_where_to_get_them(tmp_path):
    G, _, _ = official_module(stylegan2.Generator, "stylegan2_ada_skip")
    path = tmp_path / "g_ema.pt"
    torch.save(G.state_dict(), path)
    with pytest.raises(ValueError, match="StyleGAN generator's tensors without its constructor arguments"):
        fm.load_generator(path)


def test_latent_spaces_and_their_standardised_w():
    G, refs, meta = official_module(stylegan2.Generator, "stylegan2_ada_skip")
    src = {lat: StyleGANSource("stylegan2", meta["init_kwargs"], latent=lat) for lat in ("z", "w", "w+")}
    for s in src.values():
        s.net.load_state_dict(G.state_dict())
        s.calibrate(n=2000)
    assert dict(src["z"].latent_spec)["z"].shape == (32,)
    assert src["w"].latent_spec["w"].shape == (32,)
    assert src["w+"].latent_spec["w"].shape == (G.num_ws, 32)
    with torch.no_grad():
        ws = G.mapping(refs["z"], None)
        x = (ws[:, 0] - G.mapping.w_avg) / src["w"].w_std  # the same w in standardised coordinates
        img = G.synthesis(ws, noise_mode="const")
        assert (src["w"](w=x) - img).abs().max() <= TOL
        assert (src["w+"](x[:, None].expand(-1, G.num_ws, -1)) - img).abs().max() <= TOL
        assert (src["z"](refs["z"]) - img).abs().max() <= TOL
        w = G.mapping(torch.randn(4000, 32), None)[:, 0]
    # w_std is the spread of the mapping's outputs: standardised samples have unit variance
    assert torch.allclose(((w - G.mapping.w_avg) / src["w"].w_std).std(0), torch.ones(32), atol=0.1)


def test_converted_file_reloads_in_a_fresh_process_with_the_same_images(tmp_path, capsys, one_thread):
    G, refs, _ = official_module(stylegan2.Generator, "stylegan2_ada_skip")
    pkl = network_pickle(tmp_path / "net.pkl", G, small_discriminator())
    out = tmp_path / "sg2.safetensors"
    assert cli(["convert", str(pkl), str(out), "source.latent=w+", "source.truncation_psi=0.7"]) == 0
    assert "stylegan2 generator" in capsys.readouterr().out
    assert cli(["convert", str(pkl), str(out)]) == 2  # exists: refused, nothing changed
    assert "already exists" in capsys.readouterr().err
    before = out.read_bytes()
    sampler = load_sampler(out)
    assert sampler.generator.latent_spec["w"].shape == (G.num_ws, 32)
    ref = sampler.sample(4, seed=5)
    # one thread on both sides: another thread count sums the convolutions in another order
    code = ("import torch; from fastmine.files import load_sampler\ntorch.set_num_threads(1)\n"
            f"x = load_sampler({str(out)!r}).sample(4, seed=5); torch.save(x, {str(tmp_path / 'x.pt')!r})")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    assert torch.equal(torch.load(tmp_path / "x.pt"), ref)
    assert out.read_bytes() == before
    # the stored latent space is the default; another one may be asked for at load time
    z_adapter = fm.load_generator(out, latent="z", truncation_psi=0.7)
    with torch.no_grad():
        assert (z_adapter({"z": refs["z"]}) - refs["img_psi07"]).abs().max() <= TOL
    assert isinstance(load_critic(out), StyleGANCritic)


def test_convert_refuses_bad_input_with_one_line(tmp_path, capsys):
    plain = tmp_path / "w.pt"
    torch.save({"a": {"x": torch.ones(1)}, "b": {"y": torch.ones(1)}}, plain)
    assert cli(["convert", str(plain), str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "has no known generator key and holds several dicts of tensors; its keys: a (1 tensor), b (1 tensor)" in err
    assert cli(["convert", str(plain), str(tmp_path / "o.pt")]) == 2
    assert "name it *.safetensors" in capsys.readouterr().err
    assert cli(["convert", str(plain), str(tmp_path / "o.safetensors"), "train.steps=3"]) == 2
    assert "source.* settings only" in capsys.readouterr().err
    assert not list(tmp_path.glob("o.*"))


# --------------------------------------------------------------------------- mining
GK = dict(z_dim=16, c_dim=0, w_dim=16, img_resolution=8, img_channels=3, mapping_kwargs={"num_layers": 2},
          synthesis_kwargs={"channel_base": 128, "channel_max": 16})


@pytest.fixture(scope="module")
def tiny_stylegan(tmp_path_factory):
    """A random 8 px StyleGAN2 snapshot (G_ema and D) and a target it can draw: images of one
    region of its w space, 5 standardised units from w_avg (a typical w is 4 away)."""
    folder = tmp_path_factory.mktemp("tiny_stylegan")
    torch.manual_seed(0)
    G = cf.persistent(stylegan2.Generator, **GK).eval()
    D = small_discriminator(resolution=8)
    path = network_pickle(folder / "network-snapshot.pkl", G, D)
    src = StyleGANSource("stylegan2", GK, latent="w")
    src.net.load_state_dict(G.state_dict())
    src.calibrate()
    gen = torch.Generator().manual_seed(1)
    centre = torch.randn(16, generator=gen)
    centre = 5.0 * centre / centre.norm()
    with torch.no_grad():
        target = src(w=centre + 0.3 * torch.randn(64, 16, generator=gen))
        source = src(w=torch.randn(64, 16, generator=gen))
    torch.save(target, folder / "target.pt")
    return path, target, nearest(source, target)


def nearest(x, target):
    """Mean distance of each sample to its nearest target image."""
    return torch.cdist(x.flatten(1), target.flatten(1)).min(1).values.mean().item()


@pytest.mark.parametrize("latent,steps", [("z", 200), ("w", 100)])
def test_mining_a_stylegan2_moves_its_samples_to_the_target(tiny_stylegan, latent, steps):
    path, target, before = tiny_stylegan
    result = fm.mine(path, target, latent=latent, steps=steps, batch_size=16, seed=0, log_every=1000, progress=False)
    after = nearest(result.sampler.sample(64, seed=3), target)
    # measured: source 13.98; z 8.09 after 200 updates, w 9.92 after 100 (a pretrained D as the critic)
    assert after < 0.8 * before, (latent, before, after)


def test_mining_in_w_plus_from_the_command_line(tiny_stylegan, tmp_path, capsys):
    path, target, before = tiny_stylegan
    tensor = Path(path).parent / "target.pt"
    code = cli(["mine", f"source.generator={path}", "source.latent=w+", "data.dataset=tensor",
                f"data.path={tensor}", "train.steps=100", "train.batch_size=16", "log.log_every=1000",
                "log.progress=false", f"out_dir={tmp_path}", "name=wplus"])
    assert code == 0, capsys.readouterr().err
    assert "critic: the critic stored in" in capsys.readouterr().out  # the pretrained D, as the paper
    sampler = load_sampler(tmp_path / "wplus" / "model.safetensors")
    assert sampler.generator.latent_spec["w"].shape == (sampler.generator.module.net.num_ws, 16)
    after = nearest(sampler.sample(64, seed=3), target)
    assert after < 0.8 * before, (before, after)  # measured 10.01 after 100 updates


def test_pretrained_discriminator_trains_as_the_critic_and_the_penalty_reaches_it(tiny_stylegan):
    path, target, _ = tiny_stylegan
    critic = load_critic(path)
    before = {k: v.clone() for k, v in critic.state_dict().items()}
    run = fm.prepare(path, target, critic=critic, latent="w", steps=2, batch_size=8, log_every=1)
    x = target[:8].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    penalty = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
    penalty.backward()
    # every weight gets the penalty's gradient (a bias only where a smooth op follows it, e.g. mbstd's
    # std: through piecewise-linear layers alone ∇_x D does not depend on a bias)
    weights = [n for n, _ in critic.named_parameters() if n.endswith("weight")]
    reached = [n for n, p in critic.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert set(weights) <= set(reached) and "net.b8.fromrgb.bias" in reached
    critic.zero_grad()
    result = run.fit()
    assert np.isfinite(result.metrics["penalty"]) and result.metrics["penalty"] > 0
    changed = [k for k, v in critic.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("net.b8.") for k in changed)


def test_noise_inputs_as_latents_mapping_and_synthesis_side_miners(tiny_stylegan):
    """source.noise=R: the noise maps up to R px are latents beside z (MineGAN Appendix A)."""
    path, target, _ = tiny_stylegan
    adapter = fm.load_generator(path, noise=8)
    net = adapter.module.net
    layers = {n: m for n, m in net.synthesis.named_modules() if isinstance(m, stylegan2.SynthesisLayer)}
    names = ["noise_" + n.replace(".", "_") for n in layers]
    assert list(adapter.latent_spec) == ["z", *names]
    assert [adapter.latent_spec[k].shape for k in names] == [(1, m.resolution, m.resolution) for m in layers.values()]
    z = torch.randn(3, 16)
    with torch.no_grad():
        for m in layers.values():
            m.noise_strength.fill_(0.5)  # the random snapshot's strengths are 0: make the noise count
        const = {k: m.noise_const.expand(3, 1, -1, -1) for k, m in zip(names, layers.values())}
        # the network's own noise maps given as latents give its noise_mode='const' image
        assert torch.allclose(adapter({"z": z, **const}), net(z, None, noise_mode="const"), atol=1e-6)
        other = {k: torch.randn_like(v) for k, v in const.items()}
        assert not torch.allclose(adapter({"z": z, **other}), net(z, None, noise_mode="const"))
        assert all(m.mined_noise is None for m in layers.values())  # nothing left behind
    assert list(fm.load_generator(path, noise=4).latent_spec) == ["z", "noise_b4_conv1"]
    result = fm.mine(path, target, noise=4, steps=2, batch_size=8, log_every=1, progress=False)
    assert set(result.sampler.miner.heads) == {"z", "noise_b4_conv1"}
    with pytest.raises(ValueError, match="has no noise inputs to mine"):
        StyleGANSource("stylegan3", fixture("stylegan3_t")[2]["init_kwargs"], noise=8)


def test_a_conditional_stylegan2_mines_its_class_input_as_a_continuous_vector(tmp_path):
    """MineGAN++ §4.1's M^c: the class input c is a latent with no prior, produced by a miner head."""
    G, refs, meta = official_module(stylegan2.Generator, "stylegan2_ada_resnet_cond")
    path = network_pickle(tmp_path / "cond.pkl", G)
    adapter = fm.load_generator(path)
    assert adapter.latent_spec["c"].shape == (3,) and adapter.latent_spec["c"].prior == "none"
    with torch.no_grad():  # a continuous c between two one-hot classes is a valid input of the mapping
        mid = adapter({"z": refs["z"][:1], "c": torch.tensor([[0.5, 0.5, 0.0]])})
    assert torch.isfinite(mid).all()
    target = torch.rand(32, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    result = fm.mine(path, target, steps=2, batch_size=8, log_every=1, progress=False)
    assert set(result.sampler.miner.heads) == {"z", "c"}


def test_a_folder_is_refused_with_where_a_biggan_folder_loads(tmp_path):
    with pytest.raises(ValueError, match="is a folder: a pytorch-pretrained-biggan folder .config.json \\+ "
                                         "pytorch_model.bin. loads with fastmine.conditional.load_biggan"):
        fm.load_generator(tmp_path)


def test_stylegan_settings_on_another_generator_are_refused(tmp_path):
    arch = {"type": "dcgan", "latent_dim": 8, "image_size": 8, "channels": 1, "width": 8}
    path = tmp_path / "g.pt"
    torch.save(build_generator(arch).state_dict(), path)
    with pytest.raises(ValueError, match="latent, truncation_psi choose how a StyleGAN2/3 source is mined; .* builds "
                                         "a DCGANGenerator"):
        fm.load_generator(path, arch=arch, latent_spec={"z": ((8,), "normal")}, latent="w+", truncation_psi=0.7)
