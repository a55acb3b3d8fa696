"""rosinality/stylegan2-pytorch checkpoints as fastmine's StyleGAN2 networks.

rosinality's ``train.py`` saves ``{"g", "d", "g_ema", "g_optim", "d_optim", "args", "ada_aug_p"}``
and its ``convert_weight.py`` (from NVIDIA's TensorFlow pickles) ``{"g_ema", "latent_avg"}`` plus
optionally ``"g"`` and ``"d"``. :func:`generator_from_rosinality` and
:func:`discriminator_from_rosinality` turn one of those state dicts into the constructor keywords
and the state dict of :class:`fastmine.zoo.stylegan2.Generator` / ``Discriminator`` (stylegan2-ada's
names), so that ``Generator(**kwargs).load_state_dict(sd)`` gives rosinality's images
(``randomize_noise=False`` is ``noise_mode="const"``) and logits, up to float32 rounding.

The two codebases are the same networks, parameterised alike, except for:

- the synthesis convolutions: rosinality multiplies the weight by 1/sqrt(fan_in) before modulating
  and demodulating, stylegan2-ada does not; demodulation cancels the factor except inside its
  rsqrt(sum + 1e-8), a relative difference of about 0.5e-8 / sum((w * s / sqrt(fan_in))^2), ~5e-9 for
  unit styles, below float32 resolution. The raw weights are kept (not the factor baked in), so the
  trained parameters, and what an optimiser does with them, stay those of both codebases. The toRGB
  layers apply the factor in both (stylegan2-ada on the styles): copied as they are too;
- shapes only: ``conv.weight`` [1, O, I, k, k] -> [O, I, k, k], ``input.input`` [1, C, 4, 4] ->
  ``const`` [C, 4, 4], ``noises.noise_i`` [1, 1, r, r] -> ``noise_const`` [r, r], ``noise.weight`` [1]
  -> ``noise_strength`` [], toRGB ``bias`` [1, 3, 1, 1] -> [3];
- the mapping layers keep their raw (learning-rate-scaled) weights: rosinality's lr_mlp becomes
  the official ``lr_multiplier``, the same run-time factor. lr_mlp is not in the tensors; rosinality's
  train.py always uses the default 0.01 (pass ``lr_mlp`` for a network built otherwise);
- no kernel flips: both run the upsampling convolutions as the same transposed convolution
  (rosinality's TF converter flips those kernels once, as NVIDIA's legacy loader does), and both
  apply the blur kernels as true convolutions with the same paddings;
- the blur kernel: rosinality's ``blur_kernel`` reaches only the generator's upsampling
  convolutions; its ToRGB skip upsampling and all discriminator blurs keep [1, 3, 3, 1]. The
  official networks take one ``resample_filter`` per block, so a generator built with another
  blur_kernel (none of rosinality's scripts offers one) is refused with a ValueError;
- ``w_avg``: a converted TF checkpoint has ``latent_avg`` (TF's tracked average), which becomes
  ``mapping.w_avg``; train.py checkpoints have none (rosinality estimates the average at sampling
  time, ``mean_latent(4096)``), so it is estimated here the same way, deterministically: the mean
  of the mapping's outputs for W_AVG_SAMPLES latents drawn with seed W_AVG_SEED (standard error
  about std(w) / 100 per coordinate);
- the discriminator's residual blocks divide the sum by sqrt(2) where stylegan2-ada multiplies both
  branches by sqrt(1/2) through its gain arguments; its minibatch-std layer uses the same grouping
  (groups of min(4, N) strided across the batch, one feature), so mbstd_group_size=4 and
  mbstd_num_channels=1 reproduce it exactly, including its failure when N > 4 is not a multiple of 4.

rosinality's channel table (512 up to 32 px, then 16384 * channel_multiplier / resolution) is the
official ``min(channel_base // res, channel_max)`` with channel_base = 16384 * channel_multiplier and
channel_max = 512 for channel_multiplier 1 and 2 (its configs' values). The widths are read from the
tensors and expressed that way whenever some channel_base fits them; channel_multiplier >= 3 gives
more channels at 64 px than at 32 px, which no channel_base does (a ValueError says so).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Optional

import torch

from .ops import setup_filter
from .stylegan2 import MappingNetwork

W_AVG_SAMPLES = 10_000
W_AVG_SEED = 0
ROSINALITY_MAX_CHANNELS = 512
ROSINALITY_CHANNEL_BASE = 16384  # times channel_multiplier: the widths above 32 px
DEFAULT_BLUR = [1, 3, 3, 1]
GENERATOR_KEYS = ("input.input", "conv1.conv.weight", "conv1.conv.modulation.weight", "to_rgb1.conv.weight",
                  "noises.noise_0")
DISCRIMINATOR_KEYS = ("convs.0.0.weight", "final_conv.0.weight", "final_linear.0.weight", "final_linear.1.weight")
MBSTD_GROUP_SIZE, MBSTD_NUM_CHANNELS = 4, 1


def _check_state_dict(state_dict, what: str, required: tuple) -> None:
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"a rosinality {what} state dict must be a mapping of names to tensors, "
                        f"got {type(state_dict).__name__}")
    if "g_ema" in state_dict or "d" in state_dict:
        raise ValueError(f"this is a whole rosinality checkpoint, not a {what} state dict: pass ckpt['g_ema'] "
                         "(or ckpt['g'] / ckpt['d']), or use convert_checkpoint(ckpt)")
    if any(".iwt." in k or ".dwt." in k or k.startswith(("iwt.", "dwt.")) for k in state_dict):
        raise ValueError(f"this is a rosinality SWAGAN {what} (wavelet layers iwt/dwt), not StyleGAN2: "
                         "fastmine has no SWAGAN network")
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise ValueError(f"not a rosinality stylegan2-pytorch {what} state dict: missing {', '.join(missing)} "
                         f"(expected {', '.join(required)}, ...)")


def _count(state_dict, pattern: str, start: int = 0) -> int:
    """How many consecutive indices i from `start` have a key matching `pattern.format(i)`."""
    found = {int(m.group(1)) for k in state_dict if (m := re.fullmatch(pattern.format(r"(\d+)"), k))}
    n = 0
    while start + n in found:
        n += 1
    return n


def _some(keys: list, n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _check_layout(state_dict, expected: dict, what: str) -> None:
    """Every expected key present with its shape, nothing else (another architecture or size otherwise)."""
    missing = [k for k in expected if k not in state_dict]
    extra = [k for k in state_dict if k not in expected]
    if missing or extra:
        parts = [f"{label} {_some(keys)}" for label, keys in (("missing", missing), ("unexpected", extra)) if keys]
        raise ValueError(f"the tensors do not form a rosinality stylegan2-pytorch {what}: {'; '.join(parts)}")
    for k, shape in expected.items():
        if shape is not None and tuple(state_dict[k].shape) != tuple(shape):
            raise ValueError(f"rosinality {what} tensor {k!r} has shape {tuple(state_dict[k].shape)}, expected "
                             f"{tuple(shape)} from the other tensors")


def _check_given(name: str, given, inferred, what: str) -> None:
    if given is not None and given != inferred:
        raise ValueError(f"{name}={given!r} does not match the rosinality {what} tensors, which have "
                         f"{name}={inferred!r}")


def rosinality_widths(size: int, channel_multiplier: int) -> dict:
    """rosinality's channels per resolution (4 .. size) for a channel_multiplier."""
    resolutions = [2 ** i for i in range(2, int(math.log2(size)) + 1)]
    return {res: ROSINALITY_MAX_CHANNELS if res <= 32 else ROSINALITY_CHANNEL_BASE * channel_multiplier // res
            for res in resolutions}


