"""Plain-PyTorch ops of the StyleGAN family: FIR resampling, bias + activation, modulated convolution.

Written for fastmine from the published maths (StyleGAN2, StyleGAN2-ADA, StyleGAN3), with the argument
names and the padding / gain conventions of NVIDIA's reference ops, so that official weights give the
official images. Everything runs on any device and dtype and supports autograd of any order.
"""

import math
from typing import Callable, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

IntPair = Union[int, Sequence[int]]


class Activation(NamedTuple):
    """An activation function with its default shape parameter and its default output gain."""

    func: Callable[[torch.Tensor, float], torch.Tensor]
    def_alpha: float
    def_gain: float


# The gains keep the second moment of a unit Gaussian's activation near 1 (He et al.), as the official
# nets assume; weights trained with them are only right with the same gains.
ACTIVATIONS = {
    "linear": Activation(lambda x, alpha: x, 0.0, 1.0),
    "relu": Activation(lambda x, alpha: F.relu(x), 0.0, math.sqrt(2)),
    "lrelu": Activation(lambda x, alpha: F.leaky_relu(x, alpha), 0.2, math.sqrt(2)),
    "tanh": Activation(lambda x, alpha: torch.tanh(x), 0.0, 1.0),
    "sigmoid": Activation(lambda x, alpha: torch.sigmoid(x), 0.0, 1.0),
    "elu": Activation(lambda x, alpha: F.elu(x), 0.0, 1.0),
    "selu": Activation(lambda x, alpha: F.selu(x), 0.0, 1.0),
    "softplus": Activation(lambda x, alpha: F.softplus(x), 0.0, 1.0),
    "swish": Activation(lambda x, alpha: torch.sigmoid(x) * x, 0.0, math.sqrt(2)),
}


def activation_spec(name: str) -> Activation:
    """The activation called `name`, or a ValueError listing the known names."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}: use one of {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]


def _pair(value: IntPair, what: str) -> tuple:
    """(x, y) from an int or a 2-sequence of positive ints (resampling factors)."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in pair):
        raise ValueError(f"{what} must be a positive int or a pair [x, y] of positive ints, got {value!r}")
    return int(pair[0]), int(pair[1])


def _padding4(padding: IntPair) -> tuple:
    """(x0, x1, y0, y1) from an int, [x, y] or [x0, x1, y0, y1] (negative values crop)."""
    if isinstance(padding, (int, np.integer)):
        return (int(padding),) * 4
    pad = tuple(int(p) for p in padding)
    if len(pad) == 2:
        return pad[0], pad[0], pad[1], pad[1]
    if len(pad) != 4:
        raise ValueError(f"padding must be an int, [x, y] or [x0, x1, y0, y1], got {padding!r}")
    return pad


def filter_size(f: Optional[torch.Tensor]) -> tuple:
    """(width, height) of a FIR filter made by setup_filter (1 x 1 for None)."""
    if f is None:
        return 1, 1
    if f.ndim not in (1, 2):
        raise ValueError(f"a FIR filter must be 1-D (separable) or 2-D, got shape {tuple(f.shape)}")
    return int(f.shape[-1]), int(f.shape[0])


def setup_filter(f, device=torch.device("cpu"), normalize: bool = True, flip_filter: bool = False,
                 gain: float = 1, separable: Optional[bool] = None) -> torch.Tensor:
    """A float32 FIR filter from taps (list/array/tensor; None = identity): 1-D kept separable when
    long (>= 8 taps) or asked, otherwise the outer product; normalised to unit DC gain, optionally
    flipped, scaled so the whole 2-D filter has gain `gain`."""
    # built where asked even under a torch.device("meta") context: the taps are data, not a shape
    f = torch.as_tensor(1 if f is None else f, dtype=torch.float32, device=device)
    if f.ndim > 2 or f.numel() == 0:
        raise ValueError(f"FIR taps must be a non-empty scalar, 1-D or 2-D array, got shape {tuple(f.shape)}")
    if f.ndim == 0:
        f = f.reshape(1)
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if separable and f.ndim != 1:
        raise ValueError("a 2-D FIR filter cannot be made separable: pass 1-D taps")
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    # A separable filter is applied once per axis, so each pass carries the square root of the gain.
    return f * (gain ** (f.ndim / 2))


