"""Progressive GAN (ProGAN / PGGAN) checkpoints, and pytorch_GAN_zoo's DCGAN, as fastmine networks, read as data.

Two stores of the same architecture (Karras et al. 2018: pixel norm, equalised learning rate,
nearest upsampling, a minibatch-standard-deviation critic), each kept with its own parameter
names and constructor keywords so its tensors load strictly:

- facebookresearch/pytorch_GAN_zoo's ``PGAN`` (:class:`GNet`, :class:`DNet`): the torch hub
  checkpoints (celebAHQ-256/512, celeba, DTD) hold ``{"config", "netG", "netD", "avgG"}``; the
  config (a pickled ``BaseConfig``, read as a plain attribute bag) gives the widths
  (``depthScale0``, ``depthOtherScales``), ``latentVectorDim``, the loss (whose output activation
  the generator applies: tanh for DCGAN/LSGAN losses, none for WGAN-GP) and ``miniBatchStdDev``.
  ``avgG`` (the moving average the repo samples with) is the generator, ``key="netG"`` the raw one.
- genforce/genforce's ``PGGANGenerator`` / ``PGGANDiscriminator`` (:class:`PGGANGenerator`,
  :class:`PGGANDiscriminator`): its converter of NVIDIA's TensorFlow release (CelebA-HQ 1024 px,
  the LSUN categories at 256 px) saves ``{"generator", "discriminator", "generator_smooth"}``
  with no constructor arguments: they are read from the tensors (resolution from the number of
  output layers, widths as ``min(fmaps_base // res, fmaps_max)``).

pytorch_GAN_zoo's ``DCGAN`` (:class:`DCGANGNet`; the fashionGen torch hub model) is read from the
same file layout (config ``dimG``, ``depth``), its generator only.

Both ProGANs run at their final resolution (alpha = 0 / lod = 0), the state their released files are
in; a file saved mid-transition is refused. The pytorch_GAN_zoo layer multiplies its output,
bias included, by He's constant (``ConstrainedLayer``), genforce the weight only: kept as each does.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

LEAK = 0.2  # both stores' leaky ReLU slope (genforce fixes it; pytorch_GAN_zoo's default and released value)
PIXEL_NORM_EPS = 1e-8
MBSTD_EPS = 1e-8
GANZOO_MBSTD_GROUP = 4  # pytorch_GAN_zoo's miniBatchStdDev subGroupSize
GENFORCE_FMAPS_BASE, GENFORCE_FMAPS_MAX = 16 << 10, 512


def pixel_norm(x: torch.Tensor) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + PIXEL_NORM_EPS).rsqrt()


# --------------------------------------------------------------------------- pytorch_GAN_zoo
class EqualizedLayer(nn.Module):
    """pytorch_GAN_zoo's ConstrainedLayer: ``module`` (a Conv2d / Linear) whose output is scaled
    by sqrt(2 / fan_in) at run time when ``equalized``."""

    def __init__(self, module: nn.Module, equalized: bool = True):
        super().__init__()
        self.module = module
        self.equalized = equalized
        self.scale = math.sqrt(2.0 / module.weight[0].numel())

    def forward(self, x):
        x = self.module(x)
        return x * self.scale if self.equalized else x


def _conv(c_in, c_out, k, equalized, padding=0):
    return EqualizedLayer(nn.Conv2d(c_in, c_out, k, padding=padding), equalized)


def _linear(c_in, c_out, equalized):
    return EqualizedLayer(nn.Linear(c_in, c_out), equalized)


def _ganzoo_mbstd(x: torch.Tensor) -> torch.Tensor:
    """pytorch_GAN_zoo's minibatch std: contiguous groups of min(4, N) (the whole batch when N is
    not a multiple), unbiased variance, one feature."""
    n, c, h, w = x.shape
    group = min(n, GANZOO_MBSTD_GROUP)
    if n % group:
        group = n
    if group > 1:
        y = x.reshape(-1, group, c, h, w).var(1).add(MBSTD_EPS).sqrt().reshape(n // group, -1).mean(1)
        y = y.reshape(-1, 1, 1, 1, 1).expand(-1, group, 1, h, w).reshape(n, 1, h, w)
    else:
        y = x.new_zeros(n, 1, h, w)
    return torch.cat([x, y], dim=1)


class GNet(nn.Module):
    """pytorch_GAN_zoo's progressive generator at its final scale (its keywords; the scales its
    ``addScale`` added are ``depthOtherScales``). ``generationActivation``: ``"tanh"`` or None."""

    def __init__(self, dimLatent, depthScale0, depthOtherScales=(), leakyReluLeak=LEAK, normalization=True,
                 generationActivation=None, dimOutput=3, equalizedlR=True):
        super().__init__()
        if generationActivation not in (None, "tanh"):
            raise ValueError(f"generationActivation must be None or 'tanh', got {generationActivation!r}")
        self.z_dim, self.c_dim = int(dimLatent), 0
        self.normalization, self.leak = normalization, leakyReluLeak
        self.normalises_z = bool(normalization)  # pixel norm of z first: only its direction counts
        self.generationActivation = generationActivation
        depths = [depthScale0, *depthOtherScales]
        self.img_resolution = 4 * 2 ** (len(depths) - 1)
        self.formatLayer = _linear(dimLatent, 16 * depthScale0, equalizedlR)
        self.groupScale0 = nn.ModuleList([_conv(depthScale0, depthScale0, 3, equalizedlR, padding=1)])
        self.scaleLayers = nn.ModuleList(
            nn.ModuleList([_conv(a, b, 3, equalizedlR, padding=1), _conv(b, b, 3, equalizedlR, padding=1)])
            for a, b in zip(depths, depths[1:]))
        self.toRGBLayers = nn.ModuleList(_conv(d, dimOutput, 1, equalizedlR) for d in depths)

    def _act(self, x):
        x = F.leaky_relu(x, self.leak)
        return pixel_norm(x) if self.normalization else x

    def forward(self, z):
        x = pixel_norm(z) if self.normalization else z
        x = F.leaky_relu(self.formatLayer(x.flatten(1)), self.leak)
        # the official forward normalises here whatever `normalization` says
        x = pixel_norm(x.reshape(x.shape[0], -1, 4, 4))
        for layer in self.groupScale0:
            x = self._act(layer(x))
        for group in self.scaleLayers:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            for layer in group:
                x = self._act(layer(x))
        x = self.toRGBLayers[-1](x)
        return torch.tanh(x) if self.generationActivation == "tanh" else x


class DNet(nn.Module):
    """pytorch_GAN_zoo's progressive discriminator at its final scale; returns [N, sizeDecisionLayer]."""

    def __init__(self, depthScale0, depthOtherScales=(), leakyReluLeak=LEAK, sizeDecisionLayer=1,
                 miniBatchNormalization=False, dimInput=3, equalizedlR=True):
        super().__init__()
        self.leak, self.miniBatchNormalization = leakyReluLeak, miniBatchNormalization
        depths = [depthScale0, *depthOtherScales]
        self.decisionLayer = _linear(depthScale0, sizeDecisionLayer, equalizedlR)
        self.fromRGBLayers = nn.ModuleList(_conv(dimInput, d, 1, equalizedlR) for d in depths)
        self.groupScaleZero = nn.ModuleList([
            _conv(depthScale0 + int(miniBatchNormalization), depthScale0, 3, equalizedlR, padding=1),
            _linear(16 * depthScale0, depthScale0, equalizedlR)])
        self.scaleLayers = nn.ModuleList(
            nn.ModuleList([_conv(b, b, 3, equalizedlR, padding=1), _conv(b, a, 3, equalizedlR, padding=1)])
            for a, b in zip(depths, depths[1:]))

    def forward(self, x):
        x = F.leaky_relu(self.fromRGBLayers[-1](x), self.leak)
        for group in reversed(self.scaleLayers):
            for layer in group:
                x = F.leaky_relu(layer(x), self.leak)
            x = F.avg_pool2d(x, 2)
        if self.miniBatchNormalization:
            x = _ganzoo_mbstd(x)
        x = F.leaky_relu(self.groupScaleZero[0](x), self.leak)
        x = F.leaky_relu(self.groupScaleZero[1](x.flatten(1)), self.leak)
        return self.decisionLayer(x)


