"""fastmine.zoo.stylegan2 and fastmine.zoo.ops against NVIDIA's stylegan2-ada-pytorch and explicit references.

The fixtures (tests/fixtures/official/stylegan2_ada_*.safetensors, made by
scripts/reference_stylegan2_ada.py) hold small official networks' float16-valued weights under their
official names and the official float32 outputs: generators 'skip' (unconditional, two float16
blocks) and 'resnet_cond' (c_dim 3, label embedding, conv_clamp); discriminators 'd_resnet' and
'd_skip_cond' (cmap projection, Freeze-D buffers, two minibatch-std channels, conv_clamp). The ops
are checked in float64 against straightforward loop / composition implementations written here.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from fastmine.zoo import ops, stylegan2
from fastmine.zoo.stylegan2 import Discriminator, Generator, MappingNetwork, stylegan3_repo_kwargs

FIXTURES = Path(__file__).parent / "fixtures" / "official"
TOL = 1e-4
GENERATORS = ["skip", "resnet_cond"]
DISCRIMINATORS = ["d_resnet", "d_skip_cond"]
CASES = [("psi1", 1, None), ("psi07", 0.7, None), ("psi07_cutoff", 0.7, 3)]


def load_fixture(name):
    """(tensors, init kwargs, metadata) of one fixture; state-dict entries are the dotted names."""
    with safe_open(str(FIXTURES / f"stylegan2_ada_{name}.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    return tensors, json.loads(metadata["init_kwargs"]), metadata


def official_state(tensors):
    return {k: v.float() for k, v in tensors.items() if "." in k}


def build(name, **override):
    """fastmine's network for a fixture, official weights loaded strictly, in eval mode."""
    tensors, kwargs, metadata = load_fixture(name)
    net = (Generator if metadata["class_name"].endswith("Generator") else Discriminator)(**{**kwargs, **override})
    net.load_state_dict(official_state(tensors), strict=True)
    return net.eval(), tensors


def max_abs(a, b):
    return (a.double() - b.double()).abs().max().item()


# ----------------------------------------------------------------------------------------------
# Equivalence with the official implementation


@pytest.mark.parametrize("name", GENERATORS)
def test_generator_matches_official(name, record_property):
    G, t = build(name)
    worst = 0.0
    with torch.no_grad():
        for suffix, psi, cutoff in CASES:
            ws = G.mapping(t["z"], t["c"], truncation_psi=psi, truncation_cutoff=cutoff)
            img = G(t["z"], t["c"], truncation_psi=psi, truncation_cutoff=cutoff, noise_mode="const")
            img_ws = G.synthesis(t[f"ws_{suffix}"], noise_mode="const")
            img_unfused = G.synthesis(t[f"ws_{suffix}"], noise_mode="const", fused_modconv=False)
            assert img.dtype == torch.float32 and img.shape == t[f"img_{suffix}"].shape
            errors = [max_abs(ws, t[f"ws_{suffix}"])]
            errors += [max_abs(x, t[f"img_{suffix}"]) for x in (img, img_ws, img_unfused)]
            print(f"{name} {suffix}: max abs ws {errors[0]:.3g}, img {max(errors[1:]):.3g}")
            worst = max(worst, *errors)
    record_property("max_abs_diff", worst)
    assert worst <= TOL


@pytest.mark.parametrize("name", DISCRIMINATORS)
def test_discriminator_matches_official(name, record_property):
    D, t = build(name)
    with torch.no_grad():
        logits = D(t["img"].float(), t["c"])
    err = max_abs(logits, t["logits"])
    print(f"{name}: max abs logits {err:.3g}")
    record_property("max_abs_diff", err)
    assert logits.shape == (4, 1)
    assert err <= TOL


@pytest.mark.parametrize("name", GENERATORS + DISCRIMINATORS)
def test_state_dict_keys_and_shapes_are_the_official_ones(name):
    tensors, kwargs, metadata = load_fixture(name)
    net = (Generator if metadata["class_name"].endswith("Generator") else Discriminator)(**kwargs)
    official = official_state(tensors)
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == {k: tuple(v.shape) for k, v in official.items()}
    assert len(metadata["commit"]) == 40