def _channel_multiplier(widths: dict, given: Optional[int], what: str) -> Optional[int]:
    """The channel_multiplier rosinality built these widths with: the given one after checking it,
    else the one the widths above 32 px show; None when the widths do not say (all <= 32 px) or are
    not rosinality's table."""
    size = max(widths)
    if given is not None:
        if rosinality_widths(size, given) != widths:
            raise ValueError(f"channel_multiplier={given} does not match the rosinality {what} tensors: channels "
                             f"per resolution {widths}, rosinality's table gives {rosinality_widths(size, given)}")
        return given
    if size < 64 or widths[64] % 256:
        return None
    cm = widths[64] // 256
    return cm if rosinality_widths(size, cm) == widths else None


def _channel_base_max(widths: dict, channel_multiplier: Optional[int], what: str) -> tuple:
    """(channel_base, channel_max) with min(channel_base // res, channel_max) == widths[res] for all res;
    rosinality's 16384 * channel_multiplier when that fits, else the smallest base that does."""
    channel_max = max(widths.values())
    lo, hi = 1, math.inf
    for res, width in widths.items():
        lo = max(lo, width * res)
        if width < channel_max:
            hi = min(hi, (width + 1) * res)
    if lo >= hi:
        raise ValueError(f"the rosinality {what}'s channels per resolution {widths} are not min(channel_base // res, "
                         "channel_max) for any channel_base: the official StyleGAN2 networks cannot express them")
    if channel_multiplier is not None and lo <= ROSINALITY_CHANNEL_BASE * channel_multiplier < hi:
        return ROSINALITY_CHANNEL_BASE * channel_multiplier, channel_max
    return lo, channel_max


