"""StyleGAN (v1) checkpoints as fastmine networks, read as data: genforce's and rosinality's.

genforce/genforce's ``StyleGANGenerator`` (its converter of NVIDIA's TensorFlow release: FFHQ and
CelebA-HQ at 1024 px, the LSUN bedroom / cat / car models, and genforce's own FFHQ / LSUN models)
saves ``{"generator", "discriminator", "generator_smooth"}``; :class:`Generator` keeps its
constructor keywords and parameter names (``mapping.dense{i}``, ``synthesis.layer{i}.{const,
weight, bias, apply_noise, style, blur}``, ``synthesis.output{i}``) so those tensors load strictly,
with one rename: genforce's ``truncation.w_avg`` is fastmine's ``mapping.w_avg`` (where the mining
source looks for the average w of every StyleGAN family).

The network (Karras et al. 2019): an 8-layer mapping MLP (pixel-normalised z, learning-rate
multiplier 0.01), then per resolution two layers of convolution, per-pixel noise scaled per
channel, bias, leaky ReLU, instance norm and AdaIN (``x * (1 + scale) + shift`` from an affine map
of w); upsampling is nearest + 3x3 conv below 128 px and a transposed conv of the 4-tap-summed
kernel from 128 px (``fused_scale="auto"``), both followed by a [1, 2, 1] blur; an unmodulated
1x1 toRGB at the last resolution. Truncation pulls the first ``truncation_cutoff`` layers' w toward
``w_avg`` (NVIDIA's psi 0.7, cutoff 8; genforce's trunc_psi / trunc_layers). As a mining source it
takes z, w or w+ exactly as StyleGAN2 does (:class:`fastmine.zoo.StyleGANSource`).

rosinality/style-based-gan-pytorch (:class:`RosinalityGenerator`, family ``stylegan1_rosinality``)
is its own reimplementation, kept with its names: ``style.{1,3,..}.linear.weight_orig`` (equalised
learning rate without a mapping lr multiplier), ``generator.progression.{b}`` (conv, noise, leaky
ReLU, AdaIN with nn.InstanceNorm2d's eps 1e-5, twice per block, one style per block in its code),
``generator.to_rgb.{b}``. train.py saves ``{"generator", "discriminator", "g_optimizer",
"d_optimizer", "g_running"}`` (``g_running``, the moving average, is what generate.py samples) or
``g_running`` alone. It builds all nine blocks and grows one resolution at a time, so the trained
resolution is read as the last block whose noise strengths or toRGB bias have left their zero
init; neither the noise maps (drawn per call) nor the average w (``mean_style`` at sampling time)
are stored: noise_mode="const" uses maps drawn once from NOISE_SEED, and w_avg is the mean w of
W_AVG_SAMPLES fixed latents. Its discriminator (:class:`RosinalityDiscriminator`, the
checkpoint's ``discriminator``) is the first critic, at the resolution its trained blocks give.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from .pggan import LEAK, WScaled, fmaps_for, genforce_head, pixel_norm
from .stylegan2 import truncate

NOISE_MODES = ("const", "random", "none")
INSTANCE_NORM_EPS = 1e-8
FUSED_SCALE_MIN_RES = 128  # fused_scale="auto": transposed convolutions from this resolution up
BLUR_TAPS = (1.0, 2.0, 1.0)
FMAPS_BASE, FMAPS_MAX = 16 << 10, 512


def _dense(in_features, out_features, gain=math.sqrt(2.0), lr_mul=1.0):
    layer = nn.Module()
    layer.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
    layer.bias = nn.Parameter(torch.zeros(out_features))
    layer.wscale, layer.bscale = gain / math.sqrt(in_features) * lr_mul, lr_mul
    return layer


class MappingNetwork(nn.Module):
    """z -> w (genforce's MappingModule), broadcast to ``num_ws`` layers and truncated."""

    def __init__(self, z_dim, w_dim, hidden_dim, num_layers, num_ws, lr_mul):
        super().__init__()
        self.num_layers, self.num_ws = num_layers, num_ws
        for i in range(num_layers):
            self.add_module(f"dense{i}", _dense(z_dim if i == 0 else hidden_dim,
                                                w_dim if i == num_layers - 1 else hidden_dim, lr_mul=lr_mul))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z, c=None, truncation_psi=1, truncation_cutoff=None):
        w = pixel_norm(z)
        for i in range(self.num_layers):
            layer = getattr(self, f"dense{i}")
            w = F.leaky_relu(F.linear(w, layer.weight * layer.wscale, layer.bias * layer.bscale), LEAK)
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        return ws if truncation_psi == 1 else truncate(ws, self.w_avg, truncation_psi, truncation_cutoff)