def test_float64_generator_matches_and_fused_equals_unfused():
    G, t = build("resnet_cond")
    G = G.double()
    with torch.no_grad():
        img = G(t["z"].double(), t["c"].double(), truncation_psi=0.7)
        unfused = G(t["z"].double(), t["c"].double(), truncation_psi=0.7, fused_modconv=False)
    assert img.dtype == torch.float64
    assert max_abs(img, t["img_psi07"]) <= TOL
    assert max_abs(img, unfused) <= 1e-10


def test_stylegan3_repo_variant_flat_kwargs_load_and_match():
    tensors, kwargs, _ = load_fixture("skip")
    flat = {k: v for k, v in kwargs.items() if k != "synthesis_kwargs"}
    flat.update(kwargs["synthesis_kwargs"], fused_modconv_default="inference_only")
    filled = stylegan3_repo_kwargs(flat)
    assert filled == {
        "z_dim": 32, "c_dim": 0, "w_dim": 32, "img_resolution": 32, "img_channels": 3,
        "mapping_kwargs": {"w_avg_beta": 0.998, "num_layers": 2},
        "synthesis_kwargs": {"channel_base": 256, "channel_max": 16, "architecture": "skip", "num_fp16_res": 2,
                             "fused_modconv_default": "inference_only", "conv_clamp": 256},
    }
    assert stylegan3_repo_kwargs({"c_dim": 0}, net="D") == {"c_dim": 0, "conv_clamp": 256, "num_fp16_res": 4}
    for G in (Generator(**flat), Generator(**filled)):
        G.load_state_dict(official_state(tensors), strict=True)
        with torch.no_grad():
            assert max_abs(G.eval()(tensors["z"], None, truncation_psi=0.7), tensors["img_psi07"]) <= TOL
    with pytest.raises(ValueError, match="must be 'G' .* or 'D'"):
        stylegan3_repo_kwargs({}, net="X")


# ----------------------------------------------------------------------------------------------
# Generator behaviour


def test_noise_modes():
    G, t = build("skip")
    ws = t["ws_psi1"]
    with torch.no_grad():
        const = G.synthesis(ws, noise_mode="const")
        assert torch.equal(const, G.synthesis(ws))  # const is the default and deterministic
        torch.manual_seed(0)
        random1 = G.synthesis(ws, noise_mode="random")
        random2 = G.synthesis(ws, noise_mode="random")
        none = G.synthesis(ws, noise_mode="none")
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.zero_()
        silent = G.synthesis(ws, noise_mode="const")
    assert max_abs(random1, random2) > 1e-2 and max_abs(random1, const) > 1e-2
    assert max_abs(none, const) > 1e-2
    assert max_abs(none, silent) <= 1e-6  # 'none' is exactly the network without its noise inputs
    with pytest.raises(ValueError, match="unknown noise_mode 'fixed': use one of const, random, none"):
        G.synthesis(ws, noise_mode="fixed")


def test_truncation_psi0_gives_w_avg_and_cutoff_keeps_the_rest():
    G, t = build("resnet_cond")
    w_avg = G.mapping.w_avg
    with torch.no_grad():
        full = G.mapping(t["z"], t["c"])
        ws = G.mapping(t["z"], t["c"], truncation_psi=0)
        cut = G.mapping(t["z"], t["c"], truncation_psi=0, truncation_cutoff=3)
    assert ws.shape == (2, G.num_ws, G.w_dim)
    assert torch.allclose(ws, w_avg.expand_as(ws), atol=1e-6)
    assert torch.allclose(cut[:, :3], w_avg.expand(2, 3, -1), atol=1e-6)
    assert torch.equal(cut[:, 3:], full[:, 3:])
    assert max_abs(full, w_avg.expand_as(full)) > 0.1


def test_w_avg_changes_only_when_asked():
    G, t = build("skip")
    before = G.mapping.w_avg.clone()
    G.train()
    with torch.no_grad():
        G(t["z"], None)
        assert torch.equal(G.mapping.w_avg, before)  # unlike the official code, training mode alone does not update
        w = G.mapping(t["z"], None)[:, 0]
        G.mapping(t["z"], None, update_emas=True)
    assert torch.allclose(G.mapping.w_avg, w.mean(0).lerp(before, G.mapping.w_avg_beta), atol=1e-6)


