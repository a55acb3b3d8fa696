"""Differentiable augmentation of every critic input, real and fake alike: DiffAugment and ADA.

With few target images the critic memorises them and its feedback to the generator collapses.
Both methods show the critic only augmented images, real and fake through the same random
pipeline, and every transform is differentiable wrt the image, so the sampler's gradient passes
through the augmentation of its fakes and no augmentation leaks into what the generator learns
(Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training"; Karras et al.
2020, "Training Generative Adversarial Networks with Limited Data").

- ``kind: diffaugment`` applies every transform of ``augment.policy`` to every image: "color"
  (brightness + U[-0.5, 0.5), saturation x U[0, 2), contrast x U[0.5, 1.5)), "translation"
  (integer shifts up to 1/8 of the side, zero padding), "cutout" (a zeroed rectangle of half
  each side) — the paper's defaults for images in [-1, 1], sizes as in the newest official code (``//``).
- ``kind: ada`` applies each of ADA's 'bgc' transforms to each image with probability p, the
  paper's magnitudes (Appendix B), and adapts p to the overfitting heuristic
  r_t = E[sign(D(x_real))]: every ``ada_interval`` critic steps
  p += sign(r_t − ada_target) · (images seen in the interval) / ada_images, clamped to [0, 1].

Where the gradient penalty is taken: on the augmented real/fake pair. The critic only ever sees
T(x) — its loss compares the augmented real and fake distributions — so the constraint that
regularises it (WGAN-GP's unit gradient norm on lines between real and fake samples, or R1's
zero gradient on reals) belongs on that same input distribution: x̂ = ε·T(real) + (1−ε)·T(fake),
or R1 at T(real). Both DiffAugment and ADA regularise D as it sees the augmented data; the
penalty then needs no gradient through T either. (The official StyleGAN2 ports differentiate R1
wrt the un-augmented reals through T; for translation and cutout ‖∇(D∘T)‖ ≤ ‖∇D‖, a weaker
constraint on D itself. The transforms here support double backward, should a caller want that.)

Randomness: every draw comes from the ``generator`` given to ``forward`` (on the images'
device), in float32 whatever the images' dtype, so the parameters for image i depend only on the
generator's state and the batch size, never on the images: a real and a fake batch augmented
from the same state get the same transforms, and a resumed run redraws exactly.
"""

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import register_choices

POLICIES = ("color", "translation", "cutout")

# ADA's 'bgc' magnitudes (Karras et al. 2020, Appendix B; stylegan2-ada-pytorch's AugmentPipe defaults)
XINT_MAX = 0.125       # integer translation: uniform, up to this fraction of the side
SCALE_STD = 0.2        # isotropic scaling: log2-normal
ROTATE_MAX = 1.0       # arbitrary rotation: uniform, up to this fraction of a full turn
ANISO_STD = 0.2        # anisotropic scaling: log2-normal
XFRAC_STD = 0.125      # fractional translation: normal, this fraction of the side
BRIGHTNESS_STD = 0.2   # brightness: normal offset
CONTRAST_STD = 0.5     # contrast: log2-normal
HUE_MAX = 1.0          # hue rotation about the luma axis: uniform, up to this fraction of a full turn
SATURATION_STD = 1.0   # saturation: log2-normal


def build_augment(cfg) -> "Augment | None":
    """The augmentation ``cfg`` (an AugmentConfig) asks for; None for kind "none"."""
    if cfg.kind not in AUGMENTS:
        raise ValueError(f"unknown augment.kind {cfg.kind!r}; choose one of {', '.join(AUGMENTS)}")
    return AUGMENTS[cfg.kind].build(cfg)


class Augment(nn.Module):
    """A random, differentiable map of critic inputs: ``forward(x, generator)``; the statistics
    hooks are no-ops unless the augmentation adapts (ADA)."""

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"augmentations take image batches of shape (N, C, H, W), got {tuple(x.shape)}")
        return self.augment(x, generator)

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def observe(self, real_scores: torch.Tensor) -> None:
        """Take note of the critic's scores on (augmented) real images of one critic step."""

    def adjust(self, batch_size: int, all_reduce=None) -> torch.Tensor | None:
        """Called once per critic step with the step's real images over all processes (and an
        in-place sum over processes when there are several); returns the new p (a 0-dim tensor) when
        it changed."""
        return None

    def stats(self) -> dict:
        return {}


