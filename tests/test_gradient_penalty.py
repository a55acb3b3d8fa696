import numpy as np
import pytest
import torch
from torch import nn

import fastmine as fm
from fastmine.config import ModelConfig
from fastmine.losses import check_critic_for_penalty, gradient_penalty
from fastmine.nets import DCGANCritic


def _conv_critic():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.Softplus(), nn.Conv2d(4, 4, 3, 2, 1), nn.Softplus(),
                         nn.Flatten(), nn.Linear(4 * 2 * 2, 1))


@pytest.mark.parametrize("one_sided", [False, True])
def test_penalty_equals_float64_hand_computation(one_sided):
    critic = _conv_critic()
    real, fake = torch.randn(6, 1, 7, 7), torch.randn(6, 1, 7, 7)
    eps = torch.rand(6)
    penalty, norm_mean = gradient_penalty(critic, real, fake, weight=10.0, one_sided=one_sided, eps=eps, impl="torch")

    # float64, one sample at a time, norms and mean by hand in numpy
    c64 = _conv_critic().double()
    norms = []
    for i in range(6):
        x = (eps[i].double() * real[i : i + 1].double() + (1 - eps[i].double()) * fake[i : i + 1].double())
        x.requires_grad_(True)
        (g,) = torch.autograd.grad(c64(x).sum(), x)
        norms.append(np.sqrt((g.numpy() ** 2).sum()))
    dev = np.array(norms) - 1.0
    if one_sided:
        dev = np.maximum(dev, 0.0)
    expected = 10.0 * np.mean(dev**2)
    assert penalty.item() == pytest.approx(expected, rel=1e-5)
    assert norm_mean.item() == pytest.approx(np.mean(norms), rel=1e-5)


def test_linear_critic_penalty_is_closed_form():
    w = torch.tensor([3.0, 4.0])  # ‖∇D‖ = ‖w‖ = 5 everywhere
    critic = nn.Linear(2, 1, bias=False)
    critic.weight.data = w[None]
    penalty, _ = gradient_penalty(lambda x: critic(x).squeeze(1), torch.randn(5, 2), torch.randn(5, 2), weight=2.0)
    assert penalty.item() == pytest.approx(2.0 * (5 - 1) ** 2)


def test_penalty_gradient_reaches_critic_weights_like_float64_autograd():
    critic = _conv_critic()
    real, fake, eps = torch.randn(4, 1, 7, 7), torch.randn(4, 1, 7, 7), torch.rand(4)
    penalty, _ = gradient_penalty(critic, real, fake, weight=10.0, eps=eps, impl="torch")
    penalty.backward()
    # the last bias does not change ∇ₓD, so it gets no gradient; every weight matrix must
    ours = [None if p.grad is None else p.grad.clone() for p in critic.parameters()]

    c64 = _conv_critic().double()
    x = (eps.double()[:, None, None, None] * real.double() + (1 - eps.double()[:, None, None, None]) * fake.double())
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(c64(x).sum(), x, create_graph=True)
    ref = 10.0 * ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()
    ref.backward()
    for a, b in zip(ours, c64.parameters()):
        if b.dim() > 1:
            assert a is not None and a.abs().sum() > 0, "the penalty's gradient must reach every critic weight"
        if b.grad is None:
            assert a is None
        else:
            torch.testing.assert_close(a.double(), b.grad, rtol=1e-4, atol=1e-6)


def test_batchnorm_critic_is_refused_with_reason():
    critic = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(1))
    with pytest.raises(ValueError) as e:
        check_critic_for_penalty(critic)
    msg = str(e.value)
    assert "batch norm" in msg and "per-sample gradient penalty" in msg and "layer norm" in msg
    check_critic_for_penalty(DCGANCritic(16, 1, 8))  # the project's critic passes


def test_trainer_refuses_batchnorm_critic():
    critic = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Linear(8, 1), nn.Flatten(0))
    data = fm.load_digits(labels=[9], size=8)
    with pytest.raises(ValueError, match="batch norm"):
        fm.train(None, data, method="scratch", critic=critic, steps=1, progress=False,
                 model_cfg=ModelConfig(latent_dim=8, width=8))