def test_fp16_layers_compute_in_float32_off_cuda():
    G, t = build("skip")  # num_fp16_res=2: blocks 16 and 32 are float16 layers on CUDA
    assert G.synthesis.b32.use_fp16 and G.synthesis.b16.use_fp16 and not G.synthesis.b8.use_fp16
    with torch.no_grad():
        x, img = G.synthesis.b4(None, None, t["ws_psi1"][:, :2])
        x, img = G.synthesis.b8(x, img, t["ws_psi1"][:, 1:4])
        x, img = G.synthesis.b16(x, img, t["ws_psi1"][:, 3:6])
    assert x.dtype == torch.float32 and img.dtype == torch.float32


def test_fp16_path_as_on_cuda():
    # The float16 layers run on CUDA by default; perf.fp16_layers=on runs that path on the CPU.
    G, t = build("skip")
    stylegan2.set_fp16_layers(G, "on")
    ref = t["img_psi1"]
    with torch.no_grad():
        x, _ = G.synthesis.b16(*G.synthesis.b8(*G.synthesis.b4(None, None, t["ws_psi1"][:, :2]),
                                               t["ws_psi1"][:, 1:4]), t["ws_psi1"][:, 3:6])
        assert x.dtype == torch.float16
        for fused in (None, True, False):
            img = G.synthesis(t["ws_psi1"], fused_modconv=fused)
            assert img.dtype == torch.float32
            assert 0 < max_abs(img, ref) <= 5e-3 * ref.abs().max()  # float16 rounding, nothing more
        assert max_abs(G.synthesis(t["ws_psi1"], force_fp32=True), ref) <= TOL


def test_fused_modconv_default_rules():
    block = Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3,
                      synthesis_kwargs=dict(channel_base=64, channel_max=8)).synthesis.b8
    fp32, fp16 = torch.float32, torch.float16
    # stylegan2-ada (None): fused for inference, except float16 batches of more than one sample
    assert [block.eval()._fused(None, fp32, 4), block._fused(None, fp16, 4), block._fused(None, fp16, 1)] == [
        True, False, True]
    assert block.train()._fused(None, fp32, 4) is False
    block.fused_modconv_default = "inference_only"  # the stylegan3 repository's training setting
    assert block.train()._fused(None, fp32, 1) is False and block.eval()._fused(None, fp32, 1) is True
    block.fused_modconv_default = True
    assert block.train()._fused(None, fp16, 4) is True and block._fused(False, fp32, 4) is False


def test_modulated_conv2d_float16_does_not_overflow():
    # Large styles would overflow float16 activations (max 65504) without the pre-normalisation.
    torch.manual_seed(5)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64) * 10
    weight = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    styles = torch.rand(2, 4, dtype=torch.float64) * 1e4 + 1e3
    ref = ops.modulated_conv2d(x, weight, styles, padding=1)
    for fused in (True, False):
        half = ops.modulated_conv2d(x.half(), weight.float(), styles.float(), padding=1, fused_modconv=fused)
        assert half.dtype == torch.float16 and torch.isfinite(half).all()
        assert max_abs(half, ref) <= 2e-2 * ref.abs().max()


def test_generator_gradients_reach_the_latent():
    G, t = build("resnet_cond")
    z = t["z"].clone().requires_grad_(True)
    G(z, t["c"], truncation_psi=0.7).square().mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert G.mapping.fc0.weight.grad is not None


# ----------------------------------------------------------------------------------------------
# Discriminator: minibatch standard deviation


def test_mbstd_couples_the_samples_of_a_group_only():
    # mbstd_group_size 2, batch 4: groups {0, 2} and {1, 3}; unclamped, so the group statistic shows clearly
    D, t = build("d_resnet", conv_clamp=None)
    img = t["img"].float()
    changed = img.clone()
    changed[2] = -changed[2] + 0.3
    with torch.no_grad():
        before, after = D(img, None), D(changed, None)
    delta = (after - before).abs().flatten()
    print(f"logit changes when sample 2 changes: {delta.tolist()}")
    assert delta[0] > 1e-4  # sample 0's logit depends on sample 2, its group mate
    assert delta[2] > 1e-4
    assert delta[1] == 0 and delta[3] == 0  # the other group does not see the change

    per_sample, _ = build("d_resnet", conv_clamp=None, epilogue_kwargs={"mbstd_group_size": 1})
    with torch.no_grad():
        delta = (per_sample(changed, None) - per_sample(img, None)).abs().flatten()
    assert delta[2] > 1e-4 and delta[0] == 0 and delta[1] == 0 and delta[3] == 0