def upfirdn2d(x: torch.Tensor, f: Optional[torch.Tensor], up: IntPair = 1, down: IntPair = 1, padding: IntPair = 0,
              flip_filter: bool = False, gain: float = 1) -> torch.Tensor:
    """Per channel: insert up-1 zeros after each pixel, pad (negative crops), convolve with the FIR
    filter f keeping only outputs whose footprint lies inside, keep every down-th pixel; the core of
    all alias-aware resampling here (like scipy.signal.upfirdn in 2-D)."""
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d expects images [N, C, H, W], got shape {tuple(x.shape)}")
    upx, upy = _pair(up, "up")
    downx, downy = _pair(down, "down")
    px0, px1, py0, py1 = _padding4(padding)
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    fw, fh = filter_size(f)
    n, c, h, w = x.shape

    if upx > 1 or upy > 1:
        z = x.new_zeros([n, c, h * upy, w * upx])
        z[:, :, ::upy, ::upx] = x
        x = z
    x = F.pad(x, [px0, px1, py0, py1])
    if x.shape[2] < fh or x.shape[3] < fw:
        raise ValueError(f"upfirdn2d: the padded image {tuple(x.shape[2:])} is smaller than the filter {(fh, fw)}")

    # conv2d correlates, so the filter is flipped for a true convolution unless flip_filter asks for correlation.
    f = (f * (gain ** (f.ndim / 2))).to(dtype=x.dtype, device=x.device)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        x = F.conv2d(x, f.expand(c, 1, fh, fw), groups=c)
    else:
        x = F.conv2d(x, f.reshape(1, 1, 1, fw).expand(c, 1, 1, fw), groups=c)
        x = F.conv2d(x, f.reshape(1, 1, fw, 1).expand(c, 1, fw, 1), groups=c)
    return x[:, :, ::downy, ::downx]


def filter2d(x: torch.Tensor, f: Optional[torch.Tensor], padding: IntPair = 0, flip_filter: bool = False,
             gain: float = 1) -> torch.Tensor:
    """FIR filtering that keeps the image size (padding on top of that; negative crops)."""
    px0, px1, py0, py1 = _padding4(padding)
    fw, fh = filter_size(f)
    pad = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=pad, flip_filter=flip_filter, gain=gain)


def upsample2d(x: torch.Tensor, f: Optional[torch.Tensor], up: IntPair = 2, padding: IntPair = 0,
               flip_filter: bool = False, gain: float = 1) -> torch.Tensor:
    """Upsampling by `up` through the FIR filter f, output exactly up times the input size."""
    upx, upy = _pair(up, "up")
    px0, px1, py0, py1 = _padding4(padding)
    fw, fh = filter_size(f)
    pad = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2, py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    # Zero insertion divides the mean by up_x * up_y; the gain gives it back.
    return upfirdn2d(x, f, up=(upx, upy), padding=pad, flip_filter=flip_filter, gain=gain * upx * upy)


def downsample2d(x: torch.Tensor, f: Optional[torch.Tensor], down: IntPair = 2, padding: IntPair = 0,
                 flip_filter: bool = False, gain: float = 1) -> torch.Tensor:
    """Downsampling by `down` through the FIR filter f, output exactly the input size over down."""
    downx, downy = _pair(down, "down")
    px0, px1, py0, py1 = _padding4(padding)
    fw, fh = filter_size(f)
    pad = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2,
           py0 + (fh - downy + 1) // 2, py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=(downx, downy), padding=pad, flip_filter=flip_filter, gain=gain)


def _conv(x: torch.Tensor, w: torch.Tensor, stride: int = 1, padding=0, groups: int = 1,
          transpose: bool = False, flip_weight: bool = True) -> torch.Tensor:
    """conv2d (or its transpose), as a correlation when flip_weight else as a true convolution."""
    if not flip_weight:
        w = w.flip([2, 3])
    if transpose:
        return F.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: Optional[torch.Tensor] = None, up: int = 1, down: int = 1,
                    padding: IntPair = 0, groups: int = 1, flip_weight: bool = True,
                    flip_filter: bool = False) -> torch.Tensor:
    """2-D convolution of x with w combined with FIR up/down-sampling through f; the result is that of
    zero insertion, padding (`padding` is relative to the upsampled image), FIR filter, convolution,
    FIR filter and subsampling, computed the cheap way round (transposed / strided convolution)."""
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"conv2d_resample expects x [N, C, H, W] and w [O, I, kh, kw], got {tuple(x.shape)} "
                         f"and {tuple(w.shape)}")
    if not (isinstance(up, int) and up >= 1 and isinstance(down, int) and down >= 1):
        raise ValueError(f"up and down must be positive ints, got up={up!r} down={down!r}")
    out_channels, in_per_group, kh, kw = (int(s) for s in w.shape)
    fw, fh = filter_size(f)
    px0, px1, py0, py1 = _padding4(padding)
    # Padding that centres the FIR filter, so that up / down alone scale the size exactly.
    if up > 1:
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    pad = [px0, px1, py0, py1]

    if kw == 1 and kh == 1 and up == 1 and down > 1:
        # A 1x1 convolution commutes with the filter and the subsampling: subsample first, convolve less.
        x = upfirdn2d(x, f, down=down, padding=pad, flip_filter=flip_filter)
        return _conv(x, w, groups=groups, flip_weight=flip_weight)
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d(x, f, up=up, padding=pad, gain=up ** 2, flip_filter=flip_filter)
    if up == 1 and down > 1:
        # Filtering then keeping every down-th output of the convolution is a strided convolution.
        x = upfirdn2d(x, f, padding=pad, flip_filter=flip_filter)
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)
    if up > 1:
        # Correlating w over the zero-stuffed image is a transposed convolution with w flipped, whose
        # full output starts k-1 pixels before the correlation's and ends k-up pixels after it.
        if groups == 1:
            wt = w.transpose(0, 1)
        else:
            wt = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
            wt = wt.reshape(groups * in_per_group, out_channels // groups, kh, kw)
        px0, px1, py0, py1 = px0 - (kw - 1), px1 - (kw - up), py0 - (kh - 1), py1 - (kh - up)
        # Crop what both sides drop inside the transposed convolution, the rest in the FIR step.
        cx, cy = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)
        x = _conv(x, wt, stride=up, padding=[cy, cx], groups=groups, transpose=True, flip_weight=not flip_weight)
        x = upfirdn2d(x, f, padding=[px0 + cx, px1 + cx, py0 + cy, py1 + cy], gain=up ** 2, flip_filter=flip_filter)
        if down > 1:
            x = upfirdn2d(x, f, down=down, flip_filter=flip_filter)
        return x
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)
    x = upfirdn2d(x, None, padding=pad)
    return _conv(x, w, groups=groups, flip_weight=flip_weight)


