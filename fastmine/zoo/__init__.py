"""Pretrained generator families fastmine builds itself: StyleGAN2(-ADA), StyleGAN3 and the zoo's
families (:data:`READERS`: Progressive GAN and pytorch_GAN_zoo's DCGAN in :mod:`.pggan`, StyleGAN v1
in :mod:`.stylegan1`, PyTorch-StudioGAN's DCGAN/SNGAN/SAGAN/BigGAN/ContraGAN/ReACGAN in :mod:`.studiogan`,
Mimicry's SNGAN/SSGAN/cGAN-PD/InfoMax-GAN in :mod:`.mimicry`).

Each zoo family is one module holding its networks and a reader: ``sniff(obj, path)`` says whether
a loaded checkpoint object is one of its files, ``read(obj, path, role, key)`` gives (family,
constructor kwargs, state dict, where in the file) for the generator or the critic.

The networks (:mod:`.stylegan2`, :mod:`.stylegan3`) are fastmine's own plain-PyTorch code with
the official constructor keywords and parameter names, so the tensors of an NVIDIA network
pickle, a rosinality checkpoint (through :mod:`.rosinality`) or a converted file load into them
as they are, and no code from the file is needed or run.

:class:`StyleGANSource` is such a generator as a mining source: it chooses the latent space the
miner works in.

- ``latent="z"``: z ~ N(0, I) through the frozen mapping network (with ``truncation_psi``), plus a
  class input ``c`` for a conditional network, mined as a continuous vector (MineGAN++ §4.1's M^c):
  the mapping embeds it linearly, so any point between one-hot classes is a valid input.
- ``latent="w"``: one w for every synthesis layer; ``"w+"``: one per layer, ``[num_ws, w_dim]``.
  w is given in *standardised* coordinates x: ``w = w_avg + w_std * x`` with the network's own
  ``w_avg`` and the per-dimension standard deviation of its mapping's outputs (measured once on
  10,000 samples when the source is built, stored with it). A miner's N(0, I)-like output then
  lands in the region the mapping produces: the paper's N(0, 0.01) init starts at ``w_avg`` (the
  average image, not a point off the manifold), the residual init at a Gaussian fit of the w
  distribution, and the prior regulariser of inversion pulls toward ``w_avg`` on the scale of w.
  ``to_w(x)`` gives raw w (e.g. to compare with another tool's projections).
- ``noise=R`` (StyleGAN2) adds the noise inputs of every synthesis layer up to R px as latents
  ``noise_<block>_<layer>`` of shape [1, R, R] with an N(0, I) prior, in place of the network's
  fixed noise. With ``latent="z"`` this is MineGAN's StyleGAN setting (Appendix A): one miner
  head on the mapping side (z) and heads on the synthesis side (the noise maps; the paper's
  synthesis miner outputs one 32x32 map), all fed by the same seed.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import register_choices
from ..latent import Latent, LatentSpec
from . import mimicry, pggan, studiogan, stylegan1, stylegan2, stylegan3
from .stylegan2 import FP16_LAYERS, set_fp16_layers  # noqa: F401 (set_fp16_layers: used by the trainer)

# the zoo's readers, tried in order on a loaded checkpoint by files.read_weights
READERS = {"pggan": pggan, "stylegan1": stylegan1, "studiogan": studiogan, "mimicry": mimicry}
GENERATORS = {"stylegan2": stylegan2.Generator, "stylegan3": stylegan3.Generator, **stylegan1.GENERATORS}
# critics that take images alone (no class input); their first output is the score
ZOO_CRITICS = (*pggan.DISCRIMINATORS, *stylegan1.DISCRIMINATORS)
# generators fed z (and a class vector c when conditional) by ZSource: no mapping network whose w could be mined
Z_GENERATORS = {**pggan.GENERATORS, "studiogan": studiogan.Generator, "mimicry": mimicry.Generator}
DISCRIMINATORS = {"stylegan2": stylegan2.Discriminator, "stylegan3": stylegan2.Discriminator,
                  **pggan.DISCRIMINATORS, **stylegan1.DISCRIMINATORS,
                  "studiogan": studiogan.Discriminator, "mimicry": mimicry.Discriminator}
LATENTS = register_choices("source.latent", ("z", "w", "w+"), optional=True)
NOISE_MODES = register_choices("source.noise_mode", ("const", "random", "none"), optional=True)
register_choices("perf.fp16_layers", FP16_LAYERS)
W_STATS_SAMPLES = 10_000  # mapping samples behind w_std: its relative standard error is ~1/sqrt(2n) = 0.7 %


def family_of(state: dict) -> str:
    """Which family a generator state dict in official names belongs to."""
    if "synthesis.input.affine.weight" in state:
        return "stylegan3"
    if "synthesis.b4.const" in state:
        return "stylegan2"
    raise ValueError("the tensors are not a StyleGAN2/3 generator in official names (no 'synthesis.b4.const' "
                     "or 'synthesis.input.affine.weight')")


def _check_family(family: str, table: dict) -> type:
    if family not in table:
        raise ValueError(f"unknown generator family {family!r}; fastmine builds {', '.join(table)}")
    return table[family]


class StyleGANSource(nn.Module):
    """A StyleGAN (v1, 2, 3) generator that takes fastmine latents (see the module docstring).

    ``kwargs``: the official constructor keywords. ``noise_mode``: ``const`` (the network's
    fixed noise buffers, deterministic, the default), ``random`` or ``none``.
    """

    needs_calibration = True  # w_std, measured once the weights are in

    def __init__(self, family: str, kwargs: dict, latent: str = "z", truncation_psi: float = 1.0,
                 truncation_cutoff: int | None = None, noise_mode: str = "const", noise: int = 0):
        super().__init__()
        if latent not in LATENTS:
            raise ValueError(f"unknown latent space {latent!r}; use one of {', '.join(LATENTS)} (source.latent)")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"unknown noise_mode {noise_mode!r}; use one of {', '.join(NOISE_MODES)}")
        if not 0.0 <= float(truncation_psi) <= 1.0:
            raise ValueError(f"truncation_psi must be in [0, 1], got {truncation_psi}")
        self.net = _check_family(family, GENERATORS)(**kwargs)
        self.family, self.kwargs, self.latent = family, dict(kwargs), latent
        self.truncation_psi, self.truncation_cutoff = float(truncation_psi), truncation_cutoff
        self.noise_mode = noise_mode
        self.register_buffer("w_std", torch.ones(self.net.w_dim))
        self.noise = int(noise)
        # mined noise inputs: latent name -> layer (a plain dict: the layers are registered in self.net)
        self._noise_layers = {}
        if self.noise:
            if family != "stylegan2":
                raise ValueError(f"{family} has no noise inputs to mine; source.noise applies to StyleGAN2")
            for name, layer in self.net.synthesis.named_modules():
                if isinstance(layer, stylegan2.SynthesisLayer) and layer.use_noise and layer.resolution <= self.noise:
                    key = "noise_" + name.replace(".", "_")
                    self._noise_layers[key] = layer
            if not self._noise_layers:
                raise ValueError(f"source.noise={noise}: no noise input at {noise} px or below (the first is at 4 px)")

    def arch(self) -> dict:
        """The arch dict that rebuilds this source (stored in fastmine model files)."""
        return {"family": self.family, "kwargs": self.kwargs, "latent": self.latent,
                "truncation_psi": self.truncation_psi, "truncation_cutoff": self.truncation_cutoff,
                "noise_mode": self.noise_mode, "noise": self.noise}

    @property
    def latent_spec(self) -> LatentSpec:
        g = self.net
        if self.latent == "z":
            spec = {"z": ((g.z_dim,), "normal")}
            if g.c_dim:
                spec["c"] = ((g.c_dim,), "none")
        else:
            spec = {"w": ((g.w_dim,) if self.latent == "w" else (g.num_ws, g.w_dim), "normal")}
        for key, layer in self._noise_layers.items():
            spec[key] = ((1, layer.resolution, layer.resolution), "normal")
        return LatentSpec(spec)

    @torch.no_grad()
    def calibrate(self, n: int = W_STATS_SAMPLES, seed: int = 0, batch: int = 1000):
        """Measure ``w_std`` from n mapping samples (classes drawn uniformly when conditional)."""
        g = self.net
        gen = torch.Generator().manual_seed(seed)
        device = self.w_std.device
        total = torch.zeros(g.w_dim, dtype=torch.float64, device=device)
        total_sq = torch.zeros_like(total)
        for i in range(0, n, batch):
            m = min(batch, n - i)
            z = torch.randn(m, g.z_dim, generator=gen).to(device)
            c = None
            if g.c_dim:
                c = nn.functional.one_hot(torch.randint(g.c_dim, (m,), generator=gen), g.c_dim).float().to(device)
            w = g.mapping(z, c)[:, 0].double()
            total += w.sum(0)
            total_sq += (w * w).sum(0)
        mean = total / n
        self.w_std.copy_((total_sq / n - mean * mean).clamp_min(1e-12).sqrt().float())
        return self

    def to_w(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised w (or w+) -> the network's w."""
        return self.net.mapping.w_avg + self.w_std * x

    def ws(self, z=None, w=None, c=None) -> torch.Tensor:
        """The per-layer styles [N, num_ws, w_dim] the synthesis network takes."""
        g = self.net
        if self.latent == "z":
            return g.mapping(z, c, truncation_psi=self.truncation_psi, truncation_cutoff=self.truncation_cutoff)
        ws = self.to_w(w)
        if self.latent == "w":
            ws = ws.unsqueeze(1).expand(-1, g.num_ws, -1)
        if self.truncation_psi != 1:
            ws = stylegan2.truncate(ws, g.mapping.w_avg, self.truncation_psi, self.truncation_cutoff)
        return ws

    def forward(self, *args, **latents):
        """Latents by name (``z`` and ``c``, or ``w``), or the only one positionally."""
        if args:
            (latents[next(iter(self.latent_spec))],) = args
        for key, layer in self._noise_layers.items():
            layer.mined_noise = latents.pop(key)
        try:
            return self.net.synthesis(self.ws(**latents), noise_mode=self.noise_mode)
        finally:
            for layer in self._noise_layers.values():
                layer.mined_noise = None


