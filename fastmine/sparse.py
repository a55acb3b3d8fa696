"""Sparse subnetwork selection, S³ (MineGAN++ §3.4.2, eq. 11-14).

On real target data, L_D^r = −E[D(x)]; g = ∇_w L_D^r; Hg is a Hessian-vector product
(double backward: Hg = ∇_w (g · stop_grad(g))); each weight scores S = −w ⊙ Hg (eq. 13).
θ_w is the score at the top-p quantile over all critic weights (p = 0.3: the top 30 %
score ≥ θ_w). A filter — one output channel of a conv (its k_in·k_h·k_w weights), one
output unit of a linear layer (its fan-in) — trains when at least θ_f of its weights score
≥ θ_w (eq. 14, θ_f = 6); its bias follows it. Everything else is frozen: its gradient is
masked to exactly zero by a tensor hook, so Adam's moments stay zero there and the weight
keeps its exact value (Adam's update is m̂/(√v̂+ε) = 0). Parameters outside conv and
linear layers (norm affines, embeddings) are left trainable.

Filters with fewer than θ_f weights (a linear layer on 2-D inputs, say) could never reach
θ_f; for them the threshold is their size: they train when all their weights score ≥ θ_w.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

MASKED_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                nn.Linear)


def critic_real_loss(critic: nn.Module, real: torch.Tensor) -> torch.Tensor:
    """L_D^r = −E[D(x)] on real target data."""
    return -critic(real).mean()


def gradient_and_hvp(critic: nn.Module, real: torch.Tensor, params=None):
    """(g, Hg) of L_D^r with respect to ``params`` (default: all critic parameters).

    Hg = ∇_w (g · v) with v = g held constant: one double backward, no Hessian formed.
    """
    params = list(params if params is not None else critic.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        loss = critic_real_loss(critic, real)
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]
        dot = sum((g * g.detach()).sum() for g in grads if g.requires_grad)
        if torch.is_tensor(dot) and dot.requires_grad:
            hvp = torch.autograd.grad(dot, params, allow_unused=True)
            hvp = [h if h is not None else torch.zeros_like(p) for h, p in zip(hvp, params)]
        else:  # a critic linear in its weights has no curvature
            hvp = [torch.zeros_like(p) for p in params]
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
    return [g.detach() for g in grads], [h.detach() for h in hvp]


def weight_of(module: nn.Module):
    """(name, parameter) of a layer's weight (``weight_orig`` under spectral norm)."""
    for name in ("weight_orig", "weight"):
        p = module._parameters.get(name)
        if isinstance(p, nn.Parameter):
            return name, p
    return None, None


def filter_view(module: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """[n_filters, weights per filter]: output channels first (dim 1 of a transposed conv)."""
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        t = t.transpose(0, 1)
    return t.reshape(t.shape[0], -1)


def filter_rule(scores_2d: torch.Tensor, theta_w: float, theta_f: int) -> torch.Tensor:
    """Eq. 14 per row of [n_filters, K]: trainable iff #{S(w_i) ≥ θ_w} ≥ min(θ_f, K)."""
    need = min(int(theta_f), scores_2d.shape[1])
    return (scores_2d >= theta_w).sum(1) >= need


@dataclass
class SubnetworkMasks:
    """Boolean masks (True = trainable) for the critic's parameters, by name."""

    masks: dict
    theta_w: float
    p: float
    theta_f: int
    layers: dict = field(default_factory=dict)  # layer -> {"filters", "trainable_filters", "fraction"}
    handles: list = field(default_factory=list, repr=False)

    def apply(self, critic: nn.Module):
        """Mask the gradients of frozen weights with tensor hooks (removable via ``remove``)."""
        self.remove()
        params = dict(critic.named_parameters())
        for name, mask in self.masks.items():
            p = params[name]
            m = mask.to(p.device)
            # where(), not multiply: a NaN gradient must not leak into frozen weights' moments
            self.handles.append(p.register_hook(lambda g, m=m: torch.where(m, g, torch.zeros_like(g))))
        return self

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def trainable_fraction(self) -> float:
        n = sum(m.numel() for m in self.masks.values())
        return sum(int(m.sum()) for m in self.masks.values()) / max(1, n)

    def report(self) -> dict:
        """Per-layer fraction of trainable weights (the paper's Fig. 11b) and the totals."""
        return {"theta_w": self.theta_w, "p": self.p, "theta_f": self.theta_f,
                "trainable_fraction": self.trainable_fraction(), "layers": self.layers}

    def save(self, path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.report(), indent=1))


def select_subnetwork(critic: nn.Module, real: torch.Tensor, p: float = 0.3, theta_f: int = 6,
                      max_samples: int | None = 512, seed: int = 0) -> SubnetworkMasks:
    """S³ masks for ``critic`` from the target data ``real`` (at most ``max_samples`` of it)."""
    if not 0.0 < p <= 1.0:
        raise ValueError(f"S³ needs 0 < p <= 1 (the fraction of weights at or above θ_w), got {p}")
    if theta_f < 1:
        raise ValueError(f"θ_f must be at least 1 weight per filter, got {theta_f}")
    device = next(critic.parameters()).device
    real = torch.as_tensor(real).float()
    if max_samples is not None and len(real) > max_samples:
        idx = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))[:max_samples]
        real = real[idx]
    real = real.to(device)
    layers = [(name, m) for name, m in critic.named_modules() if isinstance(m, MASKED_TYPES)]
    layers = [(name, m, *weight_of(m)) for name, m in layers]
    layers = [(name, m, wname, w) for name, m, wname, w in layers if w is not None]
    if not layers:
        raise ValueError("S³ found no conv or linear layer in the critic to select filters from")
    names = {id(p_): n for n, p_ in critic.named_parameters()}
    params = list(critic.parameters())
    was_training = critic.training
    critic.eval()  # spectral norm must not take a power-iteration step while we measure
    try:
        grads, hvps = gradient_and_hvp(critic, real, params)
    finally:
        critic.train(was_training)
    score_of = {id(p_): -p_.detach() * h for p_, h in zip(params, hvps)}  # eq. 13: S = −w ⊙ Hg
    all_scores = torch.cat([score_of[id(w)].flatten() for _, _, _, w in layers])
    n = all_scores.numel()
    n_top = max(1, int(math.ceil(p * n)))
    theta_w = float(torch.kthvalue(all_scores.cpu().double(), n - n_top + 1).values)  # the n_top-th largest
    masks, report = {}, {}
    for name, module, wname, w in layers:
        filters = filter_rule(filter_view(module, score_of[id(w)]), theta_w, theta_f)
        shape = [1] * w.dim()
        out_dim = 1 if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) else 0
        shape[out_dim] = -1
        masks[names[id(w)]] = filters.view(shape).expand_as(w).clone()
        bias = module._parameters.get("bias")
        if isinstance(bias, nn.Parameter):
            masks[names[id(bias)]] = filters.clone()
        report[name or type(module).__name__] = {
            "filters": int(filters.numel()), "trainable_filters": int(filters.sum()),
            "fraction": float(filters.float().mean())}
    return SubnetworkMasks(masks, theta_w, p, int(theta_f), report)


def apply_s3(critic: nn.Module, real: torch.Tensor, p=0.3, theta_f=6, max_samples=512, seed=0) -> SubnetworkMasks:
    """Select and apply: what methods ``minegan_pp`` / ``transfergan_pp`` do before training."""
    return select_subnetwork(critic, real, p=p, theta_f=theta_f, max_samples=max_samples, seed=seed).apply(critic)
