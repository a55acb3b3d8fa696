"""interpolate: Triton kernel (interpreter on CPU) against its eager reference."""

import pytest
import torch

import fastmine_kernels as fk
from fastmine_kernels._impl import debug_fill_outputs

pytestmark = pytest.mark.usefixtures("kernel_device")

NAN = float("nan")

SHAPES = [
    (1, 3, 5, 7),  # B = 1
    (6, 3, 33, 37),  # rows of 3663 elements: longer than one block, not a power of two
    (5, 2),  # [N, d] vectors, several rows per program
    (3, 1),
    (9, 130),
]


def _pair(shape, requires_grad=True):
    real = torch.randn(shape, requires_grad=requires_grad)
    fake = torch.randn(shape, requires_grad=requires_grad)
    return real, fake


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_backward_match_reference(shape):
    real, fake = _pair(shape)
    eps = torch.rand(shape[0])
    with debug_fill_outputs(NAN):
        x_hat, eps_used = fk.interpolate(real, fake, eps=eps, impl="triton")
        upstream = torch.randn(shape)
        grads = torch.autograd.grad(x_hat, (real, fake), upstream)
    ref, _ = fk.interpolate_reference(real, fake, eps=eps)
    ref_grads = torch.autograd.grad(ref, (real, fake), upstream)
    assert torch.equal(eps_used, eps)
    assert not torch.isnan(x_hat).any()
    torch.testing.assert_close(x_hat, ref, rtol=1e-6, atol=1e-6)
    for got, want in zip(grads, ref_grads):
        assert not torch.isnan(got).any()
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("which", ["real", "fake"])
def test_backward_only_for_inputs_that_need_it(which):
    real, fake = _pair((4, 3, 5, 6), requires_grad=False)
    leaf = real if which == "real" else fake
    leaf.requires_grad_(True)
    eps = torch.rand(4)
    with debug_fill_outputs(NAN):
        x_hat, _ = fk.interpolate(real, fake, eps=eps, impl="triton")
        (got,) = torch.autograd.grad(x_hat.sum(), leaf)
    weight = eps if which == "real" else 1 - eps
    torch.testing.assert_close(got, weight.view(4, 1, 1, 1).expand(4, 3, 5, 6))


def test_channels_last_stays_channels_last_and_matches():
    real, fake = _pair((3, 4, 9, 11), requires_grad=False)
    real_cl = real.to(memory_format=torch.channels_last).requires_grad_(True)
    fake_cl = fake.to(memory_format=torch.channels_last).requires_grad_(True)
    eps = torch.rand(3)
    with debug_fill_outputs(NAN):
        x_hat, _ = fk.interpolate(real_cl, fake_cl, eps=eps, impl="triton")
        upstream = torch.randn(3, 4, 9, 11)  # contiguous: backward must re-layout it
        grads = torch.autograd.grad(x_hat, (real_cl, fake_cl), upstream)
    assert x_hat.is_contiguous(memory_format=torch.channels_last)
    assert not x_hat.is_contiguous()
    ref, _ = fk.interpolate_reference(real, fake, eps=eps)
    torch.testing.assert_close(x_hat, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grads[0], eps.view(3, 1, 1, 1) * upstream)
    torch.testing.assert_close(grads[1], (1 - eps).view(3, 1, 1, 1) * upstream)


def test_mixed_layouts_are_accepted():
    real, fake = _pair((2, 3, 4, 5), requires_grad=False)
    eps = torch.rand(2)
    with debug_fill_outputs(NAN):
        x_hat, _ = fk.interpolate(real.to(memory_format=torch.channels_last), fake, eps=eps, impl="triton")
    torch.testing.assert_close(x_hat, fk.interpolate_reference(real, fake, eps=eps)[0])


def test_eps_drawn_from_seed_is_reproducible_and_in_unit_interval():
    real, fake = _pair((300, 3), requires_grad=False)
    with debug_fill_outputs(NAN):
        x1, eps1 = fk.interpolate(real, fake, seed=1234, impl="triton")
        x2, eps2 = fk.interpolate(real, fake, seed=1234, impl="triton")
        _, eps3 = fk.interpolate(real, fake, seed=1235, impl="triton")
    assert eps1.shape == (300,) and eps1.dtype == torch.float32
    assert torch.equal(eps1, eps2) and torch.equal(x1, x2)
    assert not torch.equal(eps1, eps3)
    assert (eps1 >= 0).all() and (eps1 < 1).all()
    assert 0.35 < eps1.mean().item() < 0.65  # uniform-ish, not a constant
    assert len(torch.unique(eps1)) > 290  # one independent ε per sample
    torch.testing.assert_close(x1, fk.interpolate_reference(real, fake, eps=eps1)[0], rtol=1e-6, atol=1e-6)


def test_eps_drawn_per_sample_long_rows():
    # several programs per row must agree on the row's ε (all draw it, one stores it)
    real, fake = torch.zeros(4, 3663), torch.ones(4, 3663)
    with debug_fill_outputs(NAN):
        x_hat, eps = fk.interpolate(real, fake, seed=7, impl="triton")
    torch.testing.assert_close(x_hat, (1 - eps)[:, None].expand(4, 3663))


def test_reference_seed_reproducible():
    real, fake = _pair((5, 2), requires_grad=False)
    _, e1 = fk.interpolate_reference(real, fake, seed=3)
    _, e2 = fk.interpolate(real, fake, seed=3, impl="torch")
    torch.testing.assert_close(e1.cpu(), torch.rand(5, generator=torch.Generator().manual_seed(3), device="cpu"))
    assert torch.equal(e1, e2)


def test_shape_and_eps_errors():
    real, fake = _pair((2, 3), requires_grad=False)
    with pytest.raises(ValueError, match="shape"):
        fk.interpolate(real, fake[:1], impl="triton")
    with pytest.raises(ValueError, match="one value per sample"):
        fk.interpolate(real, fake, eps=torch.rand(3), impl="triton")