class DCGANGNet(nn.Module):
    """pytorch_GAN_zoo's DCGAN generator (``models/networks/DCGAN_nets.py`` GNet, its names).

    Its batch norms normalise with the batch's statistics, as the repo samples (it never puts
    its networks in eval mode, and the averaged generator's running statistics are never
    updated): an image depends on the others of its batch, as with the official code."""

    def __init__(self, dimLatentVector, dimOutput, dimModelG, depthModel=3, generationActivation="tanh"):
        super().__init__()
        if generationActivation not in (None, "tanh"):
            raise ValueError(f"generationActivation must be None or 'tanh', got {generationActivation!r}")
        self.z_dim, self.c_dim, self.generationActivation = int(dimLatentVector), 0, generationActivation
        self.normalises_z = False  # batch norm after the first layer, not a norm of z itself
        depth = dimModelG * 2 ** depthModel
        self.formatLayer = nn.ConvTranspose2d(dimLatentVector, depth, 4, 1, 0, bias=False)
        layers = [("batchNorm0", nn.BatchNorm2d(depth)), ("relu0", nn.ReLU())]
        for i in range(depthModel):
            layers += [(f"convTranspose{i + 1}", nn.ConvTranspose2d(depth, depth // 2, 4, 2, 1, bias=False)),
                       (f"batchNorm{i + 1}", nn.BatchNorm2d(depth // 2)), (f"relu{i + 1}", nn.ReLU())]
            depth //= 2
        layers.append(("outlayer", nn.ConvTranspose2d(dimModelG, dimOutput, 4, 2, 1, bias=False)))
        self.main = nn.Sequential(OrderedDict(layers))

    def forward(self, z):
        x = self.formatLayer(z.reshape(z.shape[0], -1, 1, 1))
        for layer in self.main:
            if isinstance(layer, nn.BatchNorm2d):  # batch statistics, running ones left alone
                x = F.batch_norm(x, None, None, layer.weight, layer.bias, training=True, eps=layer.eps)
            else:
                x = layer(x)
        return torch.tanh(x) if self.generationActivation == "tanh" else x


# --------------------------------------------------------------------------- genforce
class WScaled(nn.Module):
    """genforce's ConvBlock / DenseBlock parameters: ``weight`` (times gain / sqrt(fan_in) at run
    time) and ``bias``."""

    def __init__(self, shape, gain=math.sqrt(2.0), use_wscale=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(shape))
        self.bias = nn.Parameter(torch.zeros(shape[0]))
        self.wscale = gain / math.sqrt(math.prod(shape[1:])) if use_wscale else 1.0

    def conv(self, x, padding):
        return F.conv2d(x, self.weight * self.wscale, self.bias, padding=padding)

    def dense(self, x):
        return F.linear(x.flatten(1), self.weight * self.wscale, self.bias)


def _nf(res, fmaps_base, fmaps_max):
    return min(fmaps_base // res, fmaps_max)


class PGGANGenerator(nn.Module):
    """genforce's PGGAN generator (its keywords and names; at lod 0). Images in about [-1, 1]."""

    def __init__(self, resolution, z_space_dim=512, image_channels=3, final_tanh=False, use_wscale=True,
                 fmaps_base=GENFORCE_FMAPS_BASE, fmaps_max=GENFORCE_FMAPS_MAX):
        super().__init__()
        self.z_dim, self.c_dim, self.img_resolution = int(z_space_dim), 0, int(resolution)
        self.final_tanh = final_tanh
        self.normalises_z = True  # pixel norm of z first: only its direction counts
        self.register_buffer("lod", torch.zeros(()))
        self.num_blocks = int(math.log2(resolution)) - 1
        for block in range(self.num_blocks):
            res = 4 * 2 ** block
            nf = _nf(res, fmaps_base, fmaps_max)
            c_in = z_space_dim if block == 0 else _nf(res // 2, fmaps_base, fmaps_max)
            k = 4 if block == 0 else 3  # the first layer is TF's Dense, run as a 4x4 conv of the 1x1 latent
            self.add_module(f"layer{2 * block}", WScaled((nf, c_in, k, k), use_wscale=use_wscale))
            self.add_module(f"layer{2 * block + 1}", WScaled((nf, nf, 3, 3), use_wscale=use_wscale))
            self.add_module(f"output{block}", WScaled((image_channels, nf, 1, 1), gain=1.0, use_wscale=use_wscale))

    def forward(self, z):
        z = pixel_norm(z)
        x = z.reshape(z.shape[0], -1, 1, 1)
        for block in range(self.num_blocks):
            if block:
                x = F.interpolate(pixel_norm(x), scale_factor=2, mode="nearest")
                x = F.leaky_relu(getattr(self, f"layer{2 * block}").conv(x, 1), LEAK)
            else:
                x = F.leaky_relu(self.layer0.conv(pixel_norm(x), 3), LEAK)
            x = F.leaky_relu(getattr(self, f"layer{2 * block + 1}").conv(pixel_norm(x), 1), LEAK)
        image = getattr(self, f"output{self.num_blocks - 1}").conv(pixel_norm(x), 0)
        return torch.tanh(image) if self.final_tanh else image


def genforce_head(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last block of a genforce discriminator, ProGAN's and StyleGAN v1's alike: minibatch std,
    a 3x3 conv and two dense layers, named layer{2L}, layer{2L+1}, layer{2L+2} for L blocks."""
    last = net.num_blocks - 1
    if net.minibatch_std_group_size > 1:
        x = genforce_mbstd(x, net.minibatch_std_group_size)
    x = F.leaky_relu(getattr(net, f"layer{2 * last}").conv(x, 1), LEAK)
    x = F.leaky_relu(getattr(net, f"layer{2 * last + 1}").dense(x), LEAK)
    return getattr(net, f"layer{2 * last + 2}").dense(x)


def genforce_mbstd(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """genforce's (TF's) minibatch std: groups of min(G, N) strided across the batch, biased
    variance, one feature."""
    n, c, h, w = x.shape
    group = min(group_size, n)
    y = x.reshape(group, -1, c, h, w)
    y = (y - y.mean(0, keepdim=True)).square().mean(0).add(MBSTD_EPS).sqrt().mean(dim=[1, 2, 3], keepdim=True)
    return torch.cat([x, y.repeat(group, 1, h, w)], dim=1)


class PGGANDiscriminator(nn.Module):
    """genforce's PGGAN discriminator (its keywords and names; at lod 0); returns [N, 1]."""

    def __init__(self, resolution, image_channels=3, use_wscale=True, minibatch_std_group_size=16,
                 fmaps_base=GENFORCE_FMAPS_BASE, fmaps_max=GENFORCE_FMAPS_MAX):
        super().__init__()
        self.minibatch_std_group_size = minibatch_std_group_size
        self.register_buffer("lod", torch.zeros(()))
        self.num_blocks = int(math.log2(resolution)) - 1
        mbstd = int(minibatch_std_group_size > 1)
        for block in range(self.num_blocks):
            res = resolution // 2 ** block
            nf, nf_next = _nf(res, fmaps_base, fmaps_max), _nf(res // 2, fmaps_base, fmaps_max)
            self.add_module(f"input{block}", WScaled((nf, image_channels, 1, 1), use_wscale=use_wscale))
            if res > 4:
                self.add_module(f"layer{2 * block}", WScaled((nf, nf, 3, 3), use_wscale=use_wscale))
                self.add_module(f"layer{2 * block + 1}", WScaled((nf_next, nf, 3, 3), use_wscale=use_wscale))
            else:
                self.add_module(f"layer{2 * block}", WScaled((nf, nf + mbstd, 3, 3), use_wscale=use_wscale))
                self.add_module(f"layer{2 * block + 1}", WScaled((nf_next, nf * 16), use_wscale=use_wscale))
        self.add_module(f"layer{2 * self.num_blocks}", WScaled((1, nf_next), gain=1.0, use_wscale=use_wscale))

    def forward(self, image):
        x = F.leaky_relu(self.input0.conv(image, 0), LEAK)
        for block in range(self.num_blocks - 1):
            x = F.leaky_relu(getattr(self, f"layer{2 * block}").conv(x, 1), LEAK)
            x = F.avg_pool2d(F.leaky_relu(getattr(self, f"layer{2 * block + 1}").conv(x, 1), LEAK), 2)
        return genforce_head(self, x)


# --------------------------------------------------------------------------- reading
GANZOO_KEYS = ("formatLayer.module.weight", "groupScale0.0.module.weight", "toRGBLayers.0.module.weight")
GANZOO_DCGAN_KEYS = ("formatLayer.weight", "main.batchNorm0.weight", "main.outlayer.weight")
GENFORCE_KEYS = ("layer0.weight", "layer1.weight", "output0.weight", "lod")
GANZOO_ROLES = {"generator": "avgG", "critic": "netD"}
GENFORCE_ROLES = {"generator": "generator_smooth", "critic": "discriminator"}
# the losses whose generationActivation is tanh in pytorch_GAN_zoo's base_loss_criterions
GANZOO_TANH_LOSSES = ("MSE", "DCGAN")


def _has(state, keys) -> bool:
    return isinstance(state, Mapping) and all(k in state for k in keys)


def _is_ganzoo(obj) -> bool:
    return isinstance(obj, Mapping) and "config" in obj and _has(obj.get("netG"), GANZOO_KEYS)


def _is_ganzoo_dcgan(obj) -> bool:
    return isinstance(obj, Mapping) and "config" in obj and _has(obj.get("netG"), GANZOO_DCGAN_KEYS)


def _is_ganzoo_other(obj) -> bool:
    """A pytorch_GAN_zoo checkpoint (BaseGAN.save's keys) of another architecture (its StyleGAN, ...)."""
    return (isinstance(obj, Mapping) and all(k in obj for k in ("config", "netG", "netD", "avgG"))
            and not _is_ganzoo(obj) and not _is_ganzoo_dcgan(obj))


def _is_genforce(obj) -> bool:
    return isinstance(obj, Mapping) and any(_has(obj.get(k), GENFORCE_KEYS) and "layer0.weight" in obj[k]
                                            and obj[k]["layer0.weight"].ndim == 4
                                            for k in ("generator", "generator_smooth"))


def sniff(obj, path) -> bool:
    return _is_ganzoo(obj) or _is_ganzoo_dcgan(obj) or _is_genforce(obj) or _is_ganzoo_other(obj)


def _config(obj) -> dict:
    config = obj["config"]
    return dict(config) if isinstance(config, Mapping) else vars(config)


def _pick(obj, path, role, key, defaults, store) -> tuple[str, dict]:
    name = key or defaults[role]
    if not isinstance(obj.get(name), Mapping):
        found = ", ".join(str(k) for k, v in obj.items() if isinstance(v, Mapping)) or "none"
        raise ValueError(f"{str(path)!r} is a {store} checkpoint without {name!r} (it has {found}); "
                         "pass key= naming the network (source.key=...)")
    return name, {k: v.detach().float() for k, v in obj[name].items()}


def _read_ganzoo(obj, path, role, key):
    config = _config(obj)
    name, state = _pick(obj, path, role, key, GANZOO_ROLES, "pytorch_GAN_zoo PGAN")
    if config.get("alpha", 0):
        raise ValueError(f"{str(path)!r} was saved while blending in a new scale (alpha={config['alpha']}); "
                         "fastmine builds a PGAN at its final scale: use a checkpoint from the end of a scale")
    if config.get("categoryVectorDim", 0):
        raise ValueError(f"{str(path)!r} is a conditional PGAN (categoryVectorDim={config['categoryVectorDim']}); "
                         "fastmine builds the unconditional one")
    common = dict(depthScale0=int(config["depthScale0"]),
                  depthOtherScales=[int(d) for d in config["depthOtherScales"]],
                  leakyReluLeak=float(config.get("leakyReluLeak", LEAK)),
                  equalizedlR=bool(config.get("equalizedlR", True)))
    if role == "generator":
        kwargs = dict(dimLatent=int(config["latentVectorDim"]),
                      normalization=bool(config.get("perChannelNormalization", True)),
                      generationActivation="tanh" if config.get("lossCriterion") in GANZOO_TANH_LOSSES else None,
                      dimOutput=int(config.get("dimOutput", 3)), **common)
        return "pggan_ganzoo", kwargs, state, name
    kwargs = dict(miniBatchNormalization=bool(config.get("miniBatchStdDev", False)),
                  dimInput=int(config.get("dimOutput", 3)), **common)
    return "pggan_ganzoo", kwargs, state, name


def _read_genforce(obj, path, role, key):
    name, state = _pick(obj, path, role, key, GENFORCE_ROLES, "genforce PGGAN")
    if float(state.get("lod", torch.zeros(()))) != 0:
        raise ValueError(f"{str(path)!r}: {name} is at lod={float(state['lod'])} (mid progressive growing); "
                         "fastmine builds a PGGAN at its final resolution (lod 0)")
    if role == "generator":
        n_out = sum(1 for k in state if k.startswith("output") and k.endswith(".weight"))
        resolution = 4 * 2 ** (n_out - 1)
        w0 = state["layer0.weight"]
        widths = {4 * 2 ** b: int(state[f"layer{2 * b + 1}.weight"].shape[0]) for b in range(n_out)}
        kwargs = dict(resolution=resolution, z_space_dim=int(w0.shape[1]),
                      image_channels=int(state["output0.weight"].shape[0]), **fmaps_for(widths, path))
        return "pggan_genforce", kwargs, state, name
    n_in = sum(1 for k in state if k.startswith("input") and k.endswith(".weight"))
    resolution = 4 * 2 ** (n_in - 1)
    widths = {resolution // 2 ** b: int(state[f"input{b}.weight"].shape[0]) for b in range(n_in)}
    last = state[f"layer{2 * (n_in - 1)}.weight"]
    kwargs = dict(resolution=resolution, image_channels=int(state["input0.weight"].shape[1]),
                  minibatch_std_group_size=16 if last.shape[1] > last.shape[0] else 0, **fmaps_for(widths, path))
    return "pggan_genforce", kwargs, state, name


def fmaps_for(widths: dict, path, builder: str = "genforce's PGGAN") -> dict:
    """genforce's fmaps_base and fmaps_max that give these widths {resolution: channels} (its
    16384 and 512 when they do)."""
    fmaps_max = max(widths.values())
    for base in sorted({GENFORCE_FMAPS_BASE, *(w * r for r, w in widths.items())}):
        if all(_nf(r, base, fmaps_max) == w for r, w in widths.items()):
            return dict(fmaps_base=base, fmaps_max=fmaps_max)
    raise ValueError(f"{str(path)!r}: the widths per resolution {widths} are not min(fmaps_base // res, fmaps_max) "
                     f"for any fmaps_base, which {builder} builds")


def read(obj, path, role, key) -> tuple[str, dict, dict, str]:
    if _is_ganzoo_other(obj):
        keys = list(obj["netG"]) if isinstance(obj["netG"], Mapping) else []
        raise ValueError(f"{str(path)!r} is a pytorch_GAN_zoo checkpoint of an architecture fastmine does not build "
                         f"(netG keys: {', '.join(map(str, keys[:6]))}{', ...' if len(keys) > 6 else ''}); fastmine "
                         "builds its PGAN (formatLayer.module.weight, groupScale0, scaleLayers, toRGBLayers) and DCGAN "
                         "(formatLayer.weight, main.*)")
    if _is_ganzoo_dcgan(obj):
        return _read_ganzoo_dcgan(obj, path, role, key)
    return (_read_ganzoo if _is_ganzoo(obj) else _read_genforce)(obj, path, role, key)


def _read_ganzoo_dcgan(obj, path, role, key):
    if role == "critic":
        raise ValueError(f"{str(path)!r} is a pytorch_GAN_zoo DCGAN checkpoint: fastmine builds its generator, not "
                         "its discriminator; pass another critic (source.critic=...) or none to start from a fresh one")
    config = _config(obj)
    name, state = _pick(obj, path, role, key, GANZOO_ROLES, "pytorch_GAN_zoo DCGAN")
    if config.get("categoryVectorDim", 0):
        raise ValueError(f"{str(path)!r} is a conditional DCGAN (categoryVectorDim={config['categoryVectorDim']}); "
                         "fastmine builds the unconditional one")
    kwargs = dict(dimLatentVector=int(config["latentVectorDim"]), dimOutput=int(config.get("dimOutput", 3)),
                  dimModelG=int(config["dimG"]), depthModel=int(config["depth"]),
                  generationActivation="tanh" if config.get("lossCriterion") in GANZOO_TANH_LOSSES else None)
    return "dcgan_ganzoo", kwargs, state, name


GENERATORS = {"pggan_ganzoo": GNet, "pggan_genforce": PGGANGenerator, "dcgan_ganzoo": DCGANGNet}
DISCRIMINATORS = {"pggan_ganzoo": DNet, "pggan_genforce": PGGANDiscriminator}
