"""fastmine.augment: DiffAugment and ADA against direct computations in float64.

Each transform is checked on its own against a loop / closed-form implementation written here
(a bilinear sampler with symmetric reflection for ADA's geometry, per-pixel colour formulas),
its gradient against finite differences (every transform is affine in the image for a fixed draw),
and the adaptive p against the step of Karras et al. §3 computed by hand.
"""

import io
import math
import re

import pytest
import torch

from fastmine.augment import (
    ADA,
    DiffAugment,
    build_augment,
    color_matrix,
    draw_ada,
    draw_diffaugment,
    geometry_matrix,
    recolor,
    warp,
)
from fastmine.config import AugmentConfig


def gen(seed):
    return torch.Generator().manual_seed(seed)


def images(n, c, h, w, seed=0, dtype=torch.float64):
    return (torch.rand(n, c, h, w, generator=gen(seed), dtype=torch.float64) * 2 - 1).to(dtype)


def params_of(policy, x, seed):
    """The DiffAugment parameters forward(x, gen(seed)) uses, in policy order."""
    n, _, h, w = x.shape
    return [p for _, p in draw_diffaugment(policy, n, h, w, gen(seed), x.device)]


def identity_params(n, channels):
    """ADA parameters with every transform at its identity value."""
    d = draw_ada(n, channels, 0.0, gen(0), "cpu")
    assert all(torch.equal(v, torch.full_like(v, 1.0 if k in ("scale", "aniso", "contrast", "saturation") else 0.0))
               for k, v in d.items())
    return d


def bilinear_symmetric(x, mapping):
    """x resampled at mapping(output pixel) with bilinear interpolation of the image extended by
    symmetric reflection about its edges; ``mapping(n, xc, yc) -> (xc, yc)`` in pixel coordinates
    relative to the image centre."""
    n, c, h, w = x.shape

    def reflect(u, size):
        u = (u + 0.5) % (2 * size)
        u = 2 * size - u if u > size else u
        return min(max(u - 0.5, 0.0), size - 1.0)

    out = torch.empty_like(x)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                u, v = mapping(b, j - (w - 1) / 2, i - (h - 1) / 2)
                u, v = reflect(u + (w - 1) / 2, w), reflect(v + (h - 1) / 2, h)
                j0, i0 = math.floor(u), math.floor(v)
                j1, i1 = min(j0 + 1, w - 1), min(i0 + 1, h - 1)
                fu, fv = u - j0, v - i0
                out[b, :, i, j] = ((1 - fv) * ((1 - fu) * x[b, :, i0, j0] + fu * x[b, :, i0, j1])
                                   + fv * ((1 - fu) * x[b, :, i1, j0] + fu * x[b, :, i1, j1]))
    return out


def rotate(xc, yc, theta):
    return xc * math.cos(theta) - yc * math.sin(theta), xc * math.sin(theta) + yc * math.cos(theta)


# ---------------------------------------------------------------------------------------------
# DiffAugment


def test_diffaugment_color_is_the_papers_formula():
    x = images(6, 3, 5, 7)
    b, s, c = (p[0] for p in params_of(["color"], x, 3))
    y = x + b.view(-1, 1, 1, 1)
    m = y.mean(dim=1, keepdim=True)
    y = (y - m) * s.view(-1, 1, 1, 1) + m
    m = y.mean(dim=(1, 2, 3), keepdim=True)
    expected = (y - m) * c.view(-1, 1, 1, 1) + m
    assert torch.allclose(DiffAugment(["color"])(x, gen(3)), expected, rtol=0, atol=1e-12)
    # the ranges: brightness U[-0.5, 0.5), saturation U[0, 2), contrast U[0.5, 1.5)
    b, s, c = (p[0] for p in params_of(["color"], torch.zeros(20000, 1, 1, 1), 0))
    for v, lo, hi in ((b, -0.5, 0.5), (s, 0.0, 2.0), (c, 0.5, 1.5)):
        assert lo <= v.min() < lo + 1e-3 and hi - 1e-3 < v.max() < hi


