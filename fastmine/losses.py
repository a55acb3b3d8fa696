"""WGAN losses and the gradient penalty (the one entry point the trainer calls)."""
from __future__ import annotations

import torch
from torch import nn

from fastmine_kernels.gradient_penalty import gradient_penalty_from_grad
from fastmine_kernels.interpolate import interpolate


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
                "Use layer norm, instance norm, GroupNorm or no normalisation in the critic, or set train.gp_weight=0."
            )


def gradient_penalty(critic, real, fake, weight=10.0, center=1.0, one_sided=False, eps=None, impl="auto"):
    """λ·mean((‖∇_x̂ D(x̂)‖₂ − center)²) at x̂ = ε·real + (1−ε)·fake, one ε per sample.

    ``one_sided`` penalises only norms above ``center`` (WGAN-LP). The interpolation and
    the penalty are fused kernels on CUDA; the double backward through the critic stays
    with autograd (torch.compile does not support it).
    Returns (penalty, grad_norm_mean) — the latter detached, for logging.
    """
    x_hat, _ = interpolate(real.detach(), fake.detach(), eps=eps, impl=impl)
    x_hat.requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    penalty, norms = gradient_penalty_from_grad(grad, weight, center=center, one_sided=one_sided, impl=impl,
                                                return_norms=True)
    return penalty, norms.detach().mean()


def critic_loss(d_fake, d_real):
    """Eq. 3: E[D(S(u))] − E[D(x)] (the penalty is added by the caller)."""
    return d_fake.mean() - d_real.mean()


def sampler_loss(d_fake):
    """Eq. 4: −E[D(S(u))]."""
    return -d_fake.mean()