class ZSource(nn.Module):
    """A zoo generator fed z ~ N(0, I) (ProGAN, DCGAN, StudioGAN, Mimicry): ``net(z)`` -> images.

    A class-conditional network (one declaring ``c_dim`` > 0) also takes a class vector ``c`` over
    its classes with no prior, mined by a miner head (MineGAN++ §4.1's M^c) and fed as
    ``net(z, c)``: the networks use the label linearly (an embedding, or one-hot affine inputs),
    so a one-hot c is the label and any point between classes is a valid input.
    """

    needs_calibration = False

    def __init__(self, family: str, kwargs: dict, latent: str = "z", **options):
        super().__init__()
        self.net = _check_family(family, Z_GENERATORS)(**kwargs)
        self.family, self.kwargs, self.latent = family, dict(kwargs), latent
        self.c_dim = getattr(self.net, "c_dim", 0)
        if latent != "z" or options:
            chosen = ", ".join([*(["latent"] if latent != "z" else []), *options])
            spaces = "z and its class vector c" if self.c_dim else "z only"
            raise ValueError(f"a {family} generator is mined in {spaces}: leave {chosen} unset (source.latent, "
                             "truncation and noise settings choose how a StyleGAN source is mined)")

    def arch(self) -> dict:
        return {"family": self.family, "kwargs": self.kwargs, "latent": self.latent}

    @property
    def latent_spec(self) -> LatentSpec:
        # a net that pixel-normalises z (ProGAN) says so; the others (StudioGAN, Mimicry) take z as drawn
        spec = {"z": Latent((self.net.z_dim,), "normal", sphere=getattr(self.net, "normalises_z", False))}
        if self.c_dim:
            spec["c"] = ((self.c_dim,), "none")
        return LatentSpec(spec)

    def forward(self, *args, **latents):
        """Latents by name (``z``, and ``c`` when conditional), or z alone positionally."""
        if args:
            (latents["z"],) = args
        return self.net(latents["z"], latents["c"]) if self.c_dim else self.net(latents["z"])