# ---------------------------------------------------------------------------------------------
# DiffAugment


def _rand(n, generator, device):
    return torch.rand(n, generator=generator, device=device)


def _randn(n, generator, device):
    return torch.randn(n, generator=generator, device=device)


def brightness(x, b):
    """x + b per image."""
    return x + b.to(x.dtype).view(-1, 1, 1, 1)


def saturation(x, s):
    """Each pixel's deviation from its channel mean scaled by s per image (identity on 1 channel)."""
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * s.to(x.dtype).view(-1, 1, 1, 1) + mean


def contrast(x, c):
    """Each image's deviation from its mean scaled by c per image."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * c.to(x.dtype).view(-1, 1, 1, 1) + mean


def translate(x, dy, dx):
    """out[n, :, i, j] = x[n, :, i + dy[n], j + dx[n]], zero outside the image (integer shifts)."""
    n, c, h, w = x.shape
    rows = torch.arange(h, device=x.device) + dy.view(-1, 1)
    cols = torch.arange(w, device=x.device) + dx.view(-1, 1)
    inside = ((rows >= 0) & (rows < h)).view(n, 1, h, 1) & ((cols >= 0) & (cols < w)).view(n, 1, 1, w)
    shifted = x.gather(2, rows.clamp(0, h - 1).view(n, 1, h, 1).expand(n, c, h, w))
    shifted = shifted.gather(3, cols.clamp(0, w - 1).view(n, 1, 1, w).expand(n, c, h, w))
    return shifted * inside.to(x.dtype)


def cutout(x, cy, cx, size_h, size_w):
    """Zero the size_h x size_w rectangle starting at (cy − size_h // 2, cx − size_w // 2), clipped to the image."""
    h, w = x.shape[2:]
    top, left = (cy - size_h // 2).view(-1, 1, 1), (cx - size_w // 2).view(-1, 1, 1)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= top) & (rows < top + size_h) & (cols >= left) & (cols < left + size_w)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def draw_diffaugment(policy, n, height, width, generator, device) -> list:
    """[(transform, parameters)] for a batch of n images, in policy order, the official draw order."""
    ops = []
    for name in policy:
        if name == "color":
            ops += [(brightness, (_rand(n, generator, device) - 0.5,)),
                    (saturation, (_rand(n, generator, device) * 2,)),
                    (contrast, (_rand(n, generator, device) + 0.5,))]
        elif name == "translation":
            sh, sw = height // 8, width // 8
            dy = torch.randint(-sh, sh + 1, (n,), generator=generator, device=device)
            dx = torch.randint(-sw, sw + 1, (n,), generator=generator, device=device)
            ops.append((translate, (dy, dx)))
        else:
            size_h, size_w = height // 2, width // 2
            cy = torch.randint(0, height + 1 - size_h % 2, (n,), generator=generator, device=device)
            cx = torch.randint(0, width + 1 - size_w % 2, (n,), generator=generator, device=device)
            ops.append((cutout, (cy, cx, size_h, size_w)))
    return ops


class DiffAugment(Augment):
    """DiffAugment (Zhao et al. 2020): every transform of the policy, on every image."""

    def __init__(self, policy):
        super().__init__()
        names = [p.strip() for p in policy.split(",") if p.strip()] if isinstance(policy, str) else list(policy)
        for name in names:
            if name not in POLICIES:
                raise ValueError(f"unknown augment.policy entry {name!r}; choose from {', '.join(POLICIES)}")
        self.policy = names

    def augment(self, x, generator):
        n, _, h, w = x.shape
        for op, params in draw_diffaugment(self.policy, n, h, w, generator, x.device):
            x = op(x, *params)
        return x

    def extra_repr(self):
        return f"policy={self.policy}"


# ---------------------------------------------------------------------------------------------
# ADA


def _matrix(rows, like):
    """(N, R, C) matrices from rows of per-image (N,) tensors and Python numbers."""
    n = like.shape[0]
    elems = [e if torch.is_tensor(e) else like.new_full((n,), float(e)) for row in rows for e in row]
    return torch.stack(elems, dim=-1).view(n, len(rows), len(rows[0]))


def _chosen(value, identity, p, generator):
    """``value`` for the images a Bernoulli(p) draw picks, ``identity`` for the others."""
    picked = torch.rand(value.shape, generator=generator, device=value.device) < p
    return torch.where(picked, value, torch.full_like(value, identity))


def draw_ada(n, channels, p, generator, device) -> dict:
    """ADA's per-image parameters, each at its identity value unless chosen with probability p;
    the draws in the official AugmentPipe's order (float64 tensors of shape (N,))."""
    uniform = lambda: _rand(n, generator, device) * 2 - 1
    log2_normal = lambda std: torch.exp2(_randn(n, generator, device) * std)
    d = {}
    d["xflip"] = _chosen(torch.floor(_rand(n, generator, device) * 2), 0.0, p, generator)
    d["rotate90"] = _chosen(torch.floor(_rand(n, generator, device) * 4), 0.0, p, generator)
    t = (torch.rand(n, 2, generator=generator, device=device) * 2 - 1) * XINT_MAX
    t = torch.where(torch.rand(n, 1, generator=generator, device=device) < p, t, torch.zeros_like(t))
    d["xint"], d["yint"] = t[:, 0], t[:, 1]
    d["scale"] = _chosen(log2_normal(SCALE_STD), 1.0, p, generator)
    # pre- and post-rotation each with p_rot, so that P(pre or post) = p
    p_rot = 1 - torch.sqrt(torch.clamp(1 - torch.as_tensor(p, dtype=torch.float64), 0, 1))
    d["rotate_pre"] = _chosen(uniform() * math.pi * ROTATE_MAX, 0.0, p_rot, generator)
    d["aniso"] = _chosen(log2_normal(ANISO_STD), 1.0, p, generator)
    d["rotate_post"] = _chosen(uniform() * math.pi * ROTATE_MAX, 0.0, p_rot, generator)
    t = torch.randn(n, 2, generator=generator, device=device) * XFRAC_STD
    t = torch.where(torch.rand(n, 1, generator=generator, device=device) < p, t, torch.zeros_like(t))
    d["xfrac"], d["yfrac"] = t[:, 0], t[:, 1]
    d["brightness"] = _chosen(_randn(n, generator, device) * BRIGHTNESS_STD, 0.0, p, generator)
    d["contrast"] = _chosen(log2_normal(CONTRAST_STD), 1.0, p, generator)
    d["lumaflip"] = _chosen(torch.floor(_rand(n, generator, device) * 2), 0.0, p, generator)
    if channels == 3:
        d["hue"] = _chosen(uniform() * math.pi * HUE_MAX, 0.0, p, generator)
    else:
        d["hue"] = torch.zeros(n, device=device)
    if channels > 1:
        d["saturation"] = _chosen(log2_normal(SATURATION_STD), 1.0, p, generator)
    else:
        d["saturation"] = torch.ones(n, device=device)
    return {k: v.double() for k, v in d.items()}


def geometry_matrix(d, height, width) -> torch.Tensor:
    """(N, 3, 3) float64 G_inv: output pixel -> input pixel, coordinates relative to the image centre.

    Composed as in the official AugmentPipe: x-flip, rotation by k·90°, integer translation,
    isotropic scaling, rotation, anisotropic scaling, rotation, fractional translation."""
    one = torch.ones_like(d["xflip"])
    # k·90° exactly: cos/sin of π/2·k in floating point are off by 1e-16 and would blur a pixel blit
    k = d["rotate90"].long()
    cos90 = torch.tensor([1.0, 0.0, -1.0, 0.0], dtype=torch.float64, device=k.device)[k]
    sin90 = torch.tensor([0.0, 1.0, 0.0, -1.0], dtype=torch.float64, device=k.device)[k]

    def rotation(theta):  # rotate2d(theta) = the official rotate2d_inv(-theta)
        c, s = torch.cos(theta), torch.sin(theta)
        return _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]], one)

    def scale(sx, sy):
        return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], one)

    def shift(tx, ty):
        return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], one)

    factors = [
        scale(1 - 2 * d["xflip"], one),
        _matrix([[cos90, -sin90, 0], [sin90, cos90, 0], [0, 0, 1]], one),
        shift(-torch.round(d["xint"] * width), -torch.round(d["yint"] * height)),
        scale(1 / d["scale"], 1 / d["scale"]),
        rotation(d["rotate_pre"]),
        scale(1 / d["aniso"], d["aniso"]),
        rotation(d["rotate_post"]),
        shift(-d["xfrac"] * width, -d["yfrac"] * height),
    ]
    g = factors[0]
    for m in factors[1:]:
        g = g @ m
    return g