def test_diffaugment_color_on_gray():
    x = images(4, 1, 6, 5)
    b, _, c = (p[0] for p in params_of(["color"], x, 1))
    y = x + b.view(-1, 1, 1, 1)  # saturation is the identity on one channel
    m = y.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(DiffAugment(["color"])(x, gen(1)), (y - m) * c.view(-1, 1, 1, 1) + m, rtol=0, atol=1e-12)


def test_translation_against_a_loop_with_zero_padding():
    x = images(8, 3, 17, 13)
    ((dy, dx),) = params_of(["translation"], x, 5)
    expected = torch.zeros_like(x)
    for n in range(8):
        for i in range(17):
            for j in range(13):
                si, sj = i + int(dy[n]), j + int(dx[n])
                if 0 <= si < 17 and 0 <= sj < 13:
                    expected[n, :, i, j] = x[n, :, si, sj]
    assert torch.equal(DiffAugment(["translation"])(x, gen(5)), expected)
    # shifts uniform in [-side // 8, side // 8] (the official code's ratio 1/8)
    ((dy, dx),) = params_of(["translation"], torch.zeros(2000, 1, 17, 13), 0)
    assert set(dy.tolist()) == {-2, -1, 0, 1, 2} and set(dx.tolist()) == {-1, 0, 1}


def test_cutout_against_a_loop():
    x = images(8, 2, 17, 13)
    ((cy, cx, size_h, size_w),) = params_of(["cutout"], x, 2)
    assert (size_h, size_w) == (8, 6)
    expected = x.clone()
    for n in range(8):
        for i in range(int(cy[n]) - 4, int(cy[n]) + 4):
            for j in range(int(cx[n]) - 3, int(cx[n]) + 3):
                if 0 <= i < 17 and 0 <= j < 13:
                    expected[n, :, i, j] = 0
    out = DiffAugment(["cutout"])(x, gen(2))
    assert torch.equal(out, expected)
    assert ((out == 0).all(dim=1).sum(dim=(1, 2)) > 0).all()  # every image loses a part
    # centres as in the official code: randint(0, side + 1 - size % 2)
    ((cy, cx, _, _),) = params_of(["cutout"], torch.zeros(3000, 1, 17, 13), 0)
    assert set(cy.tolist()) == set(range(18)) and set(cx.tolist()) == set(range(14))


@pytest.mark.parametrize("policy", [["color"], ["translation"], ["cutout"], ["color", "translation", "cutout"]])
def test_diffaugment_gradcheck(policy):
    aug = DiffAugment(policy)
    x = images(2, 3, 5, 4).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: aug(t, gen(4)), (x,))


@pytest.mark.parametrize("policy", [[], ""])
def test_empty_policy_is_the_identity(policy):
    x = images(3, 3, 7, 5)
    assert torch.equal(DiffAugment(policy)(x, gen(0)), x)


def test_policy_string_is_split_on_commas():
    assert DiffAugment("color, cutout").policy == ["color", "cutout"]


# ---------------------------------------------------------------------------------------------
# ADA: each transform against a direct computation


GEOMETRY = [  # (parameters, where output pixel (xc, yc) samples the input, as the official G_inv)
    ({"xflip": 1.0}, lambda xc, yc, w, h: (-xc, yc)),
    ({"rotate90": 1.0}, lambda xc, yc, w, h: rotate(xc, yc, math.pi / 2)),
    ({"rotate90": 3.0}, lambda xc, yc, w, h: rotate(xc, yc, 3 * math.pi / 2)),
    ({"xint": 0.11, "yint": -0.09}, lambda xc, yc, w, h: (xc - round(0.11 * w), yc + round(0.09 * h))),
    ({"scale": 1.3}, lambda xc, yc, w, h: (xc / 1.3, yc / 1.3)),
    ({"scale": 0.6}, lambda xc, yc, w, h: (xc / 0.6, yc / 0.6)),
    ({"rotate_pre": 0.7}, lambda xc, yc, w, h: rotate(xc, yc, 0.7)),
    ({"rotate_post": -2.1}, lambda xc, yc, w, h: rotate(xc, yc, -2.1)),
    ({"aniso": 1.25}, lambda xc, yc, w, h: (xc / 1.25, yc * 1.25)),
    ({"xfrac": 0.13, "yfrac": -0.21}, lambda xc, yc, w, h: (xc - 0.13 * w, yc + 0.21 * h)),
]


