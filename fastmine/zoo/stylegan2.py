"""StyleGAN2 (and StyleGAN2-ADA) generator and discriminator in plain PyTorch.

fastmine's own code for the architecture of Karras et al., "Analyzing and Improving the Image Quality
of StyleGAN" (2020) and "Training Generative Adversarial Networks with Limited Data" (2020). Constructor
keywords, attribute names and state_dict keys are those of NVIDIA's stylegan2-ada-pytorch
(training/networks.py), so an official pickle's init kwargs and tensors load as they are:
``Generator(**init_kwargs).load_state_dict(state_dict, strict=True)``. The stylegan3 repository's
variant (training/networks_stylegan2.py: flat synthesis keywords, ``fused_modconv_default``, other
defaults) is accepted too; see :func:`stylegan3_repo_kwargs` for its defaults.

Differences from the official modules, all on purpose:
- float16 layers (``num_fp16_res``) compute in float16 only on CUDA, in the parameters' dtype
  elsewhere; a module moved to float64 computes in float64 throughout (the official code casts to
  float32).
- ``noise_mode`` defaults to ``'const'`` (reproducible images) instead of ``'random'``.
- ``w_avg`` is updated only when asked (``update_emas=True``), never implicitly in training mode: the
  generators here are frozen and their average must not drift.
"""

import math

import numpy as np
import torch
from torch import nn

from .ops import (
    activation_spec,
    bias_act,
    conv2d_resample,
    downsample2d,
    modulated_conv2d,
    normalize_2nd_moment,
    setup_filter,
    upsample2d,
)

ARCHITECTURES = ("orig", "skip", "resnet")
NOISE_MODES = ("const", "random", "none")


def _check_architecture(architecture: str) -> None:
    """A ValueError unless the architecture is one of the official three."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}: use one of {', '.join(ARCHITECTURES)}")


def _check_resolution(img_resolution, minimum: int) -> None:
    """A ValueError unless the resolution is a power of two of at least `minimum`."""
    if not isinstance(img_resolution, (int, np.integer)) or img_resolution < minimum \
            or img_resolution & (img_resolution - 1):
        raise ValueError(f"img_resolution must be a power of two >= {minimum} (e.g. 32, 256, 1024), "
                         f"got {img_resolution!r}")


FP16_LAYERS = ("auto", "on", "off")


def _compute_dtype(use_fp16: bool, force_fp32: bool, like: torch.Tensor, base: torch.dtype,
                   fp16_layers: str = "auto") -> torch.dtype:
    """float16 for a float16 layer: on CUDA with ``fp16_layers=auto`` (the official rule: its float16
    kernels are CUDA's), on any device with ``on`` (the float16 path checked on a CPU), never with
    ``off``; else the parameters' dtype."""
    if not use_fp16 or force_fp32 or fp16_layers == "off":
        return base
    return torch.float16 if fp16_layers == "on" or like.device.type == "cuda" else base


def set_fp16_layers(module: nn.Module, mode: str) -> nn.Module:
    """``perf.fp16_layers`` on every float16-capable layer of ``module`` (StyleGAN2 / StyleGAN3 blocks)."""
    if mode not in FP16_LAYERS:
        raise ValueError(f"perf.fp16_layers must be one of {', '.join(FP16_LAYERS)}, got {mode!r}")
    for m in module.modules():
        if hasattr(m, "use_fp16"):
            m.fp16_layers = mode
    return module


def _memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def _conv_weight(out_channels, in_channels, kernel_size, channels_last) -> torch.Tensor:
    """Unit-variance initial weights [out, in, k, k]: the layers scale them at run time (equalised learning rate)."""
    return torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(
        memory_format=_memory_format(channels_last))


def stylegan3_repo_kwargs(init_kwargs: dict, net: str = "G") -> dict:
    """Init kwargs of a network pickled by the stylegan3 repository's networks_stylegan2.py with that
    repository's defaults written out (conv_clamp 256, num_fp16_res 4, fused_modconv_default True,
    w_avg_beta 0.998), since its pickles omit them and this module's defaults are stylegan2-ada's."""
    if net not in ("G", "D"):
        raise ValueError(f"net must be 'G' (Generator) or 'D' (Discriminator), got {net!r}")
    kwargs = dict(init_kwargs)
    if net == "D":
        kwargs.setdefault("conv_clamp", 256)
        kwargs.setdefault("num_fp16_res", 4)
        return kwargs
    synthesis = dict(kwargs.pop("synthesis_kwargs", {}))
    top = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs")
    for key in [k for k in kwargs if k not in top]:
        synthesis[key] = kwargs.pop(key)
    synthesis.setdefault("conv_clamp", 256)
    synthesis.setdefault("num_fp16_res", 4)
    synthesis.setdefault("fused_modconv_default", True)
    kwargs["mapping_kwargs"] = {"w_avg_beta": 0.998, **kwargs.get("mapping_kwargs", {})}
    kwargs["synthesis_kwargs"] = synthesis
    return kwargs


class FullyConnectedLayer(nn.Module):
    """Dense layer with equalised learning rate: weights stored at unit scale (divided by
    lr_multiplier) and scaled at run time, so Adam's step size is the same for every layer."""

    def __init__(self, in_features, out_features, bias=True, activation="linear", lr_multiplier=1, bias_init=0,
                 weight_init=1):
        super().__init__()
        activation_spec(activation)
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) * (weight_init / lr_multiplier))
        init = np.broadcast_to(np.asarray(bias_init, dtype=np.float32), [out_features]).copy()
        self.bias = nn.Parameter(torch.from_numpy(init)) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        """x [N, in_features] -> activation(x W^T g_w + b g_b) [N, out_features]."""
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class _ActivatedConv(nn.Module):
    """What Conv2dLayer and SynthesisLayer share: their settings, the FIR filter they resample with, and
    the output step (bias, activation with its gain, clamp)."""

    def __init__(self, in_channels, out_channels, kernel_size, activation, up, resample_filter, conv_clamp):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.up = up
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = activation_spec(activation).def_gain

    def _bias_act(self, x, b, gain):
        """`gain` scales the output and the clamp alike (the resnet branches pass sqrt(1/2))."""
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=clamp)


