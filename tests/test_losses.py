"""Adversarial objectives (loss.objective), R1 through the fused norm kernel, weight clipping and
spectral normalisation (issue #17): hand computations in float64, autograd, the trainer using them."""
import math

import pytest
import torch
from budgets import QUICK_INVERSION
from torch import nn

import fastmine as fm
from fastmine.config import ConfigError, ModelConfig
from fastmine.files import load_critic
from fastmine.losses import OBJECTIVES, apply_spectral_norm, get_objective, r1_penalty
from fastmine.zoo import StyleGANCritic

MODEL = ModelConfig(latent_dim=16, width=8)


def scores():
    g = torch.Generator().manual_seed(0)
    return torch.randn(7, generator=g, dtype=torch.float64), torch.randn(7, generator=g, dtype=torch.float64)


def sig(x):
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_objectives_against_hand_computations(name):
    d_fake, d_real = scores()
    f, r = d_fake.tolist(), d_real.tolist()
    mean = lambda xs: sum(xs) / len(xs)
    critic = {
        "wgan_gp": mean(f) - mean(r),
        "wgan_clip": mean(f) - mean(r),
        "logistic": mean([-math.log(1 - sig(x)) for x in f]) + mean([-math.log(sig(x)) for x in r]),
        "minimax": mean([-math.log(1 - sig(x)) for x in f]) + mean([-math.log(sig(x)) for x in r]),
        "hinge": mean([max(0, 1 + x) for x in f]) + mean([max(0, 1 - x) for x in r]),
        "lsgan": mean([0.5 * x * x for x in f]) + mean([0.5 * (x - 1) ** 2 for x in r]),
    }[name]
    sampler = {
        "wgan_gp": -mean(f), "wgan_clip": -mean(f), "hinge": -mean(f),
        "logistic": mean([-math.log(sig(x)) for x in f]),      # non-saturating: −log σ(D(G))
        "minimax": mean([math.log(1 - sig(x)) for x in f]),    # saturating: log(1 − σ(D(G)))
        "lsgan": mean([0.5 * (x - 1) ** 2 for x in f]),
    }[name]
    obj = get_objective(name)
    assert obj.critic(d_fake, d_real).item() == pytest.approx(critic, rel=1e-12)
    assert obj.sampler(d_fake).item() == pytest.approx(sampler, rel=1e-12)
    assert obj.penalty == {"wgan_gp": "gp", "logistic": "r1"}.get(name, "none")
    assert obj.clip == (name == "wgan_clip")


def test_unknown_objective_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown loss.objective 'wgan'; use one of wgan_gp, logistic, hinge, "
                                         "minimax, lsgan, wgan_clip"):
        get_objective("wgan")


