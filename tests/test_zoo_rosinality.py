"""fastmine.zoo.rosinality: rosinality stylegan2-pytorch tensors -> fastmine's StyleGAN2, against rosinality's code.

The fixtures (tests/fixtures/official/rosinality_*.safetensors, made by scripts/reference_rosinality.py)
hold a small rosinality Generator and Discriminator (32 px, 16 -> 8 channels) as float16-valued
tensors under rosinality's own names, with the float32 images / logits rosinality's code computed
from them, and the tensor shapes of full-size rosinality networks (size 256 / channel_multiplier 2 and
size 128 / channel_multiplier 1).
"""

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from fastmine.zoo import rosinality as R
from fastmine.zoo.stylegan2 import Discriminator, Generator

FIXTURES = Path(__file__).parent / "fixtures" / "official"
TOL = 1e-4
G_OUTPUTS = ("z", "latent_avg", "ws_psi1", "ws_psi07", "img_psi1", "img_psi07")
D_OUTPUTS = ("images", "d_logits", "d_logits_2")


def load_fixture(name):
    """(rosinality state dict as float32, reference tensors, metadata)."""
    with safe_open(str(FIXTURES / f"rosinality_{name}.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    outputs = G_OUTPUTS if name == "generator" else D_OUTPUTS
    state = {k: v.float() for k, v in tensors.items() if k not in outputs}
    return state, {k: tensors[k] for k in outputs}, metadata


def max_abs(a, b):
    return (a.double() - b.double()).abs().max().item()


def refusal(call, error=ValueError) -> str:
    """The message of the `error` that call() raises."""
    with pytest.raises(error) as err:
        call()
    return str(err.value)


def build_generator(**kwargs):
    state, ref, _ = load_fixture("generator")
    init_kwargs, sd = R.generator_from_rosinality(state, **kwargs)
    G = Generator(**init_kwargs).eval()
    G.load_state_dict(sd, strict=True)
    return G, ref


# ----------------------------------------------------------------------------------------------
# Equivalence with rosinality's code


@pytest.mark.parametrize("psi", [1, 0.7])
def test_generator_matches_rosinality(psi, record_property):
    G, ref = build_generator(latent_avg=load_fixture("generator")[1]["latent_avg"])
    tag = "psi1" if psi == 1 else "psi07"
    with torch.no_grad():
        ws = G.mapping(ref["z"], None, truncation_psi=psi)
        img = G.synthesis(ws, noise_mode="const")
        img_forward = G(ref["z"], None, truncation_psi=psi, noise_mode="const")
    err_ws, err_img = max_abs(ws, ref[f"ws_{tag}"]), max_abs(img, ref[f"img_{tag}"])
    record_property("max_abs_ws", err_ws)
    record_property("max_abs_img", err_img)
    assert err_ws <= TOL
    assert err_img <= TOL  # measured 9.5e-7 (psi 1) and 2.4e-6 (psi 0.7); |img| up to 11
    assert torch.equal(img_forward, img)
    # the noise buffers and their strengths are used: without them the image changes
    with torch.no_grad():
        assert max_abs(G.synthesis(ws, noise_mode="none"), ref[f"img_{tag}"]) > 1e-2


def test_discriminator_matches_rosinality(record_property):
    state, ref, _ = load_fixture("discriminator")
    init_kwargs, sd = R.discriminator_from_rosinality(state)
    D = Discriminator(**init_kwargs).eval()
    D.load_state_dict(sd, strict=True)
    images = ref["images"].float()
    with torch.no_grad():
        logits8, logits2 = D(images, None), D(images[:2], None)
    err8, err2 = max_abs(logits8, ref["d_logits"]), max_abs(logits2, ref["d_logits_2"])
    record_property("max_abs_logits_batch8", err8)
    record_property("max_abs_logits_batch2", err2)
    assert err8 <= TOL and err2 <= TOL  # measured 8.9e-8 and 6.0e-8
    # the minibatch-std groups are rosinality's: the first two logits change with the rest of the group
    assert max_abs(logits8[:2], logits2) > 1e-4


# ----------------------------------------------------------------------------------------------
# Hyperparameters read from the tensors


def test_fixture_hyperparameters_and_kwargs():
    state, _, metadata = load_fixture("generator")
    built_with = json.loads(metadata["init_kwargs"])
    args = R.infer_generator_args(state)
    # the fixture's widths are rebuilt narrow (see the script), so they show no channel_multiplier
    assert args == {"size": built_with["size"], "style_dim": built_with["style_dim"], "n_mlp": built_with["n_mlp"],
                    "channel_multiplier": None, "blur_kernel": built_with["blur_kernel"]}
    assert json.loads(metadata["widths"]) == {"4": 16, "8": 16, "16": 16, "32": 8}
    kwargs, _ = R.generator_from_rosinality(state)
    assert kwargs == {
        "z_dim": 32, "c_dim": 0, "w_dim": 32, "img_resolution": 32, "img_channels": 3,
        "mapping_kwargs": {"num_layers": 2, "lr_multiplier": 0.01},
        "synthesis_kwargs": {"channel_base": 256, "channel_max": 16, "num_fp16_res": 0, "conv_clamp": None,
                             "architecture": "skip", "resample_filter": [1, 3, 3, 1]},
    }
    d_state, _, _ = load_fixture("discriminator")
    assert R.infer_discriminator_args(d_state) == {"size": 32, "channel_multiplier": None, "blur_kernel": [1, 3, 3, 1]}
    d_kwargs, _ = R.discriminator_from_rosinality(d_state)
    assert d_kwargs == {
        "c_dim": 0, "img_resolution": 32, "img_channels": 3, "architecture": "resnet", "channel_base": 256,
        "channel_max": 16, "num_fp16_res": 0, "conv_clamp": None, "block_kwargs": {"resample_filter": [1, 3, 3, 1]},
        "epilogue_kwargs": {"mbstd_group_size": 4, "mbstd_num_channels": 1},
    }


def shape_only_state(shapes, real):
    """Meta tensors of the given shapes, except the blur kernels, whose values the conversion reads."""
    kernel = next(v for k, v in real.items() if k.endswith("kernel"))
    return {k: kernel if k.endswith("kernel") else torch.empty(shape, device="meta") for k, shape in shapes.items()}


@pytest.mark.parametrize("config", ["size256_cm2", "size128_cm1"])
def test_full_size_generator_shapes(config):
    state, _, metadata = load_fixture("generator")
    cfg = json.loads(metadata["shape_configs"])[config]
    shapes = json.loads(metadata["full_shapes"])[config]
    full = shape_only_state(shapes, state)
    assert R.infer_generator_args(full) == {**cfg, "blur_kernel": [1, 3, 3, 1]}
    kwargs, sd = R.generator_from_rosinality(full, latent_avg=torch.empty(cfg["style_dim"], device="meta"), **cfg)
    assert kwargs["synthesis_kwargs"]["channel_base"] == 16384 * cfg["channel_multiplier"]
    assert kwargs["synthesis_kwargs"]["channel_max"] == 512
    assert kwargs["mapping_kwargs"]["num_layers"] == cfg["n_mlp"]
    G = Generator(**kwargs)
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in G.state_dict().items()}


@pytest.mark.parametrize("config", ["size256_cm2", "size128_cm1"])
def test_full_size_discriminator_shapes(config):
    state, _, metadata = load_fixture("discriminator")
    cfg = json.loads(metadata["shape_configs"])[config]
    full = shape_only_state(json.loads(metadata["full_shapes"])[config], state)
    assert R.infer_discriminator_args(full) == {"size": cfg["size"], "channel_multiplier": cfg["channel_multiplier"],
                                                "blur_kernel": [1, 3, 3, 1]}
    kwargs, sd = R.discriminator_from_rosinality(full)
    assert (kwargs["channel_base"], kwargs["channel_max"]) == (16384 * cfg["channel_multiplier"], 512)
    D = Discriminator(**kwargs)
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in D.state_dict().items()}