def bias_act(x: torch.Tensor, b: Optional[torch.Tensor] = None, dim: int = 1, act: str = "linear",
             alpha: Optional[float] = None, gain: Optional[float] = None,
             clamp: Optional[float] = None) -> torch.Tensor:
    """Add a bias along `dim`, apply the activation (default alpha and gain per activation, e.g. lrelu:
    0.2 and sqrt(2)), multiply by the gain, clamp to [-clamp, clamp]; the last step of every layer."""
    spec = activation_spec(act)
    alpha = float(spec.def_alpha if alpha is None else alpha)
    gain = float(spec.def_gain if gain is None else gain)
    if clamp is not None and clamp < 0:
        raise ValueError(f"clamp must be >= 0 or None, got {clamp}")
    if b is not None:
        if b.ndim != 1 or not 0 <= dim < x.ndim or b.shape[0] != x.shape[dim]:
            raise ValueError(f"bias of shape {tuple(b.shape)} does not match dim {dim} of x {tuple(x.shape)}")
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = spec.func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """x scaled to unit mean square along `dim` (pixel norm); makes the mapping input scale-free."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                     noise: Optional[torch.Tensor] = None, up: int = 1, down: int = 1, padding: IntPair = 0,
                     resample_filter: Optional[torch.Tensor] = None, demodulate: bool = True,
                     flip_weight: bool = True, fused_modconv: bool = True) -> torch.Tensor:
    """StyleGAN2's style convolution: scale the input channels of `weight` per sample by `styles`,
    optionally rescale each output channel to unit expected norm (demodulation), convolve (with
    resampling), add `noise`. Fused = one grouped convolution with per-sample weights; non-fused =
    scale activations before and after a shared convolution (same result, cheaper for big batches)."""
    batch = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    if x.ndim != 4 or x.shape[1] != in_channels or tuple(styles.shape) != (batch, in_channels):
        raise ValueError(f"modulated_conv2d: x {tuple(x.shape)}, styles {tuple(styles.shape)} do not fit "
                         f"weight {tuple(weight.shape)}")

    # In float16 the per-sample weights could overflow; demodulation cancels any scale put here.
    if x.dtype == torch.float16 and demodulate:
        weight = weight * (1 / math.sqrt(in_channels * kh * kw)
                           / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    w = None
    dcoefs = None
    if demodulate or fused_modconv:
        w = weight.unsqueeze(0) * styles.reshape(batch, 1, -1, 1, 1)
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()

    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(batch, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, down=down, padding=padding,
                            flip_weight=flip_weight)
        if demodulate:
            x = x * dcoefs.to(x.dtype).reshape(batch, -1, 1, 1)
        if noise is not None:
            x = x + noise.to(x.dtype)
        return x

    if demodulate:
        w = w * dcoefs.reshape(batch, -1, 1, 1, 1)
    # The batch becomes the channel groups of a single image, so each sample meets its own weights.
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_channels, kh, kw)
    x = conv2d_resample(x, w.to(x.dtype), f=resample_filter, up=up, down=down, padding=padding, groups=batch,
                        flip_weight=flip_weight)
    x = x.reshape(batch, -1, *x.shape[2:])
    if noise is not None:
        x = x + noise
    return x
