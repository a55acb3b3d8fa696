"""The project's own networks: DCGAN-style for square images, MLPs for vector data.

Every network is rebuilt from a plain ``arch`` dict (stored in checkpoints' metadata), so a
saved file loads without pickled code.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import zoo


def _check_size(image_size: int):
    if image_size < 8 or image_size > 256 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two in [8, 256], got {image_size}")
    return int(math.log2(image_size)) - 2  # number of 2x resolution steps from 4x4


class DCGANGenerator(nn.Module):
    """z -> 4x4 feature map -> transposed-conv up-blocks -> tanh image in [-1, 1]."""

    def __init__(self, latent_dim=64, image_size=16, channels=1, width=64, norm="batch"):
        super().__init__()
        n_up = _check_size(image_size)
        widths = [width * 2 ** (n_up - 1 - i) for i in range(n_up)]  # e.g. 128, 64 for 16px
        self.latent_dim, self.start_width = latent_dim, widths[0]
        self.fc = nn.Linear(latent_dim, widths[0] * 16)
        blocks = [nn.Sequential(_norm(norm, widths[0]), nn.ReLU())]
        for i in range(n_up):
            last = i == n_up - 1
            out = channels if last else widths[i + 1]
            layers = [nn.ConvTranspose2d(widths[i], out, 4, 2, 1)]
            layers += [nn.Tanh()] if last else [_norm(norm, out), nn.ReLU()]
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, z):
        x = self.fc(z.flatten(1)).view(z.shape[0], self.start_width, 4, 4)
        for block in self.blocks:
            x = block(x)
        return x


class DCGANCritic(nn.Module):
    """Strided convs down to 4x4, then a linear score. No batch norm (see gradient penalty)."""

    rows_independent = True  # each score depends on its own image alone (see rows_independent)

    def __init__(self, image_size=16, channels=1, width=64):
        super().__init__()
        n_down = _check_size(image_size)
        blocks, c_in = [], channels
        for i in range(n_down):
            c_out = width * 2**i
            blocks.append(nn.Sequential(nn.Conv2d(c_in, c_out, 4, 2, 1), nn.LeakyReLU(0.2)))
            c_in = c_out
        blocks.append(nn.Sequential(nn.Flatten(), nn.Linear(c_in * 16, 1)))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x.squeeze(1)


class MLPGenerator(nn.Module):
    def __init__(self, latent_dim=2, out_dim=2, width=64, depth=3):
        super().__init__()
        self.latent_dim = latent_dim
        self.net = _mlp(latent_dim, width, out_dim, depth, nn.ReLU)

    def forward(self, z):
        return self.net(z.flatten(1))


class MLPCritic(nn.Module):
    rows_independent = True

    def __init__(self, in_dim=2, width=64, depth=3):
        super().__init__()
        self.blocks = _mlp(in_dim, width, 1, depth, lambda: nn.LeakyReLU(0.2))  # FreezeD freezes the leading ones

    def forward(self, x):
        return self.blocks(x.flatten(1)).squeeze(1)


def _mlp(d_in, width, d_out, depth, act):
    layers, d = [], d_in
    for _ in range(depth - 1):
        layers.append(nn.Sequential(nn.Linear(d, width), act()))
        d = width
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


def _norm(kind, channels):
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown generator norm {kind!r}; use 'batch' or 'none'")


def rows_independent(critic: nn.Module) -> bool:
    """Whether the critic's score of each row depends on that row alone, so that real and fake
    images may share one batch (the trainer's joint pass, ``perf.joint_critic``).

    The critic declares it (a ``rows_independent`` attribute; a critic that says nothing is taken
    to mix rows), and no layer inside may mix the rows of a batch: batch norm (its batch
    statistics in training) or a layer declaring ``mixes_rows`` (StyleGAN's minibatch std)."""
    if not getattr(critic, "rows_independent", False):
        return False
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) or getattr(m, "mixes_rows", False)
                   for m in critic.modules())


def build_generator(arch: dict) -> nn.Module:
    """Build a generator from an arch dict such as ``{"type": "dcgan", "latent_dim": 64, ...}``, or a
    pretrained family's (``{"family": "stylegan2", "kwargs": {...}, "latent": "w+"}``, :mod:`fastmine.zoo`)."""
    if "family" in arch:
        return zoo.build_source(arch)
    kind, kwargs = _split(arch)
    if kind == "dcgan":
        return DCGANGenerator(**kwargs)
    if kind == "mlp":
        return MLPGenerator(**kwargs)
    raise ValueError(f"unknown generator type {kind!r}; use 'dcgan' or 'mlp'")


def build_critic(arch: dict) -> nn.Module:
    if "family" in arch:
        return zoo.build_critic(arch)
    kind, kwargs = _split(arch)
    if kind == "dcgan":
        return DCGANCritic(**kwargs)
    if kind == "mlp":
        return MLPCritic(**kwargs)
    raise ValueError(f"unknown critic type {kind!r}; use 'dcgan' or 'mlp'")


def _split(arch):
    arch = dict(arch)
    return arch.pop("type"), arch


def reinitialize(module: nn.Module, seed: int | None = None):
    """Fresh default init of every layer (the from-scratch baseline)."""
    if seed is not None:
        torch.manual_seed(seed)
    for m in module.modules():
        if hasattr(m, "reset_parameters") and m is not module:
            m.reset_parameters()
    return module