@pytest.mark.parametrize("params,mapping", GEOMETRY)
def test_each_geometric_transform_against_a_bilinear_loop(params, mapping):
    x = images(2, 2, 7, 6)
    d = identity_params(2, 2)
    for k, v in params.items():
        d[k][:] = v
    expected = bilinear_symmetric(x, lambda b, xc, yc: mapping(xc, yc, 6, 7))
    assert torch.allclose(warp(x, geometry_matrix(d, 7, 6)), expected, rtol=0, atol=1e-12)


def test_pixel_blits_are_exact():
    x = images(2, 3, 8, 8)
    for key, value, direct in (("xflip", 1.0, x.flip(3)), ("rotate90", 1.0, torch.rot90(x, 1, dims=(2, 3))),
                               ("rotate90", 2.0, torch.rot90(x, 2, dims=(2, 3)))):
        d = identity_params(2, 3)
        d[key][:] = value
        assert torch.allclose(warp(x, geometry_matrix(d, 8, 8)), direct, rtol=0, atol=1e-14)


def test_geometric_composition_order():
    """Output pixel p samples the input at F·R90·T·S·R·A·R·Frac·p (the official order)."""
    x = images(1, 1, 6, 7)
    d = identity_params(1, 1)
    values = {"xflip": 1.0, "rotate90": 1.0, "xint": 0.1, "yint": 0.2, "scale": 1.2, "rotate_pre": 0.4,
              "aniso": 0.9, "rotate_post": -0.3, "xfrac": 0.05, "yfrac": -0.1}
    for k, v in values.items():
        d[k][:] = v

    def mapping(b, xc, yc):
        xc, yc = xc - 0.05 * 7, yc + 0.1 * 6
        xc, yc = rotate(xc, yc, -0.3)
        xc, yc = xc / 0.9, yc * 0.9
        xc, yc = rotate(xc, yc, 0.4)
        xc, yc = xc / 1.2, yc / 1.2
        xc, yc = xc - round(0.1 * 7), yc - round(0.2 * 6)
        xc, yc = rotate(xc, yc, math.pi / 2)
        return -xc, yc

    assert torch.allclose(warp(x, geometry_matrix(d, 6, 7)), bilinear_symmetric(x, mapping), rtol=0, atol=1e-12)


def hue_rotation(x, theta):
    """Rodrigues' rotation of every RGB vector about the luma axis (1, 1, 1)/√3."""
    k = torch.full((3,), 1 / math.sqrt(3), dtype=x.dtype)
    v = x.permute(0, 2, 3, 1)
    kxv = torch.linalg.cross(k.expand_as(v), v, dim=-1)
    kv = (v * k).sum(-1, keepdim=True)
    out = v * math.cos(theta) + kxv * math.sin(theta) + k * kv * (1 - math.cos(theta))
    return out.permute(0, 3, 1, 2)


def channel_mean(x):
    return x.mean(dim=1, keepdim=True)


COLOR = [  # (channels, parameters, direct computation)
    (3, {"brightness": 0.3}, lambda x: x + 0.3),
    (1, {"brightness": -0.2}, lambda x: x - 0.2),
    (3, {"contrast": 1.7}, lambda x: 1.7 * x),
    (3, {"lumaflip": 1.0}, lambda x: x - 2 * channel_mean(x)),
    (1, {"lumaflip": 1.0}, lambda x: -x),
    (4, {"lumaflip": 1.0}, lambda x: x - 2 * channel_mean(x)),
    (3, {"hue": 2.0}, lambda x: hue_rotation(x, 2.0)),
    (3, {"saturation": 0.3}, lambda x: channel_mean(x) + 0.3 * (x - channel_mean(x))),
    (4, {"saturation": 1.8}, lambda x: channel_mean(x) + 1.8 * (x - channel_mean(x))),
    (3, {"brightness": 0.1, "contrast": 0.8, "lumaflip": 1.0, "hue": -1.0, "saturation": 1.5},
     lambda x: (lambda y: channel_mean(y) + 1.5 * (y - channel_mean(y)))(
         hue_rotation((lambda y: y - 2 * channel_mean(y))(0.8 * (x + 0.1)), -1.0))),
    (1, {"brightness": 0.1, "contrast": 0.8, "lumaflip": 1.0}, lambda x: -(0.8 * (x + 0.1))),
]


