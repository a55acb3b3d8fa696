"""StyleGAN3 generator (configs T and R, "Alias-Free Generative Adversarial Networks") in plain PyTorch.

fastmine's own code with the constructor keywords and state-dict names of NVIDIA's
``training.networks_stylegan3.Generator``, so the ``G_ema`` tensors and ``init_kwargs`` of an official
pickle load with ``Generator(**init_kwargs).load_state_dict(state, strict=True)``. Config T uses 3x3
convolutions and separable Kaiser-windowed low-pass filters; config R (``conv_kernel=1``,
``use_radial_filters=True``) uses 1x1 convolutions and radially symmetric jinc down-sampling filters.

How a layer computes (the maths of the paper and of the official reference path):

- the Fourier-feature input samples sinusoids of fixed random frequencies, rotated and translated
  per sample by an affine map of the first w, then transformed by the user buffer ``transform``;
- every other layer is a modulated (and, except ToRGB, demodulated) convolution of the input
  scaled by ``magnitude_ema ** -0.5``, then a *filtered* leaky ReLU: upsample by zero insertion
  and a low-pass FIR to a rate where the non-linearity's harmonics do not alias, add the bias,
  leaky ReLU with gain sqrt(2), clamp, low-pass again and keep every ``down``-th pixel.

Cost: the filtered leaky ReLU is done with separate plain-PyTorch ops, like the official reference
path, so the upsampled tensor (4x the layer's pixels at the usual 2x rate) is materialised and
passes through memory about ten times (zero insertion, padding, two filter passes, activation,
gain, clamp, two more filter passes); NVIDIA's fused CUDA op keeps it in on-chip memory and reads
and writes only the layer's input and output. On a GPU this op is therefore roughly an order of
magnitude slower than the fused one (an estimate from that memory traffic, not measured here) and
dominates the synthesis time; a fused Triton kernel is left for later. On the CPU the official code
runs the same reference path, so there the two cost the same.

StyleGAN3 has no noise inputs: ``noise_mode`` is accepted (for the common Generator API) and ignored.
The float16 layers of the official network (``num_fp16_res``) run in float16 on CUDA only, as there.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from . import ops
from .stylegan2 import FullyConnectedLayer, MappingNetwork, _compute_dtype

NOISE_MODES = ("random", "const", "none")
# The official networks_stylegan3.MappingNetwork's keywords and defaults; stylegan2's MappingNetwork
# computes the same with these (its extra keywords would build a network the official cannot load).
MAPPING_DEFAULTS = {"num_layers": 2, "lr_multiplier": 0.01, "w_avg_beta": 0.998}
# SynthesisNetwork's own keywords; the rest of synthesis_kwargs must be SynthesisLayer's.
SYNTHESIS_KEYS = ("channel_base", "channel_max", "num_layers", "num_critical", "first_cutoff", "first_stopband",
                  "last_stopband_rel", "margin_size", "output_scale", "num_fp16_res")
LAYER_KEYS = ("conv_kernel", "filter_size", "lrelu_upsampling", "use_radial_filters", "conv_clamp",
              "magnitude_ema_beta")


def design_lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float,
                          radial: bool = False) -> Optional[torch.Tensor]:
    """A float32 low-pass FIR filter: None for one tap (identity), else `numtaps` Kaiser-windowed taps
    (separable, 1-D) or, with `radial`, a [numtaps, numtaps] windowed jinc (the impulse response of a
    disc-shaped pass band) normalised to unit DC gain. `cutoff` and `width` (of the transition band)
    are in the units of the sampling rate `fs`."""
    if numtaps < 1:
        raise ValueError(f"a low-pass filter needs at least one tap, got numtaps={numtaps}")
    if numtaps == 1:
        return None
    # SciPy (a second to import) only when a StyleGAN3 generator is built
    import scipy.signal
    import scipy.special

    if not radial:
        return torch.as_tensor(scipy.signal.firwin(numtaps=numtaps, cutoff=cutoff, width=width, fs=fs),
                               dtype=torch.float32)
    x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot.outer(x, x)
    pr = np.pi * r
    # J1(2 pi c r) / (pi r) tends to c at r = 0 (the centre tap of an odd-sized filter)
    f = np.full_like(r, cutoff)
    np.divide(scipy.special.j1(2 * cutoff * pr), pr, out=f, where=r > 0)
    beta = scipy.signal.kaiser_beta(scipy.signal.kaiser_atten(numtaps, width / (fs / 2)))
    window = np.kaiser(numtaps, beta)
    f *= np.outer(window, window)
    f /= np.sum(f)
    return torch.as_tensor(f, dtype=torch.float32)


def filtered_lrelu(x: torch.Tensor, fu: Optional[torch.Tensor] = None, fd: Optional[torch.Tensor] = None,
                   b: Optional[torch.Tensor] = None, up: int = 1, down: int = 1, padding: Sequence[int] | int = 0,
                   gain: float = math.sqrt(2), slope: float = 0.2, clamp: Optional[float] = None) -> torch.Tensor:
    """Per channel: add the bias b, upsample by `up` (zero insertion, `padding` [x0, x1, y0, y1] on the
    upsampled grid, negative crops, FIR fu with gain up**2), leaky ReLU of negative slope `slope` times
    `gain`, clamp to [-clamp, clamp], FIR fd and keep every `down`-th pixel. Filters as made by
    design_lowpass_filter (1-D separable, 2-D, or None for identity); the official op's convolution
    (not correlation) convention."""
    if b is not None:
        x = x + b.to(x.dtype).reshape(1, -1, 1, 1)
    x = ops.upfirdn2d(x, fu, up=up, padding=padding, gain=up ** 2)
    x = ops.bias_act(x, act="lrelu", alpha=slope, gain=gain, clamp=clamp)
    return ops.upfirdn2d(x, fd, down=down)


def _check_noise_mode(noise_mode: str) -> None:
    if noise_mode not in NOISE_MODES:
        raise ValueError(f"unknown noise_mode {noise_mode!r}; use one of {', '.join(NOISE_MODES)} "
                         "(StyleGAN3 has no noise inputs, so all give the same image)")


def _pair(size) -> tuple:
    """(width, height) from an int or a [width, height] pair."""
    w, h = (size, size) if np.ndim(size) == 0 else size
    return int(w), int(h)


class SynthesisInput(nn.Module):
    """Fourier features: `channels` sinusoids of fixed random frequencies (within `bandwidth`) sampled on
    a `size` grid at `sampling_rate`, rotated and translated per sample by an affine map of w, mixed by a
    learned channel matrix."""

    def __init__(self, w_dim: int, channels: int, size, sampling_rate: float, bandwidth: float):
        super().__init__()
        self.w_dim = int(w_dim)
        self.channels = int(channels)
        self.size = _pair(size)
        self.sampling_rate = float(sampling_rate)
        self.bandwidth = float(bandwidth)

        # Unit directions at radius exp(-r^2 / 4) for the Rayleigh-distributed norm r of a 2-D Gaussian: that is
        # sqrt of a uniform variable, so the frequencies are uniform over the disc of radius `bandwidth`.
        freqs = torch.randn([self.channels, 2])
        radii = freqs.norm(dim=1, keepdim=True)
        freqs = freqs / (radii * torch.exp(radii.square() / 4)) * self.bandwidth
        phases = torch.rand([self.channels]) - 0.5

        self.weight = nn.Parameter(torch.randn([self.channels, self.channels]))
        # Starts as the identity rotation and no translation, whatever w is.
        self.affine = FullyConnectedLayer(self.w_dim, 4, weight_init=0, bias_init=[1, 0, 0, 0])
        # The inverse of a user transform of the output image (rotation, translation), applied after the learned one.
        self.register_buffer("transform", torch.eye(3))
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", phases)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        t = self.affine(w)  # (cos-like, sin-like, tx, ty)
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        c, s, tx, ty = t.unbind(dim=1)
        zero, one = torch.zeros_like(c), torch.ones_like(c)
        # Inverse rotation after inverse translation, with respect to the resulting image.
        learned = torch.stack([
            torch.stack([c, -s, s * ty - c * tx], dim=1),
            torch.stack([s, c, -s * tx - c * ty], dim=1),
            torch.stack([zero, zero, one], dim=1),
        ], dim=1)
        transforms = learned @ self.transform.to(learned.dtype)

        freqs = self.freqs.unsqueeze(0)  # [1, C, 2]
        phases = self.phases.unsqueeze(0) + (freqs @ transforms[:, :2, 2:]).squeeze(2)  # [N, C]
        freqs = freqs @ transforms[:, :2, :2]  # [N, C, 2]
        # A scaling user transform can push frequencies past the band; fade them out before Nyquist.
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)

        # Pixel centres in input units, centred on the image.
        width, height = self.size
        xs = (torch.arange(width, device=w.device, dtype=freqs.dtype) + 0.5 - width / 2) / self.sampling_rate
        ys = (torch.arange(height, device=w.device, dtype=freqs.dtype) + 0.5 - height / 2) / self.sampling_rate
        arg = (xs.reshape(1, 1, width, 1) * freqs[:, None, None, :, 0]
               + ys.reshape(1, height, 1, 1) * freqs[:, None, None, :, 1]
               + phases[:, None, None, :])  # [N, H, W, C]
        x = torch.sin(arg * (2 * math.pi)) * amplitudes[:, None, None, :]
        x = x @ (self.weight / math.sqrt(self.channels)).t()
        return x.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (f"w_dim={self.w_dim}, channels={self.channels}, size={list(self.size)}, "
                f"sampling_rate={self.sampling_rate:g}, bandwidth={self.bandwidth:g}")


class SynthesisLayer(nn.Module):
    """One alias-free layer: modulated convolution, then the filtered leaky ReLU that resamples from
    `in_sampling_rate` to `out_sampling_rate` through a temporary rate `lrelu_upsampling` times the
    higher one; the final ToRGB layer is a 1x1 modulated convolution without demodulation, filters or
    non-linearity."""

    fp16_layers = "auto"  # perf.fp16_layers (stylegan2.set_fp16_layers)

    def __init__(self, w_dim: int, is_torgb: bool, is_critically_sampled: bool, use_fp16: bool,
                 in_channels: int, out_channels: int, in_size, out_size,
                 in_sampling_rate: float, out_sampling_rate: float, in_cutoff: float, out_cutoff: float,
                 in_half_width: float, out_half_width: float,
                 conv_kernel: int = 3, filter_size: int = 6, lrelu_upsampling: int = 2,
                 use_radial_filters: bool = False, conv_clamp: Optional[float] = 256,
                 magnitude_ema_beta: float = 0.999):
        super().__init__()
        self.w_dim = int(w_dim)
        self.is_torgb = bool(is_torgb)
        self.is_critically_sampled = bool(is_critically_sampled)
        self.use_fp16 = bool(use_fp16)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.in_size = _pair(in_size)
        self.out_size = _pair(out_size)
        self.in_sampling_rate = in_sampling_rate
        self.out_sampling_rate = out_sampling_rate
        self.tmp_sampling_rate = max(in_sampling_rate, out_sampling_rate) * (1 if is_torgb else lrelu_upsampling)
        self.in_cutoff = in_cutoff
        self.out_cutoff = out_cutoff
        self.in_half_width = in_half_width
        self.out_half_width = out_half_width
        self.conv_kernel = 1 if is_torgb else int(conv_kernel)
        self.conv_clamp = conv_clamp
        self.magnitude_ema_beta = magnitude_ema_beta

        self.affine = FullyConnectedLayer(self.w_dim, self.in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([self.out_channels, self.in_channels,
                                                self.conv_kernel, self.conv_kernel]))
        self.bias = nn.Parameter(torch.zeros([self.out_channels]))
        # Running mean square of the input; its inverse square root normalises the input's scale.
        self.register_buffer("magnitude_ema", torch.ones([]))

        self.up_factor = self._resampling_factor(self.in_sampling_rate, "input")
        self.up_taps = filter_size * self.up_factor if self.up_factor > 1 and not self.is_torgb else 1
        self.register_buffer("up_filter", design_lowpass_filter(
            numtaps=self.up_taps, cutoff=self.in_cutoff, width=self.in_half_width * 2, fs=self.tmp_sampling_rate))
        self.down_factor = self._resampling_factor(self.out_sampling_rate, "output")
        self.down_taps = filter_size * self.down_factor if self.down_factor > 1 and not self.is_torgb else 1
        self.down_radial = bool(use_radial_filters) and not self.is_critically_sampled
        self.register_buffer("down_filter", design_lowpass_filter(
            numtaps=self.down_taps, cutoff=self.out_cutoff, width=self.out_half_width * 2, fs=self.tmp_sampling_rate,
            radial=self.down_radial))

        # Padding on the upsampled grid that gives out_size after both filters and the subsampling, the
        # samples sitting at pixel centres on both grids (half-pixel offsets for even factors).
        padding = []
        for axis in (0, 1):
            total = (self.out_size[axis] - 1) * self.down_factor + 1
            total -= (self.in_size[axis] + self.conv_kernel - 1) * self.up_factor
            total += self.up_taps + self.down_taps - 2
            lo = (total + self.up_factor) // 2
            padding += [int(lo), int(total - lo)]
        self.padding = padding

    def _resampling_factor(self, rate: float, which: str) -> int:
        factor = int(np.rint(self.tmp_sampling_rate / rate))
        if factor * rate != self.tmp_sampling_rate:
            raise ValueError(f"StyleGAN3 layer: the {which} sampling rate {rate:g} does not divide the leaky ReLU's "
                             f"rate {self.tmp_sampling_rate:g}; use an integer lrelu_upsampling")
        return factor

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random",
                force_fp32: bool = False) -> torch.Tensor:
        _check_noise_mode(noise_mode)
        expected = (self.in_channels, self.in_size[1], self.in_size[0])
        if tuple(x.shape[1:]) != expected or tuple(w.shape) != (x.shape[0], self.w_dim):
            raise ValueError(f"StyleGAN3 layer: got x {tuple(x.shape)} and w {tuple(w.shape)}, expected "
                             f"[N, {', '.join(map(str, expected))}] and [N, {self.w_dim}]")
        input_gain = self.magnitude_ema.rsqrt()
        styles = self.affine(w)
        if self.is_torgb:
            styles = styles * (1 / math.sqrt(self.in_channels * self.conv_kernel ** 2))
        dtype = _compute_dtype(self.use_fp16, force_fp32, x, torch.float32, self.fp16_layers)
        # input_gain scales the output of a demodulated convolution, so it goes on x, not into the styles
        x = ops.modulated_conv2d(x.to(dtype) * input_gain.to(dtype), self.weight, styles, padding=self.conv_kernel - 1,
                                 demodulate=not self.is_torgb)
        return filtered_lrelu(x, fu=self.up_filter, fd=self.down_filter, b=self.bias, up=self.up_factor,
                              down=self.down_factor, padding=self.padding, gain=1 if self.is_torgb else math.sqrt(2),
                              slope=1 if self.is_torgb else 0.2, clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return (f"w_dim={self.w_dim}, is_torgb={self.is_torgb}, is_critically_sampled={self.is_critically_sampled}, "
                f"use_fp16={self.use_fp16}, in_sampling_rate={self.in_sampling_rate:g}, "
                f"out_sampling_rate={self.out_sampling_rate:g}, in_cutoff={self.in_cutoff:g}, "
                f"out_cutoff={self.out_cutoff:g}, in_half_width={self.in_half_width:g}, "
                f"out_half_width={self.out_half_width:g}, in_size={list(self.in_size)}, "
                f"out_size={list(self.out_size)}, in_channels={self.in_channels}, out_channels={self.out_channels}")


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> images [N, img_channels, img_resolution, img_resolution]: the Fourier input
    and num_layers + 1 layers (the last is ToRGB) whose cutoffs rise geometrically from first_cutoff to
    img_resolution / 2, reached num_critical layers before the end (those are critically sampled)."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, num_layers: int = 14, num_critical: int = 2, first_cutoff: float = 2,
                 first_stopband: float = 2 ** 2.1, last_stopband_rel: float = 2 ** 0.3, margin_size: int = 10,
                 output_scale: float = 0.25, num_fp16_res: int = 4, **layer_kwargs):
        super().__init__()
        unknown = sorted(set(layer_kwargs) - set(LAYER_KEYS))
        if unknown:
            known = sorted(SYNTHESIS_KEYS + LAYER_KEYS)
            raise ValueError(f"unknown StyleGAN3 synthesis argument(s) {', '.join(map(repr, unknown))}; "
                             f"known: {', '.join(known)}")
        if not 0 <= num_critical < num_layers:
            raise ValueError(f"StyleGAN3 needs 0 <= num_critical < num_layers, got num_critical={num_critical} "
                             f"and num_layers={num_layers}")
        positive = {"w_dim": w_dim, "img_resolution": img_resolution, "img_channels": img_channels,
                    "channel_base": channel_base, "channel_max": channel_max, "first_cutoff": first_cutoff}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"StyleGAN3 needs a positive {name}, got {value!r}")
        clamp = layer_kwargs.get("conv_clamp")
        if clamp is not None and clamp < 0:
            raise ValueError(f"conv_clamp must be None or >= 0, got {clamp!r}")
        self.w_dim = int(w_dim)
        self.num_ws = num_layers + 2
        self.img_resolution = int(img_resolution)
        self.img_channels = int(img_channels)
        self.num_layers = int(num_layers)
        self.num_critical = int(num_critical)
        self.margin_size = margin_size
        self.output_scale = output_scale
        self.num_fp16_res = num_fp16_res

        # Cutoffs and minimum stopbands rise geometrically to the last critically sampled layer.
        last_cutoff = self.img_resolution / 2
        last_stopband = last_cutoff * last_stopband_rel
        exponents = np.minimum(np.arange(self.num_layers + 1) / (self.num_layers - self.num_critical), 1)
        cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
        stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
        # Each layer samples at the smallest power of 2 that holds its stopband (at most the image's).
        sampling_rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, self.img_resolution))))
        half_widths = np.maximum(stopbands, sampling_rates / 2) - cutoffs
        sizes = sampling_rates + self.margin_size * 2
        sizes[-2:] = self.img_resolution
        channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
        channels[-1] = self.img_channels

        self.input = SynthesisInput(w_dim=self.w_dim, channels=int(channels[0]), size=int(sizes[0]),
                                    sampling_rate=float(sampling_rates[0]), bandwidth=float(cutoffs[0]))
        self.layer_names = []
        for idx in range(self.num_layers + 1):
            prev = max(idx - 1, 0)
            layer = SynthesisLayer(
                w_dim=self.w_dim, is_torgb=idx == self.num_layers,
                is_critically_sampled=idx >= self.num_layers - self.num_critical,
                use_fp16=bool(sampling_rates[idx] * 2 ** self.num_fp16_res > self.img_resolution),
                in_channels=int(channels[prev]), out_channels=int(channels[idx]),
                in_size=int(sizes[prev]), out_size=int(sizes[idx]),
                in_sampling_rate=int(sampling_rates[prev]), out_sampling_rate=int(sampling_rates[idx]),
                in_cutoff=float(cutoffs[prev]), out_cutoff=float(cutoffs[idx]),
                in_half_width=float(half_widths[prev]), out_half_width=float(half_widths[idx]),
                **layer_kwargs)
            name = f"L{idx}_{layer.out_size[0]}_{layer.out_channels}"
            setattr(self, name, layer)
            self.layer_names.append(name)

    def forward(self, ws: torch.Tensor, noise_mode: str = "const", force_fp32: bool = False) -> torch.Tensor:
        """`noise_mode` is checked and ignored: StyleGAN3 has no noise inputs."""
        _check_noise_mode(noise_mode)
        if ws.ndim != 3 or tuple(ws.shape[1:]) != (self.num_ws, self.w_dim):
            raise ValueError(f"StyleGAN3 synthesis takes ws [N, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        ws = ws.to(torch.float32).unbind(dim=1)
        x = self.input(ws[0])
        for name, w in zip(self.layer_names, ws[1:]):
            x = getattr(self, name)(x, w, force_fp32=force_fp32)
        if self.output_scale != 1:
            x = x * self.output_scale
        return x.to(torch.float32)

    def extra_repr(self) -> str:
        return (f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, "
                f"img_channels={self.img_channels}, num_layers={self.num_layers}, num_critical={self.num_critical}, "
                f"margin_size={self.margin_size}, num_fp16_res={self.num_fp16_res}")


class Generator(nn.Module):
    """z [N, z_dim], c [N, c_dim] -> images [N, img_channels, img_resolution, img_resolution] in about [-1, 1]:
    the mapping network (``mapping_kwargs``: num_layers, lr_multiplier, w_avg_beta) and the synthesis network
    (``synthesis_kwargs``: SynthesisNetwork's and SynthesisLayer's keywords, e.g. channel_base, conv_kernel,
    use_radial_filters, magnitude_ema_beta)."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int,
                 mapping_kwargs: Optional[dict] = None, **synthesis_kwargs):
        super().__init__()
        mapping_kwargs = dict(mapping_kwargs or {})
        unknown = sorted(set(mapping_kwargs) - set(MAPPING_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown StyleGAN3 mapping_kwargs {', '.join(map(repr, unknown))}; "
                             f"known: {', '.join(MAPPING_DEFAULTS)}")
        if z_dim < 1 or c_dim < 0:
            raise ValueError(f"StyleGAN3 needs z_dim >= 1 and c_dim >= 0, got z_dim={z_dim}, c_dim={c_dim}")
        self.z_dim = int(z_dim)
        self.c_dim = int(c_dim)
        self.w_dim = int(w_dim)
        self.img_resolution = int(img_resolution)
        self.img_channels = int(img_channels)
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws,
                                      **{**MAPPING_DEFAULTS, **mapping_kwargs})

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None, truncation_psi: float = 1,
                truncation_cutoff: Optional[int] = None, noise_mode: str = "const",
                force_fp32: bool = False) -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode, force_fp32=force_fp32)