class SmoothCritic(nn.Module):
    """tanh layers: a nonzero second derivative, so R1's gradient w.r.t. the weights is not trivial."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 5, 6), nn.Tanh(), nn.Linear(6, 1))

    def forward(self, x):
        return self.net(x).squeeze(1)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_r1_through_the_kernel_matches_autograd_in_float64(impl):
    torch.manual_seed(0)
    critic = SmoothCritic().double()
    real = torch.randn(5, 2, 3, 5, dtype=torch.float64)
    gamma = 3.0
    penalty, norm = r1_penalty(critic, real, gamma=gamma, impl=impl)
    grads = torch.autograd.grad(penalty, list(critic.parameters()), materialize_grads=True)
    x = real.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    expected = gamma / 2 * g.flatten(1).pow(2).sum(1).mean()
    ref = torch.autograd.grad(expected, list(critic.parameters()), materialize_grads=True)
    # the torch path is float64 throughout; the Triton kernel accumulates norms in float32 (its own
    # tests hold it to 1e-5 against float64, tests/test_kernels_gradient_penalty.py)
    tol = 1e-9 if impl == "torch" else 1e-5
    assert penalty.item() == pytest.approx(expected.item(), rel=tol)
    # the logged norm is kept in float32 by the kernel's interface (it is for the log only)
    assert norm.item() == pytest.approx(g.flatten(1).norm(dim=1).mean().item(), rel=1e-6)
    for a, b in zip(grads, ref):
        assert torch.allclose(a, b, rtol=10 * tol, atol=1e-12)
    assert grads[0].abs().sum() > 0  # the first layer's weights do get R1's gradient


def _target():
    return torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _prepare(**settings):
    torch.manual_seed(100)
    generator = fm.new_generator(_target(), MODEL)
    return fm.prepare(generator, _target(), device="cpu", batch_size=16, progress=False, model_cfg=MODEL,
                      log_every=1, **{"invert_cfg": QUICK_INVERSION, **settings})


@pytest.mark.parametrize("objective", ["logistic", "hinge", "minimax", "lsgan", "wgan_clip"])
def test_every_objective_trains_through_the_one_trainer(objective, one_thread):
    result = _prepare(loss_cfg={"objective": objective, "r1_every": 2}, steps=3).fit()
    m = result.metrics
    assert all(math.isfinite(m[k]) for k in ("loss_critic", "loss_sampler"))
    assert (m["penalty"] > 0) == (objective == "logistic")  # R1 only with the logistic loss
    if objective == "wgan_clip":
        assert max(p.abs().max().item() for p in result.critic.parameters()) <= 0.01 + 1e-7


def test_lazy_r1_every_k_critic_steps_scaled_by_k(one_thread, monkeypatch):
    run = _prepare(loss_cfg={"objective": "logistic", "r1_every": 4, "r1_gamma": 2.0, "reg_step": "separate"},
                   steps=2, n_critic=5)
    calls = []
    real_r1 = r1_penalty

    def spy(critic, real, gamma, impl):
        calls.append(gamma)
        return real_r1(critic, real, gamma=gamma, impl=impl)

    monkeypatch.setattr("fastmine.trainer.r1_penalty", spy)
    run.fit()
    assert calls == [8.0] * 3  # critic steps 0, 4, 8 of 10; γ·k
    c = 4 / 5  # separate reg steps: Adam's lr and betas follow the lazy interval (StyleGAN2 §B)
    assert run.trainer.opt_critic.param_groups[0]["betas"][1] == pytest.approx(0.999 ** c)  # MineGAN's 0.999


def test_spectral_norm_normalises_the_critic_and_its_file_stores_plain_weights(tmp_path, one_thread):
    run = _prepare(loss_cfg={"objective": "hinge", "spectral_norm": True}, steps=2, run_dir=tmp_path / "sn")
    critic = run.trainer.critic
    assert any(nn.utils.parametrize.is_parametrized(m) for m in critic.modules())
    result = run.fit()
    critic.eval()
    for m in critic.modules():
        if isinstance(m, nn.Linear):  # after power iteration the largest singular value is ~1
            assert torch.linalg.matrix_norm(m.weight, ord=2).item() == pytest.approx(1.0, abs=0.05)
    stored = load_critic(result.model_path)
    assert not any(nn.utils.parametrize.is_parametrized(m) for m in stored.modules())
    x = _target()[:4]
    with torch.no_grad():
        assert torch.allclose(stored.eval()(x), critic(x), atol=1e-5)


def test_spectral_norm_conflicts_are_refused():
    with pytest.raises(ConfigError, match="both bound the critic's weights"):
        _prepare(loss_cfg={"objective": "wgan_clip", "spectral_norm": True})
    sg = StyleGANCritic("stylegan2", {"c_dim": 0, "img_resolution": 16, "img_channels": 3, "channel_base": 64,
                                      "channel_max": 8})
    with pytest.raises(ValueError, match="needs torch Conv2d / Linear layers in the critic; StyleGANCritic has none"):
        apply_spectral_norm(sg)
    with pytest.raises(ConfigError, match="'loss.objective' must be one of"):
        _prepare(loss_cfg={"objective": "wgan"})