@pytest.mark.parametrize("channels,params,direct", COLOR)
def test_each_color_transform_against_its_formula(channels, params, direct):
    x = images(2, channels, 4, 5)
    d = identity_params(2, channels)
    for k, v in params.items():
        d[k][:] = v
    m = color_matrix(d, channels)
    if channels == 3:
        assert m.shape == (2, 4, 4)
    assert torch.allclose(recolor(x, m), direct(x), rtol=0, atol=1e-12)


def test_ada_draws_have_the_papers_magnitudes_and_probability():
    n = 20000
    d = draw_ada(n, 3, 1.0, gen(0), "cpu")
    assert set(d["xflip"].tolist()) == {0.0, 1.0} and set(d["rotate90"].tolist()) == {0.0, 1.0, 2.0, 3.0}
    for key, bound in (("xint", 0.125), ("rotate_pre", math.pi), ("hue", math.pi)):
        assert -bound <= d[key].min() < -0.99 * bound and 0.99 * bound < d[key].max() <= bound
    for key, std in (("scale", 0.2), ("aniso", 0.2), ("contrast", 0.5), ("saturation", 1.0)):
        assert abs(torch.log2(d[key]).std().item() / std - 1) < 0.03
    for key, std in (("xfrac", 0.125), ("brightness", 0.2)):
        assert abs(d[key].std().item() / std - 1) < 0.03
    # each transform applied with probability p; the two rotations so that P(either) = p
    p = 0.3
    d = draw_ada(n, 3, p, gen(1), "cpu")
    for key, identity in (("scale", 1.0), ("aniso", 1.0), ("xfrac", 0.0), ("brightness", 0.0), ("contrast", 1.0),
                          ("hue", 0.0), ("saturation", 1.0)):
        assert abs((d[key] != identity).double().mean().item() - p) < 0.015, key
    rotated = (d["rotate_pre"] != 0) | (d["rotate_post"] != 0)
    assert abs(rotated.double().mean().item() - p) < 0.015
    assert abs((d["xflip"] == 1).double().mean().item() - p / 2) < 0.015


def test_ada_gray_draws_skip_hue_and_saturation():
    d = draw_ada(500, 1, 1.0, gen(0), "cpu")
    assert (d["hue"] == 0).all() and (d["saturation"] == 1).all() and (d["lumaflip"] == 1).any()


@pytest.mark.parametrize("channels", [1, 3])
def test_ada_gradcheck(channels):
    ada = ADA(p=1.0)
    x = images(2, channels, 5, 4).requires_grad_(True)
    f = lambda t: ada(t, gen(6))
    assert not torch.equal(f(x), x)
    assert torch.autograd.gradcheck(f, (x,))
    if channels == 3:
        assert torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 3, 17, 13), (2, 1, 17, 13), (2, 4, 9, 11), (2, 3, 32, 32)])
def test_ada_is_the_identity_at_p0(shape, dtype):
    """Exactly: images without a geometric transform are not resampled (an identity grid_sample is
    off by up to 1e-5 in float32)."""
    x = images(*shape, dtype=dtype)
    assert torch.equal(ADA(p=0.0)(x, gen(0)), x)