def _blur(state_dict, keys: list, gain: float, what: str) -> tuple:
    """(taps for the official resample_filter keyword, the normalised 2-D filter) from rosinality's blur
    kernel buffers (make_kernel(k) * gain); [1, 3, 3, 1] when the network has none (4 px)."""
    if not keys:
        return list(DEFAULT_BLUR), setup_filter(DEFAULT_BLUR)
    kernels = [state_dict[k].detach().to(device="cpu", dtype=torch.float32) / gain for k in keys]
    for k, kernel in zip(keys[1:], kernels[1:]):
        if kernel.shape != kernels[0].shape or not torch.allclose(kernel, kernels[0], rtol=1e-3, atol=1e-6):
            raise ValueError(f"rosinality {what} blur kernels differ ({keys[0]!r} vs {k!r}): the official StyleGAN2 "
                             "uses one resample_filter per block, and rosinality's ToRGB always upsamples with "
                             "[1, 3, 3, 1], so only a network built with the default blur_kernel converts")
    kernel = kernels[0] / kernels[0].sum()
    taps = kernel.sum(dim=1)
    if torch.allclose(torch.outer(taps, taps), kernel, atol=1e-6):
        # separable, as rosinality's list blur_kernel: give the taps in their simplest form ([1, 3, 3, 1])
        smallest = taps[taps.abs() > 1e-6].abs().min()
        scaled = taps / smallest
        if torch.allclose(scaled, scaled.round(), atol=1e-4):
            return [int(v) for v in scaled.round().tolist()], kernel
        return taps.tolist(), kernel
    return kernel.tolist(), kernel