def warp(x, g_inv):
    """Resample x at G_inv · (output pixel): bilinear, reflection padding, one grid_sample."""
    n, _, h, w = x.shape
    # grid_sample's normalised coordinates (align_corners=False) are the centred pixel
    # coordinates times 2 / side
    to_norm = torch.diag(torch.tensor([2 / w, 2 / h, 1.0], dtype=torch.float64, device=x.device))
    from_norm = torch.diag(torch.tensor([w / 2, h / 2, 1.0], dtype=torch.float64, device=x.device))
    theta = (to_norm @ g_inv @ from_norm)[:, :2].to(x.dtype)
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def color_matrix(d, channels) -> torch.Tensor:
    """(N, C+1, C+1) float64 homogeneous colour matrix: brightness, contrast, luma flip, hue
    rotation (RGB only), saturation, composed as in the official AugmentPipe (4x4 on RGB).

    The luma axis is v = (1, …, 1) / √C: the luma flip reflects colours through the plane
    orthogonal to it (on one channel: x -> −x, as the official code does on grayscale),
    saturation scales the component orthogonal to it (the identity on one channel)."""
    n, c = d["brightness"].shape[0], channels
    dev = d["brightness"].device
    eye = torch.eye(c + 1, dtype=torch.float64, device=dev)
    v = torch.cat([torch.full((c,), 1 / math.sqrt(c), dtype=torch.float64, device=dev),
                   torch.zeros(1, dtype=torch.float64, device=dev)])
    vv = torch.outer(v, v)
    offset = torch.zeros(c + 1, c + 1, dtype=torch.float64, device=dev)
    offset[:c, c] = 1
    col = lambda t: t.view(n, 1, 1)
    m = eye + col(d["brightness"]) * offset
    gain = torch.ones(n, c + 1, dtype=torch.float64, device=dev)
    gain[:, :c] = d["contrast"].unsqueeze(1)
    m = torch.diag_embed(gain) @ m
    m = (eye - 2 * vv * col(d["lumaflip"])) @ m
    if c == 3:  # Rodrigues' rotation about the luma axis
        cos, sin = col(torch.cos(d["hue"])), col(torch.sin(d["hue"]))
        k = torch.zeros(4, 4, dtype=torch.float64, device=dev)
        a = 1 / math.sqrt(3)
        k[:3, :3] = torch.tensor([[0, -a, a], [a, 0, -a], [-a, a, 0]], dtype=torch.float64, device=dev)
        rot = cos * eye + sin * k + (1 - cos) * vv
        rot[:, 3, 3] = 1
        m = rot @ m
    m = (vv + (eye - vv) * col(d["saturation"])) @ m
    return m