def test_widths_the_official_networks_cannot_express():
    # channel_multiplier 4 gives 1024 channels at 64 px after 512 at 32 px: official widths never grow
    widths = R.rosinality_widths(64, 4)
    assert widths == {4: 512, 8: 512, 16: 512, 32: 512, 64: 1024}
    state, _, _ = load_fixture("generator")
    layout = R._generator_layout(64, 8, 1, widths, (4, 4))
    full = shape_only_state(layout, state)
    assert refusal(lambda: R.generator_from_rosinality(full, latent_avg=torch.empty(8, device="meta"))) == (
        "the rosinality Generator's channels per resolution {4: 512, 8: 512, 16: 512, 32: 512, 64: 1024} are not "
        "min(channel_base // res, channel_max) for any channel_base: the official StyleGAN2 networks cannot "
        "express them")


# ----------------------------------------------------------------------------------------------
# w_avg, whole checkpoints


def test_w_avg_estimated_without_latent_avg():
    G, ref = build_generator()
    with torch.no_grad():
        w = G.mapping(torch.randn(R.W_AVG_SAMPLES, 32, generator=torch.Generator().manual_seed(123)), None)[:, 0]
    # two independent means of W_AVG_SAMPLES samples: within 5 standard errors of each other
    tol = 5 * (2 / R.W_AVG_SAMPLES) ** 0.5 * w.std(0)
    assert ((G.mapping.w_avg - w.mean(0)).abs() <= tol).all()
    assert (w.mean(0).abs() > tol).any()  # zero (no estimate) would fail
    G2, _ = build_generator()
    assert torch.equal(G2.mapping.w_avg, G.mapping.w_avg)  # deterministic