class StyleLayer(nn.Module):
    """genforce's ConvBlock of the synthesis network (``const`` first layer, upsampling, or plain)."""

    def __init__(self, in_channels, out_channels, resolution, w_dim, position=None, kernel_size=3, upsample=False,
                 fused_scale=False):
        super().__init__()
        self.position, self.upsample, self.fused_scale = position, upsample, fused_scale
        self.resolution = resolution
        self.bias = nn.Parameter(torch.zeros(out_channels))
        if position != "last":
            self.apply_noise = nn.Module()
            self.apply_noise.register_buffer("noise", torch.randn(1, 1, resolution, resolution))
            self.apply_noise.weight = nn.Parameter(torch.zeros(out_channels))
            self.style = _dense(w_dim, 2 * out_channels, gain=1.0)
        if position == "const_init":
            self.const = nn.Parameter(torch.ones(1, in_channels, resolution, resolution))
            return
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        gain = 1.0 if position == "last" else math.sqrt(2.0)
        self.wscale = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        if upsample:
            self.blur = nn.Module()
            self.blur.register_buffer("kernel", _blur_kernel(out_channels))

    def forward(self, x, w, noise_mode="const"):
        if self.position == "const_init":
            x = self.const.repeat(w.shape[0], 1, 1, 1)
        else:
            weight = self.weight * self.wscale
            if self.upsample and self.fused_scale:
                weight = F.pad(weight, (1, 1, 1, 1))
                weight = weight[:, :, 1:, 1:] + weight[:, :, :-1, 1:] + weight[:, :, 1:, :-1] + weight[:, :, :-1, :-1]
                x = F.conv_transpose2d(x, weight.permute(1, 0, 2, 3), stride=2, padding=1)
            else:
                if self.upsample:
                    x = F.interpolate(x, scale_factor=2, mode="nearest")
                x = F.conv2d(x, weight, padding=weight.shape[-1] // 2)
            if self.upsample:
                x = F.conv2d(x, self.blur.kernel, padding=1, groups=x.shape[1])
        if self.position == "last":
            return x + self.bias.view(1, -1, 1, 1)
        if noise_mode == "const":
            x = x + self.apply_noise.noise * self.apply_noise.weight.view(1, -1, 1, 1)
        elif noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype)
            x = x + noise * self.apply_noise.weight.view(1, -1, 1, 1)
        x = F.leaky_relu(x + self.bias.view(1, -1, 1, 1), LEAK)
        x = x - x.mean(dim=[2, 3], keepdim=True)
        x = x * (x.square().mean(dim=[2, 3], keepdim=True) + INSTANCE_NORM_EPS).rsqrt()
        style = F.linear(w, self.style.weight * self.style.wscale, self.style.bias).view(-1, 2, x.shape[1], 1, 1)
        return x * (style[:, 0] + 1) + style[:, 1]


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> images (genforce's SynthesisModule at lod 0)."""

    def __init__(self, resolution, w_dim, image_channels, final_tanh, fused_scale, fmaps_base, fmaps_max):
        super().__init__()
        self.final_tanh = final_tanh
        self.num_blocks = int(math.log2(resolution)) - 1
        self.register_buffer("lod", torch.zeros(()))

        def nf(res):
            return min(fmaps_base // res, fmaps_max)

        for block in range(self.num_blocks):
            res = 4 * 2 ** block
            if block == 0:
                first = StyleLayer(nf(res), nf(res), res, w_dim, position="const_init")
            else:
                fused = res >= FUSED_SCALE_MIN_RES if fused_scale == "auto" else bool(fused_scale)
                first = StyleLayer(nf(res // 2), nf(res), res, w_dim, upsample=True, fused_scale=fused)
            self.add_module(f"layer{2 * block}", first)
            self.add_module(f"layer{2 * block + 1}", StyleLayer(nf(res), nf(res), res, w_dim))
            self.add_module(f"output{block}", StyleLayer(nf(res), image_channels, res, w_dim, position="last",
                                                         kernel_size=1))

    def forward(self, ws, noise_mode="const"):
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"unknown noise_mode {noise_mode!r}: use one of {', '.join(NOISE_MODES)}")
        x = None
        for i in range(2 * self.num_blocks):
            x = getattr(self, f"layer{i}")(x, ws[:, i], noise_mode)
        image = getattr(self, f"output{self.num_blocks - 1}")(x, None)
        return torch.tanh(image) if self.final_tanh else image


class Generator(nn.Module):
    """genforce's StyleGANGenerator (its keywords; ``repeat_w``, no labels, lod 0), with the
    interface of the StyleGAN2 generator: ``mapping(z, c, truncation_psi, truncation_cutoff)`` ->
    ws, ``synthesis(ws, noise_mode)`` -> images."""

    def __init__(self, resolution, z_space_dim=512, w_space_dim=512, mapping_layers=8, mapping_fmaps=512,
                 mapping_lr_mul=0.01, image_channels=3, final_tanh=False, fused_scale="auto",
                 fmaps_base=FMAPS_BASE, fmaps_max=FMAPS_MAX):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = int(z_space_dim), 0, int(w_space_dim)
        self.img_resolution = int(resolution)
        self.num_ws = 2 * (int(math.log2(resolution)) - 1)
        self.mapping = MappingNetwork(z_space_dim, w_space_dim, mapping_fmaps, mapping_layers, self.num_ws,
                                      mapping_lr_mul)
        self.synthesis = SynthesisNetwork(resolution, w_space_dim, image_channels, final_tanh, fused_scale,
                                          fmaps_base, fmaps_max)

    def forward(self, z, c=None, truncation_psi=1, truncation_cutoff=None, noise_mode="const"):
        return self.synthesis(self.mapping(z, c, truncation_psi, truncation_cutoff), noise_mode=noise_mode)


def _blur_kernel(channels):
    taps = torch.tensor(BLUR_TAPS)
    kernel = torch.outer(taps, taps)
    return (kernel / kernel.sum()).expand(channels, 1, 3, 3).clone()


class Discriminator(nn.Module):
    """genforce's StyleGANDiscriminator (its keywords and names; no labels, lod 0); returns [N, 1].

    As the PGGAN critic, plus a [1, 2, 1] blur before each downsampling convolution, which is a
    stride-2 convolution of the 4-tap-averaged kernel from 128 px (``fused_scale="auto"``) and
    a convolution then 2x2 average pooling below; minibatch std over groups of 4."""

    def __init__(self, resolution, image_channels=3, fused_scale="auto", minibatch_std_group_size=4,
                 fmaps_base=FMAPS_BASE, fmaps_max=FMAPS_MAX):
        super().__init__()
        self.minibatch_std_group_size = minibatch_std_group_size
        self.register_buffer("lod", torch.zeros(()))
        self.num_blocks = int(math.log2(resolution)) - 1
        self.fused = []
        mbstd = int(minibatch_std_group_size > 1)
        for block in range(self.num_blocks):
            res = resolution // 2 ** block
            nf, nf_next = min(fmaps_base // res, fmaps_max), min(fmaps_base // (res // 2), fmaps_max)
            self.add_module(f"input{block}", WScaled((nf, image_channels, 1, 1)))
            if res > 4:
                self.add_module(f"layer{2 * block}", WScaled((nf, nf, 3, 3)))
                down = WScaled((nf_next, nf, 3, 3))
                down.blur = nn.Module()
                down.blur.register_buffer("kernel", _blur_kernel(nf))
                self.add_module(f"layer{2 * block + 1}", down)
                self.fused.append(res >= FUSED_SCALE_MIN_RES if fused_scale == "auto" else bool(fused_scale))
            else:
                self.add_module(f"layer{2 * block}", WScaled((nf, nf + mbstd, 3, 3)))
                self.add_module(f"layer{2 * block + 1}", WScaled((nf_next, nf * 16)))
        self.add_module(f"layer{2 * self.num_blocks}", WScaled((1, nf_next), gain=1.0))

    def forward(self, image):
        x = F.leaky_relu(self.input0.conv(image, 0), LEAK)
        for block in range(self.num_blocks - 1):
            x = F.leaky_relu(getattr(self, f"layer{2 * block}").conv(x, 1), LEAK)
            down = getattr(self, f"layer{2 * block + 1}")
            x = F.conv2d(x, down.blur.kernel, padding=1, groups=x.shape[1])
            weight = down.weight * down.wscale
            if self.fused[block]:
                weight = F.pad(weight, (1, 1, 1, 1))
                weight = (weight[:, :, 1:, 1:] + weight[:, :, :-1, 1:] + weight[:, :, 1:, :-1]
                          + weight[:, :, :-1, :-1]) * 0.25
                x = F.conv2d(x, weight, down.bias, stride=2, padding=1)
            else:
                x = F.avg_pool2d(F.conv2d(x, weight, down.bias, padding=1), 2)
            x = F.leaky_relu(x, LEAK)
        return genforce_head(self, x)


# --------------------------------------------------------------------------- reading
GENFORCE_KEYS = ("mapping.dense0.weight", "synthesis.layer0.const", "synthesis.output0.weight", "truncation.w_avg")
GENFORCE_ROLES = {"generator": "generator_smooth", "critic": "discriminator"}
BUILDER = "genforce's StyleGAN"


def _genforce_generator(state) -> bool:
    return isinstance(state, dict) and all(k in state for k in GENFORCE_KEYS)


def _is_genforce(obj) -> bool:
    return isinstance(obj, dict) and any(_genforce_generator(obj.get(k)) for k in ("generator", "generator_smooth"))


def sniff(obj, path) -> bool:
    return _is_genforce(obj) or sniff_rosinality(obj)


def read(obj, path, role, key) -> tuple[str, dict, dict, str]:
    if not _is_genforce(obj):
        return read_rosinality(obj, path, role, key)
    name = key or GENFORCE_ROLES[role]
    if role == "critic":
        return _read_discriminator(obj, path, name)
    state = obj.get(name)
    if not _genforce_generator(state):
        found = ", ".join(str(k) for k, v in obj.items() if isinstance(v, dict)) or "none"
        raise ValueError(f"{str(path)!r} is a genforce StyleGAN checkpoint without a generator under {name!r} "
                         f"(it has {found}); pass key= naming one (source.key=...)")
    state = {("mapping.w_avg" if k == "truncation.w_avg" else k): v.detach().float() for k, v in state.items()}
    if float(state["synthesis.lod"]) != 0:
        raise ValueError(f"{str(path)!r}: {name} is at lod={float(state['synthesis.lod'])} (mid progressive "
                         "growing); fastmine builds a StyleGAN at its final resolution (lod 0)")
    if state["mapping.w_avg"].numel() != state["synthesis.layer0.style.weight"].shape[1]:
        raise ValueError(f"{str(path)!r}: a StyleGAN with a w per layer (repeat_w=False), which fastmine does not "
                         "build; its keys: " + ", ".join(list(state)[:8]) + ", ...")
    mapping_layers = sum(1 for k in state if k.startswith("mapping.dense") and k.endswith(".weight"))
    n_out = sum(1 for k in state if k.startswith("synthesis.output") and k.endswith(".weight"))
    resolution = 4 * 2 ** (n_out - 1)
    widths = {4 * 2 ** b: int(state[f"synthesis.layer{2 * b + 1}.weight"].shape[0]) for b in range(n_out)}
    kwargs = dict(resolution=resolution, z_space_dim=int(state["mapping.dense0.weight"].shape[1]),
                  w_space_dim=int(state["mapping.w_avg"].numel()), mapping_layers=mapping_layers,
                  mapping_fmaps=int(state["mapping.dense0.weight"].shape[0]),
                  image_channels=int(state["synthesis.output0.weight"].shape[0]),
                  **fmaps_for(widths, path, BUILDER))
    return "stylegan1", kwargs, state, name


def _read_discriminator(obj, path, name):
    state = obj.get(name)
    if not (isinstance(state, dict) and all(k in state for k in ("input0.weight", "layer0.weight", "lod"))):
        found = ", ".join(str(k) for k, v in obj.items() if isinstance(v, dict)) or "none"
        raise ValueError(f"{str(path)!r} is a genforce StyleGAN checkpoint without a discriminator under {name!r} "
                         f"(it has {found}); pass key= naming it, or another critic (source.critic=...)")
    state = {k: v.detach().float() for k, v in state.items()}
    if float(state["lod"]) != 0:
        raise ValueError(f"{str(path)!r}: {name} is at lod={float(state['lod'])} (mid progressive growing); "
                         "fastmine builds a StyleGAN at its final resolution (lod 0)")
    n_in = sum(1 for k in state if k.startswith("input") and k.endswith(".weight"))
    resolution = 4 * 2 ** (n_in - 1)
    widths = {resolution // 2 ** b: int(state[f"input{b}.weight"].shape[0]) for b in range(n_in)}
    last = state[f"layer{2 * (n_in - 1)}.weight"]
    outputs = state[f"layer{2 * n_in}.weight"].shape[0]
    if outputs != 1:
        raise ValueError(f"{str(path)!r}: a conditional StyleGAN discriminator ({outputs} outputs), which fastmine "
                         "does not build")
    kwargs = dict(resolution=resolution, image_channels=int(state["input0.weight"].shape[1]),
                  minibatch_std_group_size=4 if last.shape[1] > last.shape[0] else 0,
                  **fmaps_for(widths, path, BUILDER))
    return "stylegan1", kwargs, state, name


GENERATORS = {"stylegan1": Generator}
DISCRIMINATORS = {"stylegan1": Discriminator}


# --------------------------------------------------------------------------- rosinality/style-based-gan-pytorch
# rosinality's channel table (its Generator's progression, 4 px up to 1024 px)
ROSINALITY_CHANNELS = (512, 512, 512, 512, 256, 128, 64, 32, 16)
ROSINALITY_IN_EPS = 1e-5  # nn.InstanceNorm2d's default, which rosinality's AdaIN uses
ROSINALITY_ROLES = {"generator": "g_running", "critic": "discriminator"}
ROSINALITY_KEY = "generator.progression.0.conv1.input"
W_AVG_SAMPLES, W_AVG_SEED = 10_000, 0
NOISE_SEED = 0  # the fixed noise of noise_mode="const" (rosinality stores none)


def _equal(shape, gain_dim):
    """rosinality's equal_lr parameters: ``weight_orig`` times sqrt(2 / fan_in) at run time."""
    layer = nn.Module()
    layer.weight_orig = nn.Parameter(torch.randn(shape))
    layer.scale = math.sqrt(2.0 / gain_dim)
    return layer


def _equal_conv(c_in, c_out, k):
    """EqualConv2d: ``conv.weight_orig``, ``conv.bias``."""
    module = nn.Module()
    module.conv = _equal((c_out, c_in, k, k), c_in * k * k)
    module.conv.bias = nn.Parameter(torch.zeros(c_out))
    return module


def _equal_linear(c_in, c_out):
    """EqualLinear: ``linear.weight_orig``, ``linear.bias``."""
    module = nn.Module()
    module.linear = _equal((c_out, c_in), c_in)
    module.linear.bias = nn.Parameter(torch.zeros(c_out))
    return module


def _conv(module, x, padding):
    return F.conv2d(x, module.conv.weight_orig * module.conv.scale, module.conv.bias, padding=padding)


def _linear(module, x):
    return F.linear(x, module.linear.weight_orig * module.linear.scale, module.linear.bias)


def _blur(channels):
    """rosinality's Blur: ``weight`` and ``weight_flip`` buffers (the same symmetric kernel)."""
    module = nn.Module()
    module.register_buffer("weight", _blur_kernel(channels))
    module.register_buffer("weight_flip", _blur_kernel(channels))
    return module


class RosinalityMapping(nn.Module):
    """rosinality's ``style``: pixel norm, then n_mlp EqualLinear + leaky ReLU (children 1, 3, 5, ...)."""

    def __init__(self, code_dim, n_mlp, num_ws):
        super().__init__()
        self.n_mlp, self.num_ws = n_mlp, num_ws
        for i in range(n_mlp):
            self.add_module(str(2 * i + 1), _equal_linear(code_dim, code_dim))
        self.register_buffer("w_avg", torch.zeros(code_dim))

    def forward(self, z, c=None, truncation_psi=1, truncation_cutoff=None):
        w = pixel_norm(z)
        for i in range(self.n_mlp):
            w = F.leaky_relu(_linear(getattr(self, str(2 * i + 1)), w), LEAK)
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        return ws if truncation_psi == 1 else truncate(ws, self.w_avg, truncation_psi, truncation_cutoff)


class RosinalityBlock(nn.Module):
    """rosinality's StyledConvBlock: conv, noise, leaky ReLU, AdaIN, twice."""

    def __init__(self, c_in, c_out, code_dim, initial=False, fused=False):
        super().__init__()
        self.initial, self.fused = initial, fused
        if initial:
            self.conv1 = nn.Module()
            self.conv1.input = nn.Parameter(torch.randn(1, c_in, 4, 4))
        elif fused:
            up = nn.Module()
            up.weight = nn.Parameter(torch.randn(c_in, c_out, 3, 3))
            up.bias = nn.Parameter(torch.zeros(c_out))
            up.scale = math.sqrt(2.0 / (c_in * 9))
            self.conv1 = nn.Sequential(up, _blur(c_out))
        else:
            self.conv1 = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), _equal_conv(c_in, c_out, 3),
                                       _blur(c_out))
        self.conv2 = _equal_conv(c_out, c_out, 3)
        for i in (1, 2):
            self.add_module(f"noise{i}", _equal((1, c_out, 1, 1), c_out))
            adain = nn.Module()
            adain.style = _equal_linear(code_dim, 2 * c_out)
            self.add_module(f"adain{i}", adain)

    def _adain(self, adain, x, w):
        gamma, beta = _linear(adain.style, w).unsqueeze(2).unsqueeze(3).chunk(2, 1)
        return gamma * F.instance_norm(x, eps=ROSINALITY_IN_EPS) + beta

    def forward(self, x, w1, w2, noise):
        if self.initial:
            x = self.conv1.input.repeat(w1.shape[0], 1, 1, 1)
        elif self.fused:
            up, blur = self.conv1
            weight = F.pad(up.weight * up.scale, [1, 1, 1, 1])
            weight = (weight[:, :, 1:, 1:] + weight[:, :, :-1, 1:] + weight[:, :, 1:, :-1] + weight[:, :, :-1, :-1]) / 4
            x = F.conv2d(F.conv_transpose2d(x, weight, up.bias, stride=2, padding=1), blur.weight, padding=1,
                         groups=weight.shape[1])
        else:
            _, conv, blur = self.conv1
            x = _conv(conv, F.interpolate(x, scale_factor=2, mode="nearest"), 1)
            x = F.conv2d(x, blur.weight, padding=1, groups=x.shape[1])
        if noise is not None:
            x = x + self.noise1.weight_orig * self.noise1.scale * noise
        x = self._adain(self.adain1, F.leaky_relu(x, LEAK), w1)
        x = _conv(self.conv2, x, 1)
        if noise is not None:
            x = x + self.noise2.weight_orig * self.noise2.scale * noise
        return self._adain(self.adain2, F.leaky_relu(x, LEAK), w2)


class RosinalitySynthesis(nn.Module):
    """rosinality's ``generator`` (progression + to_rgb) run at its last trained step."""

    def __init__(self, code_dim, channels, fused):
        super().__init__()
        self.progression = nn.ModuleList()
        self.to_rgb = nn.ModuleList()
        for b, c_out in enumerate(channels):
            c_in = channels[max(b - 1, 0)]
            self.progression.append(RosinalityBlock(c_in, c_out, code_dim, initial=b == 0,
                                                    fused=fused and 4 * 2 ** b >= FUSED_SCALE_MIN_RES))
            self.to_rgb.append(_equal_conv(c_out, 3, 1))
        gen = torch.Generator().manual_seed(NOISE_SEED)
        for b in range(len(channels)):
            res = 4 * 2 ** b
            self.register_buffer(f"noise_const{b}", torch.randn(1, 1, res, res, generator=gen), persistent=False)

    def forward(self, ws, noise_mode="const", noise=None):
        """``noise``: rosinality's per-block noise list (each [N, 1, R, R], shared by a block's two
        layers); else ``noise_mode`` const (fixed maps drawn once from NOISE_SEED), random, none."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"unknown noise_mode {noise_mode!r}: use one of {', '.join(NOISE_MODES)}")
        x = None
        for b, block in enumerate(self.progression):
            if noise is not None:
                n = noise[b]
            elif noise_mode == "const":
                n = getattr(self, f"noise_const{b}")
            elif noise_mode == "random":
                res = 4 * 2 ** b
                n = torch.randn(ws.shape[0], 1, res, res, device=ws.device, dtype=ws.dtype)
            else:
                n = None
            x = block(x, ws[:, 2 * b], ws[:, 2 * b + 1], n)
        return _conv(self.to_rgb[-1], x, 0)


class RosinalityGenerator(nn.Module):
    """rosinality/style-based-gan-pytorch's StyledGenerator (its names) at ``size`` px, with the
    interface of the StyleGAN2 generator (``mapping`` is its ``style``, ``synthesis`` its
    ``generator``). Each block's two layers take their own w (rosinality gives both the block's
    style): w+ has 2 per block."""

    def __init__(self, size, code_dim=512, n_mlp=8, channels=None, fused=True):
        super().__init__()
        n_blocks = int(math.log2(size)) - 1
        channels = list(ROSINALITY_CHANNELS[:n_blocks] if channels is None else channels)
        if len(channels) != n_blocks:
            raise ValueError(f"channels has {len(channels)} widths; a {size} px network has {n_blocks} blocks")
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = int(code_dim), 0, int(code_dim), 2 * n_blocks
        self.img_resolution = int(size)
        self.style = RosinalityMapping(code_dim, n_mlp, self.num_ws)
        self.generator = RosinalitySynthesis(code_dim, channels, fused)

    @property
    def mapping(self):
        return self.style

    @property
    def synthesis(self):
        return self.generator

    def forward(self, z, c=None, truncation_psi=1, truncation_cutoff=None, noise_mode="const"):
        return self.generator(self.style(z, c, truncation_psi, truncation_cutoff), noise_mode=noise_mode)


def _rosinality_state(obj):
    return isinstance(obj, dict) and ROSINALITY_KEY in obj


def sniff_rosinality(obj) -> bool:
    return _rosinality_state(obj) or (isinstance(obj, dict) and any(_rosinality_state(v) for v in obj.values()))


@torch.no_grad()
def _estimate_w_avg(state, kwargs) -> torch.Tensor:
    """The mean w of W_AVG_SAMPLES latents drawn with W_AVG_SEED (rosinality's generate.py averages
    10 x 1024 random ones at sampling time; its checkpoints hold none)."""
    mapping = RosinalityMapping(kwargs["code_dim"], kwargs["n_mlp"], 1)
    mapping.load_state_dict({k[len("style."):]: v for k, v in state.items() if k.startswith("style.")} |
                            {"w_avg": torch.zeros(kwargs["code_dim"])})
    gen = torch.Generator().manual_seed(W_AVG_SEED)
    z = torch.randn(W_AVG_SAMPLES, kwargs["code_dim"], generator=gen)
    return mapping(z)[:, 0].double().mean(0).float()


def read_rosinality(obj, path, role, key):
    if role == "critic":
        return _read_rosinality_discriminator(obj, path, key)
    if _rosinality_state(obj):
        name, state = "(state dict)", obj
    else:
        name = key or ROSINALITY_ROLES[role]
        state = obj.get(name)
        if not _rosinality_state(state):
            found = ", ".join(str(k) for k, v in obj.items() if isinstance(v, dict)) or "none"
            raise ValueError(f"{str(path)!r} is a rosinality style-based-gan checkpoint without a generator under "
                             f"{name!r} (it has {found}); pass key= naming one (source.key=...)")
    state = {k: v.detach().float() for k, v in state.items()}
    n_blocks = sum(1 for k in state if re.fullmatch(r"generator\.to_rgb\.\d+\.conv\.bias", k))
    # rosinality builds all nine blocks and trains them one resolution at a time: the blocks above the
    # step it was trained to keep their initial zero noise strengths and toRGB biases
    trained = [b for b in range(n_blocks) if state[f"generator.progression.{b}.noise1.weight_orig"].any()
               or state[f"generator.to_rgb.{b}.conv.bias"].any()]
    if not trained:
        raise ValueError(f"{str(path)!r}: the rosinality generator has no trained block (all noise strengths and "
                         "toRGB biases are zero); its keys: " + ", ".join(list(state)[:6]) + ", ...")
    size = 4 * 2 ** max(trained)
    keep = [f"generator.progression.{b}." for b in range(max(trained) + 1)] + \
           [f"generator.to_rgb.{b}." for b in range(max(trained) + 1)] + ["style."]
    state = {k: v for k, v in state.items() if any(k.startswith(p) for p in keep)}
    channels = [int(state[f"generator.progression.{b}.conv2.conv.weight_orig"].shape[0])
                for b in range(max(trained) + 1)]
    kwargs = dict(size=size, code_dim=int(state["style.1.linear.weight_orig"].shape[1]),
                  n_mlp=sum(1 for k in state if re.fullmatch(r"style\.\d+\.linear\.weight_orig", k)),
                  channels=channels, fused=True)
    state["style.w_avg"] = _estimate_w_avg(state, kwargs)
    return "stylegan1_rosinality", kwargs, state, name


GENERATORS["stylegan1_rosinality"] = RosinalityGenerator


class RosinalityDiscriminator(nn.Module):
    """rosinality/style-based-gan-pytorch's Discriminator (its names) at ``size`` px; returns [N, 1].

    ``channels``: {progression index: (in, out)} of the blocks that run at this size (rosinality
    indexes them from 1024 px down, the last one, index ``n_layer - 1``, at 4 px with the
    minibatch std: one feature, the batch's standard deviation averaged, all images one group).
    Downsampling convolutions are a blur then a stride-2 convolution of the 4-tap-averaged kernel
    from 128 px input (``fused``), a blur, convolution and 2x2 average pool below."""

    def __init__(self, size, channels, n_layer=9, fused=True, from_rgb_activate=True):
        super().__init__()
        self.n_layer, self.from_rgb_activate = n_layer, from_rgb_activate
        self.first = n_layer - (int(math.log2(size)) - 1)
        channels = {int(k): v for k, v in channels.items()}
        self.progression, self.from_rgb = nn.ModuleDict(), nn.ModuleDict()
        self.fused = {}
        for i in range(self.first, n_layer):
            c_in, c_out = channels[i]
            block = nn.Module()
            last = i == n_layer - 1
            block.conv1 = nn.Sequential(_equal_conv(c_in + int(last), c_out, 3))  # + the minibatch-std feature
            res = size // 2 ** (i - self.first)
            if last:
                block.conv2 = nn.Sequential(_equal_conv(c_out, c_out, 4))
            elif fused and res >= FUSED_SCALE_MIN_RES:
                down = nn.Module()
                down.weight = nn.Parameter(torch.randn(c_out, c_out, 3, 3))
                down.bias = nn.Parameter(torch.zeros(c_out))
                down.scale = math.sqrt(2.0 / (c_out * 9))
                block.conv2 = nn.Sequential(_blur(c_out), down)
                self.fused[i] = True
            else:
                block.conv2 = nn.Sequential(_blur(c_out), _equal_conv(c_out, c_out, 3))
                self.fused[i] = False
            self.progression[str(i)] = block
        c_first = channels[self.first][0]
        rgb = _equal_conv(3, c_first, 1)
        self.from_rgb[str(self.first)] = nn.Sequential(rgb) if from_rgb_activate else rgb
        self.linear = _equal_linear(channels[n_layer - 1][1], 1)

    def forward(self, x):
        rgb = self.from_rgb[str(self.first)]
        x = _conv(rgb[0] if self.from_rgb_activate else rgb, x, 0)
        if self.from_rgb_activate:
            x = F.leaky_relu(x, LEAK)
        for i in range(self.first, self.n_layer):
            block = self.progression[str(i)]
            if i == self.n_layer - 1:
                std = (x.var(0, unbiased=False) + 1e-8).sqrt().mean()
                x = torch.cat([x, std.expand(x.shape[0], 1, 4, 4)], 1)
                x = F.leaky_relu(_conv(block.conv1[0], x, 1), LEAK)
                x = F.leaky_relu(_conv(block.conv2[0], x, 0), LEAK)
                continue
            x = F.leaky_relu(_conv(block.conv1[0], x, 1), LEAK)
            blur, down = block.conv2
            x = F.conv2d(x, blur.weight, padding=1, groups=x.shape[1])
            if self.fused[i]:
                weight = F.pad(down.weight * down.scale, [1, 1, 1, 1])
                weight = (weight[:, :, 1:, 1:] + weight[:, :, :-1, 1:] + weight[:, :, 1:, :-1]
                          + weight[:, :, :-1, :-1]) / 4
                x = F.conv2d(x, weight, down.bias, stride=2, padding=1)
            else:
                x = F.avg_pool2d(_conv(down, x, 1), 2)
            x = F.leaky_relu(x, LEAK)
        return _linear(self.linear, x.flatten(1))


def _read_rosinality_discriminator(obj, path, key):
    name = key or ROSINALITY_ROLES["critic"]
    state = obj.get(name) if isinstance(obj, dict) else None
    if not (isinstance(state, dict) and "linear.linear.weight_orig" in state):
        raise ValueError(f"{str(path)!r} is a rosinality style-based-gan checkpoint without a discriminator under "
                         f"{name!r}; pass another critic (source.critic=...) or none to start from a fresh one")
    state = {k: v.detach().float() for k, v in state.items()}
    n_layer = sum(1 for k in state if re.fullmatch(r"progression\.\d+\.conv1\.0\.conv\.bias", k))
    # as the generator's: the blocks below the trained resolution keep their zero-initialised biases
    trained = [i for i in range(n_layer) if state[f"progression.{i}.conv1.0.conv.bias"].any()]
    if not trained:
        raise ValueError(f"{str(path)!r}: the rosinality discriminator has no trained block")
    first = min(trained)
    size = 4 * 2 ** (n_layer - 1 - first)
    activate = f"from_rgb.{first}.0.conv.weight_orig" in state
    channels = {}
    for i in range(first, n_layer):
        c_out, c_in = state[f"progression.{i}.conv1.0.conv.weight_orig"].shape[:2]
        channels[str(i)] = (int(c_in) - int(i == n_layer - 1), int(c_out))  # the last block's mbstd feature
    keep = [f"progression.{i}." for i in range(first, n_layer)] + [f"from_rgb.{first}.", "linear."]
    state = {k: v for k, v in state.items() if any(k.startswith(p) for p in keep)}
    kwargs = dict(size=size, channels=channels, n_layer=n_layer, fused=True, from_rgb_activate=activate)
    return "stylegan1_rosinality", kwargs, state, name


DISCRIMINATORS["stylegan1_rosinality"] = RosinalityDiscriminator