def test_mbstd_batch_must_divide_into_groups():
    D, t = build("d_resnet")
    with pytest.raises(ValueError, match=r"the batch size 3 must be a multiple of the minibatch-std group size 2"):
        D(t["img"][:3].float(), None)
    assert D(t["img"][:1].float(), None).shape == (1, 1)  # a batch below the group size is one group


def test_conditional_discriminator_needs_labels():
    D, t = build("d_skip_cond")
    with pytest.raises(ValueError, match=r"this network is conditional: c must have shape \[N, 3\]"):
        D(t["img"].float(), None)


# ----------------------------------------------------------------------------------------------
# Bad keywords and inputs


@pytest.mark.parametrize("kwargs, message", [
    (dict(img_resolution=48), "img_resolution must be a power of two >= 4 (e.g. 32, 256, 1024), got 48"),
    (dict(img_resolution=2), "img_resolution must be a power of two >= 4 (e.g. 32, 256, 1024), got 2"),
    (dict(z_dim=0), "z_dim must be a positive int (the latent size, e.g. 512), got 0"),
    (dict(c_dim=-1), "c_dim must be an int >= 0 (0 = unconditional), got -1"),
    (dict(synthesis_kwargs=dict(architecture="unet")), "unknown architecture 'unet': use one of orig, skip, resnet"),
    (dict(mapping_kwargs=dict(activation="gelu")), "unknown activation 'gelu': use one of "),
    (dict(synthesis_kwargs=dict(fused_modconv_default="always")), "fused_modconv_default must be None, True, False"),
    (dict(synthesis_kwargs=dict(channel_base=64), channel_base=64),
     "synthesis keywords given both flat and in synthesis_kwargs: channel_base"),
])
def test_bad_generator_kwargs(kwargs, message):
    base = dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3,
                synthesis_kwargs=dict(channel_base=64, channel_max=8))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        Generator(**{**base, **kwargs})


def test_bad_discriminator_kwargs_and_inputs():
    with pytest.raises(ValueError, match=r"img_resolution must be a power of two >= 8 \(e.g. 32, 256, 1024\), got 4"):
        Discriminator(c_dim=0, img_resolution=4, img_channels=3)
    with pytest.raises(ValueError, match="unknown architecture 'dense': use one of orig, skip, resnet"):
        Discriminator(c_dim=0, img_resolution=8, img_channels=3, architecture="dense")
    D = Discriminator(c_dim=0, img_resolution=8, img_channels=3, channel_base=32, channel_max=4)
    with pytest.raises(ValueError, match=r"img must have shape \[N, 3, 8, 8\], got \(2, 1, 8, 8\)"):
        D(torch.zeros(2, 1, 8, 8), None)


def test_bad_generator_inputs():
    G, t = build("resnet_cond")
    with pytest.raises(ValueError, match=r"this network is conditional: c must have shape \[N, 3\] \(e.g. one-hot"):
        G(t["z"], None)
    with pytest.raises(ValueError, match=r"z must have shape \[N, 32\], got \(2, 16\)"):
        G(t["z"][:, :16], t["c"])
    with pytest.raises(ValueError, match=r"ws must have shape \[N, 8, 32\], got \(2, 7, 32\)"):
        G.synthesis(t["ws_psi1"][:, :7])
    with pytest.raises(ValueError, match="the mapping needs z_dim > 0 or c_dim > 0"):
        MappingNetwork(z_dim=0, c_dim=0, w_dim=8, num_ws=2)


# ----------------------------------------------------------------------------------------------
# ops against explicit references (float64, odd shapes)