def test_ada_pipeline_is_geometry_then_color():
    x = images(4, 3, 9, 8)
    ada = ADA(p=0.8)
    d = draw_ada(4, 3, ada.p, gen(9), "cpu")
    expected = recolor(warp(x, geometry_matrix(d, 9, 8)), color_matrix(d, 3))
    assert torch.allclose(ada(x, gen(9)), expected, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Both kinds: the same transforms for real and fake, any shape


KINDS = [("diffaugment", lambda: DiffAugment(["color", "translation", "cutout"])), ("ada", lambda: ADA(p=0.7))]


@pytest.mark.parametrize("kind,make", KINDS)
def test_same_generator_state_same_transform(kind, make):
    aug = make()
    real, fake = images(5, 3, 9, 7, seed=1), images(5, 3, 9, 7, seed=2)
    assert torch.equal(aug(real, gen(5)), aug(real.clone(), gen(5)))
    # the transform of each image is affine and depends on the generator state only, not on the
    # images: an affine combination of a real and a fake batch is transformed into the same
    # combination of their transforms
    a = 0.3
    mixed = aug(a * real + (1 - a) * fake, gen(5))
    assert torch.allclose(mixed, a * aug(real, gen(5)) + (1 - a) * aug(fake, gen(5)), rtol=0, atol=1e-12)
    assert not torch.allclose(mixed, a * aug(real, gen(5)) + (1 - a) * aug(fake, gen(6)), rtol=0, atol=1e-3)
    # the draws are in float32 whatever the images' dtype: float32 images get the same transforms
    assert torch.allclose(aug(real.float(), gen(5)).double(), aug(real, gen(5)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind,make", KINDS)
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_shapes_kept_outputs_finite(kind, make, channels):
    aug = make()
    x = images(3, channels, 17, 13, dtype=torch.float32)
    y = aug(x, gen(0))
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    assert not torch.equal(y, x)
    channels_last = aug(x.contiguous(memory_format=torch.channels_last), gen(0))
    assert torch.allclose(channels_last, y, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind,make", KINDS)
def test_gradient_reaches_the_images(kind, make):
    """The sampler's gradient goes through the augmentation of its fakes."""
    x = images(2, 3, 8, 8, dtype=torch.float32).requires_grad_(True)
    (make()(x, gen(0)) ** 2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_non_image_input_is_refused():
    with pytest.raises(ValueError, match=re.escape("augmentations take image batches of shape (N, C, H, W), "
                                                   "got (3, 8, 8)")):
        ADA()(torch.zeros(3, 8, 8), gen(0))


# ---------------------------------------------------------------------------------------------
# ADA's adaptive p


def run_steps(ada, scores, batch):
    return [(ada.observe(s), ada.adjust(batch))[1] for s in scores]


def test_p_rises_on_an_overfitting_critic_by_the_exact_step():
    batch, ada = 16, ADA(target=0.6, images=1000, interval=4, p=0.0)
    scores = [torch.rand(batch, generator=gen(i)) + 0.01 for i in range(8)]  # all positive: r_t = 1
    step = batch * 4 / 1000
    assert run_steps(ada, scores, batch) == [None, None, None, step, None, None, None, step + step]
    assert ada.p.item() == step + step
    assert ada.stats() == {"ada_p": step + step, "ada_rt": 1.0}


def test_p_falls_on_a_critic_that_does_not_overfit():
    batch, ada = 16, ADA(target=0.6, images=1000, interval=4, p=0.5)
    scores = [torch.randn(batch, generator=gen(i)) for i in range(4)]  # signs mixed around 0
    rt = sum(torch.sign(s).sum().item() for s in scores) / (4 * batch)
    assert rt < 0.6
    assert run_steps(ada, scores, batch) == [None, None, None, 0.5 - batch * 4 / 1000]
    assert ada.stats() == {"ada_p": 0.5 - batch * 4 / 1000, "ada_rt": rt}


def test_p_stays_in_0_1_and_counts_the_images_seen():
    ada = ADA(target=0.6, images=100, interval=2, p=0.0)
    assert ada.stats() == {"ada_p": 0.0}  # no r_t before the first adjustment
    assert run_steps(ada, [-torch.ones(8)] * 2, 8) == [None, 0.0]
    ada = ADA(target=0.6, images=100, interval=2, p=0.95)
    assert run_steps(ada, [torch.ones(8)] * 2, 8) == [None, 1.0]
    ada = ADA(target=0.6, images=1000, interval=2, p=0.5)
    ada.observe(torch.ones(8))
    assert ada.adjust(8) is None
    ada.observe(torch.ones(24))
    assert ada.adjust(24) == 0.5 + 32 / 1000  # the images of the interval: the batch sizes given
    ada = ADA(target=0.5, images=1000, interval=1, p=0.5)
    assert run_steps(ada, [torch.tensor([2.0, 1.0, 1.0, 0.5, 1.0, 0.0, 0.0, -3.0])], 8) == [0.5]  # r_t = target


def test_all_reduce_makes_rt_the_mean_over_processes():
    ada = ADA(target=0.6, images=1000, interval=1, p=0.5)
    ada.observe(torch.ones(8))  # this process overfits: r_t = 1

    def other_process(t):  # the other process saw 8 scores, all negative
        t += torch.tensor([-8.0, 8.0], dtype=t.dtype)

    assert ada.adjust(8, all_reduce=other_process) == 0.5 - 8 / 1000
    assert ada.stats()["ada_rt"] == 0.0


def test_adjust_without_observe_is_refused():
    ada = ADA(interval=1)
    with pytest.raises(ValueError, match=re.escape("ADA adjusts p from the critic's real scores: call "
                                                   "observe(real_scores) in the critic steps before adjust()")):
        ada.adjust(8)


def test_state_dict_resume_mid_interval_continues_identically():
    batch = 8
    # overfitting, then not, then overfitting again: p rises, falls, rises
    scores = [torch.randn(batch, generator=gen(i)) + (-1.0 if 4 <= i < 8 else 1.5) for i in range(14)]
    x = images(4, 3, 9, 9)
    full = ADA(target=0.6, images=2000, interval=4, p=0.1)
    expected = run_steps(full, scores, batch)
    assert [v for v in expected if v is not None] == [0.1 + 0.016, 0.1 + 0.016 - 0.016, 0.1 + 0.016 - 0.016 + 0.016]

    first = ADA(target=0.6, images=2000, interval=4, p=0.1)
    got = run_steps(first, scores[:6], batch)  # stopped 2 steps into the second interval
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = ADA(target=0.6, images=2000, interval=4, p=0.9)
    resumed.load_state_dict(torch.load(buf))
    got += run_steps(resumed, scores[6:], batch)
    assert got == expected
    for name, value in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    assert torch.equal(resumed(x, gen(3)), full(x, gen(3)))
    assert set(full.state_dict()) == {"p", "ada_acc", "ada_rt"}


# ---------------------------------------------------------------------------------------------
# build_augment


def test_build_augment():
    assert build_augment(AugmentConfig()) is None
    diff = build_augment(AugmentConfig(kind="diffaugment"))
    assert isinstance(diff, DiffAugment) and diff.policy == ["color", "translation", "cutout"]
    assert diff.stats() == {} and diff.adjust(8) is None and dict(diff.state_dict()) == {}
    ada = build_augment(AugmentConfig(kind="ada", ada_target=0.5, ada_images=1000, ada_interval=2, ada_p=0.25))
    assert isinstance(ada, ADA) and (ada.target, ada.images, ada.interval) == (0.5, 1000, 2)
    assert ada.p.item() == 0.25 and ada.stats() == {"ada_p": 0.25}


@pytest.mark.parametrize("cfg,message", [
    (AugmentConfig(kind="cutmix"), "unknown augment.kind 'cutmix'; choose one of none, diffaugment, ada"),
    (AugmentConfig(kind="diffaugment", policy=["color", "flip"]),
     "unknown augment.policy entry 'flip'; choose from color, translation, cutout"),
    (AugmentConfig(kind="ada", ada_p=1.5), "augment.ada_p must be in [0, 1], got 1.5"),
    (AugmentConfig(kind="ada", ada_interval=0), "augment.ada_interval must be at least 1 critic step, got 0"),
    (AugmentConfig(kind="ada", ada_images=0),
     "augment.ada_images must be positive (the images for p to move by 1), got 0"),
])
def test_bad_config_is_refused(cfg, message):
    with pytest.raises(ValueError) as err:
        build_augment(cfg)
    assert str(err.value) == message
