"""fastmine.zoo.stylegan3 against NVlabs' official StyleGAN3 (configs T and R).

The fixtures (tests/fixtures/official/stylegan3_{t,r}.safetensors) hold an official 32 px generator's
tensors under their official names and its outputs, made by scripts/reference_stylegan3.py from the
official code. Measured max abs differences (float32, CPU): T 1.2e-7 (psi 1 and 0.7), R 1.1e-6 (psi 1),
6.0e-7 (psi 0.7); ws 0 (T), 9.5e-7 (R). stylegan3_layouts.safetensors holds the layout of full-size
configurations (1024 px T and R, 256 px T) for the checks that need no forward pass.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fastmine.zoo.stylegan3 import Generator, design_lowpass_filter, filtered_lrelu

FIXTURES = Path(__file__).parent / "fixtures" / "official"
OUTPUTS = ("z", "c", "ws_psi1", "ws_psi07", "ws_psi07_cutoff", "img_psi1", "img_psi07")
TOL = 1e-4


def load_fixture(config: str):
    path = FIXTURES / f"stylegan3_{config}.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    state = {k: v.float() for k, v in tensors.items() if k not in OUTPUTS}
    outputs = {k: tensors[k] for k in OUTPUTS}
    return json.loads(meta["init_kwargs"]), state, outputs, meta


@pytest.fixture(scope="module", params=["t", "r"])
def official(request):
    kwargs, state, outputs, meta = load_fixture(request.param)
    G = Generator(**kwargs).eval()
    G.load_state_dict(state, strict=True)
    return request.param, kwargs, state, outputs, meta, G


def test_fixture_records_its_origin(official):
    config, kwargs, _, _, meta, G = official
    assert meta["class_name"] == "training.networks_stylegan3.Generator"
    assert meta["script"] == "scripts/reference_stylegan3.py"
    assert len(meta["commit"]) == 40
    # the two configs differ where T and R differ
    assert kwargs.get("conv_kernel", 3) == (3 if config == "t" else 1)
    assert G.synthesis.L0_36_32.down_radial == (config == "r")


def test_images_equal_official(official):
    _, _, _, out, _, G = official
    with torch.no_grad():
        img1 = G.synthesis(out["ws_psi1"], noise_mode="const")
        img07 = G(out["z"], out["c"], truncation_psi=0.7, noise_mode="const")
    assert img1.shape == out["img_psi1"].shape == (2, 3, 32, 32)
    assert (img1 - out["img_psi1"]).abs().max().item() <= TOL
    assert (img07 - out["img_psi07"]).abs().max().item() <= TOL
    # psi 0.7 really moves the image, so the second comparison tests the truncation too
    assert (out["img_psi1"] - out["img_psi07"]).abs().max().item() > 100 * TOL


def test_mapping_equals_official(official):
    _, kwargs, _, out, _, G = official
    cutoff = int(official[4]["cutoff"])
    with torch.no_grad():
        assert (G.mapping(out["z"], out["c"]) - out["ws_psi1"]).abs().max().item() <= 1e-5
        assert (G.mapping(out["z"], out["c"], truncation_psi=0.7) - out["ws_psi07"]).abs().max().item() <= 1e-5
        ws = G.mapping(out["z"], out["c"], truncation_psi=0.7, truncation_cutoff=cutoff)
    assert (ws - out["ws_psi07_cutoff"]).abs().max().item() <= 1e-5
    assert G.num_ws == kwargs["num_layers"] + 2 == out["ws_psi1"].shape[1]


def test_state_dict_names_and_shapes_are_official(official):
    _, _, state, _, _, G = official
    ours = G.state_dict()
    assert sorted(ours) == sorted(state)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in state.items()}
    # the ToRGB layer has no filters, as in the official state dict
    assert not any(k.startswith("synthesis.L6_32_3.") and k.endswith("_filter") for k in ours)


def test_fresh_buffers_equal_official(official):
    _, kwargs, state, _, _, _ = official
    fresh = Generator(**kwargs)
    buffers = dict(fresh.named_buffers())
    filters = [k for k in state if k.endswith("_filter")]
    assert len(filters) == 12  # up and down filter of each of the 6 resampling layers
    for name in filters:
        assert buffers[name].dtype == torch.float32
        assert torch.equal(buffers[name], state[name]), name
    for name, buf in buffers.items():
        if name.endswith("magnitude_ema"):
            assert buf.item() == 1.0
    inp = fresh.synthesis.input
    assert torch.equal(inp.transform, torch.eye(3))
    assert torch.equal(inp.affine.weight, torch.zeros_like(inp.affine.weight))
    assert inp.affine.bias.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert inp.freqs.norm(dim=1).max().item() < inp.bandwidth
    assert torch.equal(fresh.mapping.w_avg, torch.zeros(kwargs["w_dim"]))


def test_noise_mode_is_accepted_and_ignored(official):
    _, _, _, out, _, G = official
    with torch.no_grad():
        imgs = [G.synthesis(out["ws_psi1"], noise_mode=mode) for mode in ("const", "random", "none")]
    assert torch.equal(imgs[0], imgs[1]) and torch.equal(imgs[0], imgs[2])
    with pytest.raises(ValueError, match="unknown noise_mode 'quiet'; use one of random, const, none"):
        G.synthesis(out["ws_psi1"], noise_mode="quiet")


def test_generator_attributes():
    kwargs, _, _, _ = load_fixture("r")
    G = Generator(**kwargs)
    assert (G.z_dim, G.c_dim, G.w_dim, G.num_ws, G.img_resolution, G.img_channels) == (32, 4, 32, 8, 32, 3)
    assert G.mapping.num_layers == 3 and G.mapping.w_avg_beta == 0.998


@pytest.mark.parametrize("config", ["t1024", "r1024", "t256"])
def test_full_size_layout_is_official(config):
    """The published pickles' sizes: names, shapes, designed filters, resampling and padding of every layer."""
    path = FIXTURES / "stylegan3_layouts.safetensors"
    with safe_open(str(path), "pt") as f:
        layout = json.loads(f.metadata()["layouts"])[config]
    filters = load_file(str(path))
    G = Generator(**layout["init_kwargs"])
    state = G.state_dict()
    assert {name: list(t.shape) for name, t in state.items()} == layout["shapes"]
    ours = {f"{config}/{name}": t for name, t in state.items() if name.endswith("_filter")}
    assert sorted(ours) == sorted(k for k in filters if k.startswith(f"{config}/"))
    for name, t in ours.items():
        assert torch.equal(t, filters[name]), name
    assert sorted(layout["layers"]) == sorted(G.synthesis.layer_names)
    for name, attributes in layout["layers"].items():
        layer = getattr(G.synthesis, name)
        assert {a: np.asarray(getattr(layer, a)).tolist() for a in attributes} == attributes, name