class StyleGANCritic(nn.Module):
    """A StyleGAN2 or zoo discriminator as a fastmine critic: images -> one score per image.

    A conditional discriminator scores every image against the class vector ``c`` (a buffer;
    default the mean of the one-hot classes, i.e. no class preferred).

    Its minibatch-standard-deviation layer feeds each image's score with a statistic of the
    other images of its group (``mbstd_group_size``, 4 by default), so the gradient of one
    score reaches every image of the group: WGAN-GP's penalty on interpolates, taken as the
    gradient of the summed scores, then measures each image's slope plus its group's cross
    terms rather than a per-sample slope. Build with ``mbstd_group_size=1`` (the statistic is
    then zero and constant) for a strictly per-sample penalty.
    """

    # declared independent; fastmine.nets.rows_independent still finds a minibatch-std layer of
    # groups larger than one inside and then scores real and fake images apart
    rows_independent = True

    def __init__(self, family: str, kwargs: dict):
        super().__init__()
        self.net = _check_family(family, DISCRIMINATORS)(**kwargs)
        self.family, self.kwargs = family, dict(kwargs)
        c_dim = getattr(self.net, "c_dim", 0)
        self.register_buffer("c", torch.full((c_dim,), 1.0 / c_dim) if c_dim else torch.zeros(0))

    def arch(self) -> dict:
        return {"family": self.family, "kwargs": self.kwargs}

    def forward(self, x):
        if self.family in ZOO_CRITICS:  # these critics take images alone; their first output is the score
            return self.net(x)[:, 0]
        c = self.c.expand(x.shape[0], -1) if self.c.numel() else None
        return self.net(x, c).reshape(x.shape[0])  # StyleGAN2's [N, 1], StudioGAN's and Mimicry's [N]


def make_source(family: str, kwargs: dict, **options) -> nn.Module:
    """The mining source of a family: a :class:`ZSource` or a :class:`StyleGANSource` (weights still to be loaded)."""
    return (ZSource if family in Z_GENERATORS else StyleGANSource)(family, kwargs, **options)


def build_source(arch: dict) -> nn.Module:
    """The source an arch dict describes (weights still to be loaded)."""
    arch = dict(arch)
    return make_source(arch.pop("family"), arch.pop("kwargs"), **arch)


def build_critic(arch: dict) -> StyleGANCritic:
    return StyleGANCritic(arch["family"], arch["kwargs"])