class Conv2dLayer(_ActivatedConv):
    """Convolution with equalised learning rate, optional FIR up/down-sampling, bias, activation and
    clamp (`trainable=False` keeps the weights as buffers, for Freeze-D)."""

    def __init__(self, in_channels, out_channels, kernel_size, bias=True, activation="linear", up=1, down=1,
                 resample_filter=(1, 3, 3, 1), conv_clamp=None, channels_last=False, trainable=True):
        super().__init__(in_channels, out_channels, kernel_size, activation, up, resample_filter, conv_clamp)
        self.down = down
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)

        weight = _conv_weight(out_channels, in_channels, kernel_size, channels_last)
        bias = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = nn.Parameter(weight)
            self.bias = nn.Parameter(bias) if bias is not None else None
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias)

    def forward(self, x, gain=1):
        """x [N, in, H, W] -> [N, out, H*up/down, W*up/down]; `gain` scales output and clamp alike."""
        w = self.weight * self.weight_gain
        b = self.bias.to(x.dtype) if self.bias is not None else None
        # The official layers correlate unless they upsample; trained weights depend on that choice.
        x = conv2d_resample(x, w.to(x.dtype), f=self.resample_filter, up=self.up, down=self.down,
                            padding=self.padding, flip_weight=(self.up == 1))
        return self._bias_act(x, b, gain)

    def extra_repr(self):
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, activation={self.activation}, "
                f"up={self.up}, down={self.down}")


def truncate(ws, w_avg, psi, cutoff=None):
    """The truncation trick: ws pulled toward ``w_avg`` by ``psi``, in the first ``cutoff`` layers only
    when given (ws [N, num_ws, w_dim]; with no cutoff any shape)."""
    if cutoff is None:
        return w_avg.lerp(ws, psi)
    return torch.cat([w_avg.lerp(ws[:, :cutoff], psi), ws[:, cutoff:]], dim=1)