# ---- filtered leaky ReLU against a straightforward float64 reference ----

def reference_filtered_lrelu(x, fu, fd, b, up, down, padding, gain, slope, clamp):
    """The definition step by step in numpy float64: zero insertion, pad/crop, full 2-D convolution
    ('valid' part), activation, 2-D convolution, subsampling."""
    x = x + b[None, :, None, None]
    n, c, h, w = x.shape
    z = np.zeros([n, c, h * up, w * up])
    z[:, :, ::up, ::up] = x
    px0, px1, py0, py1 = padding
    z = np.pad(z, [(0, 0), (0, 0), (max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0))])
    z = z[:, :, max(-py0, 0): z.shape[2] - max(-py1, 0), max(-px0, 0): z.shape[3] - max(-px1, 0)]
    fu2 = np.outer(fu, fu) if fu.ndim == 1 else fu
    fd2 = np.outer(fd, fd) if fd.ndim == 1 else fd
    y = np.stack([[scipy.signal.convolve2d(z[i, j], fu2 * up ** 2, mode="valid") for j in range(c)] for i in range(n)])
    y = np.where(y >= 0, y, y * slope) * gain
    if clamp is not None:
        y = np.clip(y, -clamp, clamp)
    y = np.stack([[scipy.signal.convolve2d(y[i, j], fd2, mode="valid") for j in range(c)] for i in range(n)])
    return y[:, :, ::down, ::down]


CASES = [
    # (height, width, fu taps or shape, fd taps or shape, up, down, padding, gain, slope, clamp)
    (7, 9, (8,), (6,), 2, 2, [5, 4, 6, 3], math.sqrt(2), 0.2, 0.7),
    (5, 6, (12,), (7, 7), 4, 2, [-2, 3, 1, -1], math.sqrt(2), 0.2, None),
    (6, 5, (3, 5), (4,), 1, 3, [2, 2, 0, 1], 1.5, 0.05, 2.0),
    (4, 7, (1, 1), (1, 1), 1, 1, [0, 1, 1, 0], 1.0, 1.0, 0.3),
]