def test_convert_checkpoint():
    g_state, ref, _ = load_fixture("generator")
    d_state, _, _ = load_fixture("discriminator")
    args = argparse.Namespace(size=32, latent=32, n_mlp=2, arch="stylegan2")
    ckpt = {"g": g_state, "g_ema": g_state, "d": d_state, "latent_avg": ref["latent_avg"], "args": args,
            "g_optim": {}, "d_optim": {}}
    out = R.convert_checkpoint(ckpt)
    assert set(out) == {"G", "D"}
    kwargs, sd = R.generator_from_rosinality(g_state, latent_avg=ref["latent_avg"])
    assert out["G"][0] == kwargs and torch.equal(out["G"][1]["mapping.w_avg"], ref["latent_avg"])
    assert out["D"][0] == R.discriminator_from_rosinality(d_state)[0]
    bigger = argparse.Namespace(size=64, latent=32, n_mlp=2)
    assert refusal(lambda: R.convert_checkpoint({**ckpt, "args": bigger})) == (
        "size=64 does not match the rosinality Generator tensors, which have size=32")
    assert refusal(lambda: R.convert_checkpoint({**ckpt, "args": {"arch": "swagan"}})) == (
        "the rosinality checkpoint is arch='swagan': fastmine converts only 'stylegan2'")


# ----------------------------------------------------------------------------------------------
# Bad input


def test_not_a_rosinality_generator():
    d_state, _, _ = load_fixture("discriminator")
    assert refusal(lambda: R.generator_from_rosinality(d_state)) == (
        "not a rosinality stylegan2-pytorch Generator state dict: missing input.input, conv1.conv.weight, "
        "conv1.conv.modulation.weight, to_rgb1.conv.weight, noises.noise_0 (expected input.input, conv1.conv.weight, "
        "conv1.conv.modulation.weight, to_rgb1.conv.weight, noises.noise_0, ...)")
    g_state, _, _ = load_fixture("generator")
    assert refusal(lambda: R.discriminator_from_rosinality(g_state)).startswith(
        "not a rosinality stylegan2-pytorch Discriminator state dict: missing convs.0.0.weight, final_conv.0.weight")
    assert refusal(lambda: R.generator_from_rosinality([g_state]), TypeError) == (
        "a rosinality Generator state dict must be a mapping of names to tensors, got list")
    # already in official names
    _, official = R.generator_from_rosinality(g_state)
    with pytest.raises(ValueError, match="^not a rosinality stylegan2-pytorch Generator state dict: missing input"):
        R.generator_from_rosinality(official)


def test_incomplete_or_inconsistent_generator():
    state, _, _ = load_fixture("generator")
    missing_noise = {k: v for k, v in state.items() if k != "convs.3.noise.weight"}
    assert refusal(lambda: R.generator_from_rosinality(missing_noise)) == (
        "the tensors do not form a rosinality stylegan2-pytorch Generator: missing convs.3.noise.weight")
    assert refusal(lambda: R.generator_from_rosinality({**state, "convs.5.activate.bias": torch.zeros(9)})) == (
        "rosinality Generator tensor 'convs.5.activate.bias' has shape (9,), expected (8,) from the other tensors")
    assert refusal(lambda: R.generator_from_rosinality(state, n_mlp=8)) == (
        "n_mlp=8 does not match the rosinality Generator tensors, which have n_mlp=2")
    assert refusal(lambda: R.generator_from_rosinality(state, channel_multiplier=2)) == (
        "channel_multiplier=2 does not match the rosinality Generator tensors: channels per resolution "
        "{4: 16, 8: 16, 16: 16, 32: 8}, rosinality's table gives {4: 512, 8: 512, 16: 512, 32: 512}")
    assert refusal(lambda: R.generator_from_rosinality({"g_ema": state})) == (
        "this is a whole rosinality checkpoint, not a Generator state dict: pass ckpt['g_ema'] "
        "(or ckpt['g'] / ckpt['d']), or use convert_checkpoint(ckpt)")
    with pytest.raises(ValueError, match=r"^this is a rosinality SWAGAN Generator \(wavelet layers iwt/dwt\)"):
        R.generator_from_rosinality({**state, "iwt.ll": torch.zeros(1, 1, 2, 2)})


def test_non_default_blur_kernel_refused():
    # rosinality's blur_kernel reaches the upsampling convolutions but not ToRGB's upsampling
    state, _, _ = load_fixture("generator")
    k3 = torch.outer(torch.tensor([1.0, 2, 1]), torch.tensor([1.0, 2, 1])) / 16 * 4
    state = {k: k3 if k.endswith("conv.blur.kernel") else v for k, v in state.items()}
    assert refusal(lambda: R.generator_from_rosinality(state)) == (
        "rosinality Generator blur kernels differ ('convs.0.conv.blur.kernel' vs 'to_rgbs.0.upsample.kernel'): the "
        "official StyleGAN2 uses one resample_filter per block, and rosinality's ToRGB always upsamples with "
        "[1, 3, 3, 1], so only a network built with the default blur_kernel converts")