def upfirdn_loops(x, f, up=(1, 1), down=(1, 1), pad=(0, 0, 0, 0), flip=False, gain=1.0):
    """upfirdn2d by definition: zero insertion, padding, a true 2-D convolution over the valid
    region, subsampling; one output pixel at a time in numpy float64."""
    x = np.asarray(x, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    if f.ndim == 1:
        f = np.outer(f, f)
    f = f * gain
    if not flip:
        f = f[::-1, ::-1]  # a true convolution correlates with the flipped filter
    (upx, upy), (downx, downy), (px0, px1, py0, py1) = up, down, pad
    n, c, h, w = x.shape
    hp, wp = h * upy + py0 + py1, w * upx + px0 + px1
    padded = np.zeros([n, c, hp, wp])
    for j in range(hp):
        for i in range(wp):
            sy, sx = j - py0, i - px0
            if 0 <= sy < h * upy and 0 <= sx < w * upx and sy % upy == 0 and sx % upx == 0:
                padded[:, :, j, i] = x[:, :, sy // upy, sx // upx]
    fh, fw = f.shape
    out = np.zeros([n, c, hp - fh + 1, wp - fw + 1])
    for j in range(out.shape[2]):
        for i in range(out.shape[3]):
            out[:, :, j, i] = (padded[:, :, j:j + fh, i:i + fw] * f).sum(axis=(2, 3))
    return torch.from_numpy(out[:, :, ::downy, ::downx].copy())


@pytest.mark.parametrize("up, down, pad, flip, gain, taps", [
    ((1, 1), (1, 1), (0, 0, 0, 0), False, 1.0, [[1, 2, 0], [0.5, -1, 3]]),
    ((2, 2), (1, 1), (2, 1, 2, 1), False, 4.0, [1, 3, 3, 1]),
    ((2, 1), (1, 3), (3, -1, 2, 0), True, 2.5, [[1, 2, 0, 1], [0.5, -1, 3, 2], [0, 1, 1, 0]]),
    ((1, 1), (2, 2), (1, 2, 1, 2), False, 1.0, [1, 3, 3, 1]),
    ((3, 2), (2, 3), (-1, 4, 1, -2), True, 0.7, [2, -1, 0.5]),
])
def test_upfirdn2d_matches_loop_definition(up, down, pad, flip, gain, taps):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    f = ops.setup_filter(taps, normalize=False).double()
    ours = ops.upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain)
    assert max_abs(ours, upfirdn_loops(x, f, up, down, pad, flip, gain)) < 1e-12


def test_upfirdn2d_separable_filter_equals_its_outer_product():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 6, 9, dtype=torch.float64)
    taps = [1, 2, -1, 3, 0.5, 1, 2, 1]
    sep = ops.setup_filter(taps).double()  # 8 taps: kept separable
    assert sep.ndim == 1
    assert torch.allclose(sep, torch.tensor(taps, dtype=torch.float64) / sum(taps))
    ours = ops.upfirdn2d(x, sep, up=2, down=(1, 2), padding=[4, 3, 1, 2], gain=3.0)
    full = np.outer(sep.numpy(), sep.numpy())
    assert max_abs(ours, upfirdn_loops(x, full, (2, 2), (1, 2), (4, 3, 1, 2), gain=3.0)) < 1e-12


def test_setup_filter():
    f = ops.setup_filter([1, 3, 3, 1])
    assert f.dtype == torch.float32 and f.shape == (4, 4)
    assert torch.equal(f, torch.tensor([1.0, 3, 3, 1]).outer(torch.tensor([1.0, 3, 3, 1])) / 64)
    assert torch.equal(ops.setup_filter([1, 2, 3], flip_filter=True), ops.setup_filter([3, 2, 1]))
    assert math.isclose(ops.setup_filter([1, 3, 3, 1], gain=4).sum().item(), 4.0, rel_tol=1e-6)
    assert math.isclose(ops.setup_filter([1, 2, 3], separable=True, gain=4).sum().item(), 2.0, rel_tol=1e-6)
    assert torch.equal(ops.setup_filter(None), torch.ones(1, 1))
    with pytest.raises(ValueError, match="a 2-D FIR filter cannot be made separable: pass 1-D taps"):
        ops.setup_filter([[1, 2], [3, 4]], separable=True)