def recolor(x, m):
    """Apply (N, C+1, C+1) homogeneous colour matrices to every pixel of x."""
    n, c, h, w = x.shape
    m = m.to(x.dtype)
    out = torch.baddbmm(m[:, :c, c:], m[:, :c, :c], x.reshape(n, c, h * w))
    return out.view(n, c, h, w)


def _resync_steps(module, incompatible_keys):
    module._steps, module._observed = int(module.ada_acc[3]), int(module.ada_acc[1])


class ADA(Augment):
    """Adaptive discriminator augmentation (Karras et al. 2020): the 'bgc' pipeline, each transform
    with probability ``p`` per image; ``p`` steered so that r_t = E[sign(D(x_real))] stays near
    ``target``, at a speed of ``images`` real images for p to move by 1.

    Differences from the official AugmentPipe (stylegan2-ada-pytorch), the draws being the same:
    - the geometric transforms are one bilinear ``grid_sample`` at the image's own resolution with
      reflection padding, not the official 2x upsampling with a sym6 wavelet filter, resampling and
      filtered downsampling; so shrinking by scaling aliases a little more, and the reflection is
      about the pixel edge ("symmetric": the border pixel repeats) where the official pads by
      reflecting about the border pixel centre, up to one image width (beyond: zeros);
    - colour works on any number of channels with luma axis (1, …, 1)/√C; hue rotation needs RGB
      and is skipped (not drawn) otherwise; saturation is not drawn on one channel (it is the
      identity there); the official code accepts 1 or 3 channels only;
    - images with no geometric transform drawn pass through unresampled (exactly);
    - p is clamped to [0, 1] (the official clamps below only);
    - the transforms run in float32 (float64 for float64 images), autocast off.
    """

    def __init__(self, target=0.6, images=500_000, interval=4, p=0.0):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"augment.ada_p must be in [0, 1], got {p}")
        if interval < 1:
            raise ValueError(f"augment.ada_interval must be at least 1 critic step, got {interval}")
        if images <= 0:
            raise ValueError(f"augment.ada_images must be positive (the images for p to move by 1), got {images}")
        self.target, self.images, self.interval = float(target), float(images), int(interval)
        self.register_buffer("p", torch.tensor(float(p), dtype=torch.float64))
        # this interval's Σ sign(D(real)), number of scores, real images, critic steps
        self.register_buffer("ada_acc", torch.zeros(4, dtype=torch.float64))
        # the last r_t and the number of adjustments made
        self.register_buffer("ada_rt", torch.zeros(2, dtype=torch.float64))
        # the interval's step count on the host too: reading the buffer every critic step would
        # wait for the device
        self._steps = 0
        self._observed = 0  # scores observed this interval, on the host for the same reason
        self.register_load_state_dict_post_hook(_resync_steps)

    def augment(self, x, generator):
        n, c, h, w = x.shape
        dtype = x.dtype
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(torch.float64 if dtype == torch.float64 else torch.float32)
            d = draw_ada(n, c, self.p, generator, x.device)
            g_inv = geometry_matrix(d, h, w)
            moved = ~(g_inv == torch.eye(3, dtype=g_inv.dtype, device=g_inv.device)).all(dim=(1, 2))
            x = torch.where(moved.view(n, 1, 1, 1), warp(x, g_inv), x)
            x = recolor(x, color_matrix(d, c))
        return x.to(dtype)

    @torch.no_grad()
    def observe(self, real_scores):
        self.ada_acc[0] += torch.sign(real_scores.detach()).sum().to(self.ada_acc)
        self.ada_acc[1] += real_scores.numel()
        self._observed += real_scores.numel()

    @torch.no_grad()
    def adjust(self, batch_size, all_reduce=None):
        """``batch_size``: the real images of this critic step (over all processes). Every
        ``interval`` calls, p moves by ±(images of the interval) / ``images``; returns the new p.
        ``all_reduce`` (in-place sum over processes of a tensor) makes r_t the mean over all
        processes, so every process keeps the same p. The new p comes back as a 0-dim tensor on
        p's device: a training step that ignores it never waits for the device."""
        self.ada_acc[2] += batch_size
        self.ada_acc[3] += 1
        self._steps += 1
        if self._steps < self.interval:
            return None
        if self._observed == 0:
            raise ValueError("ADA adjusts p from the critic's real scores: call observe(real_scores) "
                             "in the critic steps before adjust()")
        signs = self.ada_acc[:2].clone()
        if all_reduce is not None:
            all_reduce(signs)
        rt = signs[0] / signs[1]
        step = torch.sign(rt - self.target) * self.ada_acc[2] / self.images
        self.p.copy_(torch.clamp(self.p + step, 0, 1))
        self.ada_rt[0] = rt
        self.ada_rt[1] += 1
        self.ada_acc.zero_()
        self._steps = self._observed = 0
        return self.p.clone()

    def stats(self):
        """{"ada_p": p, "ada_rt": the last r_t} (r_t once p has been adjusted)."""
        out = {"ada_p": float(self.p)}
        if self.ada_rt[1] > 0:
            out["ada_rt"] = float(self.ada_rt[0])
        return out

    def extra_repr(self):
        return f"target={self.target}, images={self.images:g}, interval={self.interval}"


# ---------------------------------------------------------------------------------------------
# the registry: augment.kind names a row (config.validate reads this table)


@dataclass(frozen=True)
class AugmentKind:
    build: Callable                    # AugmentConfig -> Augment | None
    policies: tuple = ()               # what augment.policy may name (its transforms)
    needs_signed_scores: bool = False  # steers itself by sign(D(x_real)): an objective whose sign means something


AUGMENTS = {
    "none": AugmentKind(lambda cfg: None),
    "diffaugment": AugmentKind(lambda cfg: DiffAugment(cfg.policy), policies=POLICIES),
    "ada": AugmentKind(lambda cfg: ADA(target=cfg.ada_target, images=cfg.ada_images, interval=cfg.ada_interval,
                                       p=cfg.ada_p), needs_signed_scores=True),
}
register_choices("augment.kind", AUGMENTS)
