"""Generator adapters and samplers: S(u) of the one trainer, for a single generator.

Reading and writing them as files is :mod:`fastmine.files`; the multi-generator and fused
samplers are in :mod:`fastmine.multi` and :mod:`fastmine.fusion`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import torch
from torch import nn

from .latent import LatentSpec, draw


class GeneratorAdapter(nn.Module):
    """Wraps any generator ``nn.Module`` and declares its latent inputs.

    ``call(module, latents)`` maps the dict of latents to the module's call; the default
    passes the only latent positionally, or all of them by keyword. Output: images NCHW
    in [-1, 1] or vectors [N, d]. A frozen adapter keeps its module in eval mode with
    ``requires_grad=False`` yet lets gradients flow through it to its inputs.
    """

    def __init__(self, module: nn.Module, latent_spec, call=None, build: dict | None = None, frozen=True):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"generator must be an nn.Module, got {type(module).__name__}")
        self.module = module
        self.latent_spec = LatentSpec(latent_spec)
        self.call = call
        self.build = build  # how to rebuild the module when exporting; None = user passes it at load
        self.frozen = False
        self.freeze(frozen)

    def freeze(self, frozen: bool = True):
        self.frozen = frozen
        self.module.requires_grad_(not frozen)
        self.module.train(not frozen and self.training)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:  # a frozen generator's batch-norm statistics must not move
            self.module.eval()
        return self

    def forward(self, latents):
        if torch.is_tensor(latents):
            if len(self.latent_spec) != 1:
                raise ValueError(f"generator takes latents {list(self.latent_spec)}; pass a dict")
            latents = {next(iter(self.latent_spec)): latents}
        missing = set(self.latent_spec) - set(latents)
        if missing:
            raise ValueError(f"missing latents {sorted(missing)}; the generator takes {list(self.latent_spec)}")
        for name, latent in self.latent_spec.items():
            got = tuple(latents[name].shape[1:])
            if got != latent.shape:
                raise ValueError(
                    f"latent {name!r} has shape {got} per sample but the generator expects {latent.shape}: "
                    "the miner's output size must match the generator's latent size"
                )
        if self.call is not None:
            return self.call(self.module, latents)
        if len(self.latent_spec) == 1:
            return self.module(next(iter(latents.values())))
        return self.module(**latents)


class Sampler(nn.Module):
    """S(u) of the one trainer: ``generator(miner(u))``, or ``generator(z)`` with z from its prior.

    ``miner`` may be a fastmine :class:`Miner` or any module mapping seeds [N, seed_dim] to a
    latent tensor (single-latent generators) or a dict of latents.
    """

    def __init__(self, generator: GeneratorAdapter, miner: nn.Module | None = None, seed_dim=None, seed_dist=None):
        super().__init__()
        self.generator = generator
        self.miner = miner
        if miner is not None:
            self.seed_dim = int(seed_dim or getattr(miner, "seed_dim", 0) or 0)
            self.seed_dist = seed_dist or getattr(miner, "seed_dist", "normal")
            if not self.seed_dim:
                raise ValueError("a custom miner needs seed_dim (its input size)")

    def draw_seeds(self, n: int, generator: torch.Generator | None = None, device=None):
        if self.miner is None:
            return self.generator.latent_spec.sample(n, generator, device)
        return draw(self.seed_dist, (n, self.seed_dim), generator, device)

    def latents(self, seeds):
        if self.miner is None:
            return seeds
        out = self.miner(seeds)
        if torch.is_tensor(out):
            names = list(self.generator.latent_spec)
            if len(names) != 1:
                raise ValueError(f"the miner returned one tensor but the generator takes {names}")
            out = {names[0]: out}
        return out

    def forward(self, seeds):
        return self.generator(self.latents(seeds))

    def sample(self, n: int, seed: int = 0, device=None, batch_size: int = 1024) -> torch.Tensor:
        """n samples from a fixed seed, in eval mode (the same seed gives the same samples)."""
        return seeded_sample(self, n, seed, device or _device_of(self), batch_size)


class SamplerProtocol(Protocol):
    """S(u) as the one trainer uses it: an ``nn.Module`` with

    - ``draw_seeds(n, generator, device) -> seeds``: n seeds from the sampler's seed distribution;
    - ``forward(seeds) -> samples``: images NCHW in [-1, 1] or vectors [N, d], what the critic sees.

    Optional hooks, each with a default when absent (:class:`SamplerHooks`):

    - ``bind_critic(critic, all_reduce)``: the sampler selects among candidates with the critic
      (the multi-generator sampler); ``all_reduce`` sums its counts over processes (None: one);
    - ``visible(samples)``: what a picture shows (the fused and labelled samplers drop the label
      channels their critic sees); default: the samples themselves;
    - ``generator``: the generator module inside (its ``frozen`` flag leaves it out of
      checkpoints; regularizers run only while it trains); default: the sampler itself.

    :func:`check_sampler` checks a sampler against it once, when a run is prepared.
    """

    def draw_seeds(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor: ...

    def forward(self, seeds) -> torch.Tensor: ...


REQUIRED = ("draw_seeds", "forward")  # SamplerProtocol's members


@dataclass(frozen=True)
class SamplerHooks:
    """A checked sampler's optional hooks, absent ones filled with their defaults."""
    generator: nn.Module
    visible: Callable
    bind_critic: Callable | None = None


def check_sampler(sampler) -> SamplerHooks:
    """``sampler``'s hooks, after checking it has what :class:`SamplerProtocol` requires: a
    one-line error naming what is missing otherwise."""
    if not isinstance(sampler, nn.Module):
        raise TypeError(f"the sampler must be an nn.Module with {' and '.join(REQUIRED)} (fastmine.samplers."
                        f"SamplerProtocol), got {type(sampler).__name__}")
    defined = {"draw_seeds": callable(getattr(sampler, "draw_seeds", None)),
               "forward": type(sampler).forward is not nn.Module.forward}
    missing = [name for name in REQUIRED if not defined[name]]
    if missing:
        raise TypeError(f"the sampler {type(sampler).__name__} lacks {', '.join(missing)}: a sampler needs "
                        "draw_seeds(n, generator, device) and forward(seeds) (fastmine.samplers.SamplerProtocol)")
    hooks = {name: getattr(sampler, name, None) for name in ("generator", "visible", "bind_critic")}
    return SamplerHooks(generator=hooks["generator"] if hooks["generator"] is not None else sampler,
                        visible=hooks["visible"] or _as_is, bind_critic=hooks["bind_critic"])


def _as_is(samples):
    return samples


@runtime_checkable
class Freezable(Protocol):
    """A module that freezes itself its own way (a generator adapter keeps batch-norm statistics
    still while frozen) rather than by ``requires_grad_`` alone."""

    def freeze(self, frozen: bool = True): ...


@torch.no_grad()
def seeded_sample(sampler: nn.Module, n: int, seed: int, device, batch_size: int = 1024) -> torch.Tensor:
    """``sampler(sampler.draw_seeds(...))`` in eval mode from a fixed seed, in batches."""
    gen = torch.Generator(device).manual_seed(seed)
    was_training = sampler.training
    sampler.eval()
    try:
        chunks = [sampler(sampler.draw_seeds(min(batch_size, n - i), gen, device)) for i in range(0, n, batch_size)]
    finally:
        sampler.train(was_training)
    return torch.cat(chunks)


def _device_of(module):
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")