def test_up_and_down_sampling_keep_constant_images_and_sizes():
    f = ops.setup_filter([1, 3, 3, 1])
    ones = torch.ones(1, 2, 6, 10, dtype=torch.float64)
    up = ops.upsample2d(ones, f)
    down = ops.downsample2d(ones, f)
    assert up.shape == (1, 2, 12, 20) and down.shape == (1, 2, 3, 5)
    # Away from the zero padding a constant stays constant: the gains undo the zero insertion.
    assert torch.allclose(up[:, :, 2:-2, 2:-2], torch.ones(1, 1, 1, 1, dtype=torch.float64))
    assert torch.allclose(down[:, :, 1:-1, 1:-1], torch.ones(1, 1, 1, 1, dtype=torch.float64))
    assert ops.filter2d(ones, f).shape == ones.shape


def conv2d_resample_composed(x, w, f, up, down, padding, groups, flip_weight):
    """The definition: zero insertion + padding + FIR (loops), convolution, FIR + subsampling."""
    fw, fh = f.shape[-1], f.shape[0]
    px0, px1, py0, py1 = padding
    if up > 1:
        px0, px1, py0, py1 = (px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2,
                              py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2)
    if down > 1:
        px0, px1, py0, py1 = (px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2,
                              py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2)
    pad = (px0, px1, py0, py1)
    if up > 1:
        x = upfirdn_loops(x, f, (up, up), pad=pad, gain=up ** 2)
    else:
        x = upfirdn_loops(x, [[1.0]], pad=pad)
    x = F.conv2d(x, w if flip_weight else w.flip([2, 3]), groups=groups)
    if down > 1:
        x = upfirdn_loops(x, f, down=(down, down))
    return x