@pytest.mark.parametrize("case", CASES)
def test_filtered_lrelu_matches_float64_reference(case):
    h, w, fu_shape, fd_shape, up, down, padding, gain, slope, clamp = case
    g = torch.Generator().manual_seed(h * 100 + w)
    x = torch.randn([2, 3, h, w], generator=g, dtype=torch.float64)
    b = torch.randn([3], generator=g, dtype=torch.float64)
    # asymmetric filters pin the convolution (not correlation) convention of the official op
    fu = torch.rand(fu_shape, generator=g, dtype=torch.float64) + 0.1
    fd = torch.rand(fd_shape, generator=g, dtype=torch.float64) + 0.1
    fu, fd = fu / fu.sum(), fd / fd.sum()
    ours = filtered_lrelu(x, fu=fu, fd=fd, b=b, up=up, down=down, padding=padding, gain=gain, slope=slope,
                          clamp=clamp)
    ref = reference_filtered_lrelu(x.numpy(), fu.numpy(), fd.numpy(), b.numpy(), up, down, padding, gain, slope,
                                   clamp)
    assert ours.dtype == torch.float64
    assert tuple(ours.shape) == ref.shape
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-12)
    if clamp is not None:  # the clamp takes part in the comparison
        unclamped = reference_filtered_lrelu(x.numpy(), fu.numpy(), fd.numpy(), b.numpy(), up, down, padding, gain,
                                             slope, None)
        assert np.abs(unclamped - ref).max() > 1e-3


def test_filtered_lrelu_without_filters_is_bias_lrelu_clamp():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    y = filtered_lrelu(x, b=b, gain=2.0, slope=0.1, clamp=0.5)
    pre = x + b[None, :, None, None]
    assert torch.equal(y, (torch.where(pre >= 0, pre, pre * 0.1) * 2.0).clamp(-0.5, 0.5))


def test_filtered_lrelu_gradients():
    g = torch.Generator().manual_seed(0)
    x = torch.randn([1, 2, 5, 4], generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn([2], generator=g, dtype=torch.float64, requires_grad=True)
    fu = torch.rand([6], generator=g, dtype=torch.float64) + 0.1
    fd = torch.rand([4, 4], generator=g, dtype=torch.float64) + 0.1

    def f(x, b):
        return filtered_lrelu(x, fu=fu, fd=fd, b=b, up=2, down=2, padding=[3, 2, 1, 4], clamp=1.5)

    assert torch.autograd.gradcheck(f, (x, b))
    assert torch.autograd.gradgradcheck(f, (x, b))


# ---- filter design ----

def test_radial_filter_with_odd_taps_is_finite():
    f = design_lowpass_filter(numtaps=7, cutoff=3.0, width=4.0, fs=16, radial=True)
    assert f.shape == (7, 7) and torch.isfinite(f).all()
    assert f.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert f[3, 3] == f.max()
    assert torch.equal(f, f.t()) and torch.equal(f, f.flip(0))


def test_separable_filter_is_firwin():
    f = design_lowpass_filter(numtaps=12, cutoff=5.0, width=6.0, fs=32)
    expected = scipy.signal.firwin(12, 5.0, width=6.0, fs=32)
    assert torch.equal(f, torch.as_tensor(expected, dtype=torch.float32))
    assert design_lowpass_filter(numtaps=1, cutoff=5.0, width=6.0, fs=32) is None


# ---- bad input ----

BASE = dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3, channel_base=64, channel_max=8,
            num_layers=4)


@pytest.mark.parametrize("change, message", [
    (dict(conv_kernal=1), "unknown StyleGAN3 synthesis argument(s) 'conv_kernal'; known: "),
    (dict(mapping_kwargs=dict(layer_features=16)),
     "unknown StyleGAN3 mapping_kwargs 'layer_features'; known: num_layers, lr_multiplier, w_avg_beta"),
    (dict(num_layers=2, num_critical=2),
     "StyleGAN3 needs 0 <= num_critical < num_layers, got num_critical=2 and num_layers=2"),
    (dict(img_resolution=0), "StyleGAN3 needs a positive img_resolution, got 0"),
    (dict(channel_max=0), "StyleGAN3 needs a positive channel_max, got 0"),
    (dict(conv_clamp=-1), "conv_clamp must be None or >= 0, got -1"),
    (dict(lrelu_upsampling=1.5), "does not divide the leaky ReLU's rate"),
    (dict(z_dim=0), "StyleGAN3 needs z_dim >= 1 and c_dim >= 0, got z_dim=0, c_dim=0"),
])
def test_bad_kwargs_raise_clear_errors(change, message):
    with pytest.raises(ValueError) as info:
        Generator(**{**BASE, **change})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_ws_shape():
    G = Generator(**BASE)
    with pytest.raises(ValueError, match=r"StyleGAN3 synthesis takes ws \[N, 6, 8\], got \(2, 5, 8\)"):
        G.synthesis(torch.zeros(2, 5, 8))