class MappingNetwork(nn.Module):
    """z (and an embedded class label c) -> w through an MLP, broadcast to num_ws copies; truncation
    pulls w toward the tracked average w_avg (psi = 0 gives w_avg, psi = 1 leaves w)."""

    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=8, embed_features=None, layer_features=None,
                 activation="lrelu", lr_multiplier=0.01, w_avg_beta=0.995):
        super().__init__()
        if z_dim < 0 or c_dim < 0 or z_dim + c_dim == 0:
            raise ValueError(f"the mapping needs z_dim > 0 or c_dim > 0 (both >= 0), got z_dim={z_dim} c_dim={c_dim}")
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta

        embed_features = 0 if c_dim == 0 else (w_dim if embed_features is None else embed_features)
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                        lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False):
        """z [N, z_dim], c [N, c_dim] (None when c_dim == 0) -> w [N, num_ws, w_dim] ([N, w_dim] when
        num_ws is None); truncation applies to the first truncation_cutoff ws (all when None)."""
        dtype = self.fc0.weight.dtype
        parts = []
        if self.z_dim > 0:
            if z is None or z.ndim != 2 or z.shape[1] != self.z_dim:
                raise ValueError(f"z must have shape [N, {self.z_dim}], got "
                                 f"{None if z is None else tuple(z.shape)}")
            parts.append(normalize_2nd_moment(z.to(dtype)))
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
                raise ValueError(f"this network is conditional: c must have shape [N, {self.c_dim}] "
                                 f"(e.g. one-hot labels), got {None if c is None else tuple(c.shape)}")
            parts.append(normalize_2nd_moment(self.embed(c.to(dtype))))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)

        if update_emas:
            if self.w_avg_beta is None:
                raise ValueError("update_emas=True needs a mapping that tracks w_avg (w_avg_beta not None)")
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if not hasattr(self, "w_avg"):
                raise ValueError("truncation needs w_avg: this mapping does not track it (num_ws or w_avg_beta None)")
            x = truncate(x, self.w_avg.to(x.dtype), truncation_psi, None if self.num_ws is None else truncation_cutoff)
        return x

    def extra_repr(self):
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"


class SynthesisLayer(_ActivatedConv):
    """Modulated 3x3 convolution (optionally upsampling 2x) + per-pixel noise + bias + activation."""

    def __init__(self, in_channels, out_channels, w_dim, resolution, kernel_size=3, up=1, use_noise=True,
                 activation="lrelu", resample_filter=(1, 3, 3, 1), conv_clamp=None, channels_last=False):
        super().__init__(in_channels, out_channels, kernel_size, activation, up, resample_filter, conv_clamp)
        self.w_dim = w_dim
        self.resolution = resolution
        self.use_noise = use_noise

        # bias_init 1: styles start at 1, i.e. unmodulated convolution.
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(_conv_weight(out_channels, in_channels, kernel_size, channels_last))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.mined_noise = None

    def forward(self, x, w, noise_mode="const", fused_modconv=True, gain=1):
        """x [N, in, R/up, R/up], w [N, w_dim] -> [N, out, R, R]; noise 'const' (the stored map),
        'random' (fresh N(0, 1) per sample) or 'none'. ``self.mined_noise`` [N, 1, R, R], set by
        the caller around a forward, replaces the map (MineGAN's synthesis-side miner choosing it)."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"unknown noise_mode {noise_mode!r}: use one of {', '.join(NOISE_MODES)}")
        styles = self.affine(w)
        noise = None
        if self.use_noise and self.mined_noise is not None:
            noise = self.mined_noise.to(styles.dtype) * self.noise_strength
        elif self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device,
                                dtype=styles.dtype) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1),
                             fused_modconv=fused_modconv)
        return self._bias_act(x, self.bias.to(x.dtype), gain)

    def extra_repr(self):
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}, "
                f"resolution={self.resolution}, up={self.up}, activation={self.activation}")


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution to image channels, without demodulation (colours keep their scale)."""

    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None, channels_last=False):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(_conv_weight(out_channels, in_channels, kernel_size, channels_last))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x, w, fused_modconv=True):
        """x [N, in, R, R], w [N, w_dim] -> image contribution [N, img_channels, R, R]."""
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)

    def extra_repr(self):
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}"


class _ResolutionBlock(nn.Module):
    """What a synthesis block and a discriminator block share: their settings, the FIR filter they
    resample with, and the dtype and memory format they compute in."""

    fp16_layers = "auto"  # perf.fp16_layers (set_fp16_layers)

    def __init__(self, in_channels, resolution, img_channels, architecture, resample_filter, use_fp16,
                 fp16_channels_last):
        super().__init__()
        _check_architecture(architecture)
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", setup_filter(resample_filter))

    def _dtype_and_format(self, force_fp32, like, base):
        """(dtype, memory format) of this call; channels_last only pays off for float16 kernels."""
        dtype = _compute_dtype(self.use_fp16, force_fp32, like, base, self.fp16_layers)
        return dtype, _memory_format(self.channels_last and dtype == torch.float16)

    def extra_repr(self):
        return f"resolution={self.resolution}, architecture={self.architecture}"