@pytest.mark.parametrize("k, up, down, padding, groups, flip_weight", [
    (3, 1, 1, (1, 1, 1, 1), 1, True),
    (3, 1, 1, (2, 0, 1, 3), 2, False),
    (3, 2, 1, (1, 1, 1, 1), 1, False),
    (3, 2, 1, (1, 1, 1, 1), 2, True),
    (3, 1, 2, (1, 1, 1, 1), 1, True),
    (1, 2, 1, (0, 0, 0, 0), 2, True),
    (1, 1, 2, (0, 0, 0, 0), 1, False),
    (3, 2, 2, (1, 0, 2, 1), 1, True),
])
def test_conv2d_resample_matches_its_definition(k, up, down, padding, groups, flip_weight):
    torch.manual_seed(1)
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64)
    w = torch.randn(6, 4 // groups, k, k, dtype=torch.float64)
    f = ops.setup_filter([1, 3, 3, 1]).double()
    ours = ops.conv2d_resample(x, w, f=f, up=up, down=down, padding=padding, groups=groups, flip_weight=flip_weight)
    ref = conv2d_resample_composed(x, w, f, up, down, padding, groups, flip_weight)
    assert ours.shape == ref.shape
    assert max_abs(ours, ref) < 1e-12


def test_bias_act_activations_gains_and_clamp():
    x = torch.linspace(-3, 3, 24, dtype=torch.float64).reshape(2, 3, 4)
    b = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    xb = x + b[None, :, None]
    assert torch.equal(ops.bias_act(x, b), xb)
    assert torch.allclose(ops.bias_act(x, b, act="lrelu"), torch.where(xb > 0, xb, 0.2 * xb) * math.sqrt(2))
    assert torch.allclose(ops.bias_act(x, b, act="relu"), xb.clamp(min=0) * math.sqrt(2))
    assert torch.allclose(ops.bias_act(x, b, act="lrelu", alpha=0.1, gain=3.0), torch.where(xb > 0, xb, 0.1 * xb) * 3)
    assert torch.allclose(ops.bias_act(x, b, act="tanh"), torch.tanh(xb))
    assert torch.allclose(ops.bias_act(x, b, act="sigmoid"), torch.sigmoid(xb))
    assert torch.allclose(ops.bias_act(x, b, act="swish"), torch.sigmoid(xb) * xb * math.sqrt(2))
    clamped = ops.bias_act(x, b, act="lrelu", clamp=1.5)
    assert clamped.abs().max() == 1.5
    assert torch.allclose(clamped, (torch.where(xb > 0, xb, 0.2 * xb) * math.sqrt(2)).clamp(-1.5, 1.5))
    b2 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert torch.equal(ops.bias_act(x, b2, dim=0), x + b2[:, None, None])
    with pytest.raises(ValueError, match="unknown activation 'gelu': use one of elu, linear, lrelu, relu"):
        ops.bias_act(x, act="gelu")
    with pytest.raises(ValueError, match=r"bias of shape \(2,\) does not match dim 1 of x \(2, 3, 4\)"):
        ops.bias_act(x, b2)


def test_normalize_2nd_moment():
    x = torch.randn(5, 7, dtype=torch.float64) * 3
    y = ops.normalize_2nd_moment(x)
    assert torch.allclose(y.square().mean(dim=1), torch.ones(5, dtype=torch.float64))
    assert torch.allclose(y / x, (y / x)[:, :1].expand(-1, 7))


def modconv_per_sample(x, weight, styles, demodulate, noise, padding):
    """Modulated convolution one sample at a time, by the paper's equations (no resampling)."""
    out = []
    for i in range(x.shape[0]):
        w = weight * styles[i][None, :, None, None]
        if demodulate:
            w = w / (w.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).sqrt()
        out.append(F.conv2d(x[i:i + 1], w, padding=padding))
    out = torch.cat(out)
    return out + noise if noise is not None else out


@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_conv2d_matches_per_sample_equations(demodulate):
    torch.manual_seed(2)
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    weight = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    styles = torch.randn(3, 4, dtype=torch.float64)
    noise = torch.randn(3, 1, 5, 6, dtype=torch.float64)
    ref = modconv_per_sample(x, weight, styles, demodulate, noise, padding=1)
    for fused in (True, False):
        ours = ops.modulated_conv2d(x, weight, styles, noise=noise, padding=1, demodulate=demodulate,
                                    fused_modconv=fused)
        assert max_abs(ours, ref) < 1e-12


@pytest.mark.parametrize("up, down, flip_weight", [(2, 1, False), (1, 2, True), (1, 1, False)])
def test_modulated_conv2d_fused_equals_unfused_with_resampling(up, down, flip_weight):
    torch.manual_seed(3)
    x = torch.randn(2, 3, 7, 5, dtype=torch.float64)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    styles = torch.randn(2, 3, dtype=torch.float64)
    f = ops.setup_filter([1, 3, 3, 1])
    args = dict(up=up, down=down, padding=1, resample_filter=f, flip_weight=flip_weight)
    fused = ops.modulated_conv2d(x, weight, styles, fused_modconv=True, **args)
    unfused = ops.modulated_conv2d(x, weight, styles, fused_modconv=False, **args)
    assert max_abs(fused, unfused) < 1e-12


def test_ops_gradients_match_finite_differences():
    torch.manual_seed(4)
    f = ops.setup_filter([1, 3, 3, 1]).double()
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    s = torch.randn(1, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    def gradcheck(fn, inputs):
        # fast mode compares random projections of the Jacobians: the full ones take ~10x longer here
        return torch.autograd.gradcheck(fn, inputs, fast_mode=True)

    assert gradcheck(lambda x: ops.upfirdn2d(x, f, up=2, down=(1, 2), padding=[2, 1, 0, 3], gain=2), (x,))
    assert gradcheck(lambda x, w: ops.conv2d_resample(x, w, f=f, up=2, padding=1, flip_weight=False), (x, w))
    assert gradcheck(lambda x, w: ops.conv2d_resample(x, w, f=f, down=2, padding=1), (x, w))
    assert gradcheck(lambda x, b: ops.bias_act(x, b, act="lrelu", gain=1.3), (x, b))
    assert gradcheck(lambda x, b: ops.bias_act(x, b, act="tanh"), (x, b))
    for fused in (True, False):
        assert gradcheck(lambda x, w, s: ops.modulated_conv2d(x, w, s, up=2, padding=1, resample_filter=f,
                                                              flip_weight=False, fused_modconv=fused), (x, w, s))
    # A gradient penalty differentiates the gradient: second order through the up path too.
    assert torch.autograd.gradgradcheck(lambda x, w: ops.conv2d_resample(x, w, f=f, up=2, padding=1), (x, w),
                                        fast_mode=True)
