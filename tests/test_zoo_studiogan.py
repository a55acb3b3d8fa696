"""fastmine.zoo.studiogan: PyTorch-StudioGAN checkpoints read as data, against StudioGAN's code.

The fixture (tests/fixtures/official/studiogan.safetensors, made by scripts/reference_studiogan.py)
holds, for five small configurations (resnet SNGAN, big_resnet BigGAN with attention, a 64 px
big_resnet ReACGAN with TAC, deep_conv DCGAN, an unconditional resnet), the YAML, the layout of both
networks' state dicts, their buffers, fixed latents and labels, and the images and adv_output
StudioGAN's code computed. The parameters are not stored: both sides fill them with fixed_tensor.
"""

import json
import zlib
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import fastmine as fm
from fastmine.files import has_critic, load_critic, read_weights
from fastmine.zoo import StyleGANCritic, ZSource, studiogan

FIXTURE = Path(__file__).parent / "fixtures" / "official" / "studiogan.safetensors"
TOL = 1e-4
NAMES = ("sngan", "biggan", "reacgan64", "dcgan", "uncond")


def fixed_tensor(name, shape, dtype):
    """scripts/reference_studiogan.py's fixed values (see there)."""
    if dtype == torch.int64:
        return torch.zeros(shape, dtype=dtype)
    seed = zlib.crc32(name.encode())
    n = 1
    for d in shape:
        n *= d
    values = torch.sin(torch.arange(n, dtype=torch.float64) * (0.7 + (seed % 1000) / 997) + seed % 97).reshape(shape)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_var":
        values = 0.75 + 0.25 * values
    elif leaf in ("running_mean", "bias"):
        values = 0.1 * values
    elif leaf in ("weight_u", "weight_v"):
        values = values / values.norm()
    elif leaf == "sigma":
        values = 0.5 + 0.25 * values
    elif len(shape) > 1:
        values = values * 2 / (n // shape[0]) ** 0.5
    elif leaf == "weight":
        values = 1 + 0.2 * values
    return values.to(dtype)


@pytest.fixture(scope="module")
def fixture():
    with safe_open(str(FIXTURE), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    return tensors, json.loads(meta["configs"]), json.loads(meta["layouts"]), meta


def official_state(fixture, name, net):
    tensors, _, layouts, _ = fixture
    state = {}
    for key, (shape, dtype) in layouts[name][net].items():
        stored = tensors.get(f"{name}.{net}.{key}")
        state[key] = stored if stored is not None else fixed_tensor(key, tuple(shape), getattr(torch, dtype))
    return state


def write_run(fixture, name, folder: Path, config=True) -> Path:
    """A StudioGAN run folder as its worker saves it: G, G_ema, D files (+ the YAML beside them)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = official_state(fixture, name, "G")
    torch.save({"state_dict": g, "optimizer": {"state": {}, "param_groups": [{"lr": 2e-4}]}},
               folder / "model=G-best-weights-step=100.pth")
    torch.save({"state_dict": g}, folder / "model=G_ema-best-weights-step=100.pth")
    torch.save({"state_dict": official_state(fixture, name, "D"), "seed": 0, "run_name": f"CIFAR10-{name}-train",
                "step": 100, "best_fid": 31.5, "lecam_emas": {"decay": 0.9}},
               folder / "model=D-best-weights-step=100.pth")
    if config:
        (folder / f"{name}.yaml").write_text(fixture[1][name])
    return folder / "model=G_ema-best-weights-step=100.pth"


def onehot(labels, n):
    return torch.nn.functional.one_hot(labels, n).float()


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_gives_studiogans_images_and_scores(fixture, name, tmp_path, record_property):
    tensors = fixture[0]
    path = write_run(fixture, name, tmp_path / f"CIFAR10-{name}-train-2022")
    adapter = fm.load_generator(path)
    critic = load_critic(path).eval()  # batch norm on its running statistics, as StudioGAN evaluates
    z, labels = tensors[f"{name}.z"], tensors[f"{name}.labels"]
    net = adapter.module.net
    latents = {"z": z}
    if net.c_dim:
        latents["c"] = onehot(labels, net.c_dim)
        assert list(adapter.latent_spec) == ["z", "c"] and adapter.latent_spec["c"].prior == "none"
    else:
        assert list(adapter.latent_spec) == ["z"]
    with torch.no_grad():
        images = adapter(latents)
        scores = critic.net(tensors[f"{name}.images"],
                            onehot(labels, critic.net.c_dim) if critic.net.c_dim else None)
    err_img = (images.double() - tensors[f"{name}.images"].double()).abs().max().item()
    err_score = (scores.double() - tensors[f"{name}.scores"].double()).abs().max().item()
    record_property("max_abs_images", err_img)
    record_property("max_abs_scores", err_score)
    assert err_img <= TOL and err_score <= TOL * max(1.0, tensors[f"{name}.scores"].abs().max().item())
    assert isinstance(adapter.module, ZSource) and isinstance(critic, StyleGANCritic)
    # the images depend on z (and the class): a wrong layer would not hide behind a constant output
    assert tensors[f"{name}.images"].std(0).mean() > 0.05


def test_conditional_source_takes_a_continuous_class_vector_and_mines_it(fixture, tmp_path):
    path = write_run(fixture, "biggan", tmp_path / "run")
    adapter = fm.load_generator(path)
    z = fixture[0]["biggan.z"][:1]
    with torch.no_grad():
        a, b = (adapter({"z": z, "c": onehot(torch.tensor([k]), 4)}) for k in (0, 1))
        mid = adapter({"z": z, "c": torch.tensor([[0.5, 0.5, 0.0, 0.0]])})
    assert torch.isfinite(mid).all() and (a - b).abs().max() > 1e-2
    target = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    # init=residual: the default start inverts the target first (minutes here), tested elsewhere
    result = fm.mine(path, target, steps=2, batch_size=8, log_every=1, progress=False, init="residual")
    assert set(result.sampler.miner.heads) == {"z", "c"}


def test_key_picks_the_raw_generator_and_the_critic_is_the_runs_D(fixture, tmp_path):
    path = write_run(fixture, "sngan", tmp_path / "run")
    assert read_weights(path).where == "model=G_ema-best-weights-step=100.pth"
    assert read_weights(path, key="G").where == "model=G-best-weights-step=100.pth"
    critic = read_weights(path, "critic")
    assert critic.where == "model=D-best-weights-step=100.pth" and critic.kwargs["d_cond_mtd"] == "PD"
    assert has_critic(path)
    (tmp_path / "run" / "model=D-best-weights-step=100.pth").unlink()
    assert not has_critic(path)


def test_refusals_name_the_problem_and_the_keys_found(fixture, tmp_path):
    path = write_run(fixture, "sngan", tmp_path / "bare", config=False)
    with pytest.raises(ValueError, match=r"StudioGAN checkpoint with no YAML config beside it; put the run's config"):
        fm.load_generator(path)
    path = write_run(fixture, "sngan", tmp_path / "deep")
    (tmp_path / "deep" / "sngan.yaml").write_text(
        "DATA:\n  img_size: 128\nMODEL:\n  backbone: big_resnet_deep_studiogan\n  g_depth: 2\n")
    with pytest.raises(ValueError) as err:
        fm.load_generator(path)
    message = str(err.value)
    assert "backbone=big_resnet_deep_studiogan, g_depth=2" in message and "does not build" in message
    assert "\n" not in message
    with pytest.raises(ValueError, match="not 'g_ema'"):
        read_weights(write_run(fixture, "sngan", tmp_path / "key"), key="g_ema")
    with pytest.raises(ValueError, match="is StudioGAN's discriminator"):
        fm.load_generator(tmp_path / "key" / "model=D-best-weights-step=100.pth")
    with pytest.raises(ValueError, match="mined in z and its class vector c: leave latent unset"):
        fm.load_generator(path.parent.parent / "key" / "model=G-best-weights-step=100.pth", latent="w")


def test_config_defaults_and_keywords():
    g, d = studiogan.config_kwargs({"DATA": {"img_size": 32, "num_classes": 10}, "MODEL": {"g_cond_mtd": "cBN"}}, "x")
    assert g == {"backbone": "resnet", "z_dim": 128, "g_shared_dim": "N/A", "img_size": 32, "g_conv_dim": 64,
                 "apply_attn": False, "attn_g_loc": ["N/A"], "g_cond_mtd": "cBN", "num_classes": 10,
                 "apply_g_sn": False, "g_act_fn": "ReLU"}
    assert d["d_cond_mtd"] == "W/O" and d["apply_d_sn"] is False
    with pytest.raises(ValueError, match="aux_cls_type='ADC' is not built"):
        studiogan.Discriminator(d_cond_mtd="2C", aux_cls_type="ADC", d_embed_dim=8)