def infer_generator_args(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """rosinality Generator constructor args read from the tensors: size, style_dim, n_mlp,
    channel_multiplier (None when the tensors do not determine it: size <= 32, or widths that are not
    rosinality's table) and blur_kernel."""
    _check_state_dict(state_dict, "Generator", GENERATOR_KEYS)
    widths = _generator_widths(state_dict)
    blur, _ = _blur(state_dict, _generator_blur_keys(state_dict), 4, "Generator")
    return dict(size=max(widths), style_dim=int(state_dict["conv1.conv.modulation.weight"].shape[1]),
                n_mlp=_count(state_dict, r"style\.{}\.weight", start=1),
                channel_multiplier=_channel_multiplier(widths, None, "Generator"), blur_kernel=blur)


def _generator_widths(state_dict) -> dict:
    n_up = _count(state_dict, r"to_rgbs\.{}\.conv\.weight")
    widths = {4: int(state_dict["input.input"].shape[1])}
    for k in range(n_up):
        key = f"convs.{2 * k}.conv.weight"
        if key not in state_dict:
            raise ValueError(f"not a rosinality stylegan2-pytorch Generator state dict: missing {key} "
                             f"(to_rgbs.{k} has no upsampling convolution)")
        widths[8 * 2 ** k] = int(state_dict[key].shape[1])
    return widths


def _generator_blur_keys(state_dict) -> list:
    return sorted(k for k in state_dict if re.fullmatch(r"(convs\.\d+\.conv\.blur|to_rgbs\.\d+\.upsample)\.kernel", k))


def _generator_layout(size: int, style_dim: int, n_mlp: int, widths: dict, kernel_shape) -> dict:
    """rosinality Generator key -> shape."""
    layout = {}
    for i in range(1, n_mlp + 1):
        layout.update({f"style.{i}.weight": (style_dim, style_dim), f"style.{i}.bias": (style_dim,)})

    def modconv(prefix, c_in, c_out, k):
        layout.update({f"{prefix}.conv.weight": (1, c_out, c_in, k, k),
                       f"{prefix}.conv.modulation.weight": (c_in, style_dim),
                       f"{prefix}.conv.modulation.bias": (c_in,)})

    def styled(prefix, c_in, c_out, up):
        modconv(prefix, c_in, c_out, 3)
        layout.update({f"{prefix}.noise.weight": (1,), f"{prefix}.activate.bias": (c_out,)})
        if up:
            layout[f"{prefix}.conv.blur.kernel"] = kernel_shape

    layout["input.input"] = (1, widths[4], 4, 4)
    styled("conv1", widths[4], widths[4], False)
    modconv("to_rgb1", widths[4], 3, 1)
    layout["to_rgb1.bias"] = (1, 3, 1, 1)
    for k in range(int(math.log2(size)) - 2):
        res = 8 * 2 ** k
        styled(f"convs.{2 * k}", widths[res // 2], widths[res], True)
        styled(f"convs.{2 * k + 1}", widths[res], widths[res], False)
        modconv(f"to_rgbs.{k}", widths[res], 3, 1)
        layout.update({f"to_rgbs.{k}.bias": (1, 3, 1, 1), f"to_rgbs.{k}.upsample.kernel": kernel_shape})
    for i in range(2 * int(math.log2(size)) - 3):
        r = 2 ** ((i + 5) // 2)
        layout[f"noises.noise_{i}"] = (1, 1, r, r)
    return layout


def generator_from_rosinality(state_dict: Mapping[str, torch.Tensor], latent_avg: Optional[torch.Tensor] = None,
                              size: Optional[int] = None, style_dim: Optional[int] = None,
                              n_mlp: Optional[int] = None, channel_multiplier: Optional[int] = None,
                              lr_mlp: float = 0.01) -> tuple:
    """A rosinality ``g_ema`` (or ``g``) state dict -> (init kwargs, state dict) of the official
    StyleGAN2 Generator (see the module docstring). Hyperparameters not given are read from the
    tensors; given ones are checked against them. ``latent_avg``: the checkpoint's, else estimated.
    Tensors come back as float32 on their device."""
    args = infer_generator_args(state_dict)
    for name, given in (("size", size), ("style_dim", style_dim), ("n_mlp", n_mlp)):
        _check_given(name, given, args[name], "Generator")
    size, style_dim, n_mlp = args["size"], args["style_dim"], args["n_mlp"]
    widths = _generator_widths(state_dict)
    blur_keys = _generator_blur_keys(state_dict)
    kernel_shape = tuple(state_dict[blur_keys[0]].shape) if blur_keys else None
    _check_layout(state_dict, _generator_layout(size, style_dim, n_mlp, widths, kernel_shape), "Generator")
    channel_multiplier = _channel_multiplier(widths, channel_multiplier, "Generator")
    channel_base, channel_max = _channel_base_max(widths, channel_multiplier, "Generator")
    taps, kernel = _blur(state_dict, blur_keys, 4, "Generator")

    sd = {k: v.detach().float() for k, v in state_dict.items()}
    device = sd["input.input"].device
    out = {}
    for i in range(n_mlp):
        out[f"mapping.fc{i}.weight"] = sd[f"style.{i + 1}.weight"]
        out[f"mapping.fc{i}.bias"] = sd[f"style.{i + 1}.bias"]
    default_filter = setup_filter(DEFAULT_BLUR, device=device)
    kernel = kernel.to(device)

    def layer(dst, src, noise, up):
        out[f"{dst}.weight"] = sd[f"{src}.conv.weight"][0]
        out[f"{dst}.affine.weight"] = sd[f"{src}.conv.modulation.weight"]
        out[f"{dst}.affine.bias"] = sd[f"{src}.conv.modulation.bias"]
        out[f"{dst}.noise_const"] = sd[f"noises.noise_{noise}"][0, 0]
        out[f"{dst}.noise_strength"] = sd[f"{src}.noise.weight"].reshape([])
        out[f"{dst}.bias"] = sd[f"{src}.activate.bias"]
        # stylegan2-ada gives only the upsampling layer the block's filter; the others keep the default
        out[f"{dst}.resample_filter"] = kernel if up else default_filter

    def torgb(dst, src):
        out[f"{dst}.weight"] = sd[f"{src}.conv.weight"][0]
        out[f"{dst}.affine.weight"] = sd[f"{src}.conv.modulation.weight"]
        out[f"{dst}.affine.bias"] = sd[f"{src}.conv.modulation.bias"]
        out[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(-1)

    out["synthesis.b4.const"] = sd["input.input"][0]
    out["synthesis.b4.resample_filter"] = kernel
    layer("synthesis.b4.conv1", "conv1", 0, False)
    torgb("synthesis.b4.torgb", "to_rgb1")
    for k in range(int(math.log2(size)) - 2):
        block = f"synthesis.b{8 * 2 ** k}"
        out[f"{block}.resample_filter"] = kernel
        layer(f"{block}.conv0", f"convs.{2 * k}", 2 * k + 1, True)
        layer(f"{block}.conv1", f"convs.{2 * k + 1}", 2 * k + 2, False)
        torgb(f"{block}.torgb", f"to_rgbs.{k}")

    kwargs = dict(z_dim=style_dim, c_dim=0, w_dim=style_dim, img_resolution=size, img_channels=3,
                  mapping_kwargs=dict(num_layers=n_mlp, lr_multiplier=lr_mlp),
                  synthesis_kwargs=dict(channel_base=channel_base, channel_max=channel_max, num_fp16_res=0,
                                        conv_clamp=None, architecture="skip", resample_filter=taps))
    if latent_avg is not None:
        if latent_avg.numel() != style_dim:
            raise ValueError(f"latent_avg has {latent_avg.numel()} values, expected style_dim = {style_dim}")
        out["mapping.w_avg"] = latent_avg.detach().float().reshape(style_dim).to(device)
    else:
        out["mapping.w_avg"] = _estimate_w_avg(out, kwargs)
    return kwargs, out


@torch.no_grad()
def _estimate_w_avg(sd: dict, kwargs: dict) -> torch.Tensor:
    """The mean mapping output over W_AVG_SAMPLES fixed latents (see the module docstring)."""
    w_dim = kwargs["w_dim"]
    mapping = MappingNetwork(z_dim=kwargs["z_dim"], c_dim=0, w_dim=w_dim, num_ws=None, w_avg_beta=None,
                             **kwargs["mapping_kwargs"])
    mapping.load_state_dict({k[len("mapping."):]: v for k, v in sd.items() if k.startswith("mapping.")})
    device = sd["synthesis.b4.const"].device
    mapping.to(device)
    gen = torch.Generator().manual_seed(W_AVG_SEED)
    total = torch.zeros(w_dim, dtype=torch.float64, device=device)
    for start in range(0, W_AVG_SAMPLES, 1000):
        z = torch.randn(min(1000, W_AVG_SAMPLES - start), kwargs["z_dim"], generator=gen).to(device)
        total += mapping(z, None).double().sum(0)
    return (total / W_AVG_SAMPLES).float()


def _discriminator_widths(state_dict) -> dict:
    n_blocks = _count(state_dict, r"convs\.{}\.conv2\.1\.weight", start=1)
    size = 4 * 2 ** n_blocks
    widths = {size: int(state_dict["convs.0.0.weight"].shape[0])}
    for i in range(1, n_blocks + 1):
        widths[size // 2 ** i] = int(state_dict[f"convs.{i}.conv2.1.weight"].shape[0])
    return widths


def _discriminator_blur_keys(state_dict) -> list:
    return sorted(k for k in state_dict if re.fullmatch(r"convs\.\d+\.(conv2|skip)\.0\.kernel", k))


def _discriminator_layout(widths: dict, kernel_shape) -> dict:
    """rosinality Discriminator key -> shape."""
    size, c4 = max(widths), widths[4]
    layout = {"convs.0.0.weight": (widths[size], 3, 1, 1), "convs.0.1.bias": (widths[size],)}
    for i in range(1, int(math.log2(size)) - 1):
        res = size // 2 ** (i - 1)
        c, o = widths[res], widths[res // 2]
        layout.update({f"convs.{i}.conv1.0.weight": (c, c, 3, 3), f"convs.{i}.conv1.1.bias": (c,),
                       f"convs.{i}.conv2.0.kernel": kernel_shape, f"convs.{i}.conv2.1.weight": (o, c, 3, 3),
                       f"convs.{i}.conv2.2.bias": (o,), f"convs.{i}.skip.0.kernel": kernel_shape,
                       f"convs.{i}.skip.1.weight": (o, c, 1, 1)})
    layout.update({"final_conv.0.weight": (c4, c4 + MBSTD_NUM_CHANNELS, 3, 3), "final_conv.1.bias": (c4,),
                   "final_linear.0.weight": (c4, c4 * 4 * 4), "final_linear.0.bias": (c4,),
                   "final_linear.1.weight": (1, c4), "final_linear.1.bias": (1,)})
    return layout


def infer_discriminator_args(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """rosinality Discriminator constructor args read from the tensors: size, channel_multiplier
    (None when the tensors do not determine it) and blur_kernel."""
    _check_state_dict(state_dict, "Discriminator", DISCRIMINATOR_KEYS)
    widths = _discriminator_widths(state_dict)
    blur, _ = _blur(state_dict, _discriminator_blur_keys(state_dict), 1, "Discriminator")
    return dict(size=max(widths), channel_multiplier=_channel_multiplier(widths, None, "Discriminator"),
                blur_kernel=blur)


def discriminator_from_rosinality(state_dict: Mapping[str, torch.Tensor], size: Optional[int] = None,
                                  channel_multiplier: Optional[int] = None) -> tuple:
    """A rosinality ``d`` state dict -> (init kwargs, state dict) of the official StyleGAN2
    Discriminator (architecture resnet, minibatch std over groups of 4 with 1 feature). Tensors come
    back as float32 on their device."""
    args = infer_discriminator_args(state_dict)
    _check_given("size", size, args["size"], "Discriminator")
    size = args["size"]
    widths = _discriminator_widths(state_dict)
    blur_keys = _discriminator_blur_keys(state_dict)
    kernel_shape = tuple(state_dict[blur_keys[0]].shape) if blur_keys else None
    _check_layout(state_dict, _discriminator_layout(widths, kernel_shape), "Discriminator")
    channel_multiplier = _channel_multiplier(widths, channel_multiplier, "Discriminator")
    channel_base, channel_max = _channel_base_max(widths, channel_multiplier, "Discriminator")
    taps, kernel = _blur(state_dict, blur_keys, 1, "Discriminator")

    sd = {k: v.detach().float() for k, v in state_dict.items()}
    device = sd["convs.0.0.weight"].device
    kernel = kernel.to(device)
    default_filter = setup_filter(DEFAULT_BLUR, device=device)
    out = {f"b{size}.fromrgb.weight": sd["convs.0.0.weight"], f"b{size}.fromrgb.bias": sd["convs.0.1.bias"],
           f"b{size}.fromrgb.resample_filter": default_filter}
    for i in range(1, int(math.log2(size)) - 1):
        block, src = f"b{size // 2 ** (i - 1)}", f"convs.{i}"
        out.update({
            f"{block}.resample_filter": kernel,
            f"{block}.conv0.weight": sd[f"{src}.conv1.0.weight"], f"{block}.conv0.bias": sd[f"{src}.conv1.1.bias"],
            # stylegan2-ada gives only the downsampling layers the block's filter; conv0 keeps the default
            f"{block}.conv0.resample_filter": default_filter,
            f"{block}.conv1.weight": sd[f"{src}.conv2.1.weight"], f"{block}.conv1.bias": sd[f"{src}.conv2.2.bias"],
            f"{block}.conv1.resample_filter": kernel,
            f"{block}.skip.weight": sd[f"{src}.skip.1.weight"], f"{block}.skip.resample_filter": kernel,
        })
    out.update({"b4.conv.weight": sd["final_conv.0.weight"], "b4.conv.bias": sd["final_conv.1.bias"],
                "b4.conv.resample_filter": default_filter,
                "b4.fc.weight": sd["final_linear.0.weight"], "b4.fc.bias": sd["final_linear.0.bias"],
                "b4.out.weight": sd["final_linear.1.weight"], "b4.out.bias": sd["final_linear.1.bias"]})
    kwargs = dict(c_dim=0, img_resolution=size, img_channels=3, architecture="resnet", channel_base=channel_base,
                  channel_max=channel_max, num_fp16_res=0, conv_clamp=None, block_kwargs=dict(resample_filter=taps),
                  epilogue_kwargs=dict(mbstd_group_size=MBSTD_GROUP_SIZE, mbstd_num_channels=MBSTD_NUM_CHANNELS))
    return kwargs, out


def convert_checkpoint(ckpt: Mapping, generator: str = "g_ema") -> dict:
    """A whole rosinality checkpoint dict -> {"G": (kwargs, sd)} plus "D" when it has ``d``.
    ``generator``: ``g_ema`` (the averaged weights rosinality samples with) or ``g``. Its ``args``
    (argparse.Namespace or dict: size, latent, n_mlp, channel_multiplier, arch) are checked against
    the tensors when present; ``latent_avg`` becomes w_avg."""
    if not isinstance(ckpt, Mapping):
        raise TypeError(f"a rosinality checkpoint is a dict, got {type(ckpt).__name__}")
    if generator not in ("g_ema", "g"):
        raise ValueError(f"generator must be 'g_ema' or 'g', got {generator!r}")
    if generator not in ckpt:
        raise ValueError(f"the rosinality checkpoint has no {generator!r} (it has {', '.join(map(str, ckpt))}); "
                         "expected a train.py or convert_weight.py checkpoint")
    args = ckpt.get("args")
    args = {} if args is None else dict(args) if isinstance(args, Mapping) else vars(args)
    if args.get("arch", "stylegan2") != "stylegan2":
        raise ValueError(f"the rosinality checkpoint is arch={args['arch']!r}: fastmine converts only 'stylegan2'")
    out = {"G": generator_from_rosinality(ckpt[generator], latent_avg=ckpt.get("latent_avg"), size=args.get("size"),
                                          style_dim=args.get("latent"), n_mlp=args.get("n_mlp"),
                                          channel_multiplier=args.get("channel_multiplier"))}
    if "d" in ckpt:
        out["D"] = discriminator_from_rosinality(ckpt["d"], size=args.get("size"),
                                                 channel_multiplier=args.get("channel_multiplier"))
    return out
