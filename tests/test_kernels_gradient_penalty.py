"""gradient_penalty_from_grad: Triton kernels (interpreter on CPU) against the eager
reference, a float64 hand computation, and a full critic step through a conv net."""

import pytest
import torch
from torch import nn

import fastmine_kernels as fk
from fastmine_kernels._impl import debug_fill_outputs

pytestmark = pytest.mark.usefixtures("kernel_device")

NAN = float("nan")

SHAPES = [
    (1, 3, 5, 7),  # B = 1
    (6, 3, 33, 37),  # 3663 per row: several blocks, not a power of two
    (2, 3, 40, 50),  # 6000 per row: more than one forward chunk
    (7, 2),  # vectors, several rows per program
    (300, 3),  # more rows than the finalize block
]


def _hand_penalty(grad, weight, center, one_sided):
    """float64 penalty and its gradient, written out from the formula."""
    g = grad.detach().double().reshape(grad.shape[0], -1)
    n = g.shape[0]
    norms = (g * g).sum(dim=1).sqrt()
    dev = norms - center
    if one_sided:
        dev = dev.clamp(min=0)
    penalty = weight * (dev**2).mean()
    coef = torch.where(norms > 0, weight * 2 * dev / (n * norms), torch.zeros_like(norms))
    return penalty, (coef[:, None] * g).reshape(grad.shape)


@pytest.mark.parametrize("one_sided", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference_and_float64(shape, one_sided):
    # scale so that norms straddle the center: both branches of the one-sided clamp occur
    grad = torch.randn(shape)
    grad = grad * (torch.rand(shape[0]) * 2 / grad.flatten(1).norm(dim=1)).view(-1, *[1] * (grad.dim() - 1))
    grad.requires_grad_(True)
    weight, center = 10.0, 1.0
    with debug_fill_outputs(NAN):
        penalty, norms = fk.gradient_penalty_from_grad(
            grad, weight, center, one_sided=one_sided, impl="triton", return_norms=True
        )
        (dgrad,) = torch.autograd.grad(penalty * 3.0, grad)  # upstream ≠ 1 reaches the kernel
    ref = fk.gradient_penalty_from_grad_reference(grad, weight, center, one_sided)
    (ref_dgrad,) = torch.autograd.grad(ref * 3.0, grad)
    hand, hand_dgrad = _hand_penalty(grad, weight, center, one_sided)
    assert penalty.shape == () and not torch.isnan(penalty)
    assert not torch.isnan(dgrad).any() and not torch.isnan(norms).any()
    torch.testing.assert_close(norms, grad.detach().flatten(1).norm(dim=1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(penalty, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(penalty.double(), hand, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dgrad, ref_dgrad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dgrad.double(), 3.0 * hand_dgrad, rtol=1e-5, atol=1e-6)


def test_channels_last_and_zero_rows():
    grad = torch.randn(4, 3, 6, 5).to(memory_format=torch.channels_last)
    grad[1] = 0.0  # a zero norm: gradient 0 there, never NaN
    grad.requires_grad_(True)
    with debug_fill_outputs(NAN):
        penalty = fk.gradient_penalty_from_grad(grad, 2.0, center=0.5, impl="triton")
        (dgrad,) = torch.autograd.grad(penalty, grad)
    ref = fk.gradient_penalty_from_grad_reference(grad, 2.0, center=0.5)
    (ref_dgrad,) = torch.autograd.grad(ref, grad)
    torch.testing.assert_close(penalty, ref)
    assert dgrad.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(dgrad[1], torch.zeros(3, 6, 5))
    torch.testing.assert_close(dgrad, ref_dgrad, rtol=1e-5, atol=1e-6)


def test_one_sided_zero_below_center():
    grad = torch.full((3, 8), 0.1, requires_grad=True)  # norms ≈ 0.28 < 1
    with debug_fill_outputs(NAN):
        penalty = fk.gradient_penalty_from_grad(grad, 10.0, one_sided=True, impl="triton")
        (dgrad,) = torch.autograd.grad(penalty, grad)
    assert penalty.item() == 0.0
    assert torch.equal(dgrad, torch.zeros(3, 8))
    two_sided = fk.gradient_penalty_from_grad(grad, 10.0, impl="triton")
    torch.testing.assert_close(two_sided, torch.tensor(10.0 * (1 - 0.08**0.5) ** 2), rtol=1e-5, atol=0)


# --- a full critic step -------------------------------------------------------------------
class _SmallCritic(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(8, 4, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        )
        self.head = nn.Linear(4 * 3 * 4, 1)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def _critic_step(impl, critic, sampler, real, z, eps, one_sided, center):
    critic.zero_grad(set_to_none=True)
    sampler.zero_grad(set_to_none=True)
    fake = sampler(z).view(real.shape)  # keeps its graph: the penalty also reaches the sampler
    x_hat, _ = fk.interpolate(real, fake, eps=eps, impl=impl)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    penalty = fk.gradient_penalty_from_grad(grad, 10.0, center=center, one_sided=one_sided, impl=impl)
    loss = critic(fake).mean() - critic(real).mean() + penalty
    loss.backward()
    grads = {f"critic.{k}": p.grad.clone() for k, p in critic.named_parameters()}
    grads.update({f"sampler.{k}": p.grad.clone() for k, p in sampler.named_parameters()})
    return loss.detach(), grads


# this critic's input-gradient norms are ≈ 0.03: with center 0.03 the one-sided clamp is
# active for some rows and not for others
@pytest.mark.parametrize("one_sided, center", [(False, 1.0), (True, 0.03)])
def test_critic_step_parameter_gradients_match_eager(one_sided, center):
    torch.manual_seed(0)
    critic = _SmallCritic()
    sampler = nn.Linear(6, 3 * 11 * 13)
    real = torch.randn(5, 3, 11, 13)
    z = torch.randn(5, 6)
    eps = torch.rand(5)
    with debug_fill_outputs(NAN):
        loss_t, grads_t = _critic_step("triton", critic, sampler, real, z, eps, one_sided, center)
    loss_e, grads_e = _critic_step("torch", critic, sampler, real, z, eps, one_sided, center)
    torch.testing.assert_close(loss_t, loss_e, rtol=1e-4, atol=1e-5)
    assert grads_t.keys() == grads_e.keys()
    for name in grads_e:
        if name.endswith("weight"):  # the last bias cancels out of the loss
            assert grads_e[name].abs().sum() > 0, name
        torch.testing.assert_close(grads_t[name], grads_e[name], rtol=1e-4, atol=1e-5, msg=name)
    # the penalty's share of the critic gradient is really there (not silently dropped)
    critic.zero_grad(set_to_none=True)
    fake = sampler(z).view(real.shape).detach()
    loss_no_gp = critic(fake).mean() - critic(real).mean()
    loss_no_gp.backward()
    without = critic.head.weight.grad
    assert not torch.allclose(without, grads_t["critic.head.weight"], rtol=1e-3, atol=1e-5)
