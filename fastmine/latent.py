"""Latent specs: the ordered names, shapes and priors a generator takes as input."""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping

import torch

PRIORS = ("normal", "uniform", "none")


@dataclass(frozen=True)
class Latent:
    """One latent input: its per-sample shape and its prior.

    ``prior="none"`` marks an input with no distribution to draw from (e.g. a class
    embedding): a miner must produce it, it cannot be sampled.

    ``sphere=True`` marks an input the generator normalises to its direction (ProGAN's pixel
    norm of z): its length is free, so fitting to inverted latents puts them at the prior's
    typical radius sqrt(numel) first (:meth:`fastmine.inversion.Inversion.flat`).
    """

    shape: tuple
    prior: str = "normal"
    sphere: bool = False

    def __post_init__(self):
        shape = (self.shape,) if isinstance(self.shape, int) else tuple(int(s) for s in self.shape)
        object.__setattr__(self, "shape", shape)
        if self.prior not in PRIORS:
            raise ValueError(f"unknown prior {self.prior!r}; use one of {', '.join(PRIORS)}")
        if not shape or any(s <= 0 for s in shape):
            raise ValueError(f"latent shape must be non-empty and positive, got {shape}")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class LatentSpec(OrderedDict):
    """Ordered mapping name -> :class:`Latent`, e.g. ``LatentSpec(z=((128,), "normal"))``."""

    def __init__(self, spec: Mapping | None = None, **latents):
        super().__init__()
        items = list((spec or {}).items()) + list(latents.items())
        for name, latent in items:
            if isinstance(latent, Latent):
                self[name] = latent
            elif isinstance(latent, int):
                self[name] = Latent((latent,))
            elif isinstance(latent, Mapping):
                self[name] = Latent(tuple(latent["shape"]), latent.get("prior", "normal"),
                                    bool(latent.get("sphere", False)))
            else:
                shape, prior = latent
                self[name] = Latent(shape, prior)
        if not self:
            raise ValueError("a latent spec needs at least one latent")

    def __reduce__(self):  # copy/deepcopy/pickle rebuild through __init__, which refuses an empty spec
        return (self.__class__, (dict(self),))

    @classmethod
    def single(cls, dim: int, prior: str = "normal", name: str = "z") -> "LatentSpec":
        return cls({name: Latent((dim,), prior)})

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> dict:
        """Draw n latents from each prior (refuses latents whose prior is 'none')."""
        out = {}
        for name, latent in self.items():
            if latent.prior == "none":
                raise ValueError(
                    f"latent {name!r} has prior 'none' and cannot be sampled; mine it with a miner head"
                )
            out[name] = draw(latent.prior, (n, *latent.shape), generator, device)
        return out

    def to_dict(self) -> dict:
        return {name: {"shape": list(latent.shape), "prior": latent.prior,
                       **({"sphere": True} if latent.sphere else {})} for name, latent in self.items()}

    @classmethod
    def from_dict(cls, d: Mapping) -> "LatentSpec":
        return cls(d)


def draw(dist: str, shape, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    if dist == "normal":
        return torch.randn(shape, generator=generator, device=device)
    if dist == "uniform":
        return torch.rand(shape, generator=generator, device=device)
    raise ValueError(f"cannot draw from distribution {dist!r}; use 'normal' or 'uniform'")


def transport(u: torch.Tensor, src: str, dst: str) -> torch.Tensor:
    """Map seed samples of distribution ``src`` onto ``dst`` elementwise (inverse CDF).

    This lets a residual miner start exactly at the generator's prior even when its seed
    distribution differs (uniform seeds of GAN reprogramming, normal prior of the source).
    """
    if src == dst or dst == "none":
        return u
    if src == "uniform" and dst == "normal":
        eps = 1e-6
        return math.sqrt(2.0) * torch.erfinv(2.0 * u.clamp(eps, 1 - eps) - 1.0)
    if src == "normal" and dst == "uniform":
        return 0.5 * (1.0 + torch.erf(u / math.sqrt(2.0)))
    raise ValueError(f"no transport from {src!r} to {dst!r}")