class SynthesisBlock(_ResolutionBlock):
    """One resolution of the synthesis network: (constant input or 2x upsampling conv) + conv, and the
    image path: 'skip' sums upsampled ToRGB outputs of every block, 'resnet' adds a 1x1 shortcut and
    takes the image from the last block only, 'orig' neither."""

    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, is_last, architecture="skip",
                 resample_filter=(1, 3, 3, 1), conv_clamp=None, use_fp16=False, fp16_channels_last=False,
                 fused_modconv_default=None, **layer_kwargs):
        super().__init__(in_channels, resolution, img_channels, architecture, resample_filter, use_fp16,
                         fp16_channels_last)
        if fused_modconv_default not in (None, True, False, "inference_only"):
            raise ValueError(f"fused_modconv_default must be None, True, False or 'inference_only', "
                             f"got {fused_modconv_default!r}")
        self.w_dim = w_dim
        self.is_last = is_last
        self.fused_modconv_default = fused_modconv_default
        self.num_conv = 0
        self.num_torgb = 0

        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp,
                                        channels_last=self.channels_last, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, channels_last=self.channels_last, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp,
                                    channels_last=self.channels_last)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter, channels_last=self.channels_last)

    def _fused(self, fused_modconv, dtype, batch):
        """Whether to fuse the modulation into a grouped convolution (same maths either way)."""
        if fused_modconv is not None:
            return fused_modconv
        if self.fused_modconv_default is None:
            # stylegan2-ada's rule: the grouped conv is the fast one for inference in float32.
            return not self.training and (dtype != torch.float16 or batch == 1)
        if self.fused_modconv_default == "inference_only":
            return not self.training
        return self.fused_modconv_default

    def forward(self, x, img, ws, force_fp32=False, fused_modconv=None, update_emas=False, **layer_kwargs):
        """x [N, in, R/2, R/2] (None for the first block), img (None or [N, C, R/2, R/2]), ws [N,
        num_conv + num_torgb, w_dim] -> (x [N, out, R, R], img [N, C, R, R] or None)."""
        del update_emas  # accepted for the official call signature; no averages are tracked here
        base = self.conv1.weight.dtype
        dtype, memory_format = self._dtype_and_format(force_fp32, ws, base)
        fused_modconv = self._fused(fused_modconv, dtype, ws.shape[0])
        w_iter = iter(ws.unbind(dim=1))

        if self.in_channels == 0:
            x = self.const.to(dtype=dtype, memory_format=memory_format).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
        else:
            x = x.to(dtype=dtype, memory_format=memory_format)
            if self.architecture == "resnet":
                # sqrt(1/2) on both branches keeps the sum at unit variance.
                y = self.skip(x, gain=math.sqrt(0.5))
                x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
                x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, gain=math.sqrt(0.5), **layer_kwargs)
                x = y + x
            else:
                x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
                x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)

        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv)
            y = y.to(dtype=base, memory_format=torch.contiguous_format)
            img = img + y if img is not None else y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, img_channels, R, R] through blocks at 4, 8, ..., R pixels;
    block r has min(channel_base / r, channel_max) channels, the num_fp16_res highest run in float16."""

    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512, num_fp16_res=0,
                 **block_kwargs):
        super().__init__()
        _check_resolution(img_resolution, 4)
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.num_fp16_res = num_fp16_res
        self.block_resolutions = [2 ** i for i in range(2, self.img_resolution_log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)

        self.num_ws = 0
        for res in self.block_resolutions:
            is_last = res == img_resolution
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], w_dim=w_dim, resolution=res,
                                   img_channels=img_channels, is_last=is_last, use_fp16=res >= fp16_resolution,
                                   **block_kwargs)
            self.num_ws += block.num_conv + (block.num_torgb if is_last else 0)
            setattr(self, f"b{res}", block)

    def forward(self, ws, noise_mode="const", **block_kwargs):
        """ws [N, num_ws, w_dim] -> image [N, img_channels, R, R]; consecutive blocks share one w
        (a block's ToRGB uses the w of the next block's first conv)."""
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"ws must have shape [N, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        ws = ws.to(self.b4.const.dtype)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            cur_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            x, img = block(x, img, cur_ws, noise_mode=noise_mode, **block_kwargs)
        return img

    def extra_repr(self):
        return (f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, "
                f"img_channels={self.img_channels}, num_fp16_res={self.num_fp16_res}")


class Generator(nn.Module):
    """StyleGAN2 generator: mapping (z, c -> ws) then synthesis (ws -> image in about [-1, 1]).

    Keywords as stylegan2-ada-pytorch (`mapping_kwargs`, `synthesis_kwargs`); synthesis keywords
    may also come flat, as the stylegan3 repository's variant takes them."""

    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs=None,
                 synthesis_kwargs=None, **flat_synthesis_kwargs):
        super().__init__()
        if not isinstance(z_dim, (int, np.integer)) or z_dim <= 0:
            raise ValueError(f"z_dim must be a positive int (the latent size, e.g. 512), got {z_dim!r}")
        if not isinstance(c_dim, (int, np.integer)) or c_dim < 0:
            raise ValueError(f"c_dim must be an int >= 0 (0 = unconditional), got {c_dim!r}")
        both = set(synthesis_kwargs or {}) & set(flat_synthesis_kwargs)
        if both:
            raise ValueError(f"synthesis keywords given both flat and in synthesis_kwargs: {', '.join(sorted(both))}")
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **(synthesis_kwargs or {}), **flat_synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws,
                                      **(mapping_kwargs or {}))

    def forward(self, z, c=None, truncation_psi=1, truncation_cutoff=None, update_emas=False, **synthesis_kwargs):
        """z [N, z_dim], c [N, c_dim] or None -> image [N, img_channels, R, R]; synthesis keywords:
        noise_mode ('const' default, 'random', 'none'), fused_modconv, force_fp32."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, update_emas=update_emas, **synthesis_kwargs)


class DiscriminatorBlock(_ResolutionBlock):
    """One resolution of the discriminator: (fromRGB) + conv + 2x downsampling conv, with a 1x1
    shortcut for 'resnet' or a downsampled image input at every block for 'skip'."""

    def __init__(self, in_channels, tmp_channels, out_channels, resolution, img_channels, first_layer_idx,
                 architecture="resnet", activation="lrelu", resample_filter=(1, 3, 3, 1), conv_clamp=None,
                 use_fp16=False, fp16_channels_last=False, freeze_layers=0):
        super().__init__(in_channels, resolution, img_channels, architecture, resample_filter, use_fp16,
                         fp16_channels_last)
        if in_channels not in (0, tmp_channels):
            raise ValueError(f"a discriminator block takes 0 or tmp_channels={tmp_channels} input channels, "
                             f"got {in_channels}")
        self.first_layer_idx = first_layer_idx

        # Freeze-D counts layers across blocks: the first freeze_layers keep their weights as buffers.
        self.num_layers = 0

        def trainable():
            self.num_layers += 1
            return self.first_layer_idx + self.num_layers - 1 >= freeze_layers

        common = dict(conv_clamp=conv_clamp, channels_last=self.channels_last)
        if in_channels == 0 or architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, activation=activation,
                                       trainable=trainable(), **common)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, activation=activation,
                                 trainable=trainable(), **common)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, activation=activation, down=2,
                                 trainable=trainable(), resample_filter=resample_filter, **common)
        if architecture == "resnet":
            self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                                    trainable=trainable(), resample_filter=resample_filter,
                                    channels_last=self.channels_last)

    def forward(self, x, img, force_fp32=False):
        """x [N, in, R, R] or None, img [N, C, R, R] or None -> (x [N, out, R/2, R/2], img or None)."""
        base = self.conv0.weight.dtype
        dtype, memory_format = self._dtype_and_format(force_fp32, x if x is not None else img, base)
        if x is not None:
            x = x.to(dtype=dtype, memory_format=memory_format)
        if self.in_channels == 0 or self.architecture == "skip":
            img = img.to(dtype=dtype, memory_format=memory_format)
            y = self.fromrgb(img)
            x = x + y if x is not None else y
            img = downsample2d(img, self.resample_filter) if self.architecture == "skip" else None
        if self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x)
            x = self.conv1(x, gain=math.sqrt(0.5))
            x = y + x
        else:
            x = self.conv1(self.conv0(x))
        return x, img


class MinibatchStdLayer(nn.Module):
    """Appends num_channels feature maps holding the standard deviation of the features across a
    group of group_size samples (averaged over channels and pixels), so the discriminator can see a
    lack of variety in a batch.

    Because of this group statistic an output of the discriminator depends on the other samples of
    its group, not on its own input alone: the gradient of D(x_i) with respect to the batch has
    non-zero entries for the other samples x_j of the group, and a per-sample gradient penalty
    (R1's ||d D(x_i) / d x_i||^2, computed as the gradient of the summed outputs) mixes in those
    cross terms. group_size 1 (or num_channels 0 in the epilogue) makes every output per-sample (the
    appended statistic is then a constant, sqrt(1e-8))."""

    def __init__(self, group_size, num_channels=1):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x):
        """x [N, C, H, W] -> [N, C + num_channels, H, W]; samples i and i + k * (N / G) form a group."""
        n, c, h, w = x.shape
        g = n if self.group_size is None else min(self.group_size, n)
        f = self.num_channels
        if n % g:
            raise ValueError(f"the batch size {n} must be a multiple of the minibatch-std group size {g} "
                             f"(mbstd_group_size; or use a batch smaller than it)")
        if c % f:
            raise ValueError(f"{c} channels cannot be split into mbstd_num_channels={f} groups")
        y = x.reshape(g, -1, f, c // f, h, w)
        y = (y - y.mean(dim=0)).square().mean(dim=0)
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4])
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)

    @property
    def mixes_rows(self) -> bool:
        """A group of more than one sample mixes rows (fastmine.nets.rows_independent)."""
        return self.group_size != 1 and self.num_channels > 0

    def extra_repr(self):
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


class DiscriminatorEpilogue(nn.Module):
    """The 4x4 end of the discriminator: minibatch std, conv, dense, output (a score, or a cmap_dim
    vector projected on the mapped label for a conditional discriminator)."""

    def __init__(self, in_channels, cmap_dim, resolution, img_channels, architecture="resnet", mbstd_group_size=4,
                 mbstd_num_channels=1, activation="lrelu", conv_clamp=None):
        super().__init__()
        _check_architecture(architecture)
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture
        if architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.mbstd = (MinibatchStdLayer(group_size=mbstd_group_size, num_channels=mbstd_num_channels)
                      if mbstd_num_channels > 0 else None)
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation=activation,
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution ** 2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x, img, cmap, force_fp32=False):
        """x [N, in, 4, 4] -> logits [N, 1]."""
        del force_fp32  # the epilogue always runs in the parameters' dtype, as the official one
        dtype = self.conv.weight.dtype
        x = x.to(dtype=dtype, memory_format=torch.contiguous_format)
        if self.architecture == "skip":
            x = x + self.fromrgb(img.to(dtype=dtype, memory_format=torch.contiguous_format))
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.out(self.fc(self.conv(x).flatten(1)))
        if self.cmap_dim > 0:
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x

    def extra_repr(self):
        return f"resolution={self.resolution}, architecture={self.architecture}"


class Discriminator(nn.Module):
    """StyleGAN2 discriminator: blocks from R down to 8 pixels, then the 4x4 epilogue; conditional
    (c_dim > 0) through a projection on a label mapped by a MappingNetwork (cmap)."""

    def __init__(self, c_dim, img_resolution, img_channels, architecture="resnet", channel_base=32768,
                 channel_max=512, num_fp16_res=0, conv_clamp=None, cmap_dim=None, block_kwargs=None,
                 mapping_kwargs=None, epilogue_kwargs=None):
        super().__init__()
        _check_resolution(img_resolution, 8)
        _check_architecture(architecture)
        if not isinstance(c_dim, (int, np.integer)) or c_dim < 0:
            raise ValueError(f"c_dim must be an int >= 0 (0 = unconditional), got {c_dim!r}")
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(self.img_resolution_log2, 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        cmap_dim = 0 if c_dim == 0 else (channels[4] if cmap_dim is None else cmap_dim)

        common = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        layer_idx = 0
        for res in self.block_resolutions:
            block = DiscriminatorBlock(channels[res] if res < img_resolution else 0, channels[res], channels[res // 2],
                                       resolution=res, first_layer_idx=layer_idx, use_fp16=res >= fp16_resolution,
                                       **(block_kwargs or {}), **common)
            setattr(self, f"b{res}", block)
            layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None,
                                          **(mapping_kwargs or {}))
        self.b4 = DiscriminatorEpilogue(channels[4], cmap_dim=cmap_dim, resolution=4, **(epilogue_kwargs or {}),
                                        **common)

    def forward(self, img, c=None, update_emas=False, **block_kwargs):
        """img [N, img_channels, R, R], c [N, c_dim] or None -> logits [N, 1]."""
        del update_emas  # accepted for the official call signature
        shape = (self.img_channels, self.img_resolution, self.img_resolution)
        if img.ndim != 4 or tuple(img.shape[1:]) != shape:
            raise ValueError(f"img must have shape [N, {', '.join(map(str, shape))}], got {tuple(img.shape)}")
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img, **block_kwargs)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        return self.b4(x, img, cmap)

    def extra_repr(self):
        return f"c_dim={self.c_dim}, img_resolution={self.img_resolution}, img_channels={self.img_channels}"
