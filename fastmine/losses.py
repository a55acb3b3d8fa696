"""Adversarial objectives and their penalties (what the trainer calls; it knows none by name).

An :class:`Objective` is data: the critic's loss and the sampler's loss as functions of the
critic's scores on fake and real images, which penalty regularises the critic (the WGAN-GP
gradient penalty on interpolates, R1 on real images, or none) and whether the critic's
weights are clipped after each step. All scores are logits / unbounded critic outputs;
higher means "more real" for every objective, so MineGAN's critic-max selection reads them
the same way.

- ``wgan_gp`` (default; the papers'): eq. 3-4 with λ·E[(‖∇D(x̂)‖ − 1)²].
- ``logistic``: the non-saturating loss of Goodfellow et al. with R1 (Mescheder et al. 2018),
  γ/2·E‖∇_x D(x)‖² on real images, lazily every k critic steps and scaled by k (StyleGAN2 §B):
  the objective pretrained StyleGAN2/3 discriminators were trained with.
- ``hinge`` (SNGAN, BigGAN): E[max(0, 1 − D(x))] + E[max(0, 1 + D(G(u)))], sampler −E[D(G(u))].
- ``minimax``: the original saturating game, sampler minimises E[log(1 − σ(D(G(u))))].
- ``lsgan`` (Mao et al. 2017, a=0, b=c=1): ½E[(D(x) − 1)²] + ½E[D(G(u))²], sampler ½E[(D(G(u)) − 1)²].
- ``wgan_clip`` (Arjovsky et al. 2017): the WGAN losses, critic weights clipped to [−c, c].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fastmine_kernels import IMPLS
from fastmine_kernels.gradient_penalty import gradient_penalty_from_grad
from fastmine_kernels.interpolate import interpolate

from .config import register_choices


@dataclass(frozen=True)
class Objective:
    critic: Callable      # (d_fake, d_real) -> the critic's loss
    sampler: Callable     # d_fake -> the sampler's loss
    penalty: str = "none"  # gp (WGAN-GP on interpolates) | r1 (on real images) | none
    clip: bool = False    # clip the critic's weights after each step
    # the sign of a score means real (+) or fake (-), as ADA's overfitting heuristic E[sign D(x)]
    # needs; WGAN's scores have an arbitrary offset
    signed_scores: bool = False


def _wgan_critic(d_fake, d_real):
    """Eq. 3: E[D(S(u))] − E[D(x)] (the penalty is added by the caller)."""
    return d_fake.mean() - d_real.mean()


def _wgan_sampler(d_fake):
    """Eq. 4: −E[D(S(u))]."""
    return -d_fake.mean()


def _logistic_critic(d_fake, d_real):
    # −log σ(D(x)) − log(1 − σ(D(G))) = softplus(−D(x)) + softplus(D(G))
    return F.softplus(d_fake).mean() + F.softplus(-d_real).mean()


OBJECTIVES = {
    "wgan_gp": Objective(_wgan_critic, _wgan_sampler, penalty="gp"),
    "logistic": Objective(_logistic_critic, lambda d_fake: F.softplus(-d_fake).mean(), penalty="r1",
                          signed_scores=True),
    "hinge": Objective(lambda d_fake, d_real: F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean(), _wgan_sampler,
                       signed_scores=True),
    "minimax": Objective(_logistic_critic, lambda d_fake: -F.softplus(d_fake).mean(), signed_scores=True),
    "lsgan": Objective(lambda d_fake, d_real: 0.5 * ((d_real - 1) ** 2).mean() + 0.5 * (d_fake ** 2).mean(),
                       lambda d_fake: 0.5 * ((d_fake - 1) ** 2).mean()),
    "wgan_clip": Objective(_wgan_critic, _wgan_sampler, clip=True),
}
register_choices("loss.objective", OBJECTIVES)
register_choices("perf.impl", IMPLS)


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown loss.objective {name!r}; use one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def critic_loss(d_fake, d_real):
    """WGAN's critic loss (eq. 3), the default objective's."""
    return _wgan_critic(d_fake, d_real)


def check_critic_for_penalty(critic: nn.Module):
    """Refuse batch norm in a critic trained with a gradient penalty.

    Batch norm mixes the samples of a batch, so ∇_x̂ D(x̂) of one sample depends on the
    others and the per-sample penalty no longer constrains the critic's Lipschitz constant
    (Gulrajani et al. §4 drop it for that reason).
    """
    for name, module in critic.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ValueError(
                f"the critic has batch norm ({name or 'root'}: {type(module).__name__}), which breaks the "
                "per-sample gradient penalty: each sample's gradient would depend on the rest of the batch. "
                "Use layer norm, instance norm, GroupNorm or no normalisation in the critic, or set loss.gp_weight=0."
            )


def gradient_penalty(critic, real, fake, weight=10.0, center=1.0, one_sided=False, eps=None, impl="auto"):
    """λ·mean((‖∇_x̂ D(x̂)‖₂ − center)²) at x̂ = ε·real + (1−ε)·fake, one ε per sample.

    ``one_sided`` penalises only norms above ``center`` (WGAN-LP). The interpolation and
    the penalty are fused kernels on CUDA; the double backward through the critic stays
    with autograd (torch.compile does not support it).
    Returns (penalty, grad_norm_mean) — the latter detached, for logging.
    """
    x_hat, _ = interpolate(real.detach(), fake.detach(), eps=eps, impl=impl)
    return _norm_penalty(critic, x_hat, weight, center, one_sided, impl)


def r1_penalty(critic, real, gamma=10.0, impl="auto"):
    """R1: γ/2·mean(‖∇_x D(x)‖₂²) on real images — the same fused norm kernel, centre 0.
    Returns (penalty, grad_norm_mean)."""
    return _norm_penalty(critic, real.detach(), gamma / 2, 0.0, False, impl)


def _norm_penalty(critic, x, weight, center, one_sided, impl):
    x = x.requires_grad_(True)
    scores = critic(x)
    (grad,) = torch.autograd.grad(scores.sum(), x, create_graph=True)
    penalty, norms = gradient_penalty_from_grad(grad, weight, center=center, one_sided=one_sided, impl=impl,
                                                return_norms=True)
    return penalty, norms.detach().mean()


@torch.no_grad()
def clip_weights(params, clip: float):
    """WGAN's weight clipping: every critic parameter into [−clip, clip]."""
    for p in params:
        p.clamp_(-clip, clip)


def apply_spectral_norm(critic: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018) of every convolution and linear layer's weight."""
    layers = [m for m in critic.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d))]
    if not layers:
        raise ValueError(f"loss.spectral_norm needs torch Conv2d / Linear layers in the critic; "
                         f"{type(critic).__name__} has none (e.g. a StyleGAN discriminator keeps its own weights)")
    for m in layers:
        nn.utils.parametrizations.spectral_norm(m)
    return critic


def folded_state_dict(critic: nn.Module) -> dict:
    """The critic's state dict with spectral normalisation folded in: ``layer.weight`` = W/σ(W)
    as a plain tensor, the parametrization's own entries dropped (what its model file stores)."""
    state = critic.state_dict()
    for name, m in critic.named_modules():
        if nn.utils.parametrize.is_parametrized(m):
            prefix = f"{name}." if name else ""
            for key in [k for k in state if k.startswith(prefix + "parametrizations.")]:
                del state[key]
            for tensor_name in m.parametrizations:
                state[prefix + tensor_name] = getattr(m, tensor_name).detach().clone()
    return state
